// Block-scaled FP8 (DeepSeek-V3): quantize to e4m3 with one f32 scale per 1×128 / 128×1 / 128×128
// tile, dequantize, and the scaled contraction. Types mirror compiler/ops/quantize.ts and
// scaled-dot.ts; the scale layout is described there.
import type { MsgNeedsDType } from "../../compiler/messages.ts";
import type { AnyDTensor, DTensor } from "../dtensor.ts";
import type { DimsOf, DTypeOf, ErrorsOf, Fail, IfTyped, MissingDim, Or, Placed, PlacementsOf, Prettify } from "../types/core.ts";
import type { DotErrors, DotOut } from "./contraction.ts";
import type { QuantizeRule, ScalePlacement } from "../types/rules.ts";
import { dimList, trace } from "./trace.ts";

export type Tiling = "1x128" | "128x1" | "128x128";
/** The scale tensor's dims: x's, each tiled dim `d` replaced by `d_tiles` (ceil(size/128)). */
export type ScaleDims<D, T extends string> = Prettify<{ [K in keyof D as K extends T ? `${K & string}_tiles` : K]: K extends T ? number : D[K] }>;

type QRes<X, T extends string> = { [Ax in keyof PlacementsOf<X> & string]: QuantizeRule<Ax, PlacementsOf<X>[Ax]> };
type SRes<X, T extends string> = { [Ax in keyof PlacementsOf<X> & string]: ScalePlacement<Placed<QRes<X, T>>[Ax], T> };
type NeedFloat<Op extends string, T> = IfTyped<T, T extends "f32" | "bf16" ? never : MsgNeedsDType<Op, T & string, "f32 or bf16">>;
/** compiler/ops/quantize.ts quantize, in its order: a float input, the tiled dims, then placements. */
type QuantizeErrors<X, T> = Or<NeedFloat<"quantize", DTypeOf<X>>, Or<MissingDim<"quantize", DimsOf<X>, T, "x">, ErrorsOf<QRes<X, T & string>>>>;

export type Quantized<X, T extends string> = {
  q: DTensor<DimsOf<X>, "fp8e4m3", Placed<QRes<X, T>>>;
  scales: DTensor<ScaleDims<DimsOf<X>, T>, "f32", SRes<X, T>>;
};

/**
 * Quantizes x to e4m3 with one f32 scale (amax/448) per tile: "1x128" (activations) and "128x1"
 * (Wgrad's transposed tiling) tile one named dim, "128x128" (weights) two.
 */
export function quantize<X extends AnyDTensor, const T extends string>(
  x: X & Fail<QuantizeErrors<X, T>>,
  tiling: Tiling,
  dims: T | readonly T[],
): Quantized<X, T> {
  const [q, scales] = trace("quantize", [x], { tiling, dims: dimList("quantize", dims) });
  return { q, scales } as never;
}

/** f32(q · scale) per element, rounded to `out` (bf16 unless told). */
export function dequantize<Q extends AnyDTensor, S extends AnyDTensor, O extends "f32" | "bf16" = "bf16">(
  q: Q,
  scales: S,
  opts?: { out?: O },
): DTensor<DimsOf<Q>, O, PlacementsOf<Q>> {
  return trace("dequantize", [q, scales], opts?.out ? { out: opts.out } : {})[0] as never;
}

/**
 * The block-scaled FP8 contraction: dot(a, b) on quantize() outputs, scales applied every 128 of
 * the one contracted dim both sides tile (bf16 out unless told). Typed like dot.
 */
export function scaledDot<A extends AnyDTensor, B extends AnyDTensor, const C extends string, O extends "f32" | "bf16" = "bf16">(
  a: { q: A; scales: AnyDTensor },
  b: { q: B & Fail<DotErrors<A, B, C>>; scales: AnyDTensor },
  contract: C | readonly C[],
  opts?: { out?: O },
): DotOut<A, B, C, O> {
  return trace("scaled_dot", [a.q, a.scales, b.q, b.scales], { contract: dimList("scaledDot", contract), out: opts?.out ?? "bf16" })[0] as never;
}
