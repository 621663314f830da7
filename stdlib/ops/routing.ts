// Index and routing ops: top-k, gather / embedding, scatter-add, stable sort by key into segments.
// Types mirror compiler/ops/routing.ts.
import type { MsgMissingDim, MsgNeedsDType } from "../../compiler/messages.ts";
import type { AnyDTensor, DTensor } from "../dtensor.ts";
import type {
  DimExists, DimsOf, DTypeOf, ErrorsOf, Fail, IfTyped, KnownDims, Merge, MissingDim as Missing, NoFp8, OmitDims, Or, Placed, PlacementsOf, Prettify, SizeErrors,
} from "../types/core.ts";
import type { GatherRule, ScatterRule, WholeDimRule } from "../types/rules.ts";
import { trace } from "./trace.ts";

type NeedI32<Op extends string, X> = IfTyped<DTypeOf<X>, DTypeOf<X> extends "i32" ? never : MsgNeedsDType<Op, DTypeOf<X> & string, "i32">>;
type Replace<D, K, N extends string, S> = Prettify<OmitDims<D, K> & { [P in N]: S }>;

type WholeRes<Op extends string, X, K> = { [Ax in keyof PlacementsOf<X> & string]: WholeDimRule<Op, Ax, PlacementsOf<X>[Ax], K> };

/** compiler/ops/routing.ts topk, in its order: no FP8 (any other dtype, i32 included, is fine), the dim, the new dim, then placements. */
type TopkErrors<X, K, KD> = Or<NoFp8<"topk", DTypeOf<X>>, Or<Missing<"topk", DimsOf<X>, K, "x">, Or<KD extends K ? never : DimExists<"topk", DimsOf<X>, KD>, ErrorsOf<WholeRes<"topk", X, K>>>>>;

/** The k largest entries along `dim` (which must be whole), as a new dim `kDim`: values and i32 indices. */
export function topk<X extends AnyDTensor, const K extends string, const N extends number, const KD extends string>(
  x: X & Fail<TopkErrors<X, K, KD>>,
  dim: K,
  k: N,
  kDim: KD,
): { values: DTensor<Replace<DimsOf<X>, K, KD, N>, DTypeOf<X>, Placed<WholeRes<"topk", X, K>>>; indices: DTensor<Replace<DimsOf<X>, K, KD, N>, "i32", Placed<WholeRes<"topk", X, K>>> } {
  const [values, indices] = trace("topk", [x], { dim, k, kDim });
  return { values, indices } as never;
}

type GatherRes<X, I, K> = {
  [Ax in keyof PlacementsOf<X> & string]: GatherRule<Ax, PlacementsOf<X>[Ax], PlacementsOf<I>[Ax & keyof PlacementsOf<I>], K, DimsOf<X>, DimsOf<I>>;
};
/** compiler/ops/routing.ts gather, in its order: an i32 index, the dim of x, shared sizes, then placements. */
type GatherErrors<X, I, K> = Or<NeedI32<"gather", I>, Or<Missing<"gather", DimsOf<X>, K, "x">, Or<SizeErrors<"gather", DimsOf<X>, DimsOf<I>>, ErrorsOf<GatherRes<X, I, K>>>>>;
type GatherOut<X, I, K> = DTensor<Merge<DimsOf<I>, OmitDims<DimsOf<X>, K | keyof DimsOf<I>>>, DTypeOf<X>, Placed<GatherRes<X, I, K>>>;

/**
 * out[index dims..., rest...] = x[dim = index]. Dims x shares with index are batch dims. Index -1
 * gives zeros (padding). x sharded over `dim` with a replicated index gives Partial<sum>: each rank
 * looks up the rows it holds (vocab-parallel embedding).
 */
export function gather<X extends AnyDTensor, I extends AnyDTensor, const K extends string>(
  x: X,
  index: I & Fail<GatherErrors<X, I, K>>,
  dim: K,
): GatherOut<X, I, K> {
  return trace("gather", [x, index], { dim })[0] as never;
}

/** Embedding lookup: rows of `table` (dims [vocab, ...]) for i32 `ids`. A vocab-sharded table gives Partial<sum>. */
export function embedding<X extends AnyDTensor, I extends AnyDTensor, const K extends string>(
  table: X,
  ids: I & Fail<GatherErrors<X, I, K>>,
  vocabDim: K,
): GatherOut<X, I, K> {
  return trace("gather", [table, ids], { dim: vocabDim })[0] as never;
}

type ScatterRes<S, I, K> = {
  [Ax in keyof PlacementsOf<S> & string]: ScatterRule<Ax, PlacementsOf<S>[Ax], PlacementsOf<I>[Ax & keyof PlacementsOf<I>], K, DimsOf<I>>;
};

/** Index dims that src lacks. */
type SrcLacks<DS, DI> = KnownDims<DS> extends true ? (KnownDims<DI> extends true ? { [N in keyof DI & string]: N extends keyof DS ? never : MsgMissingDim<"scatter_add", N, "src"> }[keyof DI & string] : never) : never;
/**
 * compiler/ops/routing.ts scatter_add, in its order: no FP8 src, an i32 index, the dim of index, index's
 * dims in src, shared sizes, a new target dim, then placements.
 */
type ScatterErrors<S, I, K, To> = Or<NoFp8<"scatter_add", DTypeOf<S>>, Or<NeedI32<"scatter_add", I>, Or<Missing<"scatter_add", DimsOf<I>, K, "index">,
  Or<SrcLacks<DimsOf<S>, DimsOf<I>>, Or<SizeErrors<"scatter_add", DimsOf<S>, DimsOf<I>>, Or<To extends K ? never : DimExists<"scatter_add", DimsOf<S>, To>, ErrorsOf<ScatterRes<S, I, K>>>>>>>>;

/**
 * out[batch, to = index[batch, i], rest] += src[batch, i, rest]: rows of `src` along `dim` are added
 * into a new dim `to` of `size`. Index -1 rows are skipped. Rows split across ranks give Partial<sum>.
 */
export function scatterAdd<S extends AnyDTensor, I extends AnyDTensor, const K extends string, const To extends string, const N extends number>(
  src: S,
  index: I & Fail<ScatterErrors<S, I, K, To>>,
  dim: K,
  to: { dim: To; size: N },
): DTensor<Replace<DimsOf<S>, K, To, N>, DTypeOf<S>, Placed<ScatterRes<S, I, K>>> {
  return trace("scatter_add", [src, index], { dim, to: to.dim, size: to.size })[0] as never;
}

/**
 * Stable sort of i32 keys in [0, numGroups) along `dim` (whole on every rank): `perm` lists, for each
 * sorted row, its position in `dim`; rows are grouped into segments of equal key whose lengths are
 * `counts` (dim `groups`). The rows dim keeps the static size of `dim`; keys out of range are dropped
 * and their rows hold -1 at the end.
 */
export function sortByKey<X extends AnyDTensor, const K extends string, const Rows extends string, const G extends string, const NG extends number>(
  keys: X & Fail<Or<NeedI32<"sort_by_key", X>, Or<Missing<"sort_by_key", DimsOf<X>, K, "keys">,
    Or<Rows extends K ? never : DimExists<"sort_by_key", DimsOf<X>, Rows>, Or<DimExists<"sort_by_key", DimsOf<X>, G>, ErrorsOf<WholeRes<"sort_by_key", X, K>>>>>>>,
  dim: K,
  opts: { rows: Rows; groups: G; numGroups: NG },
): {
  perm: DTensor<Replace<DimsOf<X>, K, Rows, DimsOf<X>[K & keyof DimsOf<X>]>, "i32", Placed<WholeRes<"sort_by_key", X, K>>>;
  counts: DTensor<Replace<DimsOf<X>, K, G, NG>, "i32", Placed<WholeRes<"sort_by_key", X, K>>>;
} {
  const [perm, counts] = trace("sort_by_key", [keys], { dim, rows: opts.rows, groups: opts.groups, numGroups: opts.numGroups });
  return { perm, counts } as never;
}
