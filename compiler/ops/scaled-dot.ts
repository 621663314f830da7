// `scaled_dot`: the block-scaled FP8 contraction (DeepSeek-V3 Fprop / Dgrad / Wgrad). Operands are
// quantize() outputs with their scales; the contraction is dot's (by dim name), and exactly one
// contracted dim is cut into 128-tiles on both sides — the promotion blocks. Its gradient is the FP8
// recipe: Dgrad = dY(1×128 along N) · B (its 128×128 blocks read transposed), Wgrad =
// requantize(A, 128×1) · dY(128×1) (scaled_dot_wgrad), both with bf16 outputs.
import type { Attrs, TensorType } from "../ir/types.ts";
import type { LocalData, LocalTensor } from "../ir/local.ts";
import { DTypeError, ShapeError, ShardingError } from "../errors.ts";
import { isPartial } from "../ir/placement.ts";
import { msgNeedsDType, msgReduceFirst, msgScalesAgree } from "../messages.ts";
import { defineOps, type OpDef } from "./registry.ts";
import { contractAttr, dotDims, dotRule } from "./contraction.ts";
import { newOut, permuteTo, roundData } from "./cpu-util.ts";
import { checkWholeTiles, expandScales, scalePlacement, tiledDimsOf, TILE } from "./quantize.ts";

/**
 * The CPU emulation of the block-scaled GEMM, behind one function so that the GEMM engineer's
 * compiler/numeric/fp8-gemm.ts can replace it. Layout: A [bt, m, kr, kt], B [bt, n, kr, kt] (both
 * K-major), per-element scales SA/SB of the same shapes; kt is the tiled contracted dim. For each
 * block of 128 along kt the products are summed exactly (f64, rounded once to f32: the tensor
 * core's partial sum, minus its ~14-bit truncation), then promoted: acc = f32(acc + sa·sb·partial),
 * with sa·sb rounded to f32 first, as DeepGEMM's `final_accum += scale_a * scale_b * accum`.
 */
export function scaledMatmulCpu(A: LocalData, SA: LocalData, B: LocalData, SB: LocalData, bt: number, m: number, n: number, kr: number, kt: number, C: Float32Array): void {
  const k = kr * kt;
  for (let t = 0; t < bt; t++) {
    for (let i = 0; i < m; i++) {
      const ao = (t * m + i) * k;
      for (let j = 0; j < n; j++) {
        const bo = (t * n + j) * k;
        let acc = 0;
        for (let r = 0; r < kr; r++) {
          for (let t0 = 0; t0 < kt; t0 += TILE) {
            const base = r * kt + t0, end = Math.min(kt, t0 + TILE) - t0;
            let p = 0;
            for (let q = 0; q < end; q++) p += A[ao + base + q]! * B[bo + base + q]!;
            const s = Math.fround(SA[ao + base]! * SB[bo + base]!);
            acc = Math.fround(acc + s * Math.fround(p));
          }
        }
        C[(t * m + i) * n + j] = acc;
      }
    }
  }
}

interface ScaledDims {
  dd: ReturnType<typeof dotDims>;
  /** The contracted dim both operands tile by 128. */
  tiledK: string;
  tiledA: string[];
  tiledB: string[];
}

function scaledDims(a: TensorType, sa: TensorType, b: TensorType, sb: TensorType, attrs: Attrs): ScaledDims {
  for (const [t, arg] of [[a, "a"], [b, "b"]] as const) if (t.dtype !== "fp8e4m3") throw new DTypeError(msgNeedsDType("scaled_dot", t.dtype, `fp8e4m3 for ${arg} (quantize() it first)`));
  const dd = dotDims(a, b, contractAttr(attrs));
  const tiledA = tiledDimsOf("scaled_dot", a, sa, "a_scales"), tiledB = tiledDimsOf("scaled_dot", b, sb, "b_scales");
  const kA = dd.contract.filter((d) => tiledA.includes(d)), kB = dd.contract.filter((d) => tiledB.includes(d));
  if (kA.length !== 1 || kB.length !== 1 || kA[0] !== kB[0])
    throw new ShapeError(`scaled_dot() needs exactly one contracted dim cut into 128-tiles on both sides (the promotion blocks); a tiles [${kA.join(", ")}], b tiles [${kB.join(", ")}] of the contracted [${dd.contract.join(", ")}]`);
  for (const d of [...dd.batch]) if (tiledA.includes(d) !== tiledB.includes(d)) throw new ShapeError(`scaled_dot(): batch dim '${d}' is tiled on one side only`);
  return { dd, tiledK: kA[0]!, tiledA, tiledB };
}

/** scaled_dot's CPU reference on one rank's pieces (a, a_scales, b, b_scales of types `tIn`): also the last step of scaled_dot_wgrad's. */
export function scaledDotCpu([a, sa, b, sb]: LocalTensor[], tIn: TensorType[], outType: TensorType, attrs: Attrs): LocalTensor {
  const [ta, tsa, tb, tsb] = tIn as [TensorType, TensorType, TensorType, TensorType];
  const { dd, tiledK, tiledA, tiledB } = scaledDims(ta, tsa, tb, tsb, attrs);
  const rest = dd.contract.filter((d) => d !== tiledK);
  const orderA = [...dd.batch, ...dd.freeA, ...rest, tiledK], orderB = [...dd.batch, ...dd.freeB, ...rest, tiledK];
  const A = permuteTo(a!, ta, orderA), SA = permuteTo(expandScales(a!, ta, sa!, tiledA), { ...ta, dtype: "f32" }, orderA);
  const B = permuteTo(b!, tb, orderB), SB = permuteTo(expandScales(b!, tb, sb!, tiledB), { ...tb, dtype: "f32" }, orderB);
  const sizeA = (names: string[]) => names.reduce((s, nm) => s * a!.shape[ta.dims.findIndex((d) => d.name === nm)]!, 1);
  const sizeB = (names: string[]) => names.reduce((s, nm) => s * b!.shape[tb.dims.findIndex((d) => d.name === nm)]!, 1);
  const bt = sizeA(dd.batch), m = sizeA(dd.freeA), n = sizeB(dd.freeB), kr = sizeA(rest), kt = sizeA([tiledK]);
  const order = [...dd.batch, ...dd.freeA, ...dd.freeB];
  const shapeOf = (nm: string) => (ta.dims.some((d) => d.name === nm) ? sizeA([nm]) : sizeB([nm]));
  const C: LocalTensor = newOut(outType.dtype, order.map(shapeOf));
  scaledMatmulCpu(A.data, SA.data, B.data, SB.data, bt, m, n, kr, kt, C.data as Float32Array);
  roundData(outType.dtype, C.data);
  const orderedType = { ...outType, dims: order.map((nm) => outType.dims.find((d) => d.name === nm)!) };
  return permuteTo(C, orderedType, outType.dims.map((d) => d.name));
}

const scaledDot: OpDef = {
  name: "scaled_dot",
  family: "contraction",
  args: ["a", "a_scales", "b", "b_scales"],
  shape: ([a, sa, b, sb], attrs) => {
    const { dd } = scaledDims(a!, sa!, b!, sb!, attrs);
    const out = attrs.out ?? "bf16";
    if (out !== "bf16" && out !== "f32") throw new DTypeError(`scaled_dot() output dtype must be f32 or bf16, got ${JSON.stringify(out)}`);
    return [{ dims: dd.out, dtype: out }];
  },
  shard: ([pa, psa, pb, psb], ctx) => {
    const [a, sa, b, sb] = ctx.inputs as [TensorType, TensorType, TensorType, TensorType];
    const sd = scaledDims(a, sa, b, sb, ctx.attrs);
    // a Partial FP8 operand is a sum of quantized pieces, not a quantized tensor: reduce before quantizing
    if (isPartial(pa!) || isPartial(pb!)) throw new ShardingError(msgReduceFirst("scaled_dot", ctx.axis, pa!, pb!, isPartial(pa!) ? "a" : "b"));
    for (const [t, p, ps, tiled, arg] of [[a, pa!, psa!, sd.tiledA, "a_scales"], [b, pb!, psb!, sd.tiledB, "b_scales"]] as const) {
      checkWholeTiles(ctx, t, p, tiled);
      const want = scalePlacement(p, tiled);
      if (ps !== want) throw new ShardingError(msgScalesAgree("scaled_dot", ctx.axis, arg, want));
    }
    return [dotRule(pa!, pb!, sd.dd, ctx.axis)];
  },
  cpu: (xs, attrs, ctx) => [scaledDotCpu(xs as LocalTensor[], ctx.inTypes as TensorType[], ctx.outTypes[0]!, attrs)],
  grad: ({ b, x, gy, attrs, inTypes }) => {
    const [ta, tsa, tb, tsb] = inTypes as [TensorType, TensorType, TensorType, TensorType];
    const { dd, tiledB } = scaledDims(ta, tsa, tb, tsb, attrs);
    const g = gy[0]!;
    const quant = (v: typeof g, tiling: string, dims: string[]) => b.ops("quantize", [v], { tiling, dims });
    // Dgrad: contract b's free dim N, which b's 128x128 blocks already tile (the transposed view)
    let ga = null;
    if (dd.freeB.length === 1 && tiledB.includes(dd.freeB[0]!)) {
      const [qg, sg] = quant(g, "1x128", [dd.freeB[0]!]);
      ga = b.op("scaled_dot", [qg!, sg!, x[2]!, x[3]!], { contract: dd.freeB, out: "bf16" });
    } else throw new ShapeError(`scaled_dot()'s FP8 gradient needs b to have one free dim tiled by 128 (a 128x128 weight); b's free dims are [${dd.freeB.join(", ")}]`);
    // Wgrad: a requantized in 128x1 tiles along its innermost free dim (DeepSeek-V3 §3.5.2:
    // dequantize, transpose, requantize), dY the same, the contraction over a's free dims: one op
    // (scaled-dot-wgrad.ts), the composition's value, which CUDA quantizes into the GEMM's layout
    if (dd.freeA.length === 0) throw new ShapeError("scaled_dot()'s FP8 gradient needs a to have a free (token) dim");
    const gb = b.op("scaled_dot_wgrad", [x[0]!, x[1]!, g], { contract: dd.freeA, out: "bf16" });
    return [ga, null, gb, null];
  },
};

defineOps([scaledDot]);
