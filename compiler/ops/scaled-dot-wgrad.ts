// `scaled_dot_wgrad(a, a_scales, gy)`: scaled_dot's FP8 weight gradient as one op (DeepSeek-V3 §3.5.2).
// a is the forward's A (e4m3 with its scales: 1×128 tiles along the dim the forward contracted), gy the
// output's gradient (bf16 or f32), attrs { contract, out }: `contract` the token dims that a and gy share
// (the forward's free dims of a), the last of them the tiled one. The value is exactly the composition it
// stands for, and its CPU reference is that composition:
//   dequantize(a, a_scales) → f32;  both it and gy quantize(…, "128x1", [contract's last]);
//   scaled_dot of the two over `contract` (promoted every 128 tokens), bf16 out unless told.
// As one op, the CUDA path (runtime/cuda/fp8-dot-wgrad.ts) quantizes both operands 128×1 straight into the
// GEMM's K-major layout from a's codes and gy's values: no f32 copy of a, no transposes.
// Placements: the composition's rules (no Partial operand; whole 128-token tiles on every rank; then dot's
// rule over `contract`, so token-sharded operands give a Partial weight gradient).
import type { Attrs, TensorType } from "../ir/types.ts";
import type { LocalTensor } from "../ir/local.ts";
import { DTypeError, ShapeError, ShardingError } from "../errors.ts";
import { isPartial } from "../ir/placement.ts";
import { msgNeedsDType, msgReduceFirst, msgScalesAgree } from "../messages.ts";
import { defineOps, type OpDef } from "./registry.ts";
import { dotDims, dotRule } from "./contraction.ts";
import { checkWholeTiles, dequantizeValues, quantizeValues, scaleDims, scalePlacement, tiledDimsOf } from "./quantize.ts";
import { scaledDotCpu } from "./scaled-dot.ts";

export const WGRAD_OP = "scaled_dot_wgrad";

export interface DotWgradDims {
  dd: ReturnType<typeof dotDims>;
  /** The dims of a its scales tile (the forward's promotion dim K, 1×128). */
  tiledA: string[];
  /** The token dim both operands are requantized 128×1 along (contract's last). */
  tok: string;
  out: "bf16" | "f32";
}

export function dotWgradDims(a: TensorType, sa: TensorType, gy: TensorType, attrs: Attrs): DotWgradDims {
  if (a.dtype !== "fp8e4m3") throw new DTypeError(msgNeedsDType(WGRAD_OP, a.dtype, "fp8e4m3 for a (the forward's quantized A)"));
  if (gy.dtype !== "bf16" && gy.dtype !== "f32") throw new DTypeError(msgNeedsDType(WGRAD_OP, gy.dtype, "bf16 or f32 for gy (it is quantized 128x1 here)"));
  const contract = attrs.contract;
  if (!Array.isArray(contract) || contract.length === 0 || !contract.every((d) => typeof d === "string"))
    throw new ShapeError(`${WGRAD_OP}() contract must name the token dims a and gy share, got ${JSON.stringify(contract)}`);
  const dd = dotDims(a, gy, contract as string[]);
  const tiledA = tiledDimsOf(WGRAD_OP, a, sa, "a_scales");
  const out = attrs.out ?? "bf16";
  if (out !== "bf16" && out !== "f32") throw new DTypeError(`${WGRAD_OP}() output dtype must be f32 or bf16, got ${JSON.stringify(out)}`);
  return { dd, tiledA, tok: dd.contract[dd.contract.length - 1]!, out };
}

/**
 * The types of the scaled_dot the op stands for: a's and gy's codes and scales, both requantized 128×1 along
 * `tok` (the CPU reference and the CUDA path's composition build the same four).
 */
export function requantizedTypes(ta: TensorType, tg: TensorType, tok: string): TensorType[] {
  const codes = (t: TensorType): TensorType => ({ ...t, dtype: "fp8e4m3" });
  const scales = (t: TensorType): TensorType => ({ ...t, dims: scaleDims(WGRAD_OP, t, [tok]), dtype: "f32" });
  return [codes(ta), scales(ta), codes(tg), scales(tg)];
}

const mask = (t: TensorType, tiled: readonly string[]) => t.dims.map((d) => tiled.includes(d.name));

const scaledDotWgrad: OpDef = {
  name: WGRAD_OP,
  family: "contraction",
  args: ["a", "a_scales", "gy"],
  shape: ([a, sa, gy], attrs) => {
    const { dd, out } = dotWgradDims(a!, sa!, gy!, attrs);
    return [{ dims: dd.out, dtype: out }];
  },
  shard: ([pa, psa, pg], ctx) => {
    const [a, sa, gy] = ctx.inputs as [TensorType, TensorType, TensorType];
    const w = dotWgradDims(a, sa, gy, ctx.attrs);
    // a Partial operand is a sum of pieces, which quantizing would not commute with: reduce before
    if (isPartial(pa!) || isPartial(pg!)) throw new ShardingError(msgReduceFirst(WGRAD_OP, ctx.axis, pa!, pg!, isPartial(pa!) ? "a" : "gy"));
    checkWholeTiles(ctx, a, pa!, w.tiledA);
    const want = scalePlacement(pa!, w.tiledA);
    if (psa !== want) throw new ShardingError(msgScalesAgree(WGRAD_OP, ctx.axis, "a_scales", want));
    checkWholeTiles(ctx, a, pa!, [w.tok]);
    checkWholeTiles(ctx, gy, pg!, [w.tok]);
    return [dotRule(pa!, pg!, w.dd, ctx.axis)];
  },
  cpu: ([a, sa, gy], attrs, ctx) => {
    const [ta, tsa, tg] = ctx.inTypes as [TensorType, TensorType, TensorType];
    const { tiledA, tok, out } = dotWgradDims(ta, tsa, tg, attrs);
    const av = dequantizeValues(a!.data as Float32Array, a!.shape, mask(ta, tiledA), sa!.data as Float32Array);
    const qa = quantizeValues(av, a!.shape, mask(ta, [tok])), qg = quantizeValues(gy!.data as Float32Array, gy!.shape, mask(tg, [tok]));
    const local = (shape: number[], data: Float32Array, dtype: "fp8e4m3" | "f32"): LocalTensor => ({ dtype, shape, data });
    const xs = [local([...a!.shape], qa.q, "fp8e4m3"), local(qa.scaleShape, qa.scales, "f32"), local([...gy!.shape], qg.q, "fp8e4m3"), local(qg.scaleShape, qg.scales, "f32")];
    return [scaledDotCpu(xs, requantizedTypes(ta, tg, tok), ctx.outTypes[0]!, { contract: attrs.contract, out })];
  },
};

defineOps([scaledDotWgrad]);
