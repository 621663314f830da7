// Ops that name a dim the tensor lacks.
import { Mesh, randn, zeros, sum, mean, max, softmax, dot, gather } from "../../../stdlib/index.ts";

const mesh = Mesh.of({ dp: 2, tp: 2 });
const x = randn(mesh, { tokens: 8, model: 16 }, "f32");

// @expect-error sum() names dim 'hidden' but x has no such dim; name one of its dims
export const e1 = sum(x, "hidden");
export const ok1 = sum(x, "model");

// one of a list
// @expect-error mean() names dim 'batch' but x has no such dim; name one of its dims
export const e2 = mean(x, ["tokens", "batch"]);
export const ok2 = mean(x, ["tokens", "model"]);

// @expect-error max() names dim 'vocab' but x has no such dim; name one of its dims
export const e3 = max(x, "vocab");
export const ok3 = max(x, "model");

// @expect-error softmax() names dim 'vocab' but x has no such dim; name one of its dims
export const e4 = softmax(x, "vocab");
export const ok4 = softmax(x, "model");

// @expect-error dot() names dim 'hidden' but b has no such dim; name one of its dims
export const e5 = dot(randn(mesh, { tokens: 8, hidden: 16 }, "f32"), x, "hidden");
export const ok5 = dot(randn(mesh, { tokens: 8, hidden: 16 }, "f32"), randn(mesh, { hidden: 16, model: 16 }, "f32"), "hidden");

// @expect-error gather() names dim 'vocab' but x has no such dim; name one of its dims
export const e6 = gather(x, zeros(mesh, { n: 4 }, "i32"), "vocab");
export const ok6 = gather(x, zeros(mesh, { n: 4 }, "i32"), "tokens");
