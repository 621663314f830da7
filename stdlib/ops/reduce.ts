// Reductions over named dims and row ops that need a whole dim. Types mirror compiler/ops/reduce.ts.
import type { MsgNeedsDType } from "../../compiler/messages.ts";
import type { AnyDTensor, DTensor } from "../dtensor.ts";
import type { DimsOf, DTypeOf, ErrorsOf, Fail, Fp8DType, IfTyped, MissingDim, NoFp8, OmitDims, Or, Placed, PlacementsOf } from "../types/core.ts";
import type { ReduceRule, WholeDimRule } from "../types/rules.ts";
import { dimList, trace } from "./trace.ts";


type RedRes<Op extends "sum" | "mean" | "max", X, K> = { [Ax in keyof PlacementsOf<X> & string]: ReduceRule<Op, Ax, PlacementsOf<X>[Ax], K> };
/** mean() needs a float (compiler/ops/reduce.ts: needFloat after the dims are checked); FP8 is caught before. */
type MeanFloat<Op extends string, X> = Op extends "mean" ? IfTyped<DTypeOf<X>, DTypeOf<X> extends "i32" ? MsgNeedsDType<Op, "i32", "f32 or bf16"> : never> : never;
type Red<Op extends "sum" | "mean" | "max"> = <X extends AnyDTensor, const K extends string>(
  x: X & Fail<Or<NoFp8<Op, DTypeOf<X>>, Or<MissingDim<Op, DimsOf<X>, K, "x">, Or<MeanFloat<Op, X>, ErrorsOf<RedRes<Op, X, K>>>>>>,
  dims: K | readonly K[],
) => DTensor<OmitDims<DimsOf<X>, K>, DTypeOf<X>, Placed<RedRes<Op, X, K>>>;

const reduction = <Op extends "sum" | "mean" | "max">(op: Op): Red<Op> =>
  ((x: AnyDTensor, dims: string | string[]) => trace(op, [x], { dims: dimList(op, dims) })[0]) as Red<Op>;

/** Sum over dims; over a sharded dim the result is Partial<sum>. */
export const sum = reduction("sum");
/** Mean over dims; over a sharded dim the result is Partial<sum> of local sums / global count. */
export const mean = reduction("mean");
/** Max over dims; over a sharded dim the result is Partial<max>. */
export const max = reduction("max");

type WholeRes<Op extends string, X, K> = { [Ax in keyof PlacementsOf<X> & string]: WholeDimRule<Op, Ax, PlacementsOf<X>[Ax], K> };
export type WholeDimErrors<Op extends string, X, K> = Or<
  IfTyped<DTypeOf<X>, DTypeOf<X> extends Fp8DType | "i32" ? MsgNeedsDType<Op, DTypeOf<X> & string, "f32 or bf16"> : never>,
  Or<MissingDim<Op, DimsOf<X>, K, "x">, ErrorsOf<WholeRes<Op, X, K>>>
>;
type Row<Op extends string> = <X extends AnyDTensor, const K extends string>(
  x: X & Fail<WholeDimErrors<Op, X, K>>,
  dim: K,
) => DTensor<DimsOf<X>, DTypeOf<X>, Placed<WholeRes<Op, X, K>>>;

const rowOp = <Op extends string>(op: Op): Row<Op> => ((x: AnyDTensor, dim: string) => trace(op, [x], { dim })[0]) as Row<Op>;

/** Softmax along a dim, which must be whole on every rank. */
export const softmax = rowOp("softmax");
/** Log-softmax along a dim, which must be whole on every rank. */
export const logSoftmax = rowOp("log_softmax");

/** x * rsqrt(mean(x², dim) + eps) * weight; `dim` must be whole on every rank. */
export function rmsnorm<X extends AnyDTensor, W extends AnyDTensor, const K extends string>(
  x: X & Fail<WholeDimErrors<"rmsnorm", X, K>>,
  weight: W & Fail<ErrorsOf<WholeRes<"rmsnorm", W, K>>>,
  dim: K,
  eps = 1e-6,
): DTensor<DimsOf<X>, DTypeOf<X>, Placed<WholeRes<"rmsnorm", X, K>>> {
  return trace("rmsnorm", [x, weight], { dim, eps })[0] as never;
}
