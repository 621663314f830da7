// Block-scaled FP8 kernels (standalone; the fused 1x128 epilogues are compiler/codegen/cuda/quant.ts), and
// the byte-layout moves of the FP8 GEMM paths (a tiled code transpose, a 16-byte row gather). The
// tensor is viewed as [O, N, K] with tiles of tn×128 over (N, K): tn = 1 is a 1×128 / 128×1 tiling
// (the executor moves the tiled dim last), tn = 128 the 128×128 weight blocks. The numerics are
// compiler/ops/quantize.ts's, to the bit: amax by fmaxf (NaN ignored), inv = 448/amax and
// scale = amax/448 correctly rounded (__fdiv_rn), amax 0 → 1, q = cvt.rn.satfinite.e4m3(x·inv).
import type { DType } from "../../../compiler/ir/types.ts";
import { memo } from "./sources.ts";

const T = (t: DType) => (t === "bf16" ? "__nv_bfloat16" : "float");
const HEAD = `#include <cuda_bf16.h>
#include <cuda_fp8.h>
__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p, long long i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ unsigned char q8(float x, float inv) {
  return (unsigned char)__nv_cvt_float_to_fp8(__fmul_rn(x, inv), __NV_SATFINITE, __NV_E4M3);
}
__device__ __forceinline__ void inv_scale(float amax, float* inv, float* scale) {
  *inv = amax == 0.f ? 1.f : __fdiv_rn(448.f, amax);
  *scale = amax == 0.f ? 1.f : __fdiv_rn(amax, 448.f);
}
`;

/** A register pack of N values (one 16-byte load or store where N · sizeof(S) is 16). */
const PACK = `template <typename S, int N> struct alignas(sizeof(S) * N) pk { S v[N]; };
`;
/** PACK, and element e of a pack as f32. */
const PACKS = `${PACK}__device__ __forceinline__ float ld(const float* v, int e) { return v[e]; }
__device__ __forceinline__ float ld(const __nv_bfloat16* v, int e) { return __bfloat162float(v[e]); }
`;

/** 1×128 tiles along the contiguous last dim: one warp per tile, 4 elements a lane, amax by shuffles. */
export function quantizeRows(t: DType): { name: string; source: string } {
  const name = `shardts_quant_rows_${t}`;
  return {
    name,
    source: `${HEAD}
extern "C" __global__ void ${name}(unsigned char* __restrict__ q, float* __restrict__ s, const ${T(t)}* __restrict__ x, long long rows, int K) {
  const int kt = (K + 127) / 128, lane = threadIdx.x & 31;
  const long long tiles = rows * kt, warps = (long long)gridDim.x * (blockDim.x >> 5);
  for (long long tile = blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5); tile < tiles; tile += warps) {
    const long long row = tile / kt;
    const int k0 = (int)(tile % kt) * 128 + lane * 4;
    const long long base = row * K;
    float v[4], amax = 0.f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      v[j] = k0 + j < K ? ld(x, base + k0 + j) : 0.f;
      amax = fmaxf(amax, fabsf(v[j]));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    float inv, scale;
    inv_scale(amax, &inv, &scale);
#pragma unroll
    for (int j = 0; j < 4; j++) if (k0 + j < K) q[base + k0 + j] = q8(v[j], inv);
    if (lane == 0) s[tile] = scale;
  }
}`,
  };
}

/** quantizeFlat's default loads a lane per trip, all in flight before the trip's first shuffle. */
export const FLAT_UNROLL = 4;
/** quantizeFlat's values a lane loads (16 bytes). */
const flatVec = (t: DType): number => (t === "bf16" ? 8 : 4);
/** Tiles a warp of quantizeFlat takes a trip: `unroll` loads, each covering 32 / (128 / vec) tiles. */
export const flatTilesPerWarp = (t: DType, unroll: number): number => unroll * ((32 * flatVec(t)) / 128);

/**
 * 1×128 tiles of a [rows, K] tensor with K % 128 == 0, so the tensor is a flat run of whole tiles and
 * tile t's scale is s[t]; x 16-byte aligned (quantizeRows above takes every other case). A lane loads 16
 * bytes (8 bf16 or 4 f32 values), so a tile is G = 16 or 32 lanes and a warp covers 32 / G tiles a load;
 * each warp issues `unroll` such loads (different tiles) before the first shuffle, so that more bytes are
 * in flight than one tile a warp allows (the row kernel's 256 bytes a warp left the 1x128 quantize at ~60%
 * of copy on an H200: bench/NOTES.md). Same numerics as quantizeRows, to the bit.
 */
export function quantizeFlat(t: DType, unroll: number = FLAT_UNROLL): { name: string; source: string } {
  const name = `shardts_quant_flat_u${unroll}_${t}`;
  const V = flatVec(t), G = 128 / V;
  return {
    name,
    source: `${HEAD}
${PACKS}extern "C" __global__ void __launch_bounds__(256) ${name}(unsigned char* __restrict__ q, float* __restrict__ s, const ${T(t)}* __restrict__ x, long long tiles) {
  constexpr int VEC = ${V}, G = ${G}, TW = 32 / G, U = ${unroll};  // values a lane, lanes a tile, tiles a load a warp, loads a trip
  const int lane = threadIdx.x & 31, sub = lane % G, half = lane / G;
  const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
  for (long long first = (blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5)) * (TW * U); first < tiles; first += warps * (TW * U)) {
    pk<${T(t)}, VEC> v[U];
#pragma unroll
    for (int u = 0; u < U; u++) {  // every load of the trip first
      const long long tile = first + u * TW + half;
      if (tile < tiles) v[u] = *reinterpret_cast<const pk<${T(t)}, VEC>*>(x + tile * 128 + sub * VEC);
      else
#pragma unroll
        for (int e = 0; e < VEC; e++) v[u].v[e] = ${t === "bf16" ? "__float2bfloat16_rn(0.f)" : "0.f"};
    }
    float amax[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      amax[u] = 0.f;
#pragma unroll
      for (int e = 0; e < VEC; e++) amax[u] = fmaxf(amax[u], fabsf(ld(v[u].v, e)));  // NaN ignored
    }
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1)
#pragma unroll
      for (int u = 0; u < U; u++) amax[u] = fmaxf(amax[u], __shfl_xor_sync(0xffffffffu, amax[u], o));
#pragma unroll
    for (int u = 0; u < U; u++) {
      const long long tile = first + u * TW + half;
      if (tile >= tiles) continue;
      float inv, scale;
      inv_scale(amax[u], &inv, &scale);
      pk<unsigned char, VEC> b;
#pragma unroll
      for (int e = 0; e < VEC; e++) b.v[e] = q8(ld(v[u].v, e), inv);
      *reinterpret_cast<pk<unsigned char, VEC>*>(q + tile * 128 + sub * VEC) = b;
      if (sub == 0) s[tile] = scale;
    }
  }
}`,
  };
}

/** 128×128 blocks of [O, N, K]: one 256-thread block per tile, amax by shuffles and shared memory. */
export function quantizeBlocks(t: DType): { name: string; source: string } {
  const name = `shardts_quant_blocks_${t}`;
  return {
    name,
    source: `${HEAD}
extern "C" __global__ void __launch_bounds__(256) ${name}(unsigned char* __restrict__ q, float* __restrict__ s, const ${T(t)}* __restrict__ x, long long O, int N, int K) {
  __shared__ float red[8];
  const int nt = (N + 127) / 128, kt = (K + 127) / 128;
  const long long tile = blockIdx.x;
  const long long o = tile / ((long long)nt * kt);
  const int n0 = (int)((tile / kt) % nt) * 128, k0 = (int)(tile % kt) * 128;
  const int col = threadIdx.x & 127, r0 = threadIdx.x >> 7; // two rows per pass, 128 columns
  const ${T(t)}* xt = x + o * N * (long long)K;
  float amax = 0.f;
  for (int r = r0; r < 128 && n0 + r < N; r += 2)
    if (k0 + col < K) amax = fmaxf(amax, fabsf(ld(xt, (long long)(n0 + r) * K + k0 + col)));
  for (int w = 16; w > 0; w >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, w));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
  __syncthreads();
  amax = red[0];
  for (int w = 1; w < 8; w++) amax = fmaxf(amax, red[w]);
  float inv, scale;
  inv_scale(amax, &inv, &scale);
  for (int r = r0; r < 128 && n0 + r < N; r += 2)
    if (k0 + col < K) {
      const long long i = (long long)(n0 + r) * K + k0 + col;
      q[o * N * (long long)K + i] = q8(ld(xt, i), inv);
    }
  if (threadIdx.x == 0) s[tile] = scale;
}`,
  };
}

/**
 * A 128×128 tile of [O, N, K] per 256-thread block, read once with 16-byte loads and held in
 * registers (VEC columns × P rows a thread), then quantized from them. `block`: one scale per tile
 * (128×128 weights; amax by shuffles, then one shared-memory step). `cols`: one scale per column
 * of the tile (128×1, tiles along N with no transposing copies; the column's amax over its 128 rows
 * in shared memory), scales [O, N_tiles, K]. Needs K % VEC == 0 and 16-byte aligned pointers (the
 * executor falls back to the kernels above otherwise); rows past N and columns past K are masked.
 * `transposed` (block only): the codes also go to qT [O, K, N] (the last two dims swapped), through a
 * shared-memory tile, 16 bytes a store (needs N % 16 == 0 and qT 16-byte aligned): the K-major codes
 * of a weight that one GEMM reads as B [N][K] and another as B [K][N].
 */
export function quantizeTiles(t: DType, mode: "block" | "cols", transposed = false): { name: string; source: string } {
  if (transposed && mode !== "block") throw new Error("shardts internal error: transposed codes come from the 128x128 (block) quantize only");
  const name = `shardts_quant_tiles_${mode}${transposed ? "_t" : ""}_${t}`;
  const V = t === "bf16" ? 8 : 4, LPR = 128 / V, RPP = 256 / LPR, P = 128 / RPP;
  const amax = mode === "block"
    ? `  float a = 0.f;
#pragma unroll
  for (int p = 0; p < P; p++)
#pragma unroll
    for (int e = 0; e < VEC; e++) a = fmaxf(a, fabsf(ld(v[p].v, e)));
#pragma unroll
  for (int w = 16; w > 0; w >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, w));
  if ((threadIdx.x & 31) == 0) red[0][threadIdx.x >> 5] = a;
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = red[0][0];
    for (int w = 1; w < 8; w++) m = fmaxf(m, red[0][w]);
    float inv, scale;
    inv_scale(m, &inv, &scale);
    invs[0] = inv;
    s[tile] = scale;
  }
  __syncthreads();`
    : `#pragma unroll
  for (int e = 0; e < VEC; e++) {
    float a = 0.f;
#pragma unroll
    for (int p = 0; p < P; p++) a = fmaxf(a, fabsf(ld(v[p].v, e)));
    red[rg][lane * VEC + e] = a;
  }
  __syncthreads();
  if (threadIdx.x < 128) {
    float m = red[0][threadIdx.x];
    for (int r = 1; r < RPP; r++) m = fmaxf(m, red[r][threadIdx.x]);
    float inv, scale;
    inv_scale(m, &inv, &scale);
    invs[threadIdx.x] = inv;
    if (k0 + (int)threadIdx.x < K) s[(o * nt + n0 / 128) * (long long)K + k0 + threadIdx.x] = scale;
  }
  __syncthreads();`;
  return {
    name,
    source: `${HEAD}
${PACKS}// (about 96 registers: 2 blocks an SM; a cap for 3 spills)
extern "C" __global__ void __launch_bounds__(256) ${name}(unsigned char* __restrict__ q, float* __restrict__ s, const ${T(t)}* __restrict__ x, long long O, int N, int K${transposed ? ", unsigned char* __restrict__ qT" : ""}) {
  constexpr int VEC = ${V}, LPR = ${LPR}, RPP = ${RPP}, P = ${P};  // columns a load, lanes a tile row, rows a pass, passes
  __shared__ float red[${mode === "block" ? "1][8" : "RPP][128"}];
  __shared__ float invs[${mode === "block" ? 1 : 128}];${transposed ? `
  // the tile's codes [n][k] as words (4 codes along k), word kq of row n at kq ^ 4((n >> 4) & 7): the
  // transposing reads (8 row groups x 4 word columns a warp) then hit 32 different banks
  __shared__ __align__(16) unsigned int tile_w[128][32];` : ""}
  const int nt = (N + 127) / 128, kt = (K + 127) / 128;
  const long long tile = blockIdx.x;
  const long long o = tile / ((long long)nt * kt);
  const int n0 = (int)((tile / kt) % nt) * 128, k0 = (int)(tile % kt) * 128;
  const int lane = threadIdx.x % LPR, rg = threadIdx.x / LPR, col = k0 + lane * VEC;
  const ${T(t)}* xt = x + o * N * (long long)K;
  pk<${T(t)}, VEC> v[P];
#pragma unroll
  for (int p = 0; p < P; p++) {
    const int r = n0 + rg + p * RPP;
    if (col < K && r < N) v[p] = *reinterpret_cast<const pk<${T(t)}, VEC>*>(xt + (long long)r * K + col);
    else
#pragma unroll
      for (int e = 0; e < VEC; e++) v[p].v[e] = ${t === "bf16" ? "__float2bfloat16_rn(0.f)" : "0.f"};
  }
${amax}
  unsigned char* qt = q + o * N * (long long)K;
#pragma unroll
  for (int p = 0; p < P; p++) {
    const int r = n0 + rg + p * RPP;
    if (col >= K || r >= N) continue;
    pk<unsigned char, VEC> b;
#pragma unroll
    for (int e = 0; e < VEC; e++) b.v[e] = q8(ld(v[p].v, e), invs[${mode === "block" ? "0" : "lane * VEC + e"}]);
    *reinterpret_cast<pk<unsigned char, VEC>*>(qt + (long long)r * K + col) = b;${transposed ? `
    {
      // this thread's VEC codes as VEC / 4 words, stored together (the swizzle keeps a pair adjacent)
      const unsigned int w0 = (unsigned int)b.v[0] | (unsigned int)b.v[1] << 8 | (unsigned int)b.v[2] << 16 | (unsigned int)b.v[3] << 24;
      // (row r - n0 = rg + p RPP lies in 16-row group p RPP / 16: rg < RPP <= 16 and RPP divides 16)
      unsigned int* dst = &tile_w[r - n0][(lane * (VEC / 4)) ^ ((((p * RPP) >> 4) & 7) << 2)];
#if ${V} == 8
      *reinterpret_cast<uint2*>(dst) = make_uint2(w0, (unsigned int)b.v[4] | (unsigned int)b.v[5] << 8 | (unsigned int)b.v[6] << 16 | (unsigned int)b.v[7] << 24);
#else
      *dst = w0;
#endif
    }` : ""}
  }${transposed ? `
  __syncthreads();
  // qT rows k0 + 4kq .. +3, columns n0 + 16rc .. +15: 16 words of the tile read, byte-permuted into 4 rows
  // of 16 bytes; 8 lanes (rc = 0..7) a k-quad, so each warp store writes 4 whole 128-byte runs of qT
  const int rc = threadIdx.x & 7, kq = (threadIdx.x >> 5) * 4 + ((threadIdx.x >> 3) & 3), nb = rc * 16;
  if (n0 + nb < N) {
    unsigned int w[16];
#pragma unroll
    for (int j = 0; j < 16; j++) w[j] = tile_w[nb + j][kq ^ (rc << 2)];
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int k = k0 + 4 * kq + i;
      if (k >= K) break;
      unsigned int u[4];
#pragma unroll
      for (int c = 0; c < 4; c++) {
        // byte i of w[4c .. 4c + 3]: two pairs, then the pairs joined
        const unsigned int lo = __byte_perm(w[4 * c], w[4 * c + 1], i | ((i + 4) << 4)), hi = __byte_perm(w[4 * c + 2], w[4 * c + 3], i | ((i + 4) << 4));
        u[c] = __byte_perm(lo, hi, 0x5410);
      }
      *reinterpret_cast<uint4*>(qT + (o * (long long)K + k) * (long long)N + n0 + nb) = make_uint4(u[0], u[1], u[2], u[3]);
    }
  }` : ""}
}`,
  };
}

/** out = f32(q · scale) over [O, N, K] with tn×128 tiles, rounded to the output type. */
export function dequantize(out: DType): { name: string; source: string } {
  const name = `shardts_dequant_${out}`;
  const store = out === "bf16" ? "__float2bfloat16_rn(v)" : "v";
  return {
    name,
    source: `${HEAD}
extern "C" __global__ void ${name}(${T(out)}* __restrict__ y, const unsigned char* __restrict__ q, const float* __restrict__ s, long long O, int N, int K, int tn) {
  const int nt = (N + tn - 1) / tn, kt = (K + 127) / 128;
  const long long total = O * N * (long long)K;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
    const int k = (int)(i % K), n = (int)((i / K) % N);
    const long long o = i / ((long long)N * K);
    __nv_fp8_e4m3 b; b.__x = q[i];
    const float v = __fmul_rn(float(b), s[(o * nt + n / tn) * kt + k / 128]);
    y[i] = ${store};
  }
}`,
  };
}

/**
 * dequantize over [O, N, K] with tn×128 tiles, 16 codes a thread: one 16-byte load, one scale (16
 * divides the tile's 128 columns) and one row / column computation per 16 elements, 16-byte stores.
 * The same values as dequantize() above, element by element. Needs K % 16 == 0 and 16-byte aligned
 * q and y (the executor takes the scalar kernel otherwise).
 */
export const dequantizeVec = memo((out: DType): { name: string; source: string } => {
  const name = `shardts_dequant_v16_${out}`;
  const W = out === "bf16" ? 8 : 4; // elements a 16-byte store
  const store = out === "bf16" ? "__float2bfloat16_rn(v)" : "v";
  return {
    name,
    source: `${HEAD}
${PACK}extern "C" __global__ void ${name}(${T(out)}* __restrict__ y, const unsigned char* __restrict__ q, const float* __restrict__ s, long long O, int N, int K, int tn) {
  const int nt = (N + tn - 1) / tn, kt = (K + 127) / 128, kc = K / 16;
  const long long chunks = O * N * (long long)kc;
  for (long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x; c < chunks; c += (long long)gridDim.x * blockDim.x) {
    const long long row = c / kc;
    const int k0 = (int)(c - row * kc) * 16, n = (int)(row % N);
    const float sc = s[(row / N * nt + n / tn) * kt + k0 / 128];
    const pk<unsigned char, 16> b = *reinterpret_cast<const pk<unsigned char, 16>*>(q + c * 16);
#pragma unroll
    for (int h = 0; h < 16 / ${W}; h++) {
      pk<${T(out)}, ${W}> o;
#pragma unroll
      for (int e = 0; e < ${W}; e++) {
        __nv_fp8_e4m3 f; f.__x = b.v[h * ${W} + e];
        const float v = __fmul_rn(float(f), sc);
        o.v[e] = ${store};
      }
      *reinterpret_cast<pk<${T(out)}, ${W}>*>(y + c * 16 + h * ${W}) = o;
    }
  }
}`,
  };
});

/**
 * The routed Wgrad's operands (runtime/cuda/fp8-segment.ts): rows of x gathered into the padded
 * group-major layout (rowMap: a source row per padded row, -1 a zero row; a null map with `run` > 0: runs of
 * `run` consecutive rows, each padded to whole 128-row blocks, scaled_dot_wgrad's tokens), quantized 128×1 along the
 * padded rows (a 128-row block is one tile: the layout never lets a tile cross a segment) and written
 * transposed, codes [width][M] (the row-scaled GEMM's K-major operand) and scales [M/128][width]. One
 * 256-thread block per (128-row block, strip of CW columns): the gathered rows are staged in shared
 * memory in their own type (16-byte loads where the rows are whole 16-byte chunks and x is aligned:
 * `vec`, all of a thread's loads in flight at once; a row's chunks swizzled), then 8 lanes a column take
 * 16 of its rows each into registers, meet on the column's amax by shuffles and write their 16 codes:
 * whole 128-byte runs of qT a warp (a
 * thread writing 64 bytes of its own column left each warp store 32 half sectors, and the loads one at
 * a time: 45% of copy, L1TEX-scoreboard stalls 43% of cycles, bench/results/2026-11-24-quant-profile-h200/). A block whose first padded row is -1 holds no row (the device plan's blocks past those
 * used: fp8-segment-device.ts) and writes nothing. `src` "fp8": x is e4m3 codes with 1×128 scales along the width (xs, [rows][ceil(width/128)]),
 * each value f32(code · scale) as dequantize() computes it, so the result is, bit for bit, dequantize
 * then quantize 128×1 (compiler/ops/scaled-segment.ts's reference); "bf16" / "f32": x as it is.
 */
/** wgradColumns's columns a block (its shared tile 16 or 32 KB a 128-row block). */
export const wgradStrip = (src: "fp8" | "bf16" | "f32"): number => (src === "f32" ? 64 : 128);
/**
 * wgradColumns's 128-row blocks a CUDA block: e4m3 codes two (a 16 KB tile a row block held 3 blocks an SM
 * and ~48 KB of loads in flight, 38% of copy, where bf16's 32 KB tiles reached 79%), else one.
 */
export const wgradRowBlocks = (src: "fp8" | "bf16" | "f32"): number => (src === "fp8" ? 2 : 1);
/** wgradColumns's grid for M padded rows (a multiple of 128) and `width` columns. */
export const wgradGrid = (src: "fp8" | "bf16" | "f32", M: number, width: number): number => Math.ceil(M / 128 / wgradRowBlocks(src)) * Math.ceil(width / wgradStrip(src));
export const wgradColumns = memo((src: "fp8" | "bf16" | "f32"): { name: string; source: string } => {
  const name = `shardts_wgrad_cols_${src}`;
  const S = src === "fp8" ? "unsigned char" : T(src), EB = src === "f32" ? 4 : src === "bf16" ? 2 : 1, CW = wgradStrip(src);
  const val = src === "fp8"
    ? "__nv_fp8_e4m3 f; f.__x = tile[slot(r, c)]; return __fmul_rn(float(f), rs);"
    : src === "bf16" ? "return __bfloat162float(tile[slot(r, c)]);" : "return tile[slot(r, c)];";
  const zero = src === "bf16" ? "__float2bfloat16_rn(0.f)" : "0";
  return {
    name,
    source: `${HEAD}
${PACK}// columns a strip, 128-row blocks a CUDA block and their rows, elements a 16-byte chunk, chunks a row,
// 16-byte loads a thread, columns a thread (8 lanes a column)
constexpr int CW = ${CW}, RB = ${wgradRowBlocks(src)}, ROWS = 128 * RB, EPC = 16 / ${EB}, CPR = CW / EPC, LOADS = ROWS * CPR / 256, OUTS = CW * 8 / 256;
// (blocks an SM asked for: without, ptxas kept bf16 at 40 registers and f32 at 48 and spilled 8 bytes)
// element (r, c) of the staged tile: a row's 16-byte chunks swizzled by its 16-row group, so the stores'
// warps (8 lanes down one column, one 16-row group each) read 8 different banks
__device__ __forceinline__ int slot(int r, int c) { return r * CW + ((c / EPC) ^ ((r >> 4) & 7)) * EPC + c % EPC; }
__device__ __forceinline__ float val(const ${S}* tile, float rs, int r, int c) { ${val} }
// row p of the padded layout: rowMap's entry, or with no map (a dense Wgrad) runs of run rows, each padded
// with -1 to whole 128-row blocks (the tiles restart at every run; no block is padding only). 32-bit
// arithmetic: the padded rows are a GEMM's K, well below 2^31 (64-bit division spilled the bf16 form)
__device__ __forceinline__ long long src_row(const int* rowMap, long long run, long long p) {
  if (rowMap) return rowMap[p];
  const unsigned pr = ((unsigned)run + 127u) / 128u * 128u, q = (unsigned)p / pr, j = (unsigned)p - q * pr;
  return j < (unsigned)run ? (long long)q * run + j : -1;
}
extern "C" __global__ void __launch_bounds__(256, ${src === "bf16" ? 5 : 4}) ${name}(unsigned char* __restrict__ qT, float* __restrict__ s, const ${S}* __restrict__ x, const float* __restrict__ xs, const int* __restrict__ rowMap, long long rows, int width, long long M, int vec, long long run) {
  __shared__ pk<${S}, EPC> tile16[ROWS * CPR];
  __shared__ long long srcRow[ROWS];
  __shared__ float rs[ROWS];
  ${S}* tile = reinterpret_cast<${S}*>(tile16);
  const int strips = (width + CW - 1) / CW, t = threadIdx.x;
  const long long b0 = (blockIdx.x / strips) * RB;
  const int c0 = (int)(blockIdx.x % strips) * CW;
  // a block's rows are a segment's prefix then padding: a first row of -1 is a block of padding only
  // (the device plan's capacity past the used blocks, all of them after the used ones), which no GEMM
  // reads: nothing to write
  if (rowMap && rowMap[b0 * 128] < 0) return;
  for (int i = t; i < ROWS; i += 256) {
    const long long r = b0 * 128 + i < M ? src_row(rowMap, run, b0 * 128 + i) : -1;
    srcRow[i] = r >= 0 && r < rows ? r : -1;
    rs[i] = ${src === "fp8" ? "r >= 0 && r < rows ? xs[r * ((width + 127) / 128) + c0 / 128] : 0.f" : "0.f"};
  }
  __syncthreads();
  if (vec) {
    // every load of the thread issued before the first is stored (one at a time left ~6 KB in flight an SM);
    // moved as uint4 bits (a pk of 16 e4m3 codes took a register a byte: 147 registers at 8 loads a thread)
    uint4 v[LOADS];
#pragma unroll
    for (int l = 0; l < LOADS; l++) {
      const int i = t + l * 256, r = i / CPR, col = c0 + (i % CPR) * EPC;
      v[l] = srcRow[r] >= 0 && col < width ? *reinterpret_cast<const uint4*>(x + srcRow[r] * width + col) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int l = 0; l < LOADS; l++) {
      const int i = t + l * 256, r = i / CPR;
      reinterpret_cast<uint4*>(tile16)[r * CPR + ((i % CPR) ^ ((r >> 4) & 7))] = v[l];
    }
  } else {
    for (int i = t; i < ROWS * CW; i += 256) {
      const int r = i / CW, c = i % CW;
      tile[slot(r, c)] = srcRow[r] >= 0 && c0 + c < width ? x[srcRow[r] * width + c0 + c] : ${zero};
    }
  }
  __syncthreads();
  // each column's amax and codes in one pass: 8 lanes a column, 16 of its rows each (their values held in
  // registers, each dequantized once), the lanes' amaxes met by shuffles; a warp then writes 4 whole
  // 128-byte runs of qT. (Two passes, an amax pass of 2 threads a column and a code pass, dequantized every
  // value twice and loaded its row scale each time: 0.195 ms for e4m3 codes, bench/results/2026-11-24-fp8-quant-kernels-h200-v3.txt.)
  const int rc = t & 7;
#pragma unroll 1
  for (int rb = 0; rb < RB; rb++) {
  const long long b = b0 + rb;
  // (the same for every thread: the padding-only blocks come last; read from the staged rows, since one more
  // live pointer here spilled the e4m3 form at its 64 registers)
  if (b * 128 >= M || srcRow[rb * 128] < 0) break;
  float rsr[16];
#pragma unroll
  for (int e = 0; e < 16; e++) rsr[e] = rs[rb * 128 + rc * 16 + e];
#pragma unroll
  for (int o = 0; o < OUTS; o++) {
    const int q = t + o * 256, c = q >> 3;
    float v[16], a = 0.f;
#pragma unroll
    for (int e = 0; e < 16; e++) {
      v[e] = val(tile, rsr[e], rb * 128 + rc * 16 + e, c);
      a = fmaxf(a, fabsf(v[e]));
    }
    // (every lane shuffles: a column past the width is zeros in the tile)
    a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, 1));
    a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, 2));
    a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, 4));
    if (c0 + c >= width) continue;
    float inv, scale;
    inv_scale(a, &inv, &scale);
    if (rc == 0) s[b * width + c0 + c] = scale;
    pk<unsigned char, 16> w;
#pragma unroll
    for (int e = 0; e < 16; e++) w.v[e] = q8(v[e], inv);
    *reinterpret_cast<pk<unsigned char, 16>*>(qT + (long long)(c0 + c) * M + b * 128 + rc * 16) = w;
  }
  }
}`,
  };
});

export const fp8Sources = (): { name: string; source: string }[] => [
  quantizeRows("bf16"), quantizeRows("f32"), quantizeFlat("bf16"), quantizeFlat("f32"), quantizeBlocks("bf16"), quantizeBlocks("f32"),
  quantizeTiles("bf16", "block"), quantizeTiles("f32", "block"), quantizeTiles("bf16", "block", true), quantizeTiles("f32", "block", true),
  quantizeTiles("bf16", "cols"), quantizeTiles("f32", "cols"),
  dequantize("bf16"), dequantize("f32"), dequantizeVec("bf16"), dequantizeVec("f32"),
  wgradColumns("fp8"), wgradColumns("bf16"), wgradColumns("f32"),
];
