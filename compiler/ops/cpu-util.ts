// Loops shared by the CPU references: name-aligned strides, broadcasting iteration, dtype rounding.
import type { DType, TensorType } from "../ir/types.ts";
import type { LocalData, LocalTensor } from "../ir/local.ts";
import { allocLocal, stridesOf } from "../ir/local.ts";
import { roundArrayToBf16, roundArrayToE4M3, roundArrayToE5M2 } from "../numeric/index.ts";

/** For each output dim (by name), the stride of that dim in the input, or 0 if the input lacks it. */
export function alignStrides(inType: TensorType, inShape: readonly number[], outNames: readonly string[]): number[] {
  const st = stridesOf(inShape);
  return outNames.map((n) => {
    const i = inType.dims.findIndex((d) => d.name === n);
    return i < 0 ? 0 : st[i]!;
  });
}

/**
 * Visits every element of `shape` in row-major order; `strides[k]` maps the multi-index to a flat
 * offset of operand k. The callback gets the output flat index and each operand's offset. The
 * innermost dim runs as a plain loop.
 */
export function forEachStrided(
  shape: readonly number[],
  strides: readonly (readonly number[])[],
  fn: (o: number, offs: Int32Array | number[]) => void,
): void {
  const nd = shape.length, k = strides.length;
  const total = shape.reduce((a, b) => a * b, 1);
  if (total === 0) return;
  const idx = new Array<number>(nd).fill(0);
  const offs = new Array<number>(k).fill(0);
  const inner = nd ? shape[nd - 1]! : 1;
  const innerStr = strides.map((s) => (nd ? s[nd - 1]! : 0));
  for (let o = 0; o < total; o += inner) {
    const base = offs.slice();
    for (let j = 0; j < inner; j++) {
      fn(o + j, base);
      for (let q = 0; q < k; q++) base[q]! += innerStr[q]!;
    }
    // advance the odometer over the outer dims
    for (let d = nd - 2; d >= 0; d--) {
      idx[d]!++;
      for (let q = 0; q < k; q++) offs[q]! += strides[q]![d]!;
      if (idx[d]! < shape[d]!) break;
      for (let q = 0; q < k; q++) offs[q]! -= strides[q]![d]! * shape[d]!;
      idx[d] = 0;
    }
  }
}

/** Rounds float data in place to what `dtype` can represent (f32 data is already float32). */
export function roundData(dtype: DType, data: LocalData): void {
  if (dtype === "bf16") roundArrayToBf16(data as Float32Array, data as Float32Array);
  else if (dtype === "fp8e4m3") roundArrayToE4M3(data as Float32Array, data as Float32Array);
  else if (dtype === "fp8e5m2") roundArrayToE5M2(data as Float32Array, data as Float32Array);
}

export function newOut(dtype: DType, shape: number[]): LocalTensor {
  return allocLocal(dtype, shape);
}

/** Permutes a local tensor's dims into `order` (names), returning a contiguous copy (or the input). */
export function permuteTo(t: LocalTensor, type: TensorType, order: readonly string[]): LocalTensor {
  const names = type.dims.map((d) => d.name);
  if (order.every((n, i) => names[i] === n)) return t;
  const shape = order.map((n) => t.shape[names.indexOf(n)]!);
  const out = allocLocal(t.dtype, shape);
  const st = alignStrides(type, t.shape, order);
  const src = t.data, dst = out.data;
  forEachStrided(shape, [st], (o, offs) => {
    dst[o] = src[offs[0]!]!;
  });
  return out;
}
