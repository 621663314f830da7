// The FP8 recipe of a Linear (DeepSeek-V3 §3.3): X quantized in 1×128 tiles along the contracted
// dim, W in 128×128 blocks, the block-scaled contraction with a bf16 output. The backward is the
// gradient rules of the ops it traces (compiler/ops/quantize.ts, scaled-dot.ts): Dgrad = dY(1×128)
// · W's blocks transposed, Wgrad = X requantized 128×1 · dY(128×1), both FP8 with bf16 outputs;
// quantize passes the gradient straight through to the bf16/f32 value (the FP32 master weight).
import type { AnyDTensor } from "../dtensor.ts";
import { cast } from "../ops/elementwise.ts";
import { quantize, scaledDot } from "../ops/quantize.ts";
import { trace } from "../ops/trace.ts";

/** x · w over `inDim` in FP8; w's other dim is `outDim`; the result has x's dtype (computed in bf16). */
export function fp8Dot(x: AnyDTensor, w: AnyDTensor, inDim: string, outDim: string): AnyDTensor {
  const qx = quantize(x as never, "1x128", inDim) as { q: AnyDTensor; scales: AnyDTensor };
  const qw = quantize(w as never, "128x128", [outDim, inDim]) as { q: AnyDTensor; scales: AnyDTensor };
  const y = scaledDot(qx, qw as never, inDim) as AnyDTensor;
  return x.dtype === "bf16" ? y : (cast(y as never, x.dtype) as AnyDTensor);
}

/**
 * The routed experts' FP8 contraction: rows (x's segmented dim, the dispatched tokens) quantized
 * 1×128 along `inDim`, each expert's weight [groups, inDim, outDim] in 128×128 blocks, the grouped
 * block-scaled contraction over the segments with a bf16 output (compiler/ops/scaled-segment.ts);
 * its gradient is FP8 too (Dgrad 1×128 × blocks transposed, Wgrad 128×1 per expert segment).
 */
export function fp8SegmentDot(x: AnyDTensor, w: AnyDTensor, counts: AnyDTensor, inDim: string, outDim: string): AnyDTensor {
  const qx = quantize(x as never, "1x128", inDim) as { q: AnyDTensor; scales: AnyDTensor };
  const qw = quantize(w as never, "128x128", [outDim, inDim]) as { q: AnyDTensor; scales: AnyDTensor };
  const y = trace("scaled_segment_dot", [qx.q, qx.scales, qw.q, qw.scales, counts], { contract: inDim, out: "bf16" })[0] as AnyDTensor;
  return x.dtype === "bf16" ? y : (cast(y as never, x.dtype) as AnyDTensor);
}
