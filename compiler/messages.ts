// Every user-facing sharding/shape/dtype message, written once. Each runtime builder sits beside the
// template-literal type that `tsc` shows for the same mistake (stdlib/types/*.ts use the types), so
// the editor and the trace-time check print identical text. test/types/messages.test.ts proves the
// pairs agree.
import type { Placement } from "./ir/types.ts";
import { prettyPlacement, isShard, shardDim } from "./ir/placement.ts";

/** `Shard<tokens>` / `Replicate` / `Partial<sum>` from the compact notation, at the type level. */
export type Pretty<P> = P extends "R"
  ? "Replicate"
  : P extends `S(${infer D})`
    ? `Shard<${D}>`
    : P extends `P(${infer O})`
      ? `Partial<${O}>`
      : never;

/** How a placement is written in a `redistribute` call. */
export type AsCode<P> = P extends "R" ? "Replicate" : P extends `S(${infer D})` ? `Shard("${D}")` : P extends `P(${infer O})` ? `Partial("${O}")` : never;
export const asCode = (p: Placement): string =>
  p === "R" ? "Replicate" : isShard(p) ? `Shard("${shardDim(p)}")` : `Partial("${p.slice(2, -1)}")`;

// --- elementwise -----------------------------------------------------------------------------

export type MsgReduceFirst<Op extends string, Ax extends string, A, B, Arg extends string> =
  `mesh axis '${Ax}': ${Pretty<A>} meets ${Pretty<B>} in ${Op}(); reduce first: redistribute(${Arg}, { ${Ax}: Replicate })`;
export const msgReduceFirst = (op: string, ax: string, a: Placement, b: Placement, arg: string) =>
  `mesh axis '${ax}': ${prettyPlacement(a)} meets ${prettyPlacement(b)} in ${op}(); reduce first: redistribute(${arg}, { ${ax}: Replicate })`;

export type MsgAgree<Op extends string, Ax extends string, A, B, Arg extends string, To> =
  `mesh axis '${Ax}': ${Pretty<A>} meets ${Pretty<B>} in ${Op}(); make them agree: redistribute(${Arg}, { ${Ax}: ${AsCode<To>} })`;
export const msgAgree = (op: string, ax: string, a: Placement, b: Placement, arg: string, to: Placement) =>
  `mesh axis '${ax}': ${prettyPlacement(a)} meets ${prettyPlacement(b)} in ${op}(); make them agree: redistribute(${arg}, { ${ax}: ${asCode(to)} })`;

export type MsgNonlinear<Op extends string, Ax extends string, A> =
  `mesh axis '${Ax}': ${Op}() is not linear and its input is ${Pretty<A>}; reduce first: redistribute(x, { ${Ax}: Replicate })`;
export const msgNonlinear = (op: string, ax: string, a: Placement) =>
  `mesh axis '${ax}': ${op}() is not linear and its input is ${prettyPlacement(a)}; reduce first: redistribute(x, { ${ax}: Replicate })`;

/** An index (gather / scatter_add) must hold whole positions: a Partial index is reduced first. */
export type MsgPartialIndex<Op extends string, Ax extends string, I> =
  `mesh axis '${Ax}': ${Op}() needs whole positions but its index is ${Pretty<I>}; reduce first: redistribute(index, { ${Ax}: Replicate })`;
export const msgPartialIndex = (op: string, ax: string, i: Placement) =>
  `mesh axis '${ax}': ${op}() needs whole positions but its index is ${prettyPlacement(i)}; reduce first: redistribute(index, { ${ax}: Replicate })`;

// --- dims, sizes, dtypes ---------------------------------------------------------------------

export type MsgSize<Op extends string, D extends string, N1 extends number, N2 extends number> =
  `dim '${D}' is ${N1} in a but ${N2} in b in ${Op}(); sizes of a named dim must agree`;
export const msgSize = (op: string, d: string, n1: number, n2: number) =>
  `dim '${d}' is ${n1} in a but ${n2} in b in ${op}(); sizes of a named dim must agree`;

export type MsgMissingDim<Op extends string, D extends string, Arg extends string> =
  `${Op}() names dim '${D}' but ${Arg} has no such dim; name one of its dims`;
export const msgMissingDim = (op: string, d: string, arg: string) =>
  `${op}() names dim '${d}' but ${arg} has no such dim; name one of its dims`;

export type MsgDimExists<Op extends string, D extends string> =
  `${Op}() would create dim '${D}' but the tensor already has one; pick a new name`;
export const msgDimExists = (op: string, d: string) =>
  `${op}() would create dim '${d}' but the tensor already has one; pick a new name`;

export type MsgDType<Op extends string, T1 extends string, T2 extends string> =
  `${Op}() got ${T1} and ${T2}; cast one side first: cast(b, "${T1}")`;
export const msgDType = (op: string, t1: string, t2: string) =>
  `${op}() got ${t1} and ${t2}; cast one side first: cast(b, "${t1}")`;

export type MsgFp8<Op extends string, T extends string> =
  `${Op}() does not take ${T}; FP8 tensors go only into dot() or cast(): cast(x, "bf16") first`;
export const msgFp8 = (op: string, t: string) =>
  `${op}() does not take ${t}; FP8 tensors go only into dot() or cast(): cast(x, "bf16") first`;

export type MsgNeedsDType<Op extends string, T extends string, Want extends string> =
  `${Op}() does not take ${T}; it needs ${Want}`;
export const msgNeedsDType = (op: string, t: string, want: string) => `${op}() does not take ${t}; it needs ${want}`;

// --- placements in factories and redistribute ------------------------------------------------

export type MsgNoAxis<Ax extends string> = `mesh has no axis '${Ax}'; placements may name only the mesh's axes`;
export const msgNoAxis = (ax: string) => `mesh has no axis '${ax}'; placements may name only the mesh's axes`;

export type MsgShardNoDim<Ax extends string, D extends string> =
  `mesh axis '${Ax}': Shard<${D}> names a dim the tensor does not have; shard one of its dims`;
export const msgShardNoDim = (ax: string, d: string) =>
  `mesh axis '${ax}': Shard<${d}> names a dim the tensor does not have; shard one of its dims`;

// --- reductions and contractions -------------------------------------------------------------

export type MsgWholeDim<Op extends string, Ax extends string, D extends string> =
  `mesh axis '${Ax}': ${Op}() over '${D}' needs the whole dim but it is Shard<${D}>; gather first: redistribute(x, { ${Ax}: Replicate })`;
export const msgWholeDim = (op: string, ax: string, d: string) =>
  `mesh axis '${ax}': ${op}() over '${d}' needs the whole dim but it is Shard<${d}>; gather first: redistribute(x, { ${ax}: Replicate })`;

export type MsgContractOneSide<Ax extends string, D extends string, Arg extends string, Other> =
  `mesh axis '${Ax}': dot() contracts '${D}', which is Shard<${D}> on one side but ${Pretty<Other>} on the other; shard both alike: redistribute(${Arg}, { ${Ax}: Shard("${D}") })`;
export const msgContractOneSide = (ax: string, d: string, arg: string, other: Placement) =>
  `mesh axis '${ax}': dot() contracts '${d}', which is Shard<${d}> on one side but ${prettyPlacement(other)} on the other; shard both alike: redistribute(${arg}, { ${ax}: Shard("${d}") })`;

export type MsgTwoShards<Op extends string, Ax extends string, A, B> =
  `mesh axis '${Ax}': ${Op}() would need ${Pretty<A>} and ${Pretty<B>} at once; gather one side first: redistribute(b, { ${Ax}: Replicate })`;
export const msgTwoShards = (op: string, ax: string, a: Placement, b: Placement) =>
  `mesh axis '${ax}': ${op}() would need ${prettyPlacement(a)} and ${prettyPlacement(b)} at once; gather one side first: redistribute(b, { ${ax}: Replicate })`;

export type MsgUnsupported<Op extends string, Ax extends string, A> =
  `mesh axis '${Ax}': ${Op}() has no rule for an input that is ${Pretty<A>}; redistribute(x, { ${Ax}: Replicate }) first`;
export const msgUnsupported = (op: string, ax: string, a: Placement) =>
  `mesh axis '${ax}': ${op}() has no rule for an input that is ${prettyPlacement(a)}; redistribute(x, { ${ax}: Replicate }) first`;

// --- FP8 block quantization ------------------------------------------------------------------

/** Trace-time only (the check needs the mesh's sizes): a 128-wide tile may not straddle two shards. */
export const msgTileStraddle = (op: string, ax: string, d: string, size: number, shards: number) =>
  `mesh axis '${ax}': ${op}() tiles dim '${d}' by 128 but Shard<${d}> splits its ${size} into ${shards} pieces; a tile must not straddle a shard boundary, so the local size must be a multiple of 128 (make '${d}' a multiple of ${shards * 128} or shard another dim)`;

export type MsgScalesAgree<Op extends string, Ax extends string, Arg extends string, Want> =
  `mesh axis '${Ax}': ${Op}()'s ${Arg} must be placed like its tensor's tiles (${Pretty<Want>}); redistribute(${Arg}, { ${Ax}: ${AsCode<Want>} })`;
export const msgScalesAgree = (op: string, ax: string, arg: string, want: Placement) =>
  `mesh axis '${ax}': ${op}()'s ${arg} must be placed like its tensor's tiles (${prettyPlacement(want)}); redistribute(${arg}, { ${ax}: ${asCode(want)} })`;
