// The same dim name with two different literal sizes.
import { Mesh, randn, add, dot, where, gather, zeros } from "../../../stdlib/index.ts";

const mesh = Mesh.of({ dp: 2, tp: 2 });
const a = randn(mesh, { tokens: 8, model: 16 }, "f32");
const b = randn(mesh, { model: 12 }, "f32");

// @expect-error dim 'model' is 16 in a but 12 in b in add(); sizes of a named dim must agree
export const e1 = add(a, b);
export const ok1 = add(a, randn(mesh, { model: 16 }, "f32"));

const w = randn(mesh, { model: 12, out: 4 }, "f32");
// @expect-error dim 'model' is 16 in a but 12 in b in dot(); sizes of a named dim must agree
export const e2 = dot(a, w, "model");
export const ok2 = dot(a, randn(mesh, { model: 16, out: 4 }, "f32"), "model");

// a disagreeing batch (not contracted) dim counts too
// @expect-error dim 'tokens' is 8 in a but 6 in b in dot(); sizes of a named dim must agree
export const e3 = dot(a, randn(mesh, { tokens: 6, model: 16 }, "f32"), "model");
export const ok3 = dot(a, randn(mesh, { tokens: 8, model: 16 }, "f32"), "model");

// a size and a dtype mistake at once: the sizes are checked first, as at trace time
// (compiler/ops/rules.ts unionDims before sameDType; contraction.ts dotDims before contractDType)
// @expect-error dim 'model' is 16 in a but 12 in b in add(); sizes of a named dim must agree
export const e4 = add(a, randn(mesh, { model: 12 }, "bf16"));
// @expect-error dim 'model' is 16 in a but 12 in b in dot(); sizes of a named dim must agree
export const e5 = dot(a, randn(mesh, { model: 12, out: 4 }, "bf16"), "model");

// where() checks cond, a and b alike
// @expect-error dim 'model' is 16 in a but 12 in b in where(); sizes of a named dim must agree
export const e6 = where(a, b, 0);
export const ok6 = where(a, randn(mesh, { model: 16 }, "f32"), 0);
// gather(): a batch dim shared by x and index
// @expect-error dim 'tokens' is 8 in a but 6 in b in gather(); sizes of a named dim must agree
export const e7 = gather(a, zeros(mesh, { tokens: 6, k: 2 }, "i32"), "model");
export const ok7 = gather(a, zeros(mesh, { tokens: 8, k: 2 }, "i32"), "model");
