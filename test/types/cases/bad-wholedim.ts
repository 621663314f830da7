// Row ops that need the whole of a dim, given that dim sharded.
import { Mesh, Replicate, Shard, randn, softmax, logSoftmax, topk, rmsnorm, redistribute, concat, flatten, unflatten, split } from "../../../stdlib/index.ts";

const mesh = Mesh.of({ dp: 2, tp: 2 });
const logits = randn(mesh, { tokens: 8, vocab: 32 }, "f32", { dp: Shard("tokens"), tp: Shard("vocab") });
const whole = redistribute(logits, { tp: Replicate });

// @expect-error mesh axis 'tp': softmax() over 'vocab' needs the whole dim but it is Shard<vocab>; gather first: redistribute(x, { tp: Replicate })
export const e1 = softmax(logits, "vocab");
export const ok1 = softmax(whole, "vocab");
// over another dim a shard of 'vocab' is fine... but 'tokens' is sharded on dp:
// @expect-error mesh axis 'dp': softmax() over 'tokens' needs the whole dim but it is Shard<tokens>; gather first: redistribute(x, { dp: Replicate })
export const e1b = softmax(logits, "tokens");

// @expect-error mesh axis 'tp': log_softmax() over 'vocab' needs the whole dim but it is Shard<vocab>; gather first: redistribute(x, { tp: Replicate })
export const e2 = logSoftmax(logits, "vocab");
export const ok2 = logSoftmax(whole, "vocab");

// @expect-error mesh axis 'tp': topk() over 'vocab' needs the whole dim but it is Shard<vocab>; gather first: redistribute(x, { tp: Replicate })
export const e3 = topk(logits, "vocab", 2, "k");
export const ok3 = topk(whole, "vocab", 2, "k");

const h = randn(mesh, { tokens: 8, model: 16 }, "f32", { tp: Shard("model") });
// @expect-error mesh axis 'tp': rmsnorm() over 'model' needs the whole dim but it is Shard<model>; gather first: redistribute(x, { tp: Replicate })
export const e4 = rmsnorm(h, randn(mesh, { model: 16 }, "f32"), "model");
export const ok4 = rmsnorm(redistribute(h, { tp: Replicate }), randn(mesh, { model: 16 }, "f32"), "model");

// movement ops restructure a dim, so it must be whole (a shard of another dim is fine)
const xb = randn(mesh, { batch: 8, model: 16 }, "f32", { tp: Shard("batch") });
// @expect-error mesh axis 'tp': concat() over 'batch' needs the whole dim but it is Shard<batch>; gather first: redistribute(x, { tp: Replicate })
export const e5 = concat([xb, xb], "batch");
export const ok5 = concat([xb, xb], "model");
// @expect-error mesh axis 'tp': flatten() over 'batch' needs the whole dim but it is Shard<batch>; gather first: redistribute(x, { tp: Replicate })
export const e6 = flatten(xb, ["model", "batch"], "mb");
export const ok6 = flatten(redistribute(xb, { tp: Replicate }), ["model", "batch"], "mb");
// @expect-error mesh axis 'tp': unflatten() over 'batch' needs the whole dim but it is Shard<batch>; gather first: redistribute(x, { tp: Replicate })
export const e7 = unflatten(xb, "batch", { b1: 2, b2: 4 });
export const ok7 = unflatten(xb, "model", { m1: 2, m2: 8 });
// @expect-error mesh axis 'tp': split() over 'batch' needs the whole dim but it is Shard<batch>; gather first: redistribute(x, { tp: Replicate })
export const e8 = split(xb, "batch", [4, 4]);
export const ok8 = split(xb, "model", [4, 12]);
