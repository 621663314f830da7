// The result TYPES are computed: dims, dtype and placements of an op's output are checked by tsc.
import { Mesh, DTensor, Shard, randn, dot, sum, cast } from "../../../stdlib/index.ts";

const mesh = Mesh.of({ dp: 2, tp: 2 });
const x = randn(mesh, { batch: 8, model: 16 }, "f32", { dp: Shard("batch"), tp: Shard("model") });
const w = randn(mesh, { model: 16, ffn: 32 }, "f32", { tp: Shard("model") });
const y = dot(x, w, "model");

export const check: DTensor<{ batch: 8; ffn: 32 }, "f32", { dp: "S(batch)"; tp: "P(sum)" }> = y;

// wrong placement on tp
// @expect-error Type '"P(sum)"' is not assignable to type '"R"'
export const bad1: DTensor<{ batch: 8; ffn: 32 }, "f32", { dp: "S(batch)"; tp: "R" }> = y;

// wrong dim size
// @expect-error Type '32' is not assignable to type '16'
export const bad2: DTensor<{ batch: 8; ffn: 16 }, "f32", { dp: "S(batch)"; tp: "P(sum)" }> = y;

// wrong dtype
// @expect-error Type '"f32"' is not assignable to type '"bf16"'
export const bad3: DTensor<{ batch: 8; ffn: 32 }, "bf16", { dp: "S(batch)"; tp: "P(sum)" }> = y;

// a cast changes the dtype only; a sum over a sharded dim is Partial<sum>
export const s: DTensor<{ model: 16 }, "bf16", { dp: "P(sum)"; tp: "S(model)" }> = sum(cast(x, "bf16"), "batch");
// (a cast that rounds is not linear, so it may not take that Partial<sum>)
// @expect-error mesh axis 'dp': cast() is not linear and its input is Partial<sum>; reduce first: redistribute(x, { dp: Replicate })
export const bad5 = cast(sum(x, "batch"), "bf16");
// @expect-error Type '"P(sum)"' is not assignable to type '"S(batch)"'
export const bad4: DTensor<{ model: 16 }, "f32", { dp: "S(batch)"; tp: "S(model)" }> = sum(x, "batch");
