// Quantize family: block-scaled FP8 (DeepSeek-V3 §3.3) — `quantize` (bf16/f32 → e4m3 + f32 scales)
// and `dequantize`. The scaled contractions that consume them are in scaled-dot.ts.
//
// DESIGN — the numerics (DeepGEMM's per_token_cast_to_fp8 / per_block_cast_to_fp8):
//   amax  = max |x| over the tile, in f32 (NaN elements ignored, as fmaxf does on the GPU)
//   inv   = f32(448 / amax),  scale = f32(amax / 448);  amax 0 → inv 1, scale 1, so 0 quantizes to 0
//   q     = e4m3 satfinite RNE (f32(x * inv))          dequantize: f32(q * scale), rounded to the out dtype
// DeepGEMM multiplies by 448/amax (one division per tile) exactly like this; it clamps amax to 1e-4
// where we only special-case 0: gradients of a small model sit below 1e-4 and the clamp would leave
// them a few bits. A ragged last tile (size not a multiple of 128) is a shorter tile, which is what
// DeepGEMM's zero padding amounts to. An Inf in a tile makes amax Inf, inv 0 and scale Inf: the Inf
// quantizes to NaN (Inf·0), the rest to 0, and the tile dequantizes to NaN (0·Inf) — it poisons its
// tile, never its neighbours. A NaN element quantizes to NaN (0x7F) and leaves amax to the others.
//
// DESIGN — tilings and the scale layout the GEMMs read (agreed with compiler/numeric/fp8-gemm.ts):
//   attrs { tiling, dims }: every dim in `dims` is cut into tiles of 128; other dims are tiles of 1.
//   "1x128"   activations, dims [K]       X[M, K]  → scales [M, K_tiles]        (per token, per 128 channels)
//   "128x1"   Wgrad's transposed tiling, dims [M] X[M, K]  → scales [M_tiles, K]
//   "128x128" weights, dims [N, K]        W[N, K]  → scales [N_tiles, K_tiles]
// The scale tensor has x's dims in x's order with each tiled dim `d` replaced by `d_tiles`
// (ceil(size/128)), so the IR names every scale dim. The Hopper kernel reads activation scales
// K-block-major ([K_tiles][M]); that is `permute(scales, [K_tiles, M])` in this naming, a layout
// change only. Scales take their tensor's placements with `d` → `d_tiles`, and a tiled dim may be
// sharded only where every shard is a whole number of tiles.
import type { Attrs, Dim, Placement, TensorType } from "../ir/types.ts";
import type { LocalTensor } from "../ir/local.ts";
import { isFp8 } from "../ir/types.ts";
import { allocLocal, stridesOf } from "../ir/local.ts";
import { DTypeError, ShapeError, ShardingError } from "../errors.ts";
import { isPartial, shardDim } from "../ir/placement.ts";
import { msgNeedsDType, msgNonlinear, msgScalesAgree, msgTileStraddle } from "../messages.ts";
import { roundToE4M3 } from "../numeric/fp8.ts";
import { defineOps, type OpDef, type ShardCtx } from "./registry.ts";
import { needDim, needFloat } from "./rules.ts";
import { roundData } from "./cpu-util.ts";

export const TILE = 128;
export const E4M3_AMAX = 448;
export type Tiling = "1x128" | "128x1" | "128x128";
export const tilesName = (d: string) => `${d}_tiles`;

export interface TileSpec {
  tiling: Tiling;
  dims: string[];
}

export function tileSpec(op: string, attrs: Attrs): TileSpec {
  const tiling = attrs.tiling, dims = attrs.dims;
  const want = tiling === "128x128" ? 2 : 1;
  if (tiling !== "1x128" && tiling !== "128x1" && tiling !== "128x128") throw new ShapeError(`${op}() tiling must be "1x128", "128x1" or "128x128", got ${JSON.stringify(tiling)}`);
  if (!Array.isArray(dims) || dims.length !== want || !dims.every((d) => typeof d === "string") || new Set(dims).size !== want)
    throw new ShapeError(`${op}() tiling "${tiling}" names ${want === 1 ? "one dim" : "two different dims"} to tile, got ${JSON.stringify(dims)}`);
  return { tiling, dims: dims as string[] };
}

/** The scale tensor's dims for x tiled along `tiled`. */
export function scaleDims(op: string, x: TensorType, tiled: readonly string[]): Dim[] {
  for (const d of tiled) {
    const dim = needDim(op, x, d);
    if (dim.segmented) throw new ShapeError(`${op}() cannot tile '${d}' by 128: its rows are data-dependent segments and a tile would straddle two of them; tile another dim`);
  }
  return x.dims.map((d) => (tiled.includes(d.name) ? { name: tilesName(d.name), size: Math.ceil(d.size / TILE) } : d));
}

/** The dims of x that its scale tensor tiles (named `d_tiles` there); checks the scale's dims. */
export function tiledDimsOf(op: string, x: TensorType, s: TensorType, arg: string): string[] {
  const tiled = x.dims.filter((d) => s.dims.some((e) => e.name === tilesName(d.name))).map((d) => d.name);
  const want = scaleDims(op, x, tiled);
  if (s.dtype !== "f32" || want.map((d) => `${d.name}:${d.size}`).join() !== s.dims.map((d) => `${d.name}:${d.size}`).join())
    throw new ShapeError(`${op}() ${arg} must be f32 [${want.map((d) => `${d.name}: ${d.size}`).join(", ")}] (the scales quantize() made), got ${s.dtype} [${s.dims.map((d) => `${d.name}: ${d.size}`).join(", ")}]`);
  return tiled;
}

/** Where a tensor placed `p` has its scales (`d` → `d_tiles` for a tiled dim). */
export const scalePlacement = (p: Placement, tiled: readonly string[]): Placement => {
  const d = shardDim(p);
  return d !== undefined && tiled.includes(d) ? `S(${tilesName(d)})` : p;
};

/** A tiled dim sharded over this axis must leave whole tiles on every rank (all axes sharding it counted). */
export function checkWholeTiles(ctx: ShardCtx, x: TensorType, p: Placement, tiled: readonly string[]): void {
  const d = shardDim(p);
  if (d === undefined || !tiled.includes(d)) return;
  const shards = x.placements.reduce((n, q, i) => (q === p ? n * ctx.mesh.sizes[i]! : n), 1);
  const size = x.dims.find((e) => e.name === d)!.size;
  if (size % (shards * TILE) !== 0) throw new ShardingError(msgTileStraddle(ctx.op, ctx.axis, d, size, shards));
}

/** For each element of a tensor of `shape`, the flat index of its scale (tiled dims divided by 128). */
export function scaleIndex(shape: readonly number[], tiled: readonly boolean[]): { index: Int32Array; scaleShape: number[] } {
  const scaleShape = shape.map((n, i) => (tiled[i] ? Math.ceil(n / TILE) : n));
  const sst = stridesOf(scaleShape);
  const contrib = shape.map((n, d) => Int32Array.from({ length: n }, (_, i) => (tiled[d] ? Math.floor(i / TILE) : i) * sst[d]!));
  const total = shape.reduce((a, b) => a * b, 1);
  const index = new Int32Array(total);
  const nd = shape.length;
  if (total === 0) return { index, scaleShape };
  const idx = new Array<number>(nd).fill(0);
  let off = 0;
  for (let d = 0; d < nd; d++) off += contrib[d]![0]!;
  for (let o = 0; o < total; o++) {
    index[o] = off;
    for (let d = nd - 1; d >= 0; d--) {
      off -= contrib[d]![idx[d]!]!;
      if (++idx[d]! < shape[d]!) {
        off += contrib[d]![idx[d]!]!;
        break;
      }
      idx[d] = 0;
      off += contrib[d]![0]!;
    }
  }
  return { index, scaleShape };
}

/**
 * The bit-exact quantizer (the GPU kernels must produce the same bytes): values of `x` (already
 * representable in its dtype) → e4m3 values and one f32 scale per tile.
 */
export function quantizeValues(x: Float32Array, shape: readonly number[], tiled: readonly boolean[]): { q: Float32Array; scales: Float32Array; scaleShape: number[] } {
  const { index, scaleShape } = scaleIndex(shape, tiled);
  const amax = new Float32Array(scaleShape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < x.length; i++) {
    const a = Math.abs(x[i]!), s = index[i]!;
    if (a > amax[s]!) amax[s] = a; // NaN compares false: ignored, like fmaxf
  }
  const inv = new Float32Array(amax.length), scales = new Float32Array(amax.length);
  for (let s = 0; s < amax.length; s++) {
    const m = amax[s]!;
    inv[s] = m === 0 ? 1 : Math.fround(E4M3_AMAX / m);
    scales[s] = m === 0 ? 1 : Math.fround(m / E4M3_AMAX);
  }
  const q = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) q[i] = roundToE4M3(Math.fround(x[i]! * inv[index[i]!]!));
  return { q, scales, scaleShape };
}

/** f32(q * scale) per element (the caller rounds to the output dtype). */
export function dequantizeValues(q: Float32Array, shape: readonly number[], tiled: readonly boolean[], scales: Float32Array): Float32Array {
  const { index } = scaleIndex(shape, tiled);
  const out = new Float32Array(q.length);
  for (let i = 0; i < q.length; i++) out[i] = Math.fround(q[i]! * scales[index[i]!]!);
  return out;
}

const tiledMask = (t: TensorType, tiled: readonly string[]) => t.dims.map((d) => tiled.includes(d.name));

const quantize: OpDef = {
  name: "quantize",
  family: "quantize",
  args: ["x"],
  shape: ([x], attrs) => {
    needFloat("quantize", x!);
    const ts = tileSpec("quantize", attrs);
    return [{ dims: x!.dims, dtype: "fp8e4m3" }, { dims: scaleDims("quantize", x!, ts.dims), dtype: "f32" }];
  },
  shard: ([p], ctx) => {
    if (isPartial(p!)) throw new ShardingError(msgNonlinear("quantize", ctx.axis, p!));
    const ts = tileSpec("quantize", ctx.attrs);
    checkWholeTiles(ctx, ctx.inputs[0]!, p!, ts.dims);
    return [p!, scalePlacement(p!, ts.dims)];
  },
  cpu: ([x], attrs, ctx) => {
    const ts = tileSpec("quantize", attrs);
    const r = quantizeValues(x!.data as Float32Array, x!.shape, tiledMask(ctx.inTypes[0]!, ts.dims));
    return [{ dtype: "fp8e4m3", shape: [...x!.shape], data: r.q }, { dtype: "f32", shape: r.scaleShape, data: r.scales }];
  },
  // Straight through: the gradient of an FP8 tensor is the gradient of its dequantized value
  // (dequantize and scaled_dot's rules keep to that), so it passes to x unchanged.
  grad: ({ b, gy, inTypes }) => [gy[0] ? (b.type(gy[0]).dtype === inTypes[0]!.dtype ? gy[0] : b.op("cast", [gy[0]], { dtype: inTypes[0]!.dtype })) : null],
};

const dequantize: OpDef = {
  name: "dequantize",
  family: "quantize",
  args: ["q", "scales"],
  shape: ([q, s], attrs) => {
    if (!isFp8(q!.dtype)) throw new DTypeError(msgNeedsDType("dequantize", q!.dtype, "fp8e4m3 (quantize()'s output)"));
    tiledDimsOf("dequantize", q!, s!, "scales");
    const out = attrs.out ?? "bf16";
    if (out !== "bf16" && out !== "f32") throw new DTypeError(`dequantize() output dtype must be f32 or bf16, got ${JSON.stringify(out)}`);
    return [{ dims: q!.dims, dtype: out }];
  },
  shard: ([pq, ps], ctx) => {
    if (isPartial(pq!)) throw new ShardingError(msgNonlinear("dequantize", ctx.axis, pq!));
    const tiled = tiledDimsOf("dequantize", ctx.inputs[0]!, ctx.inputs[1]!, "scales");
    checkWholeTiles(ctx, ctx.inputs[0]!, pq!, tiled);
    const want = scalePlacement(pq!, tiled);
    if (ps !== want) throw new ShardingError(msgScalesAgree("dequantize", ctx.axis, "scales", want));
    return [pq!];
  },
  cpu: ([q, s], _attrs, ctx) => {
    const tiled = tiledDimsOf("dequantize", ctx.inTypes[0]!, ctx.inTypes[1]!, "scales");
    const out = allocLocal(ctx.outTypes[0]!.dtype, [...q!.shape]);
    out.data.set(dequantizeValues(q!.data as Float32Array, q!.shape, tiledMask(ctx.inTypes[0]!, tiled), s!.data as Float32Array));
    roundData(out.dtype, out.data);
    return [out];
  },
  // the gradient of q is that of its dequantized value (see quantize); scales get none
  grad: ({ gy }) => [gy[0], null],
};

/** Per-element scales of a quantized local tensor (for the contraction's CPU reference). */
export function expandScales(q: LocalTensor, qType: TensorType, s: LocalTensor, tiled: readonly string[]): LocalTensor {
  const { index } = scaleIndex(q.shape, tiledMask(qType, tiled));
  const data = new Float32Array(index.length);
  for (let i = 0; i < index.length; i++) data[i] = s.data[index[i]!]!;
  return { dtype: "f32", shape: [...q.shape], data };
}

defineOps([dequantize, quantize]);
