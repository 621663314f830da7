// Block-scaled FP8 kernels (standalone; the fused producer epilogues are not written yet). The
// tensor is viewed as [O, N, K] with tiles of tn×128 over (N, K): tn = 1 is a 1×128 / 128×1 tiling
// (the executor moves the tiled dim last), tn = 128 the 128×128 weight blocks. The numerics are
// compiler/ops/quantize.ts's, to the bit: amax by fmaxf (NaN ignored), inv = 448/amax and
// scale = amax/448 correctly rounded (__fdiv_rn), amax 0 → 1, q = cvt.rn.satfinite.e4m3(x·inv).
import type { DType } from "../../../compiler/ir/types.ts";

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

export const fp8Sources = (): { name: string; source: string }[] => [quantizeRows("bf16"), quantizeRows("f32"), quantizeBlocks("bf16"), quantizeBlocks("f32"), dequantize("bf16"), dequantize("f32")];
