// Ops that name a dim the tensor lacks, or would create a dim it already has.
import { Mesh, randn, zeros, sum, mean, max, softmax, dot, gather, sortByKey, rename, flatten, unflatten, topk, scatterAdd } from "../../../stdlib/index.ts";

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

// sort_by_key names its argument `keys`
// @expect-error sort_by_key() names dim 'm' but keys has no such dim; name one of its dims
export const e7 = sortByKey(zeros(mesh, { tok: 8 }, "i32"), "m", { rows: "r", groups: "g", numGroups: 2 });
export const ok7 = sortByKey(zeros(mesh, { tok: 8 }, "i32"), "tok", { rows: "r", groups: "g", numGroups: 2 });
// @expect-error sort_by_key() would create dim 'tok' but the tensor already has one; pick a new name
export const e7b = sortByKey(zeros(mesh, { b: 2, tok: 8 }, "i32"), "b", { rows: "tok", groups: "g", numGroups: 2 });
export const ok7b = sortByKey(zeros(mesh, { b: 2, tok: 8 }, "i32"), "b", { rows: "b", groups: "g", numGroups: 2 });

// a new name must be new
// @expect-error rename() would create dim 'model' but the tensor already has one; pick a new name
export const e8 = rename(x, "tokens", "model");
export const ok8 = rename(x, "tokens", "batch");
export const ok8b = rename(x, "tokens", "tokens");
// @expect-error flatten() would create dim 'model' but the tensor already has one; pick a new name
export const e9 = flatten(randn(mesh, { tokens: 8, a: 2, b: 3, model: 4 }, "f32"), ["a", "b"], "model");
export const ok9 = flatten(randn(mesh, { tokens: 8, a: 2, b: 3, model: 4 }, "f32"), ["a", "b"], "a");
// @expect-error unflatten() would create dim 'tokens' but the tensor already has one; pick a new name
export const e10 = unflatten(x, "model", { tokens: 4, m2: 4 });
export const ok10 = unflatten(x, "model", { model: 4, m2: 4 });
// @expect-error topk() would create dim 'tokens' but the tensor already has one; pick a new name
export const e11 = topk(x, "model", 2, "tokens");
export const ok11 = topk(x, "model", 2, "model");
// @expect-error scatter_add() would create dim 'model' but the tensor already has one; pick a new name
export const e12 = scatterAdd(x, zeros(mesh, { tokens: 8 }, "i32"), "tokens", { dim: "model", size: 4 });
export const ok12 = scatterAdd(x, zeros(mesh, { tokens: 8 }, "i32"), "tokens", { dim: "slot", size: 4 });
// ... and its index's dims must be src's
// @expect-error scatter_add() names dim 'k' but src has no such dim; name one of its dims
export const e13 = scatterAdd(x, zeros(mesh, { tokens: 8, k: 2 }, "i32"), "tokens", { dim: "slot", size: 4 });
