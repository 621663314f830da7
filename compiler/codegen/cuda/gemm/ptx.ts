// The Hopper primitives the FP8 GEMM kernels use, as inline PTX (NVRTC compiles them with no CUDA
// header): shared-memory addresses, mbarriers, TMA tile loads, wgmma descriptors and fences,
// setmaxnreg, and bf16 packing. One wgmma wrapper is emitted per N, with its N/2 accumulators.

/** Device helpers shared by every GEMM kernel in a source (guarded, so kernels may share a file). */
export const GEMM_PTX = String.raw`#ifndef SHARDTS_GEMM_PTX
#define SHARDTS_GEMM_PTX
typedef unsigned int sh_u32;
typedef unsigned long long sh_u64;
// The driver's CUtensorMap: 128 opaque bytes, passed by value as a __grid_constant__ parameter.
struct alignas(64) sh_tensor_map { sh_u64 opaque[16]; };

// unused: a kernel calls only the helpers its configuration needs
#define SH_DEV static __device__ __forceinline__ __attribute__((unused))

SH_DEV sh_u32 sh_smem_addr(const void* p) {
  sh_u64 a;
  asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
  return (sh_u32)a;
}

// ---- mbarriers (a full/empty pair per pipeline stage) ----
SH_DEV void sh_mbar_init(sh_u32 bar, sh_u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the async proxy (TMA) and the other threads.
SH_DEV void sh_mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
SH_DEV void sh_mbar_arrive(sh_u32 bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(bar) : "memory");
}
// The producer's arrival: the phase completes once 'bytes' more have landed (TMA complete_tx).
SH_DEV void sh_mbar_arrive_expect_tx(sh_u32 bar, sh_u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
}
// Waits until the phase with the given parity has completed. A fresh barrier is in phase 0, and
// waiting for parity 1 returns at once (the phase before it counts as completed): that is how the
// producer's first pass over the empty barriers goes through.
SH_DEV void sh_mbar_wait(sh_u32 bar, sh_u32 parity) {
  sh_u32 done;
  do {
    asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
                 : "=r"(done) : "r"(bar), "r"(parity) : "memory");
  } while (!done);
}

// ---- clusters (two-CTA B multicast) ----
SH_DEV sh_u32 sh_cluster_rank() {
  sh_u32 r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
// Every thread of both CTAs: the barriers are initialised before any peer touches them (start), and
// no CTA exits while its peer may still arrive on its barriers or multicast into it (end).
SH_DEV void sh_cluster_sync() { asm volatile("barrier.cluster.arrive.release;\n barrier.cluster.wait.acquire;" ::: "memory"); }
// Arrives on the barrier at the same offset in CTA 'rank' of the cluster (this one or the peer):
// how a stage is released to both producers of a multicast pair. Default (release, CTA-scope)
// semantics, as CUTLASS's ClusterBarrier uses: the wgmmas that read the stage have completed.
SH_DEV void sh_mbar_arrive_cta(sh_u32 bar, sh_u32 rank) {
  sh_u32 remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(bar), "r"(rank));
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];" :: "r"(remote) : "memory");
}

// ---- TMA ----
SH_DEV void sh_tma_prefetch_map(const sh_tensor_map* m) {
  asm volatile("prefetch.tensormap [%0];" :: "l"(reinterpret_cast<sh_u64>(m)) : "memory");
}
// One 2-D box (c0 = innermost coordinate, in elements) into shared memory; completion is counted
// on 'bar' in bytes. Out-of-bounds parts of the box are filled with zeros and still counted.
SH_DEV void sh_tma_load_2d(sh_u32 dst, const sh_tensor_map* m, int c0, int c1, sh_u32 bar) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
               :: "r"(dst), "l"(reinterpret_cast<sh_u64>(m)), "r"(c0), "r"(c1), "r"(bar) : "memory");
}

// The same box written into the shared memory of every CTA in 'mask' (same offsets), each CTA's
// barrier at 'bar' counting the bytes.
SH_DEV void sh_tma_load_2d_mc(sh_u32 dst, const sh_tensor_map* m, int c0, int c1, sh_u32 bar, unsigned short mask) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;"
               :: "r"(dst), "l"(reinterpret_cast<sh_u64>(m)), "r"(c0), "r"(c1), "r"(bar), "h"(mask) : "memory");
}

// A tile from shared memory to global memory (clipped at the tensor's bounds), in this thread's
// bulk group; the source must have been written before a fence.proxy.async (sh_fence_proxy_async).
SH_DEV void sh_tma_store_2d(const sh_tensor_map* m, sh_u32 src, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];"
               :: "l"(reinterpret_cast<sh_u64>(m)), "r"(src), "r"(c0), "r"(c1) : "memory");
}
SH_DEV void sh_bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
// Until this thread's bulk stores have read their shared memory (the staging buffer is free again).
SH_DEV void sh_bulk_wait_read0() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }
// Until they have completed (before the CTA exits).
SH_DEV void sh_bulk_wait0() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
// Ordinary shared-memory writes become visible to the async proxy (the TMA store that reads them).
SH_DEV void sh_fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
// Named barrier 'id' over 'count' threads (one consumer warpgroup: 128).
SH_DEV void sh_named_bar(sh_u32 id, sh_u32 count) { asm volatile("bar.sync %0, %1;" :: "r"(id), "r"(count) : "memory"); }
SH_DEV void sh_sts_u32(sh_u32 addr, sh_u32 v) { asm volatile("st.shared.b32 [%0], %1;" :: "r"(addr), "r"(v) : "memory"); }
// A scale the TMA put in the stage (read after the stage's full barrier, before its release).
SH_DEV float sh_lds_f32(sh_u32 addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(addr) : "memory");
  return v;
}

// Two adjacent floats (8-byte aligned) from shared memory: a column pair's row scales of B.
SH_DEV void sh_lds_f32x2(sh_u32 addr, float& x, float& y) {
  asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(x), "=f"(y) : "r"(addr) : "memory");
}

// ---- wgmma ----
// Shared-memory matrix descriptor for a K-major tile with 128-byte rows and the 128-byte swizzle
// (what TMA's CU_TENSOR_MAP_SWIZZLE_128B writes): bits 0-13 start address >> 4; 16-29 leading
// byte offset >> 4 (unused for swizzled K-major, 1 by convention); 32-45 stride byte offset >> 4 =
// 1024 B between 8-row groups; 49-51 base offset 0 (tiles are 1024-byte aligned); 62-63 swizzle
// mode 1 = 128 B. Stepping K by 32 e4m3 inside the atom adds 32 B (2 in the >>4 units) to the start.
SH_DEV sh_u64 sh_wgmma_desc(sh_u32 smem) {
  return (sh_u64)((smem & 0x3FFFF) >> 4) | ((sh_u64)1 << 16) | ((sh_u64)(1024 >> 4) << 32) | ((sh_u64)1 << 62);
}
SH_DEV void sh_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
SH_DEV void sh_wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
SH_DEV void sh_wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
// Waits until at most N committed groups are pending (N = 1: the newest may still run). A template,
// so kernels that never call it get no unused-function warning.
template <int N> SH_DEV void sh_wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(N) : "memory"); }
// Keeps the compiler from moving accumulator reads or writes across an asynchronous wgmma.
SH_DEV void sh_reg_fence(float& x) { asm volatile("" : "+f"(x) :: "memory"); }

// ---- registers ----
template <sh_u32 R> SH_DEV void sh_setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" :: "n"(R)); }
template <sh_u32 R> SH_DEV void sh_setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" :: "n"(R)); }

// two floats -> bf16x2 (round to nearest even), lo in the low half
SH_DEV sh_u32 sh_pack_bf16x2(float lo, float hi) {
  sh_u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
#endif // SHARDTS_GEMM_PTX
`;

/**
 * The TMA store of a 3-D box (K-grouped kernels: D as [E][M][N], so a tile's rows past M are clipped
 * at its expert's block, not written into the next one). Outside GEMM_PTX, so kernels that do not use
 * it keep their sources.
 */
export const TMA_STORE_3D = String.raw`#ifndef SHARDTS_GEMM_TMA_STORE_3D
#define SHARDTS_GEMM_TMA_STORE_3D
SH_DEV void sh_tma_store_3d(const sh_tensor_map* m, sh_u32 src, int c0, int c1, int c2) {
  asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];"
               :: "l"(reinterpret_cast<sh_u64>(m)), "r"(src), "r"(c0), "r"(c1), "r"(c2) : "memory");
}
#endif
`;

/**
 * What an MN-major B (config bMnMajor) needs besides GEMM_PTX, outside it so the other kernels keep their
 * sources: the 3-D TMA load of a box of B [E][K][N], and B's descriptor.
 *
 * The descriptor. PTX ISA 9.1, "Shared Memory Matrix Layout" (9.7.15.5.1.2) and "Matrix Descriptor Format"
 * (9.7.15.5.1.2.2): the matrix is normalized to 128-bit elements (8 bf16); for an MN-major operand with a
 * swizzled layout the leading dimension byte offset (bits 16-29, >> 4) is "the offset from the first
 * (swizzle-byte-size/16) rows to the next (swizzle-byte-size/16) rows" - rows of the normalized matrix
 * run along MN, so with the 128-byte swizzle that is from one 64-element MN chunk to the next - and the
 * stride dimension byte offset (bits 32-45) "the offset from the first 8 columns to the next 8 columns",
 * the columns running along K. CUTLASS's make_gmma_desc (cute/atom/mma_traits_sm90_gmma.hpp) writes the
 * same canonical MN-major SW128 layout, in 16-byte units, as Swizzle<3,4,3> o ((T,8,m),(8,k)) :
 * ((1,T,LBO),(8T,SBO)) and sets LBO and SBO from those strides. So element (n, k) of a B tile sits at
 *   start + 2 (n % 64) + LBO (n / 64) + 128 (k % 8) + SBO (k / 8),
 * then the 128-byte swizzle of the address (bits 4-6 ^= bits 7-9), as for K-major. Our stage holds B as
 * blockN/64 TMA boxes of 64 K rows x 128 bytes (64 N columns), each its own 8 KiB region: the MN chunks
 * are 8192 B apart (LBO = 8192) and K's 8-row groups 1024 B apart (SBO = 1024); base offset 0 (the
 * regions are 1024-byte aligned), swizzle mode 1 (128 B). A k16 wgmma step covers 16 K rows: its start
 * advances 16 x 128 = 2048 B (128 in the >> 4 units) where the K-major one advances 32 B (2 units).
 * test/codegen/emu/hopper-gemm-emu.h decodes both forms from the bits and runs whole kernels on them (the
 * descriptor function is the kernel's own: plain arithmetic, in a guard of its own the model leaves open).
 */
export const MN_MAJOR_B = String.raw`#ifndef SHARDTS_GEMM_TMA_LOAD_3D
#define SHARDTS_GEMM_TMA_LOAD_3D
// One 3-D box (c0 = innermost coordinate, in elements): B [E][K][N] at (n, k, e); out-of-bounds parts are zeros.
SH_DEV void sh_tma_load_3d(sh_u32 dst, const sh_tensor_map* m, int c0, int c1, int c2, sh_u32 bar) {
  asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];"
               :: "r"(dst), "l"(reinterpret_cast<sh_u64>(m)), "r"(c0), "r"(c1), "r"(c2), "r"(bar) : "memory");
}
#endif
#ifndef SHARDTS_GEMM_DESC_MN
#define SHARDTS_GEMM_DESC_MN
// MN-major B with the 128-byte swizzle (see ptx.ts MN_MAJOR_B): LBO 8192 B between 64-column boxes,
// SBO 1024 B between 8-row groups of K, base offset 0, swizzle mode 1. A k16 step adds 2048 B (128).
SH_DEV sh_u64 sh_wgmma_desc_mn(sh_u32 smem) {
  return (sh_u64)((smem & 0x3FFFF) >> 4) | ((sh_u64)(8192 >> 4) << 16) | ((sh_u64)(1024 >> 4) << 32) | ((sh_u64)1 << 62);
}
#endif
`;

/** Bytes between the 64-column boxes of an MN-major B stage (the descriptor's leading byte offset). */
export const MN_BOX_BYTES = 8192;
/** The MN-major B descriptor's start-address advance per k16 step, in its >> 4 units (16 rows of 128 bytes). */
export const MN_K16_STEP = (16 * 128) >> 4;

/**
 * The wrapper's name for a tile width and operand type (kernels of both types may share a source); `tb`:
 * B transposed (N-major, bMnMajor).
 */
export const wgmmaName = (n: number, ab?: "e4m3" | "bf16", tb = false): string => (ab === "bf16" ? `sh_wgmma_bf16${tb ? "_tb" : ""}_m64n${n}` : `sh_wgmma_m64n${n}`);

/**
 * `sh_wgmma_m64n{N}(d, descA, descB, accumulate)`: one m64nNk32 e4m3×e4m3→f32 wgmma on the N/2
 * accumulators d (accumulate = 0 overwrites d with A·B). With ab = "bf16", `sh_wgmma_bf16_m64n{N}`:
 * one m64nNk16 bf16×bf16→f32 wgmma (32 bytes of K either way, so the descriptors step alike), whose
 * two trailing immediates say neither operand is transposed (both K-major, as the e4m3 form requires).
 */
export function wgmmaWrapper(n: number, ab?: "e4m3" | "bf16", tb = false): string {
  const regs = n / 2;
  const list = Array.from({ length: regs }, (_, i) => `%${i}`).join(", ");
  const outs = Array.from({ length: regs }, (_, i) => `"+f"(d[${i}])`);
  const lines: string[] = [];
  for (let i = 0; i < outs.length; i += 8) lines.push(`      ${outs.slice(i, i + 8).join(", ")}`);
  const bf16 = ab === "bf16";
  const guard = bf16 ? `SHARDTS_WGMMA_BF16${tb ? "_TB" : ""}_N${n}` : `SHARDTS_WGMMA_N${n}`;
  // the immediates: scale-d by p, scale-a 1, scale-b 1, trans-a 0 (A K-major), trans-b (1: B N-major)
  const op = bf16 ? `m64n${n}k16.f32.bf16.bf16 {${list}}, %${regs}, %${regs + 1}, p, 1, 1, 0, ${tb ? 1 : 0}` : `m64n${n}k32.f32.e4m3.e4m3 {${list}}, %${regs}, %${regs + 1}, p, 1, 1`;
  return `#ifndef ${guard}
#define ${guard}
SH_DEV void ${wgmmaName(n, ab, tb)}(float (&d)[${regs}], sh_u64 descA, sh_u64 descB, int accumulate) {
  asm volatile(
      "{\\n .reg .pred p;\\n setp.ne.b32 p, %${regs + 2}, 0;\\n"
      " wgmma.mma_async.sync.aligned.${op};\\n}"
      :
${lines.join(",\n")}
      : "l"(descA), "l"(descB), "r"(accumulate));
}
#endif
`;
}

/** `sh_wgmma_rs_m64n{N}`: the register-A form: m64nNk32 e4m3 with A's fragment in four 32-bit registers. */
export const wgmmaRsName = (n: number): string => `sh_wgmma_rs_m64n${n}`;

/**
 * The register-A wgmma wrapper and the ldmatrix that fills A's fragment. For k32 e4m3 the fragment of a
 * warp's 16 rows is mma.m16n8k32's: register 0 holds row g = lane / 4, bytes 4 (lane % 4) .. +3 of the
 * step's 32; register 1 row g + 8; registers 2 and 3 the same rows 16 bytes on, which is what
 * ldmatrix.x4 of four 8 x 16-byte matrices (rows 0-7 and 8-15 at bytes 0-15, then at 16-31) gives.
 */
export function wgmmaRsWrapper(n: number): string {
  const regs = n / 2;
  const list = Array.from({ length: regs }, (_, i) => `%${i}`).join(", ");
  const outs = Array.from({ length: regs }, (_, i) => `"+f"(d[${i}])`);
  const lines: string[] = [];
  for (let i = 0; i < outs.length; i += 8) lines.push(`      ${outs.slice(i, i + 8).join(", ")}`);
  return `#ifndef SHARDTS_WGMMA_RS_N${n}
#define SHARDTS_WGMMA_RS_N${n}
SH_DEV void ${wgmmaRsName(n)}(float (&d)[${regs}], sh_u32 a0, sh_u32 a1, sh_u32 a2, sh_u32 a3, sh_u64 descB, int accumulate) {
  asm volatile(
      "{\\n .reg .pred p;\\n setp.ne.b32 p, %${regs + 5}, 0;\\n"
      " wgmma.mma_async.sync.aligned.m64n${n}k32.f32.e4m3.e4m3 {${list}}, {%${regs}, %${regs + 1}, %${regs + 2}, %${regs + 3}}, %${regs + 4}, p, 1, 1;\\n}"
      :
${lines.join(",\n")}
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(descB), "r"(accumulate));
}
#endif
#ifndef SHARDTS_LDSM_X4
#define SHARDTS_LDSM_X4
// four 8 x 16-byte matrices from shared memory, lane l naming row l % 8 of matrix l / 8
SH_DEV void sh_ldsm_x4(sh_u32 addr, sh_u32& r0, sh_u32& r1, sh_u32& r2, sh_u32& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];" : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr) : "memory");
}
#endif
`;
}

/** bar.arrive for the chunked kernels' turns (orderedChunks), emitted only where they use it. */
export const NAMED_ARRIVE = `#ifndef SHARDTS_NAMED_ARRIVE
#define SHARDTS_NAMED_ARRIVE
// Arrives on named barrier 'id' without waiting (the waiting side of the pair uses sh_named_bar).
SH_DEV void sh_named_arrive(sh_u32 id, sh_u32 count) { asm volatile("bar.arrive %0, %1;" :: "r"(id), "r"(count) : "memory"); }
#endif
`;

/** The scale thread's store of a stage's two B scales (Fp8GemmConfig stagedBScales). */
export const STS_F32X2 = `#ifndef SHARDTS_STS_F32X2
#define SHARDTS_STS_F32X2
SH_DEV void sh_sts_f32x2(sh_u32 addr, float x, float y) { asm volatile("st.shared.v2.f32 [%0], {%1, %2};" :: "r"(addr), "f"(x), "f"(y) : "memory"); }
#endif
`;

/** Four 8 x 8 b16 matrices into shared memory, row addresses from lanes 0-7 / 8-15 / 16-23 / 24-31 (Fp8GemmConfig stmatrix). */
export const STSM_X4 = `#ifndef SHARDTS_STSM_X4
#define SHARDTS_STSM_X4
SH_DEV void sh_stsm_x4(sh_u32 addr, sh_u32 r0, sh_u32 r1, sh_u32 r2, sh_u32 r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};" :: "r"(addr), "r"(r0), "r"(r1), "r"(r2), "r"(r3) : "memory");
}
#endif
`;
