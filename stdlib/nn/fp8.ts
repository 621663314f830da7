// The FP8 recipe of a Linear (DeepSeek-V3 §3.3): X quantized in 1×128 tiles along the contracted
// dim, W in 128×128 blocks, the block-scaled contraction with a bf16 output. The backward is the
// gradient rules of the ops it traces (compiler/ops/quantize.ts, scaled-dot.ts): Dgrad = dY(1×128)
// · W's blocks transposed, Wgrad = X requantized 128×1 · dY(128×1), both FP8 with bf16 outputs;
// quantize passes the gradient straight through to the bf16/f32 value (the FP32 master weight).
// The same for the routed MoE experts, whose tokens may be quantized before they are dispatched.
import type { AnyDTensor } from "../dtensor.ts";
import { DTypeError } from "../../compiler/errors.ts";
import type { Attrs } from "../../compiler/ir/types.ts";
import { cast } from "../ops/elementwise.ts";
import { quantize, scaledDot } from "../ops/quantize.ts";
import { trace } from "../ops/trace.ts";
import { moeDispatch, moeRedispatch, type DispatchOpts } from "../ops/dispatch.ts";

/** x · w over `inDim` in FP8; w's other dim is `outDim`; the result has x's dtype (computed in bf16). */
export function fp8Dot(x: AnyDTensor, w: AnyDTensor, inDim: string, outDim: string): AnyDTensor {
  const qx = quantize(x as never, "1x128", inDim) as { q: AnyDTensor; scales: AnyDTensor };
  const qw = quantize(w as never, "128x128", [outDim, inDim]) as { q: AnyDTensor; scales: AnyDTensor };
  const y = scaledDot(qx, qw as never, inDim) as AnyDTensor;
  return x.dtype === "bf16" ? y : (cast(y as never, x.dtype) as AnyDTensor);
}

/** Rows already in FP8: e4m3 codes and their 1×128 scales along the contracted dim, and the dtype they were quantized from. */
export interface Fp8Rows {
  q: AnyDTensor;
  scales: AnyDTensor;
  /** The dtype of the rows before quantize: that of their gradient and of the contraction's result. */
  dtype: "f32" | "bf16";
}

export const isFp8Rows = (x: AnyDTensor | Fp8Rows): x is Fp8Rows => "scales" in x;

/**
 * MoE dispatch in FP8 (DeepSeek-V3: FP8 for dispatch, BF16 for combine): the tokens quantized 1×128
 * along `inDim`, then moe_dispatch moves their e4m3 codes and moe_redispatch their f32 scales by the
 * same perm: d + 4·d/128 bytes a row instead of 2·d. A 1×128 tile lies within one row and dispatch
 * copies rows whole, so codes and scales are bit for bit those of quantizing after the dispatch.
 * The gradient returns through dispatch's transpose in the tokens' dtype (quantize is straight
 * through; fp8SegmentDot casts Dgrad to it, as quantize after the dispatch would).
 * The scales take a second token exchange (4 bytes per 128 elements, 3% of the codes' bytes, but its
 * own all-to-all-v latency). One exchange would need moe_dispatch to carry a second payload: an
 * optional scales input and output in its rules, and on CUDA codes and scales packed into one byte row
 * per token by the gather kernel (one grouped send/recv) and unpacked where the GEMM reads them.
 */
export function fp8Dispatch(x: AnyDTensor, indices: AnyDTensor, o: DispatchOpts, inDim: string): { rows: Fp8Rows; perm: AnyDTensor; counts: AnyDTensor } {
  if (x.dtype !== "f32" && x.dtype !== "bf16") throw new DTypeError(`fp8Dispatch() quantizes f32 or bf16 tokens, got ${x.dtype}; cast(x, "bf16") first`);
  const qx = quantize(x as never, "1x128", inDim) as { q: AnyDTensor; scales: AnyDTensor };
  const d = moeDispatch(qx.q, indices, o);
  const scales = moeRedispatch(qx.scales, d.perm, null, { axis: o.axis, dim: o.dim, size: x.dims[o.dim]!, k: o.k, numK: indices.dims[o.k]! });
  return { rows: { q: d.rows, scales, dtype: x.dtype }, perm: d.perm, counts: d.counts };
}

/**
 * The routed experts' FP8 contraction: rows (x's segmented dim, the dispatched tokens) quantized
 * 1×128 along `inDim` (or already quantized: fp8Dispatch's rows), each expert's weight [groups,
 * inDim, outDim] in 128×128 blocks, the grouped block-scaled contraction over the segments with a
 * bf16 output (compiler/ops/scaled-segment.ts); its gradient is FP8 too (Dgrad 1×128 × blocks
 * transposed, Wgrad 128×1 per expert segment). The result has the rows' dtype.
 */
export function fp8SegmentDot(x: AnyDTensor | Fp8Rows, w: AnyDTensor, counts: AnyDTensor, inDim: string, outDim: string): AnyDTensor {
  const qx = isFp8Rows(x) ? x : (quantize(x as never, "1x128", inDim) as { q: AnyDTensor; scales: AnyDTensor });
  const qw = quantize(w as never, "128x128", [outDim, inDim]) as { q: AnyDTensor; scales: AnyDTensor };
  // rows quantized before the dispatch have no quantize of their own to cast their gradient back
  const attrs: Attrs = { contract: inDim, out: "bf16" };
  if (isFp8Rows(x) && x.dtype === "f32") attrs.dx = "f32";
  const y = trace("scaled_segment_dot", [qx.q, qx.scales, qw.q, qw.scales, counts], attrs)[0] as AnyDTensor;
  return x.dtype === "bf16" ? y : (cast(y as never, x.dtype) as AnyDTensor);
}
