// Host stand-in for the two bf16 conversions the generated row kernels use (round to nearest even,
// NaN kept quiet), for the CPU emulation in ../cuda-emu.h. Not NVIDIA's header.
#pragma once
#include <cstdint>
#include <cstring>
struct __nv_bfloat16 { unsigned short x; __nv_bfloat16() = default; };
inline float __bfloat162float(__nv_bfloat16 b) { uint32_t u = (uint32_t)b.x << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u; std::memcpy(&u, &f, 4); __nv_bfloat16 b;
  if ((u & 0x7fffffffu) > 0x7f800000u) { b.x = (unsigned short)((u >> 16) | 0x40); return b; }
  u += 0x7fffu + ((u >> 16) & 1); b.x = (unsigned short)(u >> 16); return b;
}
