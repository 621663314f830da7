// dtype mistakes: mixed dtypes, FP8 outside dot()/cast(), i32 into float-only ops.
import { Mesh, randn, zeros, iota, add, exp, softmax, cast, dot, relu, neg, mean, topk, where, scatterAdd } from "../../../stdlib/index.ts";

const mesh = Mesh.of({ dp: 2, tp: 2 });
const x = randn(mesh, { tokens: 8, model: 16 }, "f32");
const xb = randn(mesh, { tokens: 8, model: 16 }, "bf16");

// @expect-error add() got f32 and bf16; cast one side first: cast(b, "f32")
export const e1 = add(x, xb);
export const ok1 = add(x, cast(xb, "f32"));

const x8 = cast(x, "fp8e4m3");
// @expect-error add() does not take fp8e4m3; FP8 tensors go only into dot() or cast(): cast(x, "bf16") first
export const e2 = add(x8, x8);
export const ok2 = add(cast(x8, "bf16"), cast(x8, "bf16"));

// @expect-error exp() does not take fp8e4m3; FP8 tensors go only into dot() or cast(): cast(x, "bf16") first
export const e3 = exp(x8);
export const ok3 = exp(cast(x8, "bf16"));

// @expect-error softmax() does not take fp8e4m3; it needs f32 or bf16
export const e4 = softmax(x8, "model");
export const ok4 = softmax(cast(x8, "f32"), "model");

// FP8 is fine in dot() (bf16 out) and in cast()
export const ok5 = dot(x8, cast(randn(mesh, { model: 16, out: 4 }, "f32"), "fp8e4m3"), "model");
// but not mixed with a non-FP8 operand
// @expect-error dot() got fp8e4m3 and f32; cast one side first: cast(b, "fp8e4m3")
export const e5 = dot(x8, randn(mesh, { model: 16, out: 4 }, "f32"), "model");
export const ok5b = dot(x8, cast(randn(mesh, { model: 16, out: 4 }, "f32"), "fp8e5m2"), "model");

const ids = iota(mesh, { tokens: 8 }, "i32", "tokens");
// @expect-error exp() does not take i32; it needs f32 or bf16
export const e6 = exp(ids);
export const ok6 = exp(cast(ids, "f32"));
// integer-safe unary ops take i32
export const ok7 = relu(neg(ids));

// @expect-error dot() does not take i32; it needs f32, bf16 or FP8
export const e7 = dot(ids, iota(mesh, { tokens: 8 }, "i32", "tokens"), "tokens");
export const ok8 = dot(cast(ids, "f32"), iota(mesh, { tokens: 8 }, "f32", "tokens"), "tokens");

// mean() needs a float (sum() and max() take i32)
// @expect-error mean() does not take i32; it needs f32 or bf16
export const e8 = mean(ids, "tokens");
export const ok9 = mean(cast(ids, "f32"), "tokens");

// topk() takes i32 (and any non-FP8 dtype), but FP8 goes only into dot() or cast()
// @expect-error topk() does not take fp8e4m3; FP8 tensors go only into dot() or cast(): cast(x, "bf16") first
export const e9 = topk(x8, "model", 2, "k");
export const ok10 = topk(cast(x8, "bf16"), "model", 2, "k");

// an FP8 condition of where(), and an FP8 src of scatterAdd(), are FP8 outside dot()/cast() too
// @expect-error where() does not take fp8e4m3; FP8 tensors go only into dot() or cast(): cast(x, "bf16") first
export const e10 = where(x8, 1, 0);
export const ok11 = where(cast(x8, "f32"), 1, 0);
// @expect-error scatter_add() does not take fp8e4m3; FP8 tensors go only into dot() or cast(): cast(x, "bf16") first
export const e11 = scatterAdd(x8, zeros(mesh, { tokens: 8 }, "i32"), "tokens", { dim: "m", size: 4 });
export const ok12 = scatterAdd(cast(x8, "bf16"), zeros(mesh, { tokens: 8 }, "i32"), "tokens", { dim: "m", size: 4 });
