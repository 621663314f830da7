// The padded group-major layout the grouped FP8 GEMM kernels (compiler/codegen/cuda/gemm/, grouped: true)
// read for the FP8 segment ops (fp8-segment.ts): the rank's segments laid out group after group, each
// padded with zero rows to a multiple of GROUPED_M_ALIGN (128) so every 128-row block belongs to one
// expert (blockExpert), and the gathers that move rows into that layout and back. (bf16 segment_dot
// reads its rows where they are, by row runs: bf16-segment.ts.)
import { GROUPED_M_ALIGN } from "../../compiler/numeric/fp8-gemm.ts";
import { empty, upload, type DeviceTensor } from "./memory.ts";
import { launchRowGather } from "./row-gather.ts";
import type { CudaExecutor } from "./executor.ts";

/** One segment: `m` rows from `row` of batch entry `t` for local group `g`, its output rows from `out`. */
export interface SegmentRun {
  t: number;
  g: number;
  row: number;
  m: number;
  out: number;
}

/** paddedLayout's result. */
export interface PaddedLayout {
  rowMap: Int32Array;
  blockGroup: Int32Array;
  range: [number, number][];
  outMap: Int32Array;
}

/**
 * The padded group-major layout of the rank's segments: for each padded row the flat source row
 * (t·R + row) or -1, each 128-row block's group, each group's padded row range, and for each flat
 * output row (t·Rout + out) its padded row or -1. Typed arrays filled in place (tens of thousands of
 * routed rows a call: growing plain arrays cost milliseconds of host time per segment op).
 */
export function paddedLayout(runs: readonly SegmentRun[], nGroups: number, bt: number, R: number, Rout: number): PaddedLayout {
  const byGroup: SegmentRun[][] = Array.from({ length: nGroups }, () => []);
  let M = 0;
  for (const s of runs) {
    if (s.m === 0 || !(s.g >= 0 && s.g < nGroups)) continue;
    byGroup[s.g]!.push(s);
    M += Math.ceil(s.m / GROUPED_M_ALIGN) * GROUPED_M_ALIGN;
  }
  const rowMap = new Int32Array(M).fill(-1), blockGroup = new Int32Array(M / GROUPED_M_ALIGN), range: [number, number][] = [];
  const outMap = new Int32Array(bt * Rout).fill(-1);
  let p = 0;
  byGroup.forEach((segs, g) => {
    const p0 = p;
    for (const s of segs) {
      const src = s.t * R + s.row, out = s.t * Rout + s.out;
      for (let i = 0; i < s.m; i++) rowMap[p + i] = src + i;
      if (Rout > 0) for (let i = 0; i < s.m; i++) outMap[out + i] = p + i;
      const rows = Math.ceil(s.m / GROUPED_M_ALIGN) * GROUPED_M_ALIGN;
      blockGroup.fill(g, p / GROUPED_M_ALIGN, (p + rows) / GROUPED_M_ALIGN);
      p += rows;
    }
    range.push([p0, p]);
  });
  return { rowMap, blockGroup, range, outMap };
}

/**
 * paddedLayout once per run and arguments: the layer's segment ops (three to nine a step) read the
 * same counts piece (CudaExecutor.hostPiece gives one host object per run), so they share its layout.
 */
export function paddedLayoutOf(counts: object, key: readonly number[], make: () => PaddedLayout): PaddedLayout {
  let byKey = layouts.get(counts);
  if (!byKey) layouts.set(counts, (byKey = new Map()));
  const k = key.join(",");
  let lay = byKey.get(k);
  if (!lay) byKey.set(k, (lay = make()));
  return lay;
}
const layouts = new WeakMap<object, Map<string, PaddedLayout>>();

/** out[j, :] = x[idx[j], :] (0 where idx is -1) on a [rows, width] view of `dtype` (row-gather.ts: a warp per row, words up to 16 bytes). */
export function gatherRows(ex: CudaExecutor, x: DeviceTensor, rows: number, width: number, dtype: "i32" | "f32" | "bf16", idx: DeviceTensor, n: number): DeviceTensor {
  const out = empty(ex.mem, dtype, [n, width]);
  const bad = ex.badFlag();
  launchRowGather(ex, { out, x, idx, dtype, B: 1, J: n, R: width, rows, off: 0, global: rows, bad });
  ex.checkIndices(bad, "scaled_segment (padded layout)", "rows", rows);
  return out;
}

/** An int32 host array on the device. */
export const i32 = (ex: CudaExecutor, data: Int32Array) => upload(ex.addon, ex.mem, { dtype: "i32", shape: [data.length], data }, ex.stream);
