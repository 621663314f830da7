// The FP8 twins of segment_dot / segment_wgrad (the routed MoE experts, DeepSeek-V3 §3.3):
//   scaled_segment_dot(x, x_scales, w, w_scales, counts): rows of x (e4m3, 1×128 tiles along the
//     contracted dim k) in per-group segments times each group's e4m3 weight [k, n] (128×128 blocks
//     over n and k) → bf16 (or f32). Per segment it is exactly scaled_dot's promoted accumulation
//     (scaledMatmulCpu: each 128-chunk of k summed exactly, rounded to f32, scaled by f32(sa·sb) and
//     added into an f32 accumulator), the same numerics as compiler/numeric/fp8-gemm.ts's grouped
//     model, so the CUDA grouped GEMM is compared with it.
//   scaled_segment_wgrad(x, x_scales, gy, counts): out[g, k, n] = Σ over group g's rows of x[r, k]·gy[r, n]
//     in FP8. x is the forward's e4m3 rows (1×128 tiles along k, as scaled_segment_dot takes them);
//     their values f32(code · scale) (dequantize's) and gy are quantized in 128×1 tiles along the rows
//     of each segment (a segment is padded with zero rows to a multiple of 128, so a tile never
//     straddles two segments or two experts), the contraction over the rows promoted every 128 rows.
//     bf16 out unless told. Taking the codes, not dequantized rows, spares the f32 copy of the
//     dispatched rows (4 bytes an element): the CUDA path dequantizes them in registers.
// Placements are segment_dot's / segment_wgrad's, without Partial operands (a sum of quantized pieces
// is not a quantized tensor). The gradient of scaled_segment_dot is the FP8 recipe: Dgrad =
// scaled_segment_dot(quantize(dY, 1×128 along n), w's blocks read transposed), Wgrad =
// scaled_segment_wgrad(x, x_scales, dY). Dgrad is bf16; attr `dx: "f32"` casts it to f32 for rows
// quantized before an MoE dispatch from f32 tokens (stdlib/nn/fp8.ts fp8Dispatch): quantize's
// straight-through gradient would have cast it there, so the rows' gradients then add up and travel
// back in f32 as they do when the rows are quantized after the dispatch.
import type { Attrs, Placement, TensorType } from "../ir/types.ts";
import type { LocalData, LocalTensor } from "../ir/local.ts";
import { DTypeError, ShapeError, ShardingError } from "../errors.ts";
import { isPartial } from "../ir/placement.ts";
import { msgNeedsDType, msgNonlinear, msgScalesAgree } from "../messages.ts";
import { defineOps, type CpuCtx, type OpDef } from "./registry.ts";
import { segDims, segmentDotRule, segmentWgradRule, type SegDims } from "./contraction.ts";
import { newOut, permuteTo, roundData } from "./cpu-util.ts";
import { checkWholeTiles, expandScales, quantizeValues, scalePlacement, tiledDimsOf, TILE } from "./quantize.ts";
import { scaledMatmulCpu } from "./scaled-dot.ts";
import { needDim, checkSizes, findDim } from "./rules.ts";

const OP = "scaled_segment_dot", WOP = "scaled_segment_wgrad";
const outDType = (op: string, attrs: Attrs) => {
  const out = attrs.out ?? "bf16";
  if (out !== "bf16" && out !== "f32") throw new DTypeError(`${op}() output dtype must be f32 or bf16, got ${JSON.stringify(out)}`);
  return out;
};
const dxDType = (attrs: Attrs) => {
  const dx = attrs.dx ?? "bf16";
  if (dx !== "bf16" && dx !== "f32") throw new DTypeError(`${OP}() dx (the dtype of x's gradient: that of the rows before they were quantized) must be f32 or bf16, got ${JSON.stringify(dx)}`);
  return dx;
};

/** segment_dot's dims plus the FP8 form: x tiled 1×128 along k only, w tiled 128×128 over its one out dim and k. */
export function scaledSegDims(x: TensorType, sx: TensorType, w: TensorType, sw: TensorType, c: TensorType, attrs: Attrs): SegDims & { nOut: string } {
  for (const [t, arg] of [[x, "x"], [w, "w"]] as const) if (t.dtype !== "fp8e4m3") throw new DTypeError(msgNeedsDType(OP, t.dtype, `fp8e4m3 for ${arg} (quantize() it first)`));
  const sd = segDims(x, w, c, attrs, OP);
  if (sd.n.length !== 1) throw new ShapeError(`${OP}() needs w to have exactly one output dim besides '${sd.k}' and '${sd.groups}', got [${sd.n.join(", ")}]`);
  const tx = tiledDimsOf(OP, x, sx, "x_scales"), tw = tiledDimsOf(OP, w, sw, "w_scales");
  if (tx.join() !== sd.k) throw new ShapeError(`${OP}() needs x quantized "1x128" along the contracted dim '${sd.k}' (quantize(x, "1x128", "${sd.k}")); x's scales tile [${tx.join(", ")}]`);
  if (tw.length !== 2 || !tw.includes(sd.k) || !tw.includes(sd.n[0]!))
    throw new ShapeError(`${OP}() needs w quantized "128x128" over ['${sd.n[0]}', '${sd.k}'] (one block per expert); w's scales tile [${tw.join(", ")}]`);
  return { ...sd, nOut: sd.n[0]! };
}

/**
 * The segments a rank computes, as segment_dot's CPU reference walks them: for each batch index t
 * and each of the `nGroups` groups from global group `first`, the segment's rows [row, row + m) in
 * x's local rows and where its output rows start (packed from row 0 of the rank's output).
 */
export function segmentRuns(C: LocalData, bt: number, gC: number, cOff: number, first: number, nGroups: number, R: number, packed: boolean): { t: number; g: number; row: number; m: number; out: number }[] {
  const runs: { t: number; g: number; row: number; m: number; out: number }[] = [];
  for (let t = 0; t < bt; t++) {
    let row = 0;
    if (!packed) for (let g = 0; g < first - cOff; g++) row += C[t * gC + g]!;
    const start = row;
    for (let g = 0; g < nGroups; g++) {
      const cnt = C[t * gC + (first - cOff) + g]!;
      runs.push({ t, g, row, m: Math.max(0, Math.min(cnt, R - row)), out: row - start });
      row += cnt;
    }
  }
  return runs;
}

const sizeOf = (x: LocalTensor, t: TensorType, names: string[]) => names.reduce((s, n) => s * x.shape[t.dims.findIndex((d) => d.name === n)]!, 1);
const offsetOf = (ctx: CpuCtx, i: number, t: TensorType, dim: string) => ctx.inBoxes[i]!.offset[t.dims.findIndex((d) => d.name === dim)]!;

const scaledSegmentDot: OpDef = {
  name: OP,
  family: "contraction",
  args: ["x", "x_scales", "w", "w_scales", "counts"],
  shape: ([x, sx, w, sw, c], attrs) => {
    const sd = scaledSegDims(x!, sx!, w!, sw!, c!, attrs);
    dxDType(attrs);
    return [{ dims: [...x!.dims.filter((d) => d.name !== sd.k), findDim(w!, sd.nOut)!], dtype: outDType(OP, attrs) }];
  },
  shard: ([px, psx, pw, psw, pc], ctx) => {
    const [x, sx, w, sw, c] = ctx.inputs as TensorType[];
    const sd = scaledSegDims(x!, sx!, w!, sw!, c!, ctx.attrs);
    for (const p of [px!, pw!]) if (isPartial(p)) throw new ShardingError(msgNonlinear(OP, ctx.axis, p));
    for (const [t, p, ps, tiled, arg] of [[x!, px!, psx!, [sd.k], "x_scales"], [w!, pw!, psw!, [sd.k, sd.nOut], "w_scales"]] as const) {
      checkWholeTiles(ctx, t, p, tiled);
      const want = scalePlacement(p, tiled);
      if (ps !== want) throw new ShardingError(msgScalesAgree(OP, ctx.axis, arg, want));
    }
    return [segmentDotRule(px!, pw!, pc!, sd, ctx.axis, OP)];
  },
  cpu: ([x, sx, w, sw, c], attrs, ctx) => {
    const [tx, tsx, tw, tsw, tc] = ctx.inTypes as TensorType[];
    const sd = scaledSegDims(tx!, tsx!, tw!, tsw!, tc!, attrs);
    const xo = [...sd.batch, sd.rows.name, sd.k], wo = [sd.groups, sd.nOut, sd.k];
    const X = permuteTo(x!, tx!, xo), SX = permuteTo(expandScales(x!, tx!, sx!, [sd.k]), { ...tx!, dtype: "f32" }, xo);
    const W = permuteTo(w!, tw!, wo), SW = permuteTo(expandScales(w!, tw!, sw!, [sd.k, sd.nOut]), { ...tw!, dtype: "f32" }, wo);
    const C = permuteTo(c!, tc!, [...sd.batch, sd.groups]);
    const bt = sizeOf(x!, tx!, sd.batch), R = sizeOf(x!, tx!, [sd.rows.name]), K = sizeOf(x!, tx!, [sd.k]);
    const N = sizeOf(w!, tw!, [sd.nOut]), gW = sizeOf(w!, tw!, [sd.groups]), gC = sizeOf(c!, tc!, [sd.groups]);
    const packed = ctx.inBoxes[0]!.seg[tx!.dims.findIndex((d) => d.name === sd.rows.name)] !== null;
    const outType = ctx.outTypes[0]!;
    const Y = newOut(outType.dtype, [...sd.batch.map((nm) => sizeOf(x!, tx!, [nm])), R, N]);
    const runs = segmentRuns(C.data, bt, gC, offsetOf(ctx, 4, tc!, sd.groups), offsetOf(ctx, 2, tw!, sd.groups), gW, R, packed);
    for (const s of runs) {
      if (s.m === 0) continue;
      const a0 = (s.t * R + s.row) * K, a1 = a0 + s.m * K, b0 = s.g * N * K, b1 = b0 + N * K;
      const out = new Float32Array(s.m * N);
      scaledMatmulCpu(X.data.subarray(a0, a1), SX.data.subarray(a0, a1), W.data.subarray(b0, b1), SW.data.subarray(b0, b1), 1, s.m, N, 1, K, out);
      (Y.data as Float32Array).set(out, (s.t * R + s.out) * N);
    }
    roundData(outType.dtype, Y.data);
    const order = [...sd.batch, sd.rows.name, sd.nOut];
    const orderedType = { ...outType, dims: order.map((nm) => outType.dims.find((d) => d.name === nm)!) };
    return [permuteTo(Y, orderedType, outType.dims.map((d) => d.name))];
  },
  grad: ({ b, x, gy, attrs, inTypes }) => {
    const [tx, tsx, tw, tsw, tc] = inTypes as TensorType[];
    const sd = scaledSegDims(tx!, tsx!, tw!, tsw!, tc!, attrs);
    const g = gy[0]!;
    // Dgrad: dY in 1x128 tiles along n times each expert's 128x128 blocks, read transposed
    const [qg, sg] = b.ops("quantize", [g], { tiling: "1x128", dims: [sd.nOut] });
    const dgrad = b.op(OP, [qg!, sg!, x[2]!, x[3]!, x[4]!], { contract: sd.nOut, out: "bf16" });
    const gx = dxDType(attrs) === "bf16" ? dgrad : b.op("cast", [dgrad], { dtype: "f32" });
    // Wgrad: the forward's FP8 rows and dY, each requantized 128x1 along the segment's rows
    const gw = b.op(WOP, [x[0]!, x[1]!, g, x[4]!], { k: sd.k, n: sd.nOut, out: "bf16" });
    return [gx, null, gw, null, null];
  },
};

function wgradDims(x: TensorType, sx: TensorType, gy: TensorType, c: TensorType, attrs: Attrs) {
  const rows = x.dims.find((d) => d.segmented);
  if (!rows) throw new ShapeError(`${WOP}() needs x to have a segmented rows dim (the rows produced by sort_by_key)`);
  const k = String(attrs.k), n = String(attrs.n), groups = rows.segmented!.groups;
  needDim(WOP, x, k, "x");
  needDim(WOP, gy, n, "gy");
  checkSizes(WOP, x.dims, gy.dims);
  if (x.dtype !== "fp8e4m3") throw new DTypeError(msgNeedsDType(WOP, x.dtype, "fp8e4m3 for x (the forward's quantized rows)"));
  if (tiledDimsOf(WOP, x, sx, "x_scales").join() !== k) throw new ShapeError(`${WOP}() needs x quantized "1x128" along '${k}' (the forward's rows, quantize(x, "1x128", "${k}"))`);
  if (gy.dtype !== "f32" && gy.dtype !== "bf16") throw new DTypeError(msgNeedsDType(WOP, gy.dtype, "f32 or bf16 for gy (it quantizes it itself, 128x1 per segment)"));
  if (c.dtype !== "i32") throw new ShapeError(`${WOP}() counts must be i32`);
  const batch = c.dims.map((d) => d.name).filter((nm) => nm !== groups);
  return { rows, k, n, groups, batch };
}

/** One segment's rows [m, cols] quantized 128x1 along the rows into a [cols, P] K-major block at column `at` (values and per-element scales). */
function quantizeColumns(src: LocalData, m: number, cols: number, q: Float32Array, s: Float32Array, P: number, at: number): void {
  const r = quantizeValues(src as Float32Array, [m, cols], [true, false]);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < cols; j++) {
      q[j * P + at + i] = r.q[i * cols + j]!;
      s[j * P + at + i] = r.scales[Math.floor(i / TILE) * cols + j]!;
    }
}

const scaledSegmentWgrad: OpDef = {
  name: WOP,
  family: "contraction",
  args: ["x", "x_scales", "gy", "counts"],
  shape: ([x, sx, gy, c], attrs) => {
    const wd = wgradDims(x!, sx!, gy!, c!, attrs);
    return [{ dims: [{ name: wd.groups, size: wd.rows.segmented!.numGroups }, findDim(x!, wd.k)!, findDim(gy!, wd.n)!], dtype: outDType(WOP, attrs) }];
  },
  shard: ([px, psx, pg, pc], ctx) => {
    for (const p of [px!, pg!, pc!]) if (isPartial(p)) throw new ShardingError(msgNonlinear(WOP, ctx.axis, p));
    const k = String(ctx.attrs.k);
    checkWholeTiles(ctx, ctx.inputs[0]!, px!, [k]);
    const want = scalePlacement(px!, [k]);
    if (psx !== want) throw new ShardingError(msgScalesAgree(WOP, ctx.axis, "x_scales", want));
    return [segmentWgradRule(px!, pg!, pc!, ctx.inputs[0]!, ctx.attrs, ctx.axis, WOP) as Placement];
  },
  cpu: ([x, sx, gy, c], attrs, ctx) => {
    const [tx, tsx, tg, tc] = ctx.inTypes as TensorType[];
    const wd = wgradDims(tx!, tsx!, tg!, tc!, attrs);
    const xo = [...wd.batch, wd.rows.name, wd.k];
    // the rows' values as dequantize gives them: f32(code · scale)
    const XQ = permuteTo(x!, tx!, xo), SX = permuteTo(expandScales(x!, tx!, sx!, [wd.k]), { ...tx!, dtype: "f32" }, xo);
    const X = { ...XQ, data: Float32Array.from(XQ.data, (q, i) => Math.fround(q * SX.data[i]!)) };
    const G = permuteTo(gy!, tg!, [...wd.batch, wd.rows.name, wd.n]);
    const C = permuteTo(c!, tc!, [...wd.batch, wd.groups]);
    const bt = sizeOf(x!, tx!, wd.batch), R = sizeOf(x!, tx!, [wd.rows.name]), K = sizeOf(x!, tx!, [wd.k]), N = sizeOf(gy!, tg!, [wd.n]);
    const gOut = ctx.outShapes[0]![0]!;
    const packed = ctx.inBoxes[0]!.seg[tx!.dims.indexOf(wd.rows)] !== null;
    const runs = segmentRuns(C.data, bt, sizeOf(c!, tc!, [wd.groups]), offsetOf(ctx, 3, tc!, wd.groups), ctx.outBoxes[0]!.offset[0]!, gOut, R, packed);
    const out = newOut(ctx.outTypes[0]!.dtype, ctx.outShapes[0]!);
    const pad = (m: number) => Math.ceil(m / TILE) * TILE;
    for (let g = 0; g < gOut; g++) {
      // the group's segments (one per batch index), each padded to whole 128-row tiles, side by side
      const mine = runs.filter((s) => s.g === g && s.m > 0);
      const P = mine.reduce((p, s) => p + pad(s.m), 0);
      if (P === 0) continue;
      const A = new Float32Array(K * P), SA = new Float32Array(K * P), B = new Float32Array(N * P), SB = new Float32Array(N * P);
      let at = 0;
      for (const s of mine) {
        const r0 = s.t * R + s.row;
        quantizeColumns(X.data.subarray(r0 * K, (r0 + s.m) * K), s.m, K, A, SA, P, at);
        quantizeColumns(G.data.subarray(r0 * N, (r0 + s.m) * N), s.m, N, B, SB, P, at);
        at += pad(s.m);
      }
      const prod = new Float32Array(K * N);
      scaledMatmulCpu(A, SA, B, SB, 1, K, N, 1, P, prod);
      (out.data as Float32Array).set(prod, g * K * N);
    }
    roundData(out.dtype, out.data);
    return [out];
  },
};

defineOps([scaledSegmentDot, scaledSegmentWgrad]);
