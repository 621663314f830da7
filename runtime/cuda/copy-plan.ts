// Which kernel moves a strided copy (a pure function of the geometry and the pointers' alignment):
// - "runs" when the innermost dim (after dropping size-1 dims and merging dims contiguous on both
//   sides) is contiguous in the input and the output: the widest word (16 bytes down to 1) that
//   divides the run's bytes, both pointers and every outer stride; a warp per chunk of a run;
// - "transpose" when the output's innermost dim is strided in the input and another dim is the
//   input's contiguous one: 32 x 32 tiles through shared memory, the other dims as a batch; 1- and
//   2-byte elements 4 bytes a lane (64 x 64 / 128 x 128 tiles) where the sizes and strides allow;
// - "elements" otherwise (the per-element kernel of kernels/sources.ts).
// The run and transpose kernels are kernels/move-sources.ts.
import { ELEMENT_BYTES, WORDS, type Word } from "./kernels/move-sources.ts";
import { MAX_DIMS } from "./kernels/sources.ts";

export interface MoveGeo {
  shape: number[];
  istride: number[];
  ostride: number[];
}

/** Words per warp work item of a run copy: long runs are split so one run does not sit on one warp. */
export const RUN_CHUNK = 1024;
/** Runs shorter than this many bytes go to the per-element kernel (a warp per run would idle its lanes). */
export const MIN_RUN_BYTES = 64;
/** Transposes whose short side is below this go to the per-element kernel (mostly empty tiles). */
export const MIN_TRANSPOSE_SIDE = 8;

export type CopyPlan =
  | { kind: "runs"; word: Word; run: number; runs: number; chunks: number; outer: MoveGeo }
  /** wide: 1- or 2-byte elements moved 4 bytes a lane (kernels/move-sources.ts transposeWide). */
  | { kind: "transpose"; elem: Word; wide: boolean; P: number; L: number; lis: number; pos: number; batches: number; batch: MoveGeo }
  | { kind: "elements" };

/** The same copy with size-1 dims dropped and neighbours contiguous on both sides merged into one. */
export function simplifyGeo(shape: readonly number[], istride: readonly number[], ostride: readonly number[]): MoveGeo {
  const g: MoveGeo = { shape: [], istride: [], ostride: [] };
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const k = g.shape.length - 1;
    if (k >= 0 && g.istride[k] === istride[d]! * shape[d]! && g.ostride[k] === ostride[d]! * shape[d]!) {
      g.shape[k]! *= shape[d]!;
      g.istride[k] = istride[d]!;
      g.ostride[k] = ostride[d]!;
      continue;
    }
    g.shape.push(shape[d]!);
    g.istride.push(istride[d]!);
    g.ostride.push(ostride[d]!);
  }
  return g;
}

const prod = (xs: readonly number[]) => xs.reduce((a, b) => a * b, 1);
const aligned = (p: bigint, w: number) => p % BigInt(w) === 0n;

/** The kernel for copying `shape` elements of `elemBytes` bytes from src (istride) to dst (ostride), strides in elements. */
export function planCopy(elemBytes: number, dst: bigint, src: bigint, shape: readonly number[], istride: readonly number[], ostride: readonly number[]): CopyPlan {
  const g = simplifyGeo(shape, istride, ostride), nd = g.shape.length;
  if (nd === 0) return { kind: "elements" };
  const last = nd - 1;
  if (g.istride[last] === 1 && g.ostride[last] === 1 && g.shape[last]! * elemBytes >= MIN_RUN_BYTES) {
    const bytes = g.shape[last]! * elemBytes;
    const outerOk = (w: number) => g.istride.slice(0, last).every((s) => (s * elemBytes) % w === 0) && g.ostride.slice(0, last).every((s) => (s * elemBytes) % w === 0);
    const word = WORDS.find((w) => bytes % w === 0 && aligned(dst, w) && aligned(src, w) && outerOk(w))!;
    const scale = elemBytes / word;
    const outer = { shape: g.shape.slice(0, last), istride: g.istride.slice(0, last).map((s) => s * scale), ostride: g.ostride.slice(0, last).map((s) => s * scale) };
    const run = bytes / word;
    return { kind: "runs", word, run, runs: prod(outer.shape), chunks: Math.ceil(run / RUN_CHUNK), outer };
  }
  const p = g.istride.findIndex((s, d) => d !== last && s === 1);
  if (g.ostride[last] === 1 && g.istride[last] !== 1 && p >= 0 && ELEMENT_BYTES.includes(elemBytes as Word) && Math.min(g.shape[p]!, g.shape[last]!) >= MIN_TRANSPOSE_SIDE) {
    const rest = g.shape.map((_, d) => d).filter((d) => d !== p && d !== last);
    const batch = { shape: rest.map((d) => g.shape[d]!), istride: rest.map((d) => g.istride[d]!), ostride: rest.map((d) => g.ostride[d]!) };
    const P = g.shape[p]!, L = g.shape[last]!, lis = g.istride[last]!, pos = g.ostride[p]!, v = 4 / elemBytes;
    const wide = elemBytes <= 2 && aligned(dst, 4) && aligned(src, 4) && [P, L, lis, pos, ...batch.istride, ...batch.ostride].every((x) => x % v === 0);
    return { kind: "transpose", elem: elemBytes as Word, wide, P, L, lis, pos, batches: prod(batch.shape), batch };
  }
  return { kind: "elements" };
}

/** The `MoveGeo` struct as the kernels take it by value: { int nd; int shape[8]; long long istride[8], ostride[8]; } (168 bytes, 8-aligned). */
export function moveGeoBytes(g: MoveGeo): Uint8Array {
  const b = new Uint8Array(8 + 4 * MAX_DIMS + 16 * MAX_DIMS), v = new DataView(b.buffer);
  v.setInt32(0, g.shape.length, true);
  g.shape.forEach((s, i) => {
    v.setInt32(4 + 4 * i, s, true);
    v.setBigInt64(8 + 4 * MAX_DIMS + 8 * i, BigInt(g.istride[i]!), true);
    v.setBigInt64(8 + 4 * MAX_DIMS + 8 * MAX_DIMS + 8 * i, BigInt(g.ostride[i]!), true);
  });
  return b;
}
