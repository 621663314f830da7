// Shape, dtype and sharding rule helpers shared by the op families.
import type { Dim, DType, Placement, TensorType } from "../ir/types.ts";
import { isFp8 } from "../ir/types.ts";
import { DTypeError, ShapeError, ShardingError } from "../errors.ts";
import { msgDType, msgFp8, msgMissingDim, msgNeedsDType, msgSize, msgWholeDim, msgNonlinear, msgDimExists } from "../messages.ts";
import { isPartial, shardDim } from "../ir/placement.ts";
import type { ShardCtx } from "./registry.ts";

export const findDim = (t: TensorType, name: string): Dim | undefined => t.dims.find((d) => d.name === name);

export function needDim(op: string, t: TensorType, name: string, arg = "x"): Dim {
  const d = findDim(t, name);
  if (!d) throw new ShapeError(msgMissingDim(op, name, arg));
  return d;
}

export function needNewDim(op: string, t: TensorType, name: string): void {
  if (findDim(t, name)) throw new ShapeError(msgDimExists(op, name));
}

/** FP8 may only flow into contractions and casts. */
export function noFp8(op: string, ...ts: TensorType[]): void {
  for (const t of ts) if (isFp8(t.dtype)) throw new DTypeError(msgFp8(op, t.dtype));
}

export function sameDType(op: string, a: TensorType, b: TensorType): DType {
  if (a.dtype !== b.dtype) throw new DTypeError(msgDType(op, a.dtype, b.dtype));
  return a.dtype;
}

export function needDType(op: string, t: TensorType, want: DType[]): void {
  if (!want.includes(t.dtype)) throw new DTypeError(msgNeedsDType(op, t.dtype, want.join(" or ")));
}

export function needFloat(op: string, t: TensorType): void {
  needDType(op, t, ["f32", "bf16"]);
}

/** Dims shared by name must have the same size; a segmented dim matches its bound. */
export function checkSizes(op: string, a: readonly Dim[], b: readonly Dim[]): void {
  for (const d of a) {
    const e = b.find((x) => x.name === d.name);
    if (e && e.size !== d.size) throw new ShapeError(msgSize(op, d.name, d.size, e.size));
  }
}

/** Name-broadcast union: a's dims, then b's dims a lacks. */
export function unionDims(op: string, ...ts: readonly Dim[][]): Dim[] {
  const out: Dim[] = [];
  for (const dims of ts) {
    checkSizes(op, out, dims);
    for (const d of dims) if (!out.some((o) => o.name === d.name)) out.push(d);
  }
  return out;
}

/** Rule for ops that need the whole of `dim` (softmax, top-k, ...) and are not linear. */
export function wholeDimRule(dimsAttr: string | string[]) {
  return (p: Placement[], ctx: ShardCtx): Placement[] => {
    const x = p[0]!;
    const dims = Array.isArray(dimsAttr) ? dimsAttr : [String(ctx.attrs[dimsAttr])];
    if (isPartial(x)) throw new ShardingError(msgNonlinear(ctx.op, ctx.axis, x));
    const d = shardDim(x);
    if (d !== undefined && dims.includes(d)) throw new ShardingError(msgWholeDim(ctx.op, ctx.axis, d));
    return ctx.outputs.map(() => x);
  };
}

export const attrStr = (v: unknown, what: string): string => {
  if (typeof v !== "string") throw new ShapeError(`expected ${what} to be a dim name, got ${JSON.stringify(v)}`);
  return v;
};
export const attrInt = (v: unknown, what: string): number => {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) throw new ShapeError(`expected ${what} to be a non-negative integer, got ${JSON.stringify(v)}`);
  return v;
};
