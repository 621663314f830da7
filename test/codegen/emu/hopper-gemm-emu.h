// CPU model of the Hopper pieces a generated GEMM kernel calls (compiler/codegen/cuda/gemm/ptx.ts), so
// a whole kernel (producer and consumer warpgroups, every tile of a persistent CTA) runs under g++ on
// top of cuda-emu.h's threads: mbarriers with arrival counts, transaction bytes and phases (a wait that
// never completes fails after a timeout instead of hanging); TMA loads that write the 128-byte swizzle
// and count their bytes on the barrier, out-of-bounds parts as zeros; wgmmas that decode the shared-
// memory descriptors and compute the thread's m64nNk16 bf16 fragment, but only when waited for (the
// latest moment the hardware may read the stage), failing where a TMA load overwrites a stage a pending
// wgmma still reads or a fragment is touched while pending (a warp passes wgmma.fence and
// wgmma.wait_group together); TMA stores that read the staging buffer
// only at wait_group.read (so a buffer reused too early stores the wrong values) and clip at the
// map's bounds; named barriers; bf16 packing with round to nearest even.
//
// The kernel source is included after this header: its GEMM_PTX block and the guarded helpers this
// header models are skipped (their guards are defined here); the including harness defines the wgmma
// wrapper of the kernel's width with EMU_WGMMA_BF16(N) and that wrapper's guard SHARDTS_WGMMA_BF16_N<N>
// (B N-major: EMU_WGMMA_BF16_TB(N), SHARDTS_WGMMA_BF16_TB_N<N>). Its `extern __shared__` buffer is
// replaced by `unsigned char* smem_raw = emu_smem;` before compiling.
#pragma once
#include "cuda-emu.h"
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
using std::min;

#define SHARDTS_GEMM_PTX
#define SHARDTS_GEMM_TMA_STORE_3D
// the kernel's own sh_wgmma_desc_mn (SHARDTS_GEMM_DESC_MN, plain arithmetic) is compiled as it is
#define SHARDTS_GEMM_TMA_LOAD_3D
#define __grid_constant__
typedef unsigned int sh_u32;
typedef unsigned long long sh_u64;
struct alignas(64) sh_tensor_map { sh_u64 opaque[16]; };
#define SH_DEV static inline __attribute__((unused))

#define EMU_FAIL(...)                                                          \
  do {                                                                         \
    std::printf("FAIL block %u thread %u: ", blockIdx.x, threadIdx.x);         \
    std::printf(__VA_ARGS__);                                                  \
    std::printf("\n");                                                         \
    std::fflush(stdout);                                                       \
    std::_Exit(1);                                                             \
  } while (0)

// ---- shared memory of the running block ----
constexpr sh_u32 EMU_SMEM = 232448;  // the opt-in maximum per block (config.ts SMEM_LIMIT)
alignas(1024) inline unsigned char emu_smem[EMU_SMEM];
static inline void emu_smem_check(sh_u32 a, sh_u32 bytes) {
  if ((unsigned long long)a + bytes > EMU_SMEM) EMU_FAIL("shared-memory access [%u, %u) past %u bytes", a, a + bytes, EMU_SMEM);
}
SH_DEV sh_u32 sh_smem_addr(const void* p) { return (sh_u32)(static_cast<const unsigned char*>(p) - emu_smem); }
// the 128-byte swizzle on shared-memory addresses: 16-byte chunk bits 4-6 XOR row bits 7-9
static inline sh_u32 emu_swz(sh_u32 a) { return a ^ (((a >> 7) & 7u) << 4); }

// ---- mbarriers ----
struct EmuBar {
  int count = 0, pending = 0;
  long long tx = 0;
  unsigned phase = 0;
};
inline std::mutex emu_mu;
inline std::condition_variable emu_cv;
inline std::map<sh_u32, EmuBar> emu_bars;
inline double emu_wait_s = 20;
static inline EmuBar& emu_bar(sh_u32 bar) {
  auto it = emu_bars.find(bar);
  if (it == emu_bars.end()) EMU_FAIL("mbarrier at smem %u used before mbarrier.init", bar);
  return it->second;
}
static inline void emu_try_complete(EmuBar& b) {
  if (b.pending == 0 && b.tx == 0) {
    b.phase++;
    b.pending = b.count;
    emu_cv.notify_all();
  }
}
SH_DEV void sh_mbar_init(sh_u32 bar, sh_u32 count) {
  std::lock_guard<std::mutex> l(emu_mu);
  EmuBar b;
  b.count = b.pending = (int)count;
  emu_bars[bar] = b;
}
SH_DEV void sh_mbar_init_fence() {}
static inline void emu_arrive(sh_u32 bar, long long tx) {
  std::lock_guard<std::mutex> l(emu_mu);
  EmuBar& b = emu_bar(bar);
  if (b.pending <= 0) EMU_FAIL("arrival on the mbarrier at smem %u with no arrival outstanding", bar);
  b.tx += tx;
  b.pending--;
  emu_try_complete(b);
}
SH_DEV void sh_mbar_arrive(sh_u32 bar) { emu_arrive(bar, 0); }
SH_DEV void sh_mbar_arrive_expect_tx(sh_u32 bar, sh_u32 bytes) { emu_arrive(bar, bytes); }
// try_wait.parity p: true once the phase of parity p has completed (the current phase's parity differs)
SH_DEV void sh_mbar_wait(sh_u32 bar, sh_u32 parity) {
  std::unique_lock<std::mutex> l(emu_mu);
  EmuBar& b = emu_bar(bar);
  if (!emu_cv.wait_for(l, std::chrono::duration<double>(emu_wait_s), [&] { return (b.phase & 1u) != parity; }))
    EMU_FAIL("deadlock: waited %g s on the mbarrier at smem %u for parity %u (phase %u, %d arrivals and %lld bytes outstanding)", emu_wait_s, bar, parity, b.phase, b.pending, b.tx);
}

// ---- tensor maps and TMA ----
struct EmuMap {
  unsigned char* base;
  int rank, eb;
  long long dims[3], strides[3];  // strides in bytes; strides[0] = eb
  int box[3];
};
static inline sh_tensor_map emu_tensor_map(const EmuMap* m) {
  sh_tensor_map t{};
  t.opaque[0] = reinterpret_cast<sh_u64>(m);
  return t;
}
static inline const EmuMap& emu_map(const sh_tensor_map* m) { return *reinterpret_cast<const EmuMap*>(m->opaque[0]); }
SH_DEV void sh_tma_prefetch_map(const sh_tensor_map*) {}

// shared-memory ranges pending wgmmas will read (a TMA load into one of them is a race)
inline std::multiset<std::pair<sh_u32, sh_u32>> emu_reads;

// one box of a rank-2 or rank-3 map (c2 = 0 for rank 2), written with the 128-byte swizzle
static inline void emu_tma_load(sh_u32 dst, const EmuMap& t, long long c0, long long c1, long long c2, sh_u32 bar) {
  const sh_u32 row = (sh_u32)(t.box[0] * t.eb), bytes = row * (sh_u32)t.box[1];
  if (row != 128 || (t.rank == 3 && t.box[2] != 1)) EMU_FAIL("TMA load through a map of rank %d with %u-byte box rows (the kernels load 128-byte rows, one deep)", t.rank, row);
  if (dst % 1024) EMU_FAIL("TMA load with the 128-byte swizzle into smem %u, not 1024-byte aligned", dst);
  emu_smem_check(dst, bytes);
  {
    std::lock_guard<std::mutex> l(emu_mu);
    for (const auto& r : emu_reads)
      if (r.first < dst + bytes && dst < r.second) EMU_FAIL("TMA load into smem [%u, %u) while a pending wgmma reads [%u, %u)", dst, dst + bytes, r.first, r.second);
  }
  const bool zIn = c2 >= 0 && c2 < (t.rank == 3 ? t.dims[2] : 1);
  for (int i = 0; i < t.box[1]; ++i)
    for (int j = 0; j < t.box[0]; ++j) {
      const long long x = c0 + j, y = c1 + i;
      unsigned char* to = emu_smem + emu_swz(dst + i * row + j * t.eb);
      if (zIn && x >= 0 && y >= 0 && x < t.dims[0] && y < t.dims[1]) std::memcpy(to, t.base + (t.rank == 3 ? c2 * t.strides[2] : 0) + y * t.strides[1] + x * t.eb, t.eb);
      else std::memset(to, 0, t.eb);
    }
  std::lock_guard<std::mutex> l(emu_mu);
  EmuBar& b = emu_bar(bar);
  b.tx -= bytes;
  emu_try_complete(b);
}
SH_DEV void sh_tma_load_2d(sh_u32 dst, const sh_tensor_map* m, int c0, int c1, sh_u32 bar) {
  const EmuMap& t = emu_map(m);
  if (t.rank != 2) EMU_FAIL("2-D TMA load through a map of rank %d", t.rank);
  emu_tma_load(dst, t, c0, c1, 0, bar);
}
SH_DEV void sh_tma_load_3d(sh_u32 dst, const sh_tensor_map* m, int c0, int c1, int c2, sh_u32 bar) {
  const EmuMap& t = emu_map(m);
  if (t.rank != 3) EMU_FAIL("3-D TMA load through a map of rank %d", t.rank);
  emu_tma_load(dst, t, c0, c1, c2, bar);
}

// bulk stores: queued by the issuing thread, read from shared memory only when it waits for them
struct EmuStore {
  const EmuMap* map;
  sh_u32 src;
  long long c[3];
};
inline thread_local std::vector<EmuStore> emu_stores;
SH_DEV void sh_tma_store_2d(const sh_tensor_map* m, sh_u32 src, int c0, int c1) {
  const EmuMap& t = emu_map(m);
  if (t.rank != 2 || t.box[0] * t.eb != 128) EMU_FAIL("2-D TMA store through a map of rank %d, box %d x %d", t.rank, t.box[0], t.box[1]);
  if (src % 1024) EMU_FAIL("TMA store with the 128-byte swizzle from smem %u, not 1024-byte aligned", src);
  emu_smem_check(src, 128u * t.box[1]);
  emu_stores.push_back({&t, src, {c0, c1, 0}});
}
SH_DEV void sh_tma_store_3d(const sh_tensor_map* m, sh_u32 src, int c0, int c1, int c2) {
  const EmuMap& t = emu_map(m);
  if (t.rank != 3 || t.box[0] * t.eb != 128 || t.box[2] != 1) EMU_FAIL("3-D TMA store through a map of rank %d, box %d x %d x %d", t.rank, t.box[0], t.box[1], t.box[2]);
  if (src % 1024) EMU_FAIL("TMA store with the 128-byte swizzle from smem %u, not 1024-byte aligned", src);
  emu_smem_check(src, 128u * t.box[1]);
  emu_stores.push_back({&t, src, {c0, c1, c2}});
}
static inline void emu_run_stores() {
  for (const EmuStore& s : emu_stores) {
    const EmuMap& t = *s.map;
    for (int i = 0; i < t.box[1]; ++i)
      for (int j = 0; j < t.box[0]; ++j) {
        const long long x = s.c[0] + j, y = s.c[1] + i, z = s.c[2];
        if (x < 0 || y < 0 || z < 0 || x >= t.dims[0] || y >= t.dims[1] || z >= (t.rank == 3 ? t.dims[2] : 1)) continue;
        std::memcpy(t.base + (t.rank == 3 ? z * t.strides[2] : 0) + y * t.strides[1] + x * t.eb, emu_smem + emu_swz(s.src + i * 128 + j * t.eb), t.eb);
      }
  }
  emu_stores.clear();
}
SH_DEV void sh_bulk_commit() {}
SH_DEV void sh_bulk_wait_read0() { emu_run_stores(); }
SH_DEV void sh_bulk_wait0() { emu_run_stores(); }
SH_DEV void sh_fence_proxy_async() {}

// ---- named barriers (per block) ----
inline std::unique_ptr<std::barrier<>> emu_named[16];
inline int emu_named_count[16];
SH_DEV void sh_named_bar(sh_u32 id, sh_u32 count) {
  std::barrier<>* b;
  {
    std::lock_guard<std::mutex> l(emu_mu);
    if (id == 0 || id >= 16) EMU_FAIL("named barrier %u (0 is __syncthreads')", id);
    if (!emu_named[id]) {
      emu_named[id] = std::make_unique<std::barrier<>>((std::ptrdiff_t)count);
      emu_named_count[id] = (int)count;
    } else if (emu_named_count[id] != (int)count) EMU_FAIL("named barrier %u used with %u and %d threads", id, count, emu_named_count[id]);
    b = emu_named[id].get();
  }
  b->arrive_and_wait();
}
SH_DEV void sh_sts_u32(sh_u32 addr, sh_u32 v) {
  emu_smem_check(addr, 4);
  std::memcpy(emu_smem + addr, &v, 4);
}

// ---- bf16 ----
static inline unsigned short emu_bf16(float f) {
  sh_u32 u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (unsigned short)(u >> 16);
}
static inline float emu_f32(unsigned short h) {
  const sh_u32 u = (sh_u32)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
SH_DEV sh_u32 sh_pack_bf16x2(float lo, float hi) { return (sh_u32)emu_bf16(lo) | ((sh_u32)emu_bf16(hi) << 16); }

// ---- registers ----
template <sh_u32 R> SH_DEV void sh_setmaxnreg_dec() {}
template <sh_u32 R> SH_DEV void sh_setmaxnreg_inc() {}

// ---- wgmma ----
SH_DEV sh_u64 sh_wgmma_desc(sh_u32 smem) {
  return (sh_u64)((smem & 0x3FFFF) >> 4) | ((sh_u64)1 << 16) | ((sh_u64)(1024 >> 4) << 32) | ((sh_u64)1 << 62);
}
struct EmuWgmma {
  float* d;
  int n, accumulate;
  sh_u64 da, db;
  bool tb;  // B transposed: N-major (imm-trans-b = 1)
};
struct EmuWgmmaState {
  std::vector<EmuWgmma> open;
  std::vector<std::vector<EmuWgmma>> groups;
  bool fenced = false;
};
inline thread_local EmuWgmmaState emu_wg;
// A shared-memory matrix descriptor decoded from its bits (PTX ISA "Matrix Descriptor Format": start
// address 0-13, leading byte offset 16-29, stride byte offset 32-45, each >> 4; base offset 49-51;
// swizzle mode 62-63). Only what the kernels use is modelled: the 128-byte swizzle with base offset 0;
// any other bit set fails, so a descriptor the model would misread is not silently accepted.
struct EmuDesc {
  sh_u32 start, lbo, sbo;
  bool mnMajor;
};
static inline EmuDesc emu_desc(sh_u64 desc, bool mnMajor) {
  const sh_u64 known = 0x3FFFull | (0x3FFFull << 16) | (0x3FFFull << 32) | (7ull << 49) | (3ull << 62);
  if ((desc & ~known) != 0 || (desc >> 62) != 1 || ((desc >> 49) & 7) != 0)
    EMU_FAIL("wgmma descriptor %llx: the model takes the 128-byte swizzle (mode 1) with base offset 0 and no other bits", desc);
  const EmuDesc d{(sh_u32)(desc & 0x3FFF) << 4, (sh_u32)((desc >> 16) & 0x3FFF) << 4, (sh_u32)((desc >> 32) & 0x3FFF) << 4, mnMajor};
  // K-major swizzled: PTX says the leading byte offset is unused, "assumed to be 1"; the kernels set 1
  if (!mnMajor && d.lbo != 16) EMU_FAIL("K-major swizzled wgmma descriptor %llx with leading byte offset field %u (unused, set to 1)", desc, d.lbo >> 4);
  if (d.sbo == 0 || (mnMajor && d.lbo == 0)) EMU_FAIL("wgmma descriptor %llx with a zero byte offset", desc);
  return d;
}
// The byte address (before the swizzle) of element (i, k) of one k16 step's operand, i along M or N, k
// along K, bf16, in the canonical 128-byte-swizzled layouts (PTX ISA "Shared Memory Matrix Layout";
// CUTLASS make_gmma_desc's SW128 layouts in 16-byte units: K-major ((8,m),(T,2)):((8T,SBO),(1,T)),
// MN-major ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)), T = 8 bf16):
// - K-major: a 128-byte row per i, 8-row groups SBO apart, k contiguous from the start (which a k step
//   moves 32 B along the row);
// - MN-major: 64 elements of i contiguous in a 128-byte row per k, 64-element chunks of i LBO apart, the
//   8-row groups of k SBO apart.
// The swizzle then applies to the address (16-byte chunk bits 4-6 ^= bits 7-9), as TMA writes it.
static inline sh_u32 emu_elem(const EmuDesc& d, int i, int k) {
  if (!d.mnMajor) return d.start + 128u * (i % 8) + d.sbo * (i / 8) + 2u * k;
  return d.start + 2u * (i % 64) + d.lbo * (i / 64) + 128u * (k % 8) + d.sbo * (k / 8);
}
// the 128-byte rows an operand of `rows` (M or N) reads, for the race checks
static inline std::pair<sh_u32, sh_u32> emu_desc_range(const EmuDesc& d, int rows) {
  sh_u32 lo = ~0u, hi = 0;
  for (int i = 0; i < rows; ++i)
    for (int k = 0; k < 16; ++k) {
      const sh_u32 a = emu_elem(d, i, k) & ~127u;
      lo = std::min(lo, a);
      hi = std::max(hi, a + 128u);
    }
  emu_smem_check(lo, hi - lo);
  return {lo, hi};
}
static inline bool emu_pending(const float* x) {
  for (const auto& g : emu_wg.groups)
    for (const EmuWgmma& w : g)
      if (x >= w.d && x < w.d + w.n / 2) return true;
  for (const EmuWgmma& w : emu_wg.open)
    if (x >= w.d && x < w.d + w.n / 2) return true;
  return false;
}
static inline void emu_wgmma_issue(float* d, int n, sh_u64 da, sh_u64 db, int accumulate, bool tb) {
  if (!emu_wg.fenced) EMU_FAIL("wgmma issued without a wgmma.fence before its batch");
  // chaining groups on one accumulator is ordered for wgmmas of one shape; starting it afresh is a race
  if (emu_pending(d) && !accumulate) EMU_FAIL("wgmma with accumulate 0 into a fragment a pending wgmma writes");
  const std::pair<sh_u32, sh_u32> ra = emu_desc_range(emu_desc(da, false), 64), rb = emu_desc_range(emu_desc(db, tb), n);
  {
    std::lock_guard<std::mutex> l(emu_mu);
    emu_reads.insert(ra);
    emu_reads.insert(rb);
  }
  emu_wg.open.push_back({d, n, accumulate, da, db, tb});
}
// m64nNk16: thread t of the warpgroup holds rows 16 (t/32) + (t%32)/4 and that + 8, column pairs 8j + 2 (t%4)
static inline void emu_wgmma_run(const EmuWgmma& w) {
  const EmuDesc a = emu_desc(w.da, false), b = emu_desc(w.db, w.tb);
  const std::pair<sh_u32, sh_u32> ra = emu_desc_range(a, 64), rb = emu_desc_range(b, w.n);
  const int t = (int)(threadIdx.x % 128), r0 = 16 * (t / 32) + (t % 32) / 4;
  for (int j = 0; j < w.n / 8; ++j)
    for (int q = 0; q < 4; ++q) {
      const int r = r0 + 8 * (q / 2), c = 8 * j + 2 * (t % 4) + (q % 2);
      float sum = 0.f;
      for (int k = 0; k < 16; ++k) {
        unsigned short x, y;
        std::memcpy(&x, emu_smem + emu_swz(emu_elem(a, r, k)), 2);
        std::memcpy(&y, emu_smem + emu_swz(emu_elem(b, c, k)), 2);
        sum += emu_f32(x) * emu_f32(y);
      }
      w.d[4 * j + q] = (w.accumulate ? w.d[4 * j + q] : 0.f) + sum;
    }
  std::lock_guard<std::mutex> l(emu_mu);
  emu_reads.erase(emu_reads.find(ra));
  emu_reads.erase(emu_reads.find(rb));
}
// wgmma.fence.sync.aligned opens each batch: the warp executes it together, so its lanes issue a block's
// wgmmas in step (as converged hardware lanes do), not a ring lap apart
SH_DEV void sh_wgmma_fence() {
  emu_wg.fenced = true;
  emu_warps[threadIdx.x >> 5]->bar.arrive_and_wait();
}
SH_DEV void sh_wgmma_commit() {
  emu_wg.groups.push_back(std::move(emu_wg.open));
  emu_wg.open.clear();
  emu_wg.fenced = false;
}
// .sync.aligned: the warp passes the wait together, so no lane goes on (lane 0 releasing the stage)
// before every lane's wgmmas have read it
template <int N> SH_DEV void sh_wgmma_wait() {
  while ((int)emu_wg.groups.size() > N) {
    for (const EmuWgmma& w : emu_wg.groups.front()) emu_wgmma_run(w);
    emu_wg.groups.erase(emu_wg.groups.begin());
  }
  emu_warps[threadIdx.x >> 5]->bar.arrive_and_wait();
}
SH_DEV void sh_wgmma_wait0() { sh_wgmma_wait<0>(); }
SH_DEV void sh_reg_fence(float& x) {
  if (emu_pending(&x)) EMU_FAIL("accumulator read while a wgmma writing it is pending");
}
#define EMU_WGMMA_BF16(N)                                                                                  \
  SH_DEV void sh_wgmma_bf16_m64n##N(float (&d)[N / 2], sh_u64 da, sh_u64 db, int accumulate) {             \
    emu_wgmma_issue(d, N, da, db, accumulate, false);                                                      \
  }
// B N-major (imm-trans-b = 1: the bMnMajor kernels' sh_wgmma_bf16_tb_m64n<N>)
#define EMU_WGMMA_BF16_TB(N)                                                                               \
  SH_DEV void sh_wgmma_bf16_tb_m64n##N(float (&d)[N / 2], sh_u64 da, sh_u64 db, int accumulate) {          \
    emu_wgmma_issue(d, N, da, db, accumulate, true);                                                       \
  }

// ---- launch: one block at a time, fresh barriers and shared memory for each ----
template <typename F, typename G> void emu_gemm_launch(unsigned grid, unsigned block, F f, G afterBlock) {
  gridDim.x = grid;
  blockDim.x = block;
  for (unsigned b = 0; b < grid; ++b) {
    blockIdx.x = b;
    emu_bars.clear();
    emu_reads.clear();
    for (auto& n : emu_named) n.reset();
    std::memset(emu_smem, 0xa5, EMU_SMEM);
    emu_block_bar = std::make_unique<std::barrier<>>(block);
    emu_warps.clear();
    for (unsigned w = 0; w < block / 32; ++w) emu_warps.push_back(std::make_unique<EmuWarp>());
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < block; ++t)
      ts.emplace_back([t, &f] {
        threadIdx.x = t;
        f();
        if (!emu_wg.groups.empty() || !emu_wg.open.empty()) EMU_FAIL("the thread ended with wgmma groups pending");
        if (!emu_stores.empty()) EMU_FAIL("the thread ended with TMA stores never waited for");
      });
    for (auto& t : ts) t.join();
    afterBlock();
  }
}
