// Routing ops (gather / embedding, scatter_add, sort_by_key, segment_dot) with mismatched placements or dtypes.
import { Mesh, Replicate, Shard, Partial, randn, zeros, sum, gather, embedding, scatterAdd, sortByKey, segmentDot, redistribute } from "../../../stdlib/index.ts";

const mesh = Mesh.of({ dp: 2, tp: 2 });
const table = randn(mesh, { vocab: 32, model: 16 }, "f32", { tp: Shard("vocab") });
const ids = zeros(mesh, { tokens: 8 }, "i32");

// an index must be i32
// @expect-error gather() does not take f32; it needs i32
export const e1 = embedding(table, randn(mesh, { tokens: 8 }, "f32"), "vocab");
export const ok1 = embedding(table, ids, "vocab");

// an index that is a Partial<sum> holds no usable positions: the fix reduces the index
const pidx = sum(zeros(mesh, { r: 2, tokens: 8 }, "i32", { tp: Shard("r") }), "r");
// @expect-error mesh axis 'tp': gather() needs whole positions but its index is Partial<sum>; reduce first: redistribute(index, { tp: Replicate })
export const e2 = gather(table, pidx, "vocab");
export const ok2 = gather(table, redistribute(pidx, { tp: Replicate }), "vocab");
// @expect-error mesh axis 'tp': scatter_add() needs whole positions but its index is Partial<sum>; reduce first: redistribute(index, { tp: Replicate })
export const e2b = scatterAdd(randn(mesh, { tokens: 8, d: 4 }, "f32"), pidx, "tokens", { dim: "slot", size: 4 });
export const ok2b = scatterAdd(randn(mesh, { tokens: 8, d: 4 }, "f32"), redistribute(pidx, { tp: Replicate }), "tokens", { dim: "slot", size: 4 });

// a batch dim of x and index sharded on one side only
const xb = randn(mesh, { b: 4, n: 8, d: 2 }, "f32", { dp: Shard("b") });
const ib = zeros(mesh, { b: 4, k: 3 }, "i32");
// @expect-error mesh axis 'dp': Shard<b> meets Replicate in gather(); make them agree: redistribute(index, { dp: Shard("b") })
export const e3 = gather(xb, ib, "n");
export const ok3 = gather(xb, redistribute(ib, { dp: Shard("b") }), "n");

// scatter_add: rows split across ranks need the index split the same way
const src = randn(mesh, { tok: 8, d: 4 }, "f32", { dp: Shard("tok") });
const to = zeros(mesh, { tok: 8 }, "i32");
// @expect-error mesh axis 'dp': Shard<tok> meets Replicate in scatter_add(); make them agree: redistribute(index, { dp: Shard("tok") })
export const e4 = scatterAdd(src, to, "tok", { dim: "slot", size: 8 });
export const ok4 = scatterAdd(src, redistribute(to, { dp: Shard("tok") }), "tok", { dim: "slot", size: 8 });

// sort_by_key needs i32 keys and the whole sorted dim
// @expect-error sort_by_key() does not take f32; it needs i32
export const e5 = sortByKey(randn(mesh, { tok: 8 }, "f32"), "tok", { rows: "slot", groups: "g", numGroups: 4 });
// @expect-error mesh axis 'dp': sort_by_key() over 'tok' needs the whole dim but it is Shard<tok>; gather first: redistribute(x, { dp: Replicate })
export const e6 = sortByKey(zeros(mesh, { tok: 8 }, "i32", { dp: Shard("tok") }), "tok", { rows: "slot", groups: "g", numGroups: 4 });
const routed = sortByKey(zeros(mesh, { tok: 8 }, "i32"), "tok", { rows: "slot", groups: "g", numGroups: 4 });

// segment_dot: counts may not be a Partial
const xs = gather(randn(mesh, { tok: 8, model: 16 }, "f32"), routed.perm, "tok");
const wE = randn(mesh, { g: 4, model: 16, ffn: 8 }, "f32", { tp: Shard("g") });
// @expect-error mesh axis 'tp': segment_dot() has no rule for an input that is Partial<sum>; redistribute(x, { tp: Replicate }) first
export const e7 = segmentDot(xs, wE, redistribute(routed.counts, { tp: Partial("sum") }), "model", { rows: "slot", groups: "g" });
// expert parallel: w sharded by group gives rows sharded by segment
export const ok7 = segmentDot(xs, wE, routed.counts, "model", { rows: "slot", groups: "g" });
