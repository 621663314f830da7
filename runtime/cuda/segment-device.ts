// The bf16 segment contractions on device-side counts (CudaExecutor.segmentCountsOnDevice,
// SHARDTS_SEGMENT_COUNTS=device): nothing is read back to the host, so a MoE step can be captured in a
// CUDA graph. Buffers are sized by the routing's upper bound; one plan kernel (kernels/segment-sources.ts)
// turns the counts into the layout the generated GEMM reads, on the stream:
// - segment_dot: the weights read MN-major where they are [groups, k, ...nOut] (bf16-segment.ts
//   segmentWeightsLayout), the row-run table of bf16-segment.ts, with capacity for any counts (rowRunCapacity),
//   blocks past the segments' marked expert -1 (the grouped kernel's producer and consumer skip them);
//   the plan kernel also zeroes Y's rows no segment covers (which they are is known only on the device):
//   none when the segments fill Y, never more than the host path's memset of all of Y.
// - segment_wgrad: the K-grouped GEMM (config.ts kGrouped) over each expert's rows as one run of columns
//   (all entries' segments of the expert together, padded to 64; columnCapacity), its A = Xᵀ and B = Gᵀ
//   made by the transposing gather from the plan's column map, D = dW written once in bf16 (the host
//   path accumulates in f32 and casts).
// What the kernels refuse (deviceSegmentRefusal: types, architecture, sizes) returns undefined before
// anything is launched, and the caller reads the counts on the host as before. Where it runs, it
// overrides SHARDTS_SEGMENT_GEMM: the cuBLAS modes size their GEMMs from host counts.
import type { TensorType } from "../../compiler/ir/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import { numel } from "../../compiler/ir/types.ts";
import { defaultKGroupedConfig, kGroupedProblem, shapeProblem } from "../../compiler/codegen/cuda/gemm/config.ts";
import { GROUPED_M_ALIGN } from "../../compiler/numeric/fp8-gemm.ts";
import { empty, type DeviceTensor } from "./memory.ts";
import { fp8GemmOf } from "./fp8-gemm.ts";
import { segmentPlacement } from "./segment-gemm.ts";
import { segmentWeightsLayout, wgmmaSegmentConfig } from "./bf16-segment.ts";
import { SEGMENT_COLUMN_BLOCK, SEGMENT_GATHER_BLOCK, SEGMENT_PLAN_BLOCK, SEGMENT_PLAN_SMEM_INTS, segmentColumnsPlan, segmentGatherT, segmentPlanInts, segmentRunsPlan } from "./kernels/segment-sources.ts";
import { keepShared, laterSharers, takeShared, type SharedEntry } from "./shared-operands.ts";
import type { CudaExecutor } from "./executor.ts";

/**
 * SHARDTS_SEGMENT_COUNTS: `device` (the default) plans the bf16 segment contractions on the device where
 * deviceSegmentRefusal allows (elsewhere the counts are read back); `host` always reads the counts back.
 * Device counts were faster on the one-GPU MoE training step (H200: 15.04 against 16.69 ms eager;
 * bench/results/2026-11-23-moe-graph-h200.txt) and are what a captured step needs.
 */
export function segmentCountsFromEnv(v: string | undefined): boolean {
  if (v === undefined || v === "" || v === "device") return true;
  if (v === "host") return false;
  throw new RangeError(`SHARDTS_SEGMENT_COUNTS=${v}: give device (planned on the device, capturable: bf16 segment_dot / segment_wgrad on sm_90a; the default) or host (counts read back to size the GEMMs)`);
}

/**
 * The 128-row blocks the row-run table holds for any counts. With S = bt·R rows, an entry's segments do
 * not overlap, so they hold S rows at most, in at most min(bt·E, S) non-empty segments:
 * Σ ceil(m / 128) ≤ Σ (m + 127) / 128 ≤ (S + 127·min(bt·E, S)) / 128 (never more than ceil(S/128) + bt·E - 1).
 */
export function rowRunCapacity(bt: number, R: number, E: number): number {
  const S = bt * R;
  return Math.floor((S + (GROUPED_M_ALIGN - 1) * Math.min(bt * E, S)) / GROUPED_M_ALIGN);
}

/**
 * The columns (P) segment_wgrad's Xᵀ and Gᵀ hold for any counts: each expert's rows padded to a multiple of
 * 64, as above at most (S + 63·min(E, S)) / 64 blocks; at least one (the K-grouped GEMM wants P > 0).
 */
export function columnCapacity(bt: number, R: number, E: number): number {
  const S = bt * R, C = SEGMENT_COLUMN_BLOCK;
  return C * Math.max(1, Math.floor((S + (C - 1) * Math.min(E, S)) / C));
}

/** The sizes of a segment contraction on one rank: entries, rows an entry (x's, the output's), K, N, local groups. */
export interface SegmentSizes {
  bt: number;
  R: number;
  Rout: number;
  K: number;
  N: number;
  E: number;
}

/** A rank's input and output shapes, as the plan's values hold them. */
export interface LocalShapes {
  inShapes: readonly (readonly number[])[];
  outShape: readonly number[];
}

/** The size of dim `name` of input `i` (-1: the output): this rank's where `local` is given, else the type's global size. */
export const dimSizeOf = (inTypes: readonly TensorType[], outType: TensorType, local?: LocalShapes) => (i: number, name: string): number => {
  const t = i < 0 ? outType : inTypes[i]!, at = t.dims.findIndex((d) => d.name === name);
  return (local ? (i < 0 ? local.outShape : local.inShapes[i]!)[at] : t.dims[at]!.size)!;
};

function sizesOf(op: string, inTypes: readonly TensorType[], outType: TensorType, local?: LocalShapes): SegmentSizes {
  const [tx, t1, tc] = inTypes as [TensorType, TensorType, TensorType];
  const size = dimSizeOf(inTypes, outType, local);
  const prod = (i: number, names: string[]) => names.reduce((p, n) => p * size(i, n), 1);
  const rows = tx.dims.find((d) => d.segmented)!, groups = rows.segmented!.groups;
  const batch = tc.dims.map((d) => d.name).filter((n) => n !== groups);
  const bt = prod(2, batch), R = size(0, rows.name);
  if (op === "segment_dot") {
    const k = t1Contract(tx, t1, groups);
    const n = t1.dims.map((d) => d.name).filter((d) => d !== groups && d !== k);
    return { bt, R, Rout: size(-1, rows.name), K: size(0, k), N: prod(1, n), E: size(1, groups) };
  }
  // segment_wgrad: out [groups, k, n]
  return { bt, R, Rout: R, K: size(0, outType.dims[1]!.name), N: size(1, outType.dims[2]!.name), E: size(-1, outType.dims[0]!.name) };
}

/**
 * Why `op` cannot run on device-side counts, or undefined when it can: from the types alone (their
 * global sizes), or with `local` (this rank's input and output shapes, as the plan's values hold them)
 * from the sizes a rank runs, as segmentContract checks before it launches anything. A rank whose
 * sizes it refuses reads its counts on the host, so a caller deciding on capture should pass each
 * rank's shapes.
 */
export function deviceSegmentRefusal(op: string, inTypes: readonly TensorType[], outType: TensorType, arch: string, local?: LocalShapes): string | undefined {
  return refusal(op, inTypes, outType, arch, () => sizesOf(op, inTypes, outType, local));
}

/** deviceSegmentRefusal over this rank's sizes, made only past the type and architecture checks (they need the op's operands as segment_dot / segment_wgrad have them). */
function refusal(op: string, inTypes: readonly TensorType[], outType: TensorType, arch: string, sizes: () => SegmentSizes): string | undefined {
  if (op !== "segment_dot" && op !== "segment_wgrad") return `${op} is not a bf16 segment contraction (device-side counts: segment_dot and segment_wgrad here, the FP8 ops in fp8-segment-device.ts)`;
  const [tx, t1] = inTypes as [TensorType, TensorType];
  if (tx.dtype !== "bf16" || t1.dtype !== "bf16" || outType.dtype !== "bf16") return `${tx.dtype}, ${t1.dtype} -> ${outType.dtype} (device-side counts run bf16 to bf16 only, on the generated kernels)`;
  if (arch !== "sm_90a") return `${arch} (the generated kernels need Hopper, sm_90a)`;
  const s = sizes();
  if (segmentPlanInts(s.bt, s.E) > SEGMENT_PLAN_SMEM_INTS) return `${s.bt} entries x ${s.E} groups: the plan's tables outgrow a block's shared memory (${SEGMENT_PLAN_SMEM_INTS} int32)`;
  if (s.bt * Math.max(s.R, s.Rout) >= 2 ** 31) return `${s.bt} x ${Math.max(s.R, s.Rout)} rows overflow the plan's 32-bit row indices`;
  if (op === "segment_dot") return shapeProblem({ M: GROUPED_M_ALIGN * Math.max(1, rowRunCapacity(s.bt, s.R, s.E)), N: s.N, K: s.K });
  if (s.K % 8 !== 0 || s.N % 8 !== 0) return `K = ${s.K}, N = ${s.N}: the transposing gather moves rows of 16-byte words (multiples of 8)`;
  return kGroupedProblem({ M: s.K, N: s.N, K: columnCapacity(s.bt, s.R, s.E), experts: s.E });
}

/**
 * The runs table (kernels/segment-sources.ts segmentRunsPlan) into `runs` ([cap][4] int32) and, with `y`,
 * the zeros of Y ([bt][Rout][N] bf16, N a multiple of 8, 16-byte aligned) outside the segments, on the
 * stream; without `y` (a weight gradient: no rows to write) the table alone. The grid takes 64 KiB of the
 * largest write (Y's zeros, when nothing is covered) a block, at most two blocks an SM.
 */
export function launchSegmentRuns(ex: CudaExecutor, o: { counts: DeviceTensor; bt: number; gC: number; first: number; E: number; packed: boolean; R: number; runs: DeviceTensor; cap: number; y?: { t: DeviceTensor; Rout: number; N: number } }): void {
  const Rout = o.y?.Rout ?? 0, N = o.y?.N ?? 0;
  const bytes = Math.max(16 * o.cap, 2 * o.bt * Rout * N);
  const k = segmentRunsPlan(), grid = Math.max(1, Math.min(2 * ex.smCount, Math.ceil(bytes / 65536)));
  ex.launchGrid(k, grid, SEGMENT_PLAN_BLOCK, [["ptr", o.counts.ptr], ["i32", o.bt], ["i32", o.gC], ["i32", o.first], ["i32", o.E], ["i32", o.packed ? 1 : 0], ["i32", o.R], ["i32", Rout], ["ptr", o.runs.ptr], ["i32", o.cap], ["ptr", o.y?.t.ptr ?? 0n], ["i64", N / 8]]);
}

/** The column layout (segmentColumnsPlan) into `blockExpert` ([E + 1][2] int32) and `colmap` ([P] int32), on the stream. */
export function launchSegmentColumns(ex: CudaExecutor, o: { counts: DeviceTensor; bt: number; gC: number; first: number; E: number; packed: boolean; R: number; blockExpert: DeviceTensor; colmap: DeviceTensor; P: number }): void {
  const k = segmentColumnsPlan(), grid = Math.max(1, Math.min(ex.smCount, Math.ceil(o.P / (16 * SEGMENT_PLAN_BLOCK))));
  ex.launchGrid(k, grid, SEGMENT_PLAN_BLOCK, [["ptr", o.counts.ptr], ["i32", o.bt], ["i32", o.gC], ["i32", o.first], ["i32", o.E], ["i32", o.packed ? 1 : 0], ["i32", o.R], ["ptr", o.blockExpert.ptr], ["ptr", o.colmap.ptr]]);
}

/** out [K][P] bf16 = x [rows][K] gathered by colmap and transposed (segmentGatherT), over the used blocks `used` points at. */
export function launchGatherT(ex: CudaExecutor, o: { out: DeviceTensor; x: DeviceTensor; colmap: DeviceTensor; used: bigint; K: number; P: number }): void {
  const k = segmentGatherT(), tiles = (o.P / SEGMENT_COLUMN_BLOCK) * Math.ceil(o.K / SEGMENT_COLUMN_BLOCK);
  const grid = Math.max(1, Math.min(tiles, ex.smCount * 8));
  ex.launchGrid(k, grid, SEGMENT_GATHER_BLOCK, [["ptr", o.out.ptr], ["ptr", o.x.ptr], ["ptr", o.colmap.ptr], ["ptr", o.used], ["i64", o.K], ["i64", o.P]]);
}

/**
 * segment_dot / segment_wgrad on device-side counts, in the output's dims order (as segmentContract
 * returns it), or undefined, with nothing launched, where deviceSegmentRefusal refuses this rank's sizes.
 */
export function deviceSegmentContract(ex: CudaExecutor, op: string, plan: Plan, ins: Extract<Plan["instrs"][number], { kind: "op" }>, r: number, x: DeviceTensor[], tIn: TensorType[], to: TensorType, shape: number[]): DeviceTensor | undefined {
  const g = fp8GemmOf(ex);
  // (segmentContract calls this for segment_dot and segment_wgrad only, whose operands sizesOf reads)
  const s = sizesOf(op, tIn, to, { inShapes: x.map((t) => t.shape), outShape: shape });
  if (refusal(op, tIn, to, g.arch, () => s) !== undefined) return undefined;
  const [tx, tw, tc] = tIn as [TensorType, TensorType, TensorType];
  const nm = (t: TensorType) => t.dims.map((d) => d.name);
  const { rows, groups, batch, packed, first } = segmentPlacement(op, plan, ins, r, tIn);
  const gC = x[2]!.shape[tc.dims.findIndex((d) => d.name === groups)]!;
  const owned: DeviceTensor[] = [];
  const mine = (t: DeviceTensor, of: DeviceTensor) => (t !== of && owned.push(t), t);
  const counts = () => mine(ex.part("counts layout", () => ex.reorder(x[2]!, nm(tc), [...batch, groups])), x[2]!);
  if (op === "segment_wgrad") {
    // dW[e] = Xᵀ G over e's rows: the K-grouped GEMM on Xᵀ [K][P] and Gᵀ [N][P], each expert's rows a run of P
    const [k, n] = [to.dims[1]!.name, to.dims[2]!.name], tg = tIn[1]!, P = columnCapacity(s.bt, s.R, s.E);
    const G = mine(ex.part("gradient rows layout", () => ex.reorder(x[1]!, nm(tg), [...batch, rows.name, n])), x[1]!);
    // Xᵀ and its column plan: an earlier segment_wgrad on the same rows and counts may have left them
    // (a SwiGLU's gate and up weights take their gradients from the same rows: transposed once)
    const key = `segment_wgrad:${ins.inputs[0]}:${ins.inputs[2]}:${r}:${k}`, from = [x[0]!, x[2]!];
    let cols = takeShared<Columns>(ex, key, from);
    if (!cols) {
      const C = counts();
      const X = mine(ex.part("rows layout", () => ex.reorder(x[0]!, nm(tx), [...batch, rows.name, k])), x[0]!);
      const be = empty(ex.mem, "i32", [s.E + 1, 2]), colmap = empty(ex.mem, "i32", [P]), XT = empty(ex.mem, "bf16", [s.K, P]);
      ex.part("segment plan (device)", () => launchSegmentColumns(ex, { counts: C, bt: s.bt, gC, first, E: s.E, packed, R: s.R, blockExpert: be, colmap, P }));
      ex.part("rows transposed", () => launchGatherT(ex, { out: XT, x: X, colmap, used: usedBlocks(be, s.E), K: s.K, P }));
      cols = { from, made: [be, colmap, XT], be, colmap, XT };
    }
    if (laterSharers(plan, "segment_wgrad", sameRowsKey).has(ins)) keepShared(ex, key, cols);
    else owned.push(...cols.made);
    const { be, colmap, XT } = cols;
    const GT = empty(ex.mem, "bf16", [s.N, P]);
    owned.push(GT);
    ex.part("rows transposed", () => launchGatherT(ex, { out: GT, x: G, colmap, used: usedBlocks(be, s.E), K: s.N, P }));
    const D = empty(ex.mem, "bf16", [s.E, s.K, s.N]);
    ex.part("K-grouped GEMM", () => g.prepare(defaultKGroupedConfig(s.N), { M: s.K, N: s.N, K: P, experts: s.E }, { a: XT.ptr, b: GT.ptr, sa: 0n, sb: 0n, d: D.ptr, blockExpert: be.ptr })());
    for (const t of owned) ex.release(t);
    // D [E][K][N] is the output in its dims order, [groups, k, n] (segment_wgrad's shape rule)
    return D;
  }
  const k = t1Contract(tx, tw, groups), nOut = nm(tw).filter((n) => n !== k && n !== groups);
  const order = [...batch, rows.name, ...nOut], outShape = order.map((d) => shape[to.dims.findIndex((e) => e.name === d)]!);
  const Y = empty(ex.mem, "bf16", outShape);
  const cap = rowRunCapacity(s.bt, s.R, s.E);
  if (cap === 0 || s.bt * s.Rout === 0) {
    // no rows to plan (R = 0): Y is zeros
    if (numel(outShape)) ex.addon.memsetD8(Y.ptr, 0, numel(outShape) * 2, ex.stream);
  } else {
    const C = counts();
    const X = mine(ex.part("rows layout", () => ex.reorder(x[0]!, nm(tx), [...batch, rows.name, k])), x[0]!);
    // the weights as they are where [groups, k, ...nOut] (MN-major B), else K-major [groups, ...nOut, k]
    const b = segmentWeightsLayout(nm(tw), groups, k, nOut);
    const W = b.bMnMajor ? x[1]! : mine(ex.part("weights K-major", () => ex.reorder(x[1]!, nm(tw), b.order)), x[1]!);
    const runs = empty(ex.mem, "i32", [cap, 4]);
    owned.push(runs);
    ex.part("segment plan (device)", () => launchSegmentRuns(ex, { counts: C, bt: s.bt, gC, first, E: s.E, packed, R: s.R, runs, cap, y: { t: Y, Rout: s.Rout, N: s.N } }));
    const problem = { M: GROUPED_M_ALIGN * cap, N: s.N, K: s.K, experts: s.E, rowsA: s.bt * s.R, rowsD: s.bt * s.Rout };
    ex.part("grouped GEMM", () => g.prepare(wgmmaSegmentConfig(s.N, b.bMnMajor), problem, { a: X.ptr, b: W.ptr, sa: 0n, sb: 0n, d: Y.ptr, blockExpert: runs.ptr })());
  }
  for (const t of owned) ex.release(t);
  return ex.part("output layout", () => ex.reorderOwned(Y, order, nm(to)));
}

/** segment_wgrad's transposed rows (Xᵀ) and their column plan, shared with a later segment_wgrad on the same rows (shared-operands.ts). */
interface Columns extends SharedEntry { be: DeviceTensor; colmap: DeviceTensor; XT: DeviceTensor }

/** segment_wgrad's key for sharing its Xᵀ: the rows, the counts and the contracted dim (a SwiGLU's gate and up weights take their gradients from the same rows). */
const sameRowsKey = (o: Extract<Plan["instrs"][number], { kind: "op" }>): string => `${o.inputs[0]}:${o.inputs[2]}:${String(o.attrs.k)}`;

/** Where the column plan wrote the 64-column blocks used (blockExpert[E][0]): the gathers stop there, past it no one reads. */
const usedBlocks = (be: DeviceTensor, E: number): bigint => be.ptr + BigInt(8 * E);

/** segment_dot's contracted dim: the one w shares with x besides the groups. */
const t1Contract = (tx: TensorType, tw: TensorType, groups: string): string => tw.dims.find((d) => d.name !== groups && tx.dims.some((e) => e.name === d.name))!.name;
