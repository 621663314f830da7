// FP8 block quantization: quantize takes f32/bf16 and refuses a Partial; the scales' types follow.
import { Mesh, randn, cast, dot, redistribute, Shard, Replicate, quantize, scaledDot } from "../../../stdlib/index.ts";

const mesh = Mesh.of({ dp: 2, tp: 2 });
const x = randn(mesh, { tokens: 256, model: 256 }, "bf16", { dp: Shard("tokens") });
const w = randn(mesh, { model: 256, ffn: 128 }, "bf16");

// @expect-error quantize() does not take fp8e4m3; it needs f32 or bf16
export const e1 = quantize(cast(x, "fp8e4m3"), "1x128", "model");
// @expect-error quantize() names dim 'hidden' but x has no such dim; name one of its dims
export const e2 = quantize(x, "1x128", "hidden");
const partial = dot(randn(mesh, { tokens: 256, k: 8 }, "bf16", { tp: Shard("k") }), randn(mesh, { k: 8, model: 256 }, "bf16", { tp: Shard("k") }), "k");
// @expect-error mesh axis 'tp': quantize() is not linear and its input is Partial<sum>; reduce first: redistribute(x, { tp: Replicate })
export const e3 = quantize(partial, "1x128", "model");
export const ok3 = quantize(redistribute(partial, { tp: Replicate }), "1x128", "model");

// the result types: q keeps x's placements, the scales' tiled dim becomes model_tiles
const qx = quantize(x, "1x128", "model");
export const okq: { tokens: 256; model: 256 } = qx.q.dims;
export const oks: "S(tokens)" = qx.scales.placements.dp;
export const okm: number = qx.scales.dims.model_tiles;
export const y = scaledDot(qx, quantize(w, "128x128", ["ffn", "model"]), "model");
export const oky: "bf16" = y.dtype;
// @expect-error dot() names dim 'nope' but a has no such dim; name one of its dims
export const e4 = scaledDot(qx, quantize(w, "128x128", ["ffn", "model"]), "nope");
