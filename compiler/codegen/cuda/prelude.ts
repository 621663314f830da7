// The helpers every generated kernel starts with: storage conversions, rounding to a dtype, 16-byte
// packs, row loads/stores and warp/block reductions. Guarded, so several kernels may share one file
// (test/codegen puts a program's kernels in one .cu). Math helpers are __host__ __device__ so the
// op table can be checked as host code.

const CORE = String.raw`#ifndef SHARDTS_PRELUDE
#define SHARDTS_PRELUDE
#include <cuda_bf16.h>

#define SH_HD __host__ __device__ __forceinline__

SH_HD float sh_bits(unsigned int u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  union { unsigned int u; float f; } c;
  c.u = u;
  return c.f;
#endif
}
SH_HD float sh_nan() { return sh_bits(0x7fc00000u); }
SH_HD float sh_inf() { return sh_bits(0x7f800000u); }
// correctly rounded sqrt and division (rsqrtf is 2 ulp): memory-bound kernels can afford fidelity
SH_HD float sh_rsqrt(float x) { return 1.0f / sqrtf(x); }
// float -> i32 as the CPU reference: truncate, wrap modulo 2^32, non-finite gives 0
SH_HD int sh_f2i(float x) { return fabsf(x) < 9.2e18f ? (int)(unsigned long long)(long long)x : 0; }
// NaN-propagating max (a NaN anywhere in a row makes its max NaN, as on the CPU)
SH_HD float sh_max2(float a, float b) { return (b > a || b != b) ? b : a; }
SH_HD float sh_round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// storage -> computation type, and back (bf16 rounds to nearest even)
SH_HD float sh_get(float v) { return v; }
SH_HD float sh_get(__nv_bfloat16 v) { return __bfloat162float(v); }
SH_HD int sh_get(int v) { return v; }
SH_HD void sh_put(float& d, float v) { d = v; }
SH_HD void sh_put(__nv_bfloat16& d, float v) { d = __float2bfloat16_rn(v); }
SH_HD void sh_put(int& d, int v) { d = v; }

// N consecutive elements moved as one (up to 16-byte) access; the address must be aligned to it
template <typename S, int N> struct alignas(sizeof(S) * N) sh_pack { S v[N]; };

// One row chunk of a tensor into registers: V (vector mode) loads N consecutive columns from col0
// as one pack; otherwise columns col0 + e*T. Columns past ncol read as zero (and are masked later).
template <bool V, int N, int T, typename S, typename F>
static __device__ __forceinline__ void sh_ld_row(const S* __restrict__ p, int col0, int ncol, F (&x)[N]) {
  if (V) {
    if (col0 < ncol) {
      const sh_pack<S, N> q = *reinterpret_cast<const sh_pack<S, N>*>(p + col0);
#pragma unroll
      for (int e = 0; e < N; ++e) x[e] = sh_get(q.v[e]);
    } else {
#pragma unroll
      for (int e = 0; e < N; ++e) x[e] = F(0);
    }
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) x[e] = col0 + e * T < ncol ? sh_get(p[col0 + e * T]) : F(0);
  }
}
// The same for a tensor whose column stride is s (not its innermost dim): element loads only.
template <bool V, int N, int T, typename S, typename F>
static __device__ __forceinline__ void sh_ld_row_strided(const S* __restrict__ p, long long s, int col0, int ncol, F (&x)[N]) {
#pragma unroll
  for (int e = 0; e < N; ++e) {
    const int c = V ? col0 + e : col0 + e * T;
    x[e] = c < ncol ? sh_get(p[(long long)c * s]) : F(0);
  }
}
template <bool V, int N, int T, typename S, typename F>
static __device__ __forceinline__ void sh_st_row(S* __restrict__ p, int col0, int ncol, const F (&x)[N]) {
  if (V) {
    if (col0 < ncol) {
      sh_pack<S, N> q;
#pragma unroll
      for (int e = 0; e < N; ++e) sh_put(q.v[e], x[e]);
      *reinterpret_cast<sh_pack<S, N>*>(p + col0) = q;
    }
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e)
      if (col0 + e * T < ncol) sh_put(p[col0 + e * T], x[e]);
  }
}
template <bool V, int N, int T, typename S, typename F>
static __device__ __forceinline__ void sh_st_row_strided(S* __restrict__ p, long long s, int col0, int ncol, const F (&x)[N]) {
#pragma unroll
  for (int e = 0; e < N; ++e) {
    const int c = V ? col0 + e : col0 + e * T;
    if (c < ncol) sh_put(p[(long long)c * s], x[e]);
  }
}

// Reductions over an aligned group of T lanes (T = 32: the warp); every lane of the warp takes part
template <int T>
__device__ __forceinline__ float sh_group_sum(float v) {
#pragma unroll
  for (int o = T / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <int T>
__device__ __forceinline__ float sh_group_max(float v) {
#pragma unroll
  for (int o = T / 2; o > 0; o >>= 1) v = sh_max2(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Block-wide reductions for one row per block of T threads; every thread gets the result. The
// leading barrier makes the scratch reusable by the next reduction.
template <int T>
static __device__ __forceinline__ float sh_block_sum(float v, float* red) {
  v = sh_group_sum<32>(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  return sh_group_sum<32>((threadIdx.x & 31) < T / 32 ? red[threadIdx.x & 31] : 0.0f);
}
template <int T>
static __device__ __forceinline__ float sh_block_max(float v, float* red) {
  v = sh_group_max<32>(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  return sh_group_max<32>((threadIdx.x & 31) < T / 32 ? red[threadIdx.x & 31] : -sh_inf());
}
#endif // SHARDTS_PRELUDE
`;

const FP8 = String.raw`#ifndef SHARDTS_PRELUDE_FP8
#define SHARDTS_PRELUDE_FP8
#include <cuda_fp8.h>
// FP8 conversions saturate to the largest finite value (cvt.rn.satfinite), as the CPU reference
SH_HD float sh_round_e4m3(float x) { return float(__nv_fp8_e4m3(x)); }
SH_HD float sh_round_e5m2(float x) { return float(__nv_fp8_e5m2(x)); }
SH_HD float sh_get(__nv_fp8_e4m3 v) { return float(v); }
SH_HD float sh_get(__nv_fp8_e5m2 v) { return float(v); }
SH_HD void sh_put(__nv_fp8_e4m3& d, float v) { d = __nv_fp8_e4m3(v); }
SH_HD void sh_put(__nv_fp8_e5m2& d, float v) { d = __nv_fp8_e5m2(v); }
#endif
`;

/** The prelude text; FP8 helpers only where a kernel touches FP8. */
export function prelude(fp8: boolean): string {
  return fp8 ? CORE + FP8 : CORE;
}
