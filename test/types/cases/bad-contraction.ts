// dot() over a dim sharded on one side only, and batch dims that disagree. Each mistake, then its fix.
import { Mesh, Replicate, Shard, randn, dot, sum, redistribute } from "../../../stdlib/index.ts";

const mesh = Mesh.of({ dp: 2, tp: 2 });
const x = randn(mesh, { tokens: 8, hidden: 16 }, "f32", { tp: Shard("hidden") });
const wRep = randn(mesh, { hidden: 16, out: 4 }, "f32");
const wShard = randn(mesh, { hidden: 16, out: 4 }, "f32", { tp: Shard("hidden") });
const xRep = randn(mesh, { tokens: 8, hidden: 16 }, "f32");

// a is Shard<hidden>, b is whole: each rank would multiply its slice by the wrong rows.
// @expect-error mesh axis 'tp': dot() contracts 'hidden', which is Shard<hidden> on one side but Replicate on the other; shard both alike: redistribute(b, { tp: Shard("hidden") })
export const e1 = dot(x, wRep, "hidden");
export const ok1 = dot(x, redistribute(wRep, { tp: Shard("hidden") }), "hidden");
export const ok1b = dot(x, wShard, "hidden");

// Sharded on b's side only.
// @expect-error mesh axis 'tp': dot() contracts 'hidden', which is Shard<hidden> on one side but Replicate on the other; shard both alike: redistribute(a, { tp: Shard("hidden") })
export const e2 = dot(xRep, wShard, "hidden");
export const ok2 = dot(redistribute(xRep, { tp: Shard("hidden") }), wShard, "hidden");

// Contracting with a Partial<sum> on both sides.
const px = sum(randn(mesh, { tokens: 8, hidden: 16, r: 2 }, "f32", { tp: Shard("r") }), "r");
// @expect-error mesh axis 'tp': Partial<sum> meets Partial<sum> in dot(); reduce first: redistribute(b, { tp: Replicate })
export const e3 = dot(px, sum(randn(mesh, { hidden: 16, out: 4, r: 2 }, "f32", { tp: Shard("r") }), "r"), "hidden");
export const ok3 = dot(px, wRep, "hidden");

// A batch dim sharded on one side only.
const q = randn(mesh, { head: 4, seq: 8, d: 16 }, "f32", { dp: Shard("head") });
const k = randn(mesh, { head: 4, kseq: 8, d: 16 }, "f32");
// @expect-error mesh axis 'dp': Shard<head> meets Replicate in dot(); make them agree: redistribute(b, { dp: Shard("head") })
export const e4 = dot(q, k, "d");
export const ok4 = dot(q, redistribute(k, { dp: Shard("head") }), "d");

// Free dims of both sides sharded on the same axis.
const xt = randn(mesh, { tokens: 8, hidden: 16 }, "f32", { tp: Shard("tokens") });
const wo = randn(mesh, { hidden: 16, out: 4 }, "f32", { tp: Shard("out") });
// @expect-error mesh axis 'tp': dot() would need Shard<tokens> and Shard<out> at once; gather one side first: redistribute(b, { tp: Replicate })
export const e5 = dot(xt, wo, "hidden");
export const ok5 = dot(xt, redistribute(wo, { tp: Replicate }), "hidden");
