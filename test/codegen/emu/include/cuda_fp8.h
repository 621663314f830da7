// Host stand-in for the FP8 types the generated kernels use (e4m3 and e5m2: float -> code with
// round-to-nearest-even and saturation to the largest finite value, as cvt.rn.satfinite; NaN -> 0x7F;
// code -> float), for the CPU emulation in ../cuda-emu.h. Not NVIDIA's header. Slow and plain on
// purpose: the nearest code by search over the code table, ties to the even code.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

template <int E, int M>
inline float emu_fp8_decode(unsigned char c) {
  const int bias = (1 << (E - 1)) - 1, e = (c >> M) & ((1 << E) - 1), m = c & ((1 << M) - 1);
  const float v = e == 0 ? std::ldexp((float)m, 1 - bias - M) : std::ldexp((float)((1 << M) | m), e - bias - M);
  return (c & 0x80) ? -v : v;
}
/** `maxCode`: the largest finite positive code (e4m3 0x7E, e5m2 0x7B). */
template <int E, int M, int maxCode>
inline unsigned char emu_fp8_encode(float x) {
  if (std::isnan(x)) return 0x7F;
  const unsigned char sign = std::signbit(x) ? 0x80 : 0;
  const float a = std::fabs(x);
  if (a >= emu_fp8_decode<E, M>(maxCode)) return sign | maxCode;
  int best = 0;
  for (int c = 1; c <= maxCode; ++c) {
    const float d = std::fabs(emu_fp8_decode<E, M>(c) - a), b = std::fabs(emu_fp8_decode<E, M>(best) - a);
    if (d < b || (d == b && (c & 1) == 0)) best = c;
  }
  return sign | best;
}
struct __nv_fp8_e4m3 {
  unsigned char __x;
  __nv_fp8_e4m3() = default;
  explicit __nv_fp8_e4m3(float f) : __x(emu_fp8_encode<4, 3, 0x7E>(f)) {}
  explicit operator float() const { return __x == 0x7F || __x == 0xFF ? NAN : emu_fp8_decode<4, 3>(__x); }
};
struct __nv_fp8_e5m2 {
  unsigned char __x;
  __nv_fp8_e5m2() = default;
  explicit __nv_fp8_e5m2(float f) : __x(emu_fp8_encode<5, 2, 0x7B>(f)) {}
  explicit operator float() const { return (__x & 0x7F) > 0x7C ? NAN : (__x & 0x7F) == 0x7C ? ((__x & 0x80) ? -INFINITY : INFINITY) : emu_fp8_decode<5, 2>(__x); }
};
// correctly rounded f32 product and quotient (the host's IEEE operations)
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
// the conversion intrinsic the standalone kernels use (runtime/cuda/kernels/fp8-sources.ts)
enum __nv_saturation_t { __NV_NOSAT, __NV_SATFINITE };
enum __nv_fp8_interpretation_t { __NV_E4M3, __NV_E5M2 };
typedef unsigned char __nv_fp8_storage_t;
inline __nv_fp8_storage_t __nv_cvt_float_to_fp8(float x, __nv_saturation_t sat, __nv_fp8_interpretation_t t) {
  if (sat != __NV_SATFINITE) std::abort();  // only the saturating form is emulated
  return t == __NV_E4M3 ? emu_fp8_encode<4, 3, 0x7E>(x) : emu_fp8_encode<5, 2, 0x7B>(x);
}
