// Rename, flatten/unflatten, concat/split. The restructured dims must be whole on every rank.
import type { AnyDTensor, DTensor } from "../dtensor.ts";
import type { DimsOf, DTypeOf, ErrorsOf, Fail, OmitDims, Placed, PlacementsOf, Prettify } from "../types/core.ts";
import type { WholeDimRule } from "../types/rules.ts";
import { UsageError } from "../../compiler/errors.ts";
import { trace } from "./trace.ts";

type Ren<P, F extends string, T extends string> = { [K in keyof P]: P[K] extends `S(${F})` ? `S(${T})` : P[K] };
type WholeRes<Op extends string, X, K> = { [Ax in keyof PlacementsOf<X> & string]: WholeDimRule<Op, Ax, PlacementsOf<X>[Ax], K> };

/** Renames a dim (its shards follow). */
export function rename<X extends AnyDTensor, const F extends keyof DimsOf<X> & string, const T extends string>(x: X, from: F, to: T): DTensor<Prettify<OmitDims<DimsOf<X>, F> & { [K in T]: DimsOf<X>[F] }>, DTypeOf<X>, Prettify<Ren<PlacementsOf<X>, F, T>>> {
  return trace("rename", [x], { from, to })[0] as never;
}

/** Merges adjacent dims (in layout order) into one; they must be whole on every rank. */
export function flatten<X extends AnyDTensor, const K extends keyof DimsOf<X> & string, const T extends string>(
  x: X & Fail<ErrorsOf<WholeRes<"flatten", X, K>>>,
  dims: readonly K[],
  to: T,
): DTensor<Prettify<OmitDims<DimsOf<X>, K> & { [N in T]: number }>, DTypeOf<X>, Placed<WholeRes<"flatten", X, K>>> {
  return trace("flatten", [x], { dims: [...dims], to })[0] as never;
}

/** Splits one dim into several (sizes multiply to its size); it must be whole on every rank. */
export function unflatten<X extends AnyDTensor, const K extends keyof DimsOf<X> & string, const Into extends Record<string, number>>(
  x: X & Fail<ErrorsOf<WholeRes<"unflatten", X, K>>>,
  dim: K,
  into: Into,
): DTensor<Prettify<OmitDims<DimsOf<X>, K> & Into>, DTypeOf<X>, Placed<WholeRes<"unflatten", X, K>>> {
  return trace("unflatten", [x], { dim, into })[0] as never;
}

/** Joins tensors along a dim (whole on every rank); they must agree on every placement. */
export function concat<X extends AnyDTensor, const K extends string>(xs: readonly X[], dim: K): DTensor<Prettify<OmitDims<DimsOf<X>, K> & { [N in K]: number }>, DTypeOf<X>, PlacementsOf<X>> {
  if (!Array.isArray(xs) || xs.length === 0) throw new UsageError("concat() needs a non-empty array of tensors");
  return trace("concat", [...xs], { dim })[0] as never;
}

/** Splits a dim (whole on every rank) into consecutive parts of the given sizes. */
export function split<X extends AnyDTensor, const K extends keyof DimsOf<X> & string>(
  x: X & Fail<ErrorsOf<WholeRes<"split", X, K>>>,
  dim: K,
  sizes: readonly number[],
): DTensor<Prettify<OmitDims<DimsOf<X>, K> & { [N in K]: number }>, DTypeOf<X>, PlacementsOf<X>>[] {
  return trace("split", [x], { dim, sizes: [...sizes] }) as never;
}
