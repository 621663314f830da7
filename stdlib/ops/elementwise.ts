// Elementwise ops with broadcasting by dim name. Types: compiler/ops/elementwise.ts's rules, mirrored.
import type { MsgDType, MsgFp8, MsgNeedsDType, MsgNonlinear } from "../../compiler/messages.ts";
import type { DType } from "../../compiler/ir/types.ts";
import type { AnyDTensor, DTensor } from "../dtensor.ts";
import type { DimsOf, DTypeOf, ErrorsOf, Fail, Fp8DType, IfTyped, IsAny, IsLiteral, Merge, NoFp8, Or, Placed, PlacementsOf, SizeErrors } from "../types/core.ts";
import type { BinaryRule, UnaryRule } from "../types/rules.ts";
import { asTensor, meshOf, trace } from "./trace.ts";

type Lin = "add" | "mul" | "div";
type Scalar<Other> = DTensor<{}, DTypeOf<Other>, { [K in keyof PlacementsOf<Other>]: "R" }>;
type T_<X, Other> = X extends number ? Scalar<Other> : X;

// compiler/ops/elementwise.ts checks, in this order (and the types report the first that fails):
// no FP8 operand (a, then b), the sizes of shared dims (unionDims), one dtype (sameDType), then the
// placements axis by axis. So with two mistakes at once (a size and a dtype) both report the size.
type Fp8Errors<Op extends string, TA, TB> = Or<NoFp8<Op, TA>, NoFp8<Op, TB>>;
type SameDType<Op extends string, TA, TB> = IfTyped<TA, IfTyped<TB,
  IsLiteral<TA> extends true ? (IsLiteral<TB> extends true ? ([TA] extends [TB] ? never : MsgDType<Op, TA & string, TB & string>) : never) : never>>;

type BinRes<Op extends string, L extends Lin, A, B> = {
  [K in keyof PlacementsOf<A> & string]: Op extends "maximum" | "minimum"
    ? (PlacementsOf<A>[K] extends "P(sum)" | "P(max)" ? import("../types/core.ts").Err<MsgNonlinear<Op, K, PlacementsOf<A>[K]>>
      : PlacementsOf<B>[K & keyof PlacementsOf<B>] extends "P(sum)" | "P(max)" ? import("../types/core.ts").Err<MsgNonlinear<Op, K, PlacementsOf<B>[K & keyof PlacementsOf<B>]>>
      : BinaryRule<Op, L, K, PlacementsOf<A>[K], PlacementsOf<B>[K & keyof PlacementsOf<B>], DimsOf<A>, DimsOf<B>>)
    : BinaryRule<Op, L, K, PlacementsOf<A>[K], PlacementsOf<B>[K & keyof PlacementsOf<B>], DimsOf<A>, DimsOf<B>>;
};
export type BinaryErrors<Op extends string, L extends Lin, A, B> =
  Or<Fp8Errors<Op, DTypeOf<A>, DTypeOf<B>>, Or<SizeErrors<Op, DimsOf<A>, DimsOf<B>>, Or<SameDType<Op, DTypeOf<A>, DTypeOf<B>>, ErrorsOf<BinRes<Op, L, A, B>>>>>;
export type BinaryOut<Op extends string, L extends Lin, A, B> =
  DTensor<Merge<DimsOf<A>, DimsOf<B>>, DTypeOf<A>, Placed<BinRes<Op, L, A, B>>>;

type Bin<Op extends string, L extends Lin> = <A extends AnyDTensor | number, B extends AnyDTensor | number>(
  a: A,
  b: B & Fail<BinaryErrors<Op, L, T_<A, B>, T_<B, A>>>,
) => BinaryOut<Op, L, T_<A, B>, T_<B, A>>;

function binary<Op extends string, L extends Lin>(op: Op): Bin<Op, L> {
  return ((a: unknown, b: unknown) => {
    const mesh = meshOf(op, [a, b]);
    const dtype = ((a as AnyDTensor)?.dtype ?? (b as AnyDTensor)?.dtype) as DType;
    return trace(op, [asTensor(op, mesh, a, dtype, "a"), asTensor(op, mesh, b, dtype, "b")])[0];
  }) as Bin<Op, L>;
}

export const add = binary<"add", "add">("add");
export const sub = binary<"sub", "add">("sub");
export const mul = binary<"mul", "mul">("mul");
export const div = binary<"div", "div">("div");
export const maximum = binary<"maximum", "add">("maximum");
export const minimum = binary<"minimum", "add">("minimum");

type UnRes<Op extends string, Linear extends boolean, X> = { [K in keyof PlacementsOf<X> & string]: UnaryRule<Op, Linear, K, PlacementsOf<X>[K]> };
export type UnaryErrors<Op extends string, Linear extends boolean, IntOk extends boolean, X> =
  IsAny<DTypeOf<X>> extends true ? ErrorsOf<UnRes<Op, Linear, X>>
  : DTypeOf<X> extends Fp8DType ? MsgFp8<Op, DTypeOf<X>>
  : IntOk extends false ? (DTypeOf<X> extends "i32" ? MsgNeedsDType<Op, "i32", "f32 or bf16"> : ErrorsOf<UnRes<Op, Linear, X>>)
  : ErrorsOf<UnRes<Op, Linear, X>>;
type Un<Op extends string, Linear extends boolean, IntOk extends boolean> = <X extends AnyDTensor>(
  x: X & Fail<UnaryErrors<Op, Linear, IntOk, X>>,
) => DTensor<DimsOf<X>, DTypeOf<X>, Placed<UnRes<Op, Linear, X>>>;

function unary<Op extends string, Linear extends boolean, IntOk extends boolean>(op: Op): Un<Op, Linear, IntOk> {
  return ((x: AnyDTensor) => trace(op, [x])[0]) as Un<Op, Linear, IntOk>;
}

export const abs = unary<"abs", false, true>("abs");
export const exp = unary<"exp", false, false>("exp");
export const gelu = unary<"gelu", false, false>("gelu");
export const log = unary<"log", false, false>("log");
export const neg = unary<"neg", true, true>("neg");
export const relu = unary<"relu", false, true>("relu");
export const rsqrt = unary<"rsqrt", false, false>("rsqrt");
export const sigmoid = unary<"sigmoid", false, false>("sigmoid");
export const silu = unary<"silu", false, false>("silu");
export const sqrt = unary<"sqrt", false, false>("sqrt");

type CastRes<X, To> = { [K in keyof PlacementsOf<X> & string]: UnaryRule<"cast", [DTypeOf<X>] extends [To] ? true : false, K, PlacementsOf<X>[K]> };
/** Converts to another dtype (rounding to nearest even; FP8 saturates). FP8 tensors may be cast. */
export function cast<X extends AnyDTensor, const To extends DType>(x: X & Fail<ErrorsOf<CastRes<X, To>>>, dtype: To): DTensor<DimsOf<X>, To, Placed<CastRes<X, To>>> {
  return trace("cast", [x], { dtype })[0] as never;
}

type WhereRes<C, A, B> = {
  [K in keyof PlacementsOf<A> & string]: PlacementsOf<C>[K & keyof PlacementsOf<C>] extends "P(sum)" | "P(max)"
    ? import("../types/core.ts").Err<import("../../compiler/messages.ts").MsgReduceFirst<"where", K, PlacementsOf<C>[K & keyof PlacementsOf<C>], PlacementsOf<A>[K], "cond">>
    : WhereAxis<K, BinaryRule<"where", "add", K, PlacementsOf<A>[K], PlacementsOf<B>[K & keyof PlacementsOf<B>], DimsOf<A>, DimsOf<B>>, PlacementsOf<C>[K & keyof PlacementsOf<C>], Merge<DimsOf<A>, DimsOf<B>>, DimsOf<C>>;
};
type WhereAxis<K extends string, AB, PC, DAB, DC> = AB extends import("../types/core.ts").Err<string> ? AB
  : AB extends "P(sum)" | "P(max)" ? (PC extends "R" ? AB : import("../types/core.ts").Err<import("../../compiler/messages.ts").MsgReduceFirst<"where", K, AB, PC, "a">>)
  : BinaryRule<"where", "add", K, AB, PC, DAB, DC>;
/** compiler/ops/elementwise.ts where, in its order: no FP8 (cond, a, b), sizes (cond, a, b), a and b of one dtype, placements. */
type WhereErrors<C, A, B> = Or<Or<NoFp8<"where", DTypeOf<C>>, Fp8Errors<"where", DTypeOf<A>, DTypeOf<B>>>,
  Or<Or<SizeErrors<"where", DimsOf<C>, DimsOf<A>>, SizeErrors<"where", Merge<DimsOf<C>, DimsOf<A>>, DimsOf<B>>>,
    Or<SameDType<"where", DTypeOf<A>, DTypeOf<B>>, ErrorsOf<WhereRes<C, A, B>>>>>;
/** Picks a where cond is non-zero, else b. */
export function where<C extends AnyDTensor, A extends AnyDTensor | number, B extends AnyDTensor | number>(
  cond: C,
  a: A,
  b: B & Fail<WhereErrors<C, T_<A, B>, T_<B, A>>>,
): DTensor<Merge<DimsOf<C>, Merge<DimsOf<T_<A, B>>, DimsOf<T_<B, A>>>>, DTypeOf<T_<A, B>>, Placed<WhereRes<C, T_<A, B>, T_<B, A>>>> {
  const mesh = meshOf("where", [cond, a, b]);
  const dtype = ((a as AnyDTensor)?.dtype ?? (b as AnyDTensor)?.dtype ?? "f32") as DType;
  return trace("where", [cond, asTensor("where", mesh, a, dtype, "a"), asTensor("where", mesh, b, dtype, "b")])[0] as never;
}
