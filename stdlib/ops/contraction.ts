// Contractions by dim name. Types mirror compiler/ops/contraction.ts.
import type { MsgDType, MsgNeedsDType } from "../../compiler/messages.ts";
import type { AnyDTensor, DTensor } from "../dtensor.ts";
import type { DimsOf, DTypeOf, ErrorsOf, Fail, Fp8DType, IfTyped, IsLiteral, Merge, MissingDim, OmitDims, Or, Placed, PlacementsOf, SizeErrors } from "../types/core.ts";
import type { DotRule, SegmentRule } from "../types/rules.ts";
import { dimList, trace } from "./trace.ts";
import { UsageError } from "../../compiler/errors.ts";


type DotDTypeErrors<TA, TB> = IfTyped<TA, IfTyped<TB, DotDTypeErrorsTyped<TA, TB>>>;
type DotDTypeErrorsTyped<TA, TB> =
  TA extends "i32" ? MsgNeedsDType<"dot", "i32", "f32, bf16 or FP8"> : TB extends "i32" ? MsgNeedsDType<"dot", "i32", "f32, bf16 or FP8">
  : IsLiteral<TA> extends true ? (IsLiteral<TB> extends true ? (TA extends Fp8DType ? (TB extends Fp8DType ? never : MsgDType<"dot", TA & string, TB & string>) : [TA] extends [TB] ? never : MsgDType<"dot", TA & string, TB & string>) : never) : never;

type DotRes<A, B, C> = {
  [Ax in keyof PlacementsOf<A> & string]: DotRule<Ax, PlacementsOf<A>[Ax], PlacementsOf<B>[Ax & keyof PlacementsOf<B>], C, DimsOf<A>, DimsOf<B>>;
};
// compiler/ops/contraction.ts dot checks, in this order (and the types report the first that fails):
// dotDims (the contracted dims in a and b, then the sizes of shared dims), contractDType (no i32, one
// dtype or both FP8), then the placements axis by axis. So a size mistake is reported before a dtype one.
export type DotErrors<A, B, C> = Or<
  Or<MissingDim<"dot", DimsOf<A>, C, "a">, MissingDim<"dot", DimsOf<B>, C, "b">>,
  Or<SizeErrors<"dot", DimsOf<A>, DimsOf<B>>, Or<DotDTypeErrors<DTypeOf<A>, DTypeOf<B>>, ErrorsOf<DotRes<A, B, C>>>>
>;
type DotDType<A, O> = [O] extends [never] ? (DTypeOf<A> extends Fp8DType ? "bf16" : DTypeOf<A>) : O;
export type DotOut<A, B, C, O = never> = DTensor<Merge<OmitDims<DimsOf<A>, C>, OmitDims<DimsOf<B>, C | keyof DimsOf<A>>>, DotDType<A, O>, Placed<DotRes<A, B, C>>>;

/**
 * Contracts the named dims of a and b (einsum by name). Dims both share and don't contract are
 * batch dims. Contracting a dim sharded alike on both sides gives Partial<sum>.
 */
export function dot<A extends AnyDTensor, B extends AnyDTensor, const C extends string, O extends "f32" | "bf16" = never>(
  a: A,
  b: B & Fail<DotErrors<A, B, C>>,
  contract: C | readonly C[],
  opts?: { out?: O },
): DotOut<A, B, C, O> {
  return trace("dot", [a, b], { contract: dimList("dot", contract), ...(opts?.out ? { out: opts.out } : {}) })[0] as never;
}

type SegRes<X, W, Cn, K extends string, Rows extends string, Groups extends string> = {
  [Ax in keyof PlacementsOf<X> & string]: SegmentRule<Ax, PlacementsOf<X>[Ax], PlacementsOf<W>[Ax & keyof PlacementsOf<W>], PlacementsOf<Cn>[Ax & keyof PlacementsOf<Cn>], Rows, Groups, K>;
};

/**
 * Grouped contraction over contiguous segments (MoE experts): row r of x, in segment g by the
 * running sum of `counts`, is multiplied by w's group g. `rows`/`groups` name x's segmented dim and
 * w's group dim (as sort_by_key made them).
 */
export function segmentDot<X extends AnyDTensor, W extends AnyDTensor, Cn extends AnyDTensor, const K extends string, const Rows extends string, const Groups extends string>(
  x: X,
  w: W,
  counts: Cn & Fail<ErrorsOf<SegRes<X, W, Cn, K, Rows, Groups>>>,
  contract: K,
  seg: { rows: Rows; groups: Groups },
): DTensor<Merge<OmitDims<DimsOf<X>, K>, OmitDims<DimsOf<W>, K | Groups>>, DTypeOf<X>, Placed<SegRes<X, W, Cn, K, Rows, Groups>>> {
  const segDim = (x as AnyDTensor).type.dims.find((d) => d.segmented);
  if (!segDim || segDim.name !== seg.rows || segDim.segmented!.groups !== seg.groups)
    throw new UsageError(`segmentDot(): x's segmented dim is ${segDim ? `'${segDim.name}' over '${segDim.segmented!.groups}'` : "missing"}, but seg says '${seg.rows}' over '${seg.groups}'`);
  return trace("segment_dot", [x, w, counts], { contract })[0] as never;
}
