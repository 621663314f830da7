// Row gathers on the device: out[b, j, :] = x[b, idx[b, j] - off, :] (zeros for index -1 or rows held
// on another rank), the bad-index flag set for an index outside [0, global). Rows of at least
// MIN_RUN_BYTES move a warp per row in the widest word that divides them (kernels/move-sources.ts);
// narrower rows keep the per-element kernel (kernels/sources.ts).
import type { DType } from "../../compiler/ir/types.ts";
import * as K from "./kernels/sources.ts";
import { rowGather } from "./kernels/move-sources.ts";
import { MIN_RUN_BYTES } from "./copy-plan.ts";
import { gatherWord } from "./kernels/moe-sources.ts";
import type { DeviceTensor } from "./memory.ts";
import type { CudaExecutor } from "./executor.ts";

export interface RowGather {
  out: DeviceTensor;
  x: DeviceTensor;
  /** [B, J] int32 row indices into x's `global` rows, -1 for a zero row. */
  idx: DeviceTensor;
  /** The element type moved (the bytes are moved as they are). */
  dtype: DType;
  B: number;
  J: number;
  /** Elements per row. */
  R: number;
  /** Rows of x held here, the first being global row `off`. */
  rows: number;
  off: number;
  global: number;
  bad: DeviceTensor;
}

export function launchRowGather(ex: CudaExecutor, g: RowGather): void {
  const n = g.B * g.J, rowBytes = g.R * K.elemBytes(g.dtype);
  if (n === 0 || g.R === 0) return;
  if (rowBytes < MIN_RUN_BYTES) {
    ex.launch1D(K.gather(g.dtype), n * g.R, [["ptr", g.out.ptr], ["ptr", g.x.ptr], ["ptr", g.idx.ptr], ["i64", g.B], ["i64", g.J], ["i64", g.R], ["i64", g.rows], ["i64", g.off], ["i64", g.global], ["ptr", g.bad.ptr]]);
    return;
  }
  const w = gatherWord(rowBytes, [g.out.ptr, g.x.ptr]), k = rowGather(w), block = 256;
  const grid = Math.min(Math.ceil((n * 32) / block), ex.smCount * 8);
  ex.launchGrid(k, grid, block, [["ptr", g.out.ptr], ["ptr", g.x.ptr], ["ptr", g.idx.ptr], ["i64", g.B], ["i64", g.J], ["i64", rowBytes / w], ["i64", g.rows], ["i64", g.off], ["i64", g.global], ["ptr", g.bad.ptr]]);
}
