// One rank's piece of a tensor, as the CPU reference holds it: a typed array in row-major order of
// the local shape. Floating dtypes are stored as float32 values that are exactly representable in
// the dtype (bf16/FP8 rounding is applied by whoever writes them).
import type { DType } from "./types.ts";
import { numel } from "./types.ts";

export type LocalData = Float32Array | Int32Array;

export interface LocalTensor {
  dtype: DType;
  shape: number[];
  data: LocalData;
}

export function allocLocal(dtype: DType, shape: number[]): LocalTensor {
  const n = numel(shape);
  return { dtype, shape, data: dtype === "i32" ? new Int32Array(n) : new Float32Array(n) };
}

export const stridesOf = (shape: readonly number[]): number[] => {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i]!;
  }
  return s;
};

/**
 * Where a local tensor sits in the global one, per dim: `offset` of its first element and the
 * `global` extent. A dim sharded by data-dependent segments has `seg` set instead of a meaningful
 * offset: the rank holds, packed from row 0, the segments of groups [firstGroup, firstGroup+numGroups).
 */
export interface Box {
  offset: number[];
  global: number[];
  seg: ({ firstGroup: number; numGroups: number } | null)[];
}
