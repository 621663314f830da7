// Type-level building blocks. Tensors are typed by an object of named dims, a dtype and an object
// of one placement per mesh axis, all in the compact notation ("R", "S(tokens)", "P(sum)"), so
// checks are cheap key lookups rather than tuple arithmetic. Where a type is not literal (untyped
// or `any` callers) the checks step aside and the trace-time check, with the same text, applies.
import type { DType, Placement } from "../../compiler/ir/types.ts";

export type { DType, Placement };
export type Dims = { readonly [name: string]: number };
export type PlacementMap = { readonly [axis: string]: Placement };
export type FloatDType = "f32" | "bf16";
export type Fp8DType = "fp8e4m3" | "fp8e5m2";

/** A per-axis rule's failure, carried until the call site turns it into a parameter error. */
export interface Err<M extends string> {
  readonly __err: M;
}
/** `unknown` when there is no message, else a property whose type is the message (what tsc prints). */
export type Fail<M> = [M] extends [never] ? unknown : { readonly "shardts error": M };

/** The messages of the failing entries of an object of rule results. */
export type ErrorsOf<R> = { [K in keyof R]: R[K] extends Err<infer M> ? M : never }[keyof R];
/** Rule results with the failures replaced by Placement (so the result type stays usable). */
export type Placed<R> = { [K in keyof R]: R[K] extends Err<string> ? Placement : R[K] };

export type Prettify<T> = { [K in keyof T]: T[K] } & {};

/** True when T is a single string literal (not a union, not string). */
export type IsLiteral<T> = [T] extends [string] ? (string extends T ? false : IsUnion<T> extends true ? false : true) : false;
type IsUnion<T, U = T> = T extends unknown ? ([U] extends [T] ? false : true) : never;

/** `any` (an untyped caller): checks step aside for the trace-time check. */
export type IsAny<T> = 0 extends 1 & T ? true : false;
/** A dtype check that yields nothing for `any` dtypes. */
export type IfTyped<T, Check> = IsAny<T> extends true ? never : Check;

/** Dims whose names are known (not a string index signature). */
export type KnownDims<D> = string extends keyof D ? false : true;

/** Every mesh axis, the ones not named being Replicate. */
export type Full<A extends string, Q> = Prettify<{ [K in A]: K extends keyof Q ? (Q[K] extends Placement ? Q[K] : "R") : "R" }>;
/** Placements after a redistribute: the named axes replaced. */
export type Override<P, Q> = Prettify<{ [K in keyof P]: K extends keyof Q ? Q[K] : P[K] }>;

export type DimsOf<X> = X extends { readonly __dims: infer D } ? D : never;
export type DTypeOf<X> = X extends { readonly __dtype: infer T } ? T : never;
export type PlacementsOf<X> = X extends { readonly __placements: infer P } ? P : never;

/** Name-broadcast union of dims. */
export type Merge<A, B> = Prettify<{ [K in keyof A | keyof B]: K extends keyof A ? A[K] : K extends keyof B ? B[K] : never }>;
export type OmitDims<D, K> = Prettify<{ [N in keyof D as N extends K ? never : N]: D[N] }>;

/** Literal sizes of a shared dim that disagree. */
export type SizeErrors<Op extends string, A, B> = {
  [K in keyof A & keyof B & string]: number extends A[K] ? never : number extends B[K] ? never : A[K] extends B[K] ? never : A[K] extends number ? B[K] extends number ? import("../../compiler/messages.ts").MsgSize<Op, K, A[K], B[K]> : never : never;
}[keyof A & keyof B & string];

export type ShardDimOf<P> = P extends `S(${infer D})` ? D : never;
export type IsPartial<P> = P extends "P(sum)" | "P(max)" ? true : false;

/** The first of two error sets that is not empty (the runtime checks in order and throws at the first). */
export type Or<A, B> = [A] extends [never] ? B : A;
/** compiler/ops/rules.ts needDim: K (one name or a union) must be a dim of D. */
export type MissingDim<Op extends string, D, K, Arg extends string> =
  KnownDims<D> extends true ? (K extends keyof D ? never : import("../../compiler/messages.ts").MsgMissingDim<Op, K & string, Arg>) : never;
/** compiler/ops/rules.ts needNewDim: N (a name, or a union of names) must not be a dim of D already. */
export type DimExists<Op extends string, D, N> =
  KnownDims<D> extends true ? (N extends keyof D & string ? import("../../compiler/messages.ts").MsgDimExists<Op, N> : never) : never;
/** compiler/ops/rules.ts noFp8 for one tensor of dtype T. */
export type NoFp8<Op extends string, T> = IfTyped<T, T extends Fp8DType ? import("../../compiler/messages.ts").MsgFp8<Op, T> : never>;
