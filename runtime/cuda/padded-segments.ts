// The padded group-major layout the grouped GEMM kernels (compiler/codegen/cuda/gemm/, grouped: true)
// read, shared by the FP8 segment ops (fp8-segment.ts) and bf16 segment_dot on the wgmma kernel
// (bf16-segment.ts): the rank's segments laid out group after group, each padded with zero rows to a
// multiple of GROUPED_M_ALIGN (128) so every 128-row block belongs to one expert (blockExpert), and
// the gathers that move rows into that layout and back.
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

/**
 * The padded group-major layout of the rank's segments: for each padded row the flat source row
 * (t·R + row) or -1, each 128-row block's group, each group's padded row range, and for each flat
 * output row (t·Rout + out) its padded row or -1.
 */
export function paddedLayout(runs: readonly SegmentRun[], nGroups: number, bt: number, R: number, Rout: number) {
  const src: number[] = [], blockGroup: number[] = [], range: [number, number][] = [];
  const outMap = new Int32Array(bt * Rout).fill(-1);
  for (let g = 0; g < nGroups; g++) {
    const p0 = src.length;
    for (const s of runs) {
      if (s.g !== g || s.m === 0) continue;
      const rows = Math.ceil(s.m / GROUPED_M_ALIGN) * GROUPED_M_ALIGN;
      for (let i = 0; i < rows; i++) {
        if (i < s.m) outMap[s.t * Rout + s.out + i] = src.length;
        src.push(i < s.m ? s.t * R + s.row + i : -1);
      }
      for (let b = 0; b < rows / GROUPED_M_ALIGN; b++) blockGroup.push(g);
    }
    range.push([p0, src.length]);
  }
  return { rowMap: Int32Array.from(src), blockGroup: Int32Array.from(blockGroup), range, outMap };
}

/** out[j, :] = x[idx[j], :] (0 where idx is -1): the gather kernel on a [rows, width] view of `dtype`. */
export function gatherRows(ex: CudaExecutor, x: DeviceTensor, rows: number, width: number, dtype: "i32" | "f32" | "bf16", idx: DeviceTensor, n: number): DeviceTensor {
  const out = empty(ex.mem, dtype, [n, width]);
  const bad = ex.badFlag();
  launchRowGather(ex, { out, x, idx, dtype, B: 1, J: n, R: width, rows, off: 0, global: rows, bad });
  ex.checkIndices(bad, "scaled_segment (padded layout)", "rows", rows);
  return out;
}

/** An int32 host array on the device. */
export const i32 = (ex: CudaExecutor, data: Int32Array) => upload(ex.addon, ex.mem, { dtype: "i32", shape: [data.length], data }, ex.stream);
