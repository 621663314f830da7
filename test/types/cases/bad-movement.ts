// concat() of tensors whose placements disagree, or that lack the joined dim.
import { Mesh, Partial, Replicate, Shard, randn, concat, redistribute } from "../../../stdlib/index.ts";

const mesh = Mesh.of({ dp: 2, tp: 2 });
const x = randn(mesh, { batch: 8, model: 16 }, "f32", { tp: Shard("batch") });
const rep = randn(mesh, { batch: 8, model: 16 }, "f32");

// every input must be placed as xs[0] is
// @expect-error mesh axis 'tp': Shard<batch> meets Replicate in concat(); make them agree: redistribute(xs[1], { tp: Shard("batch") })
export const e1 = concat([x, rep], "model");
export const ok1 = concat([x, redistribute(rep, { tp: Shard("batch") })], "model");
// the first input that differs is named
// @expect-error mesh axis 'tp': Shard<batch> meets Partial<sum> in concat(); make them agree: redistribute(xs[2], { tp: Shard("batch") })
export const e2 = concat([x, x, redistribute(rep, { tp: Partial("sum") }), rep], "model");
// Partials of one kind concat fine
export const ok2 = concat([redistribute(rep, { dp: Partial("sum") }), redistribute(rep, { dp: Partial("sum") })], "batch");
// @expect-error mesh axis 'dp': Replicate meets Shard<model> in concat(); make them agree: redistribute(xs[1], { dp: Replicate })
export const e3 = concat([rep, redistribute(rep, { dp: Shard("model") })], "batch");
export const ok3 = concat([rep, redistribute(redistribute(rep, { dp: Shard("model") }), { dp: Replicate })], "batch");

// every input must have the joined dim
// @expect-error concat() names dim 'vocab' but xs[0] has no such dim; name one of its dims
export const e4 = concat([rep, rep], "vocab");
// @expect-error concat() names dim 'model' but xs[1] has no such dim; name one of its dims
export const e5 = concat([rep, randn(mesh, { batch: 8 }, "f32")], "model");
