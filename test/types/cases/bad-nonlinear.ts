// Nonlinear ops on a Partial<sum>: each rank holds an addend, and f(a) + f(b) != f(a + b).
import { Mesh, Replicate, Shard, randn, exp, silu, gelu, softmax, max, sum, neg, redistribute } from "../../../stdlib/index.ts";

const mesh = Mesh.of({ dp: 2, tp: 2 });
const part = sum(randn(mesh, { r: 4, tokens: 8, model: 16 }, "f32", { tp: Shard("r") }), "r");
const whole = redistribute(part, { tp: Replicate });

// @expect-error mesh axis 'tp': exp() is not linear and its input is Partial<sum>; reduce first: redistribute(x, { tp: Replicate })
export const e1 = exp(part);
export const ok1 = exp(whole);

// @expect-error mesh axis 'tp': silu() is not linear and its input is Partial<sum>; reduce first: redistribute(x, { tp: Replicate })
export const e2 = silu(part);
export const ok2 = silu(whole);

// @expect-error mesh axis 'tp': gelu() is not linear and its input is Partial<sum>; reduce first: redistribute(x, { tp: Replicate })
export const e3 = gelu(part);
export const ok3 = gelu(whole);

// @expect-error mesh axis 'tp': softmax() is not linear and its input is Partial<sum>; reduce first: redistribute(x, { tp: Replicate })
export const e4 = softmax(part, "model");
export const ok4 = softmax(whole, "model");

// max over a Partial<sum> is not the max of the sum.
// @expect-error mesh axis 'tp': max() is not linear and its input is Partial<sum>; reduce first: redistribute(x, { tp: Replicate })
export const e5 = max(part, "model");
export const ok5 = max(whole, "model");

// and sum over a Partial<max> is not the sum of the max.
const pmax = max(randn(mesh, { r: 4, model: 16 }, "f32", { tp: Shard("r") }), "r");
// @expect-error mesh axis 'tp': sum() is not linear and its input is Partial<max>; reduce first: redistribute(x, { tp: Replicate })
export const e6 = sum(pmax, "model");
export const ok6 = sum(redistribute(pmax, { tp: Replicate }), "model");

// Linear ops pass a Partial<sum> through: sum and neg are fine.
export const ok7 = neg(sum(part, "model"));
