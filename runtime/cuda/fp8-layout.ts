// Reordering FP8 codes for the FP8 GEMMs, which read both operands K-major: a move of one block of
// adjacent dims past the next ([P, X, Y] → [P, Y, X], P possibly empty) is a batched byte transpose,
// run by the tiled kernel of kernels/fp8-sources.ts at copy bandwidth; anything else (or sizes that
// are not whole 16-byte chunks) goes through the executor's general strided copy, as before.
import { numel } from "../../compiler/ir/types.ts";
import { empty, type DeviceTensor } from "./memory.ts";
import { packArgs } from "./kernel-args.ts";
import * as Q from "./kernels/fp8-sources.ts";
import type { CudaExecutor } from "./executor.ts";

/** [O, R, C] of a transpose `from` → `order` (order = P, Y, X where from = P, X, Y), or undefined. */
export function transposeForm(shape: readonly number[], from: readonly string[], order: readonly string[]): { O: number; R: number; C: number } | undefined {
  let p = 0;
  while (p < from.length && from[p] === order[p]) p++;
  const rest = from.slice(p), want = order.slice(p);
  for (let s = 1; s < rest.length; s++) {
    if (want.every((n, i) => n === [...rest.slice(s), ...rest.slice(0, s)][i])) {
      const size = (a: number, b: number) => numel(shape.slice(a, b));
      return { O: size(0, p), R: size(p, p + s), C: size(p + s, from.length) };
    }
  }
  return undefined;
}

/** `src` (1-byte elements, laid out as `from`) copied into `order`: the tiled transpose where it applies. */
export function reorderCodes(ex: CudaExecutor, src: DeviceTensor, from: string[], order: string[]): DeviceTensor {
  if (order.every((n, i) => from[i] === n)) return src;
  const f = transposeForm(src.shape, from, order);
  if (!f || src.dtype !== "fp8e4m3" || f.R % 16 !== 0 || f.C % 16 !== 0 || src.ptr % 16n !== 0n) return ex.reorder(src, from, order);
  const out = empty(ex.mem, src.dtype, order.map((n) => src.shape[from.indexOf(n)]!));
  if (out.ptr % 16n !== 0n) {
    ex.release(out);
    return ex.reorder(src, from, order);
  }
  const tiles = f.O * Math.ceil(f.R / 64) * Math.ceil(f.C / 64);
  if (tiles > 0) {
    const k = Q.transposeBytes();
    ex.addon.launchKernel(ex.fn(k.name, k.source), [tiles, 1, 1], [256, 1, 1], 0, ex.stream, packArgs(["ptr", out.ptr], ["ptr", src.ptr], ["i32", f.R], ["i32", f.C]));
  }
  return out;
}
