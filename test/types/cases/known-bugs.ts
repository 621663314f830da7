// KNOWN LIBRARY BUGS: the type-level rules disagree with the trace-time rules (compiler/ops) here.
// Each line states the CORRECT expectation (what the runtime rule does), so this file fails today;
// test/types/cases.test.ts marks it `it.fails` until stdlib/ops is fixed. Remove the marker then.
import { Mesh, Shard, randn, zeros, iota, sum, mean, cast, concat, flatten, split, unflatten, topk, where, scatterAdd, rename } from "../../../stdlib/index.ts";

const mesh = Mesh.of({ dp: 2, tp: 2 });
const x = randn(mesh, { batch: 8, model: 16 }, "f32", { tp: Shard("batch") });
const ints = iota(mesh, { n: 8 }, "i32", "n");
const x8 = cast(randn(mesh, { n: 8, d: 2 }, "f32"), "fp8e4m3");

// BUG 1: concat() has no type-level placement rule; concatenating along a sharded dim type-checks.
// @expect-error mesh axis 'tp': concat() over 'batch' needs the whole dim but it is Shard<batch>; gather first: redistribute(x, { tp: Replicate })
export const b1 = concat([x, x], "batch");
// BUG 1b: ... nor do tensors whose placements disagree.
// @expect-error mesh axis 'tp': Shard<batch> meets Replicate in concat(); make them agree: redistribute(xs[1], { tp: Shard("batch") })
export const b1b = concat([x, randn(mesh, { batch: 8, model: 16 }, "f32")], "model");

// BUG 2: flatten/unflatten/split move data without changing values, so the runtime lets a Partial
// through (compiler/ops/movement.ts passThrough), but the types use WholeDimRule, which rejects it.
const part = sum(randn(mesh, { a: 2, b: 3, c: 4 }, "f32", { tp: Shard("a") }), "a");
export const b2a = flatten(part, ["b", "c"], "bc");
export const b2b = unflatten(part, "c", { c1: 2, c2: 2 });
export const b2c = split(part, "b", [1, 2]);

// BUG 3: mean() of i32 is a DTypeError at trace time but type-checks.
// @expect-error mean() does not take i32; it needs f32 or bf16
export const b3 = mean(ints, "n");

// BUG 4: topk() accepts i32 at trace time (and rejects FP8 with the FP8 message), but the types
// reuse WholeDimErrors, which rejects i32 and gives FP8 the "it needs f32 or bf16" text.
export const b4a = topk(ints, "n", 2, "k");
// @expect-error topk() does not take fp8e4m3; FP8 tensors go only into dot() or cast(): cast(x, "bf16") first
export const b4b = topk(x8, "n", 2, "k");

// BUG 5: an FP8 `cond` of where() and an FP8 `src` of scatterAdd() are DTypeErrors at trace time
// but type-check.
// @expect-error where() does not take fp8e4m3; FP8 tensors go only into dot() or cast(): cast(x, "bf16") first
export const b5a = where(x8, 1, 0);
// @expect-error scatter_add() does not take fp8e4m3; FP8 tensors go only into dot() or cast(): cast(x, "bf16") first
export const b5b = scatterAdd(x8, zeros(mesh, { n: 8 }, "i32"), "n", { dim: "m", size: 4 });

// BUG 6: renaming onto an existing dim is a ShapeError (msgDimExists) at trace time; no type has it.
// @expect-error rename() would create dim 'model' but the tensor already has one; pick a new name
export const b6 = rename(x, "batch", "model");
