// Row ops that need the whole of a dim, given that dim sharded.
import { Mesh, Replicate, Shard, randn, softmax, logSoftmax, topk, rmsnorm, redistribute } from "../../../stdlib/index.ts";

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
