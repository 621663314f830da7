// MoE dispatch and combine as single ops (compiler/ops/dispatch.ts): the permute by expert, the
// count exchange and the token exchange over the expert mesh axis in one step, and the way back
// with the gate-weighted sum (and its transpose, moe_redispatch). Shapes and placements are checked when traced.
import type { AnyDTensor } from "../dtensor.ts";
import { trace } from "./trace.ts";

export interface DispatchOpts {
  /** The expert mesh axis the rows travel over (null: one rank holds every expert). */
  axis: string | null;
  /** The token dim of x and indices (e.g. "seq"), and the top-k dim of indices (e.g. "k"). */
  dim: string;
  k: string;
  /** Names of the new rows dim (segmented by expert) and of the experts dim of the counts. */
  rows: string;
  groups: string;
  numGroups: number;
}

/**
 * x [...batch, seq, ...row] and indices [...batch, seq, k] (i32 expert ids) → `rows` [...batch,
 * rows, ...row] grouped by expert (on the expert axis each rank holds its experts' rows), `perm`
 * (the slot seq*k+k of each row, what combine needs to return them) and `counts` [...batch, experts].
 * Tokens are sharded on a batch dim (or replicated) on the expert axis.
 */
export function moeDispatch(x: AnyDTensor, indices: AnyDTensor, o: DispatchOpts): { rows: AnyDTensor; perm: AnyDTensor; counts: AnyDTensor } {
  const [rows, perm, counts] = trace("moe_dispatch", [x, indices], { axis: o.axis, dim: o.dim, k: o.k, rows: o.rows, groups: o.groups, numGroups: o.numGroups });
  return { rows: rows!, perm: perm!, counts: counts! };
}

/**
 * The way back: each row of `rows` (laid out as moe_dispatch left them) returns to its token; with
 * `weights` [...batch, seq, k] (the gate) a token's k rows are weighted and summed, without them summed.
 * `size` and `numK` are the sizes of the token and top-k dims.
 */
export function moeCombine(rows: AnyDTensor, perm: AnyDTensor, weights: AnyDTensor | null, o: { axis: string | null; dim: string; size: number; k: string; numK: number }): AnyDTensor {
  const attrs = { axis: o.axis, dim: o.dim, size: o.size, k: o.k, numK: o.numK, keepK: false };
  return trace("moe_combine", weights ? [rows, perm, weights] : [rows, perm], attrs)[0]!;
}

/**
 * Combine's transpose: `src` [...batch, seq, ...row] laid out as moe_dispatch laid out its rows, by
 * that dispatch's `perm` (a token's rows are copies of its row of src; with `weights` each times its
 * slot's weight). One gather and one token exchange: the routing is not computed again.
 */
export function moeRedispatch(src: AnyDTensor, perm: AnyDTensor, weights: AnyDTensor | null, o: { axis: string | null; dim: string; size: number; k: string; numK: number }): AnyDTensor {
  const attrs = { axis: o.axis, dim: o.dim, size: o.size, k: o.k, numK: o.numK, keepK: false };
  return trace("moe_redispatch", weights ? [src, perm, weights] : [src, perm], attrs)[0]!;
}
