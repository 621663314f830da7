// Rename, flatten/unflatten, concat/split. The restructured dims must be whole on every rank; these
// ops only move data, so a Partial passes through. Types mirror compiler/ops/movement.ts.
import type { MsgMissingDim } from "../../compiler/messages.ts";
import type { AnyDTensor, DTensor } from "../dtensor.ts";
import type { DimExists, DimsOf, DTypeOf, ErrorsOf, Fail, KnownDims, OmitDims, Or, Placed, PlacementsOf, Prettify } from "../types/core.ts";
import type { ConcatRule, MoveRule } from "../types/rules.ts";
import { UsageError } from "../../compiler/errors.ts";
import { trace } from "./trace.ts";

type Ren<P, F extends string, T extends string> = { [K in keyof P]: P[K] extends `S(${F})` ? `S(${T})` : P[K] };
type MoveRes<Op extends string, X, K> = { [Ax in keyof PlacementsOf<X> & string]: MoveRule<Op, Ax, PlacementsOf<X>[Ax], K> };

/** Renames a dim (its shards follow); the new name must not be a dim already. */
export function rename<X extends AnyDTensor, const F extends keyof DimsOf<X> & string, const T extends string>(
  x: X & Fail<T extends F ? never : DimExists<"rename", DimsOf<X>, T>>,
  from: F,
  to: T,
): DTensor<Prettify<OmitDims<DimsOf<X>, F> & { [K in T]: DimsOf<X>[F] }>, DTypeOf<X>, Prettify<Ren<PlacementsOf<X>, F, T>>> {
  return trace("rename", [x], { from, to })[0] as never;
}

/**
 * Merges dims into one named `to` (row-major over `dims` in the order given; they need not be
 * adjacent). The merged dim takes the place of the first of `dims`. The merged dims must not be
 * sharded; a Partial passes through.
 */
export function flatten<X extends AnyDTensor, const K extends keyof DimsOf<X> & string, const T extends string>(
  x: X & Fail<Or<T extends K ? never : DimExists<"flatten", DimsOf<X>, T>, ErrorsOf<MoveRes<"flatten", X, K>>>>,
  dims: readonly K[],
  to: T,
): DTensor<Prettify<OmitDims<DimsOf<X>, K> & { [N in T]: number }>, DTypeOf<X>, Placed<MoveRes<"flatten", X, K>>> {
  return trace("flatten", [x], { dims: [...dims], to })[0] as never;
}

/** Splits one dim into several (sizes multiply to its size), in its place; it must not be sharded (a Partial passes through). */
export function unflatten<X extends AnyDTensor, const K extends keyof DimsOf<X> & string, const Into extends Record<string, number>>(
  x: X & Fail<Or<DimExists<"unflatten", DimsOf<X>, Exclude<keyof Into, K>>, ErrorsOf<MoveRes<"unflatten", X, K>>>>,
  dim: K,
  into: Into,
): DTensor<Prettify<OmitDims<DimsOf<X>, K> & Into>, DTypeOf<X>, Placed<MoveRes<"unflatten", X, K>>> {
  return trace("unflatten", [x], { dim, into })[0] as never;
}

/** Each input's placement on mesh axis Ax (a tuple stays a tuple). */
type PlacementsOn<XS, Ax> = { [I in keyof XS]: PlacementsOf<XS[I]>[Ax & keyof PlacementsOf<XS[I]>] };
type ConcatRes<XS extends readonly AnyDTensor[], K> = { [Ax in keyof PlacementsOf<XS[0]> & string]: ConcatRule<Ax, PlacementsOn<XS, Ax>, K> };
/** compiler/ops/movement.ts concat shape: the first input, in order, that lacks the dim. */
type ConcatMissing<XS extends readonly unknown[], K, I extends unknown[] = []> =
  XS extends readonly [infer X, ...infer Rest]
    ? KnownDims<DimsOf<X>> extends true ? (K extends keyof DimsOf<X> ? ConcatMissing<Rest, K, [...I, 0]> : MsgMissingDim<"concat", K & string, `xs[${I["length"]}]`>) : ConcatMissing<Rest, K, [...I, 0]>
    : never;

/**
 * Joins tensors along a dim; they must agree on every placement (with xs[0]), and none may shard
 * the joined dim. A Partial passes through.
 */
export function concat<const XS extends readonly AnyDTensor[], const K extends string>(
  xs: XS & Fail<Or<ConcatMissing<XS, K>, ErrorsOf<ConcatRes<XS, K>>>>,
  dim: K,
): DTensor<Prettify<OmitDims<DimsOf<XS[0]>, K> & { [N in K]: number }>, DTypeOf<XS[0]>, Placed<ConcatRes<XS, K>>> {
  if (!Array.isArray(xs) || xs.length === 0) throw new UsageError("concat() needs a non-empty array of tensors");
  return trace("concat", [...(xs as readonly AnyDTensor[])], { dim })[0] as never;
}

/** Splits a dim into consecutive parts of the given sizes; it must not be sharded (a Partial passes through). */
export function split<X extends AnyDTensor, const K extends keyof DimsOf<X> & string>(
  x: X & Fail<ErrorsOf<MoveRes<"split", X, K>>>,
  dim: K,
  sizes: readonly number[],
): DTensor<Prettify<OmitDims<DimsOf<X>, K> & { [N in K]: number }>, DTypeOf<X>, Placed<MoveRes<"split", X, K>>>[] {
  return trace("split", [x], { dim, sizes: [...sizes] }) as never;
}
