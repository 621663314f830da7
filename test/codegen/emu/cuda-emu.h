// CPU emulation of the CUDA subset the generated row kernels use, so their text can be run without a
// GPU (test/codegen/row-emulation.test.ts): one block at a time, its threads as std::threads,
// __syncthreads a block barrier, warp shuffles through a per-warp exchange with two barriers. Device
// intrinsics take their host fallbacks in the prelude (#ifdef __CUDA_ARCH__).
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
// one block runs at a time, so a function-level static is the block's shared memory
#define __shared__ static
struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx;
inline dim3 blockIdx, gridDim, blockDim;
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
struct EmuWarp { std::barrier<> bar{32}; uint64_t buf[32]; };
inline std::unique_ptr<std::barrier<>> emu_block_bar;
inline std::vector<std::unique_ptr<EmuWarp>> emu_warps;
inline void __syncthreads() { emu_block_bar->arrive_and_wait(); }
template <typename X> X __shfl_xor_sync(unsigned, X v, int o) {
  EmuWarp& w = *emu_warps[threadIdx.x >> 5];
  const int lane = threadIdx.x & 31;
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(X));
  w.buf[lane] = b;
  w.bar.arrive_and_wait();
  const uint64_t r = w.buf[lane ^ o];
  w.bar.arrive_and_wait();
  X x;
  std::memcpy(&x, &r, sizeof(X));
  return x;
}
struct uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
#define __align__(n) __attribute__((aligned(n)))
struct uint2 { unsigned x, y; };
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
struct float4 { float x, y, z, w; };
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline int atomicExch(int* p, int v) { return std::atomic_ref<int>(*p).exchange(v); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
/** Byte b of the result: byte (s >> 4b) & 7 of y:x (the sign-replicating mode, bit 3, is not emulated). */
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = (unsigned long long)y << 32 | x;
  unsigned r = 0;
  for (int b = 0; b < 4; b++) r |= (unsigned)(v >> (8 * ((s >> (4 * b)) & 7)) & 0xff) << (8 * b);
  return r;
}
inline int __ffs(unsigned v) { return __builtin_ffs((int)v); }
/** The lanes of this warp whose v equals this lane's (the emulation runs whole warps: mask is all lanes). */
inline unsigned __match_any_sync(unsigned, int v) {
  EmuWarp& w = *emu_warps[threadIdx.x >> 5];
  const int lane = threadIdx.x & 31;
  w.buf[lane] = (uint64_t)(uint32_t)v;
  w.bar.arrive_and_wait();
  unsigned m = 0;
  for (int l = 0; l < 32; l++) if ((uint32_t)w.buf[l] == (uint32_t)v) m |= 1u << l;
  w.bar.arrive_and_wait();
  return m;
}
template <typename F> void emu_launch(unsigned grid, unsigned block, F f) {
  gridDim.x = grid;
  blockDim.x = block;
  for (unsigned b = 0; b < grid; ++b) {
    blockIdx.x = b;
    emu_block_bar = std::make_unique<std::barrier<>>(block);
    emu_warps.clear();
    for (unsigned w = 0; w < block / 32; ++w) emu_warps.push_back(std::make_unique<EmuWarp>());
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < block; ++t) ts.emplace_back([t, &f] { threadIdx.x = t; f(); });
    for (auto& t : ts) t.join();
  }
}
