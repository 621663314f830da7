// The GEMMs of a segment contraction (segment_dot, segment_wgrad; runtime/cuda/ops.ts): the per-expert
// row segments of every batch entry, found from the counts read on the host, become a list of
// row-major problems (pure functions below), which run as one grouped cuBLAS call
// (cublasGemmGroupedBatchedEx, native/src/cublas.cc) instead of one cuBLASLt call each: the per-call
// host cost (~16 µs) times batch entries × local experts was most of the MoE step's host time.
// Where the grouped GEMM cannot run the problems (no libcublas 12.5+; bf16 inputs with an f32 output,
// which it does not offer; bf16 pointers off 16 bytes), they run one cuBLASLt call each, fanned out
// over side streams (side-streams.ts) so that several experts' GEMMs share the GPU.
// bf16 sets use the fan-out by default (measured faster on an H200); SHARDTS_SEGMENT_GEMM=grouped,
// lanes or loop (one stream) sets the mode for every set (SegmentMode). bf16 segment_dot runs on the
// generated grouped bf16 kernel first (bf16-segment.ts; by default and with SHARDTS_SEGMENT_GEMM=wgmma:
// segmentDotOnWgmma); the sets it refuses, and every other set, run as by default.
import type { Dim, TensorType } from "../../compiler/ir/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import type { NativeAddon, Stream } from "./native-types.ts";
import { matmulPlans, type MatmulForm } from "./matmul-plans.ts";
import { segmentLanes } from "./side-streams.ts";

/** One non-empty segment: `m` rows from `row` of batch entry `t` for the `g`-th local group (expert). */
export interface Segment {
  t: number;
  g: number;
  row: number;
  m: number;
  /** The row of entry t where its first local group starts (its output rows start there in segment_dot). */
  start: number;
}

/** Where the segments lie: `counts` is [bt][gC] row counts (gC groups per entry, of which the local ones
 * are `first` to `first + groups`); rows hold `R` per entry. Packed rows hold only the local groups'
 * segments; unpacked ones hold every group's, so the local ones start after the earlier groups'. */
export interface SegmentLayout {
  counts: ArrayLike<number>;
  bt: number;
  gC: number;
  first: number;
  groups: number;
  packed: boolean;
  R: number;
}

/**
 * Where rank r's operands of a segment contraction lie: x's segmented rows dim and its groups, the
 * counts' batch dims, whether x's rows are packed (hold only the local groups' segments), and `first`,
 * the first local group among the counts' groups (w's for segment_dot, the output's for segment_wgrad).
 */
export function segmentPlacement(op: string, plan: Plan, ins: Extract<Plan["instrs"][number], { kind: "op" }>, r: number, tIn: readonly TensorType[]): { rows: Dim; groups: string; batch: string[]; packed: boolean; first: number } {
  const [tx, t1, tc] = tIn as [TensorType, TensorType, TensorType];
  const rows = tx.dims.find((d) => d.segmented)!, groups = rows.segmented!.groups;
  const batch = tc.dims.map((d) => d.name).filter((n) => n !== groups);
  const cOff = plan.values[ins.inputs[2]!]!.boxes[r]!.offset[tc.dims.findIndex((d) => d.name === groups)]!;
  const packed = plan.values[ins.inputs[0]!]!.boxes[r]!.seg[tx.dims.indexOf(rows)] !== null;
  const gOff = op === "segment_dot" ? plan.values[ins.inputs[1]!]!.boxes[r]!.offset[t1.dims.findIndex((d) => d.name === groups)]! : plan.values[ins.outputs[0]!]!.boxes[r]!.offset[0]!;
  return { rows, groups, batch, packed, first: gOff - cOff };
}

/** The non-empty segments in the order the per-group loop visits them, clipped to the R rows. */
export function segments(l: SegmentLayout): Segment[] {
  const out: Segment[] = [];
  for (let t = 0; t < l.bt; t++) {
    let row = 0;
    if (!l.packed) for (let g = 0; g < l.first; g++) row += l.counts[t * l.gC + g]!;
    const start = row;
    for (let g = 0; g < l.groups; g++) {
      const cnt = l.counts[t * l.gC + l.first + g]!, m = Math.max(0, Math.min(cnt, l.R - row));
      if (m > 0) out.push({ t, g, row, m, start });
      row += cnt;
    }
  }
  return out;
}

/** A row-major problem D[M,N] = op(A)[M,K] · B[K,N] (+ D when the set accumulates), leading dimensions the row lengths. */
export interface Problem {
  M: number;
  N: number;
  K: number;
  a: bigint;
  b: bigint;
  d: bigint;
}

/** Problems that share types and form: `transA` (A stored K×M) and `accumulate` (beta 1: D += ...). */
export interface ProblemSet extends MatmulForm {
  problems: Problem[];
}

const at = (base: bigint, elems: number, bytes: number) => base + BigInt(elems * bytes);

/** segment_dot: Y[rows of s] = X[rows of s] · W[g]; X [bt, R, K], W [groups, K, N], Y [bt, R, N] from each entry's `start`. */
export function dotProblems(segs: Segment[], o: { R: number; K: number; N: number; x: bigint; w: bigint; y: bigint; eb: number; ebo: number }): Problem[] {
  if (o.K === 0 || o.N === 0) return [];
  return segs.map((s) => ({
    M: s.m, N: o.N, K: o.K,
    a: at(o.x, (s.t * o.R + s.row) * o.K, o.eb), b: at(o.w, s.g * o.K * o.N, o.eb), d: at(o.y, (s.t * o.R + s.row - s.start) * o.N, o.ebo),
  }));
}

/** segment_wgrad: acc[g] += X[rows of s]ᵀ · G[rows of s]; X [bt, R, K], G [bt, R, N], acc [groups, K, N] in f32. */
export function wgradProblems(segs: Segment[], o: { R: number; K: number; N: number; x: bigint; gy: bigint; acc: bigint; eb: number }): Problem[] {
  if (o.K === 0 || o.N === 0) return [];
  return segs.map((s) => ({
    M: o.K, N: o.N, K: s.m,
    a: at(o.x, (s.t * o.R + s.row) * o.K, o.eb), b: at(o.gy, (s.t * o.R + s.row) * o.N, o.eb), d: at(o.acc, s.g * o.K * o.N, 4),
  }));
}

/** Runs of consecutive problems with distinct outputs: the grouped GEMM's outputs must not overlap
 * (a problem's D is either another's exactly or disjoint from it, so comparing pointers suffices). */
export function nonOverlapping(ps: Problem[]): Problem[][] {
  const runs: Problem[][] = [];
  let seen = new Set<bigint>(), run: Problem[] = [];
  for (const p of ps) {
    if (seen.has(p.d)) runs.push(run), (run = []), (seen = new Set());
    seen.add(p.d);
    run.push(p);
  }
  if (run.length) runs.push(run);
  return runs;
}

/** cublasGroupedGemm's arrays for row-major problems: the column-major product Dᵀ = Bᵀ op(A)ᵀ, as matmulRowMajor. */
export function groupedArgs(ps: Problem[], transA: boolean): { dims: Int32Array; ptrs: BigUint64Array } {
  const G = ps.length, dims = new Int32Array(6 * G), ptrs = new BigUint64Array(3 * G);
  ps.forEach((p, i) => {
    dims[i] = p.N;
    dims[G + i] = p.M;
    dims[2 * G + i] = p.K;
    dims[3 * G + i] = p.N; // lda: B's row
    dims[4 * G + i] = transA ? p.M : p.K; // ldb: A's row
    dims[5 * G + i] = p.N; // ldc: D's row
    ptrs[i] = p.b;
    ptrs[G + i] = p.a;
    ptrs[2 * G + i] = p.d;
  });
  return { dims, ptrs };
}

/** Why the grouped GEMM cannot run the set, or undefined when it can. */
export function groupedRefusal(set: ProblemSet): string | undefined {
  if (set.dtype !== set.outDtype) return `${set.dtype} -> ${set.outDtype} (the grouped GEMM writes its inputs' type)`;
  // its shapes are 32-bit ints (the 64-bit variant is not worth a second entry point for MoE shapes)
  if (set.problems.some((p) => Math.max(p.M, p.N, p.K) > 0x7fffffff)) return "a dimension past 2^31 - 1";
  // 16-bit operands want 16-byte aligned pointers (cuBLAS: else misaligned accesses); f32 has no such rule
  if (set.dtype === "bf16" && set.problems.some((p) => ((p.a | p.b | p.d) & 15n) !== 0n)) return "bf16 pointers not 16-byte aligned";
  return undefined;
}

const hasCublas = new WeakMap<NativeAddon, boolean>();
let warned = false;

/** Whether this addon can load libcublas with its grouped GEMM; says once per process when not. */
export function groupedAvailable(addon: NativeAddon): boolean {
  let ok = hasCublas.get(addon);
  if (ok === undefined) {
    const p = addon.probe("cublas");
    ok = p.ok;
    hasCublas.set(addon, ok);
    if (!ok && !warned) {
      warned = true;
      console.warn(`shardts: segment contractions run one cuBLASLt call per (batch entry, expert), not one grouped GEMM: ${(p.reason ?? "libcublas not loaded").split("\n")[0]} (set SHARDTS_CUBLAS to libcublas.so.13 or .12, 12.5 or newer)`);
    }
  }
  return ok;
}

/** How a set runs: `grouped` (one grouped cuBLAS call where it can, else `lanes`), `lanes` (one cuBLASLt
 * call per problem, fanned out over side streams), `loop` (one cuBLASLt call per problem on the stream),
 * `wgmma` (bf16 segment_dot on the generated grouped wgmma kernel, bf16-segment.ts; what it refuses,
 * and every set that reaches runProblems, as the default). Default: `lanes` for bf16 operands, `grouped` for f32;
 * bf16 segment_dot goes to the wgmma kernel first unless the variable names another mode (segmentDotOnWgmma). */
export type SegmentMode = "grouped" | "lanes" | "loop" | "wgmma";

/** The mode of a set when none is given (or wgmma's fallback). */
const defaultMode = (dtype: "f32" | "bf16"): SegmentMode =>
  // bf16: the fanned-out cuBLASLt calls beat the grouped call on the EP MoE layer (H200x2, ep=2:
  // segment_dot 6.85 against 8.39 ms, step 18.3 against 21.7 ms; bench/results/2026-11-23-*);
  // f32 keeps the grouped call (not measured against the lanes)
  dtype === "bf16" ? "lanes" : "grouped";

/**
 * Whether bf16 segment_dot tries the generated grouped wgmma kernel first (bf16-segment.ts; what it refuses
 * takes runProblems): by default, and with SHARDTS_SEGMENT_GEMM=wgmma. On the EP MoE layer (2x H200, ep=2)
 * it ran segment_dot in 3.94 ms against the lanes' 5.24 ms, step 12.71 against 14.35 ms
 * (bench/results/2026-11-23-moe-layer-ep-h200x2.txt, run 8). Another SHARDTS_SEGMENT_GEMM value keeps cuBLAS.
 */
export function segmentDotOnWgmma(v: string | undefined, dtype: "f32" | "bf16"): boolean {
  return v === undefined || v === "" ? dtype === "bf16" : segmentModeFromEnv(v, dtype) === "wgmma";
}

export function segmentModeFromEnv(v: string | undefined, dtype: "f32" | "bf16" = "f32"): SegmentMode {
  if (v === undefined || v === "") return defaultMode(dtype);
  if (v === "grouped" || v === "lanes" || v === "loop" || v === "wgmma") return v;
  throw new RangeError(`SHARDTS_SEGMENT_GEMM=${v}: give grouped, lanes, loop or wgmma (bf16 segment_dot on the generated kernel)`);
}

/** Lanes for the problems: those with the same output share one (they accumulate into it in order); outputs go round-robin. */
export function problemLanes(ps: Problem[], lanes: number): number[] {
  const of = new Map<bigint, number>();
  return ps.map((p) => of.get(p.d) ?? of.set(p.d, of.size % lanes).get(p.d)!);
}

/** Runs the set on `stream` (the work after it on `stream` sees it done), as `mode` says (default SHARDTS_SEGMENT_GEMM). */
export function runProblems(addon: NativeAddon, set: ProblemSet, stream: Stream, given: SegmentMode = segmentModeFromEnv(process.env.SHARDTS_SEGMENT_GEMM, set.dtype)): void {
  if (!set.problems.length) return;
  // wgmma is taken (or refused) before the problems are built: what reaches here runs as by default
  const mode = given === "wgmma" ? defaultMode(set.dtype) : given;
  if (mode === "grouped" && groupedRefusal(set) === undefined && groupedAvailable(addon)) {
    for (const run of nonOverlapping(set.problems)) {
      const { dims, ptrs } = groupedArgs(run, set.transA);
      addon.cublasGroupedGemm(set.dtype, false, set.transA, dims, ptrs, set.accumulate ? 1 : 0, stream);
    }
    return;
  }
  const plans = matmulPlans(addon), ps = set.problems;
  if (mode === "loop" || ps.length === 1) {
    for (const p of ps) plans.run(set, p.M, p.N, p.K, 1, p.a, p.b, p.d, stream);
    return;
  }
  const side = segmentLanes(addon), lane = problemLanes(ps, side.lanes);
  side.fan(stream, ps.length, (i) => lane[i]!, (i, s) => plans.run(set, ps[i]!.M, ps[i]!.N, ps[i]!.K, 1, ps[i]!.a, ps[i]!.b, ps[i]!.d, s));
}
