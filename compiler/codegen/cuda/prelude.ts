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

// Row chunks written back: V (vector mode) stores N consecutive columns from col0 as one pack;
// otherwise columns col0 + e*T. Columns past ncol are not written.
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

// One row chunk of a tensor as stored (the row kernels keep these in registers and convert on use):
// V loads N consecutive columns from col0 as one pack, otherwise columns col0 + e*T, each read once.
// Columns past ncol hold zero (and are masked later).
template <bool V, int N, int T, typename S>
static __device__ __forceinline__ void sh_ld_raw(const S* __restrict__ p, int col0, int ncol, sh_pack<S, N>& x) {
  if (V) {
    if (col0 < ncol) x = *reinterpret_cast<const sh_pack<S, N>*>(p + col0);
    else x = sh_pack<S, N>{};
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) x.v[e] = col0 + e * T < ncol ? p[col0 + e * T] : S{};
  }
}
template <bool V, int N, int T, typename S>
static __device__ __forceinline__ void sh_ld_raw_strided(const S* __restrict__ p, long long s, int col0, int ncol, sh_pack<S, N>& x) {
#pragma unroll
  for (int e = 0; e < N; ++e) {
    const int c = V ? col0 + e : col0 + e * T;
    x.v[e] = c < ncol ? p[(long long)c * s] : S{};
  }
}
// Hides a kept pack's bits from the optimizer: a later pass converts them again (one instruction a
// value) rather than the first pass's converted values staying alive (bf16: two values a register, not one)
template <typename S, int N>
__device__ __forceinline__ void sh_launder(sh_pack<S, N>& p) {
  unsigned* w = reinterpret_cast<unsigned*>(&p);
#pragma unroll
  for (int i = 0; i < (int)(sizeof(p) / 4); ++i) asm volatile("" : "+r"(w[i]));
}
// NaN-propagating max in one instruction where the GPU has it (sm_80+); elsewhere sh_max2
__device__ __forceinline__ float sh_max_nan(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return sh_max2(a, b);
#endif
}
// 2^x in one instruction (MUFU.EX2: 2 ulp; results below 2^-126 flush to 0). Softmax's exp(x - max)
// is exp2((x - max) * log2 e): the argument is <= 0, so the product's rounding costs |x - max| * 6e-8
// relative, and only on terms that are already small next to the max's 1.
__device__ __forceinline__ float sh_exp2(float x) {
#ifdef __CUDA_ARCH__
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  return exp2f(x);
#endif
}
#define SH_LOG2E 1.4426950408889634f
// 1/x in one instruction (MUFU.RCP: 1 ulp; the fast tuning's reciprocal and division)
__device__ __forceinline__ float sh_rcp(float x) {
#ifdef __CUDA_ARCH__
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  return 1.0f / x;
#endif
}
// Online max-and-sum (as in flash attention's softmax): s is a sum of exp(x - m) over the values
// seen, m their max. Rescaling s from max m to max mx (>= m): a -inf max (nothing but -inf seen)
// keeps its sum (0) without exp(-inf - -inf); NaN propagates.
__device__ __forceinline__ float sh_rescale(float s, float m, float mx) {
  return m == mx ? s : s * sh_exp2((m - mx) * SH_LOG2E);
}
// The row's online sum rescaled to mr, the max as the kernel uses it (m rounded to its dtype). A row
// whose values are all -inf sums exp(-inf - -inf) = NaN, as the two-pass form does; an empty row, 0.
__device__ __forceinline__ float sh_online_sum(float m, float s, float mr, int n) {
  if (m == -sh_inf()) return n > 0 ? sh_nan() : s;
  return sh_rescale(s, m, mr);
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
// online (max, sum of exp(x - max)) pairs: the group's max, each sum rescaled to it, then summed
template <int T>
__device__ __forceinline__ void sh_group_online(float& m, float& s) {
  float mx = m;
#pragma unroll
  for (int o = T / 2; o > 0; o >>= 1) mx = sh_max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  s = sh_rescale(s, m, mx);
#pragma unroll
  for (int o = T / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  m = mx;
}
// the bits of the one lane that holds a value (every other lane gives 0): a gather from registers
template <int T>
__device__ __forceinline__ unsigned sh_group_or(unsigned v) {
#pragma unroll
  for (int o = T / 2; o > 0; o >>= 1) v |= __shfl_xor_sync(0xffffffffu, v, o);
  return v;
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
// quantize epilogues, compiler/ops/quantize.ts to the bit: amax by fmaxf (NaN ignored) over an
// aligned group of G lanes; inv = 448/amax and scale = amax/448 correctly rounded (amax 0: both 1)
template <int G>
__device__ __forceinline__ float sh_group_amax(float v) {
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ void sh_inv_scale(float amax, float& inv, float& scale) {
  inv = amax == 0.0f ? 1.0f : __fdiv_rn(448.0f, amax);
  scale = amax == 0.0f ? 1.0f : __fdiv_rn(amax, 448.0f);
}
#endif
`;

/** The prelude text; FP8 helpers only where a kernel touches FP8. */
export function prelude(fp8: boolean): string {
  return fp8 ? CORE + FP8 : CORE;
}
