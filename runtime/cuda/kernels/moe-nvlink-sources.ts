// Kernels of the intranode NVLink transport for MoE dispatch/combine (runtime/cuda/moe-nvlink.ts):
// each rank stores rows straight into its peers' receive windows (CUDA IPC mappings, ipc.ts) and the
// ranks meet at device-side barriers made of flags in those windows. Index math mirrors
// runtime/cuda/moe-nvlink-layout.ts (pushRows / combineBack), which the unit tests check against the
// CPU reference's pieces; the text runs on the g++ emulation too (test/codegen/moe-nvlink-kernels).
//
// Phases (bit mask `phases`; a GPU launch runs all three, the emulation runs each phase for every
// rank before the next, so every wait is already satisfied):
//   1 notify: small per-op data (dispatch: a source's counts rows; combine/redispatch: an expert
//     rank's rows per batch entry, "lens") into every peer's parity area, then signal flag set N.
//   2 push: wait for set N from every peer (so every peer has also left the previous op, whose reads
//     of its window are therefore done: the window's rows area is free), then store rows into the
//     peers' rows areas, then signal flag set R.
//   4 consume: wait for set R from every peer, then (dispatch/redispatch) copy the window's rows into
//     the op's output with zero padding, as the CPU reference's pieces have it.
//
// Epochs. A flag is a u64 in the receiver's window holding the epoch (the per-group op counter, the
// same on every rank since every rank runs the same plan): it only grows, so a window is reused with no
// reset. The counter lives on the device (`epochs`, a u64 per block of each rank, never reset): each
// block reads its own at its start, runs as op epochs[block] + 1, and stores that back after its last
// wait (its threads have all read it by then: the wait ends in a block barrier). Every block runs every
// op, so the counters of all blocks of all ranks move in step. Nothing of an op's identity is fixed at
// launch, so a captured CUDA graph replays with fresh epochs; the parity areas (counts, lens) are chosen
// from the epoch on the device for the same reason.
//
// Memory model. Writers: every thread's data stores, then its own fence.acq_rel.sys, then
// bar.sync, then one thread per peer does st.release.sys of the flag; the fences make each thread's
// peer stores visible at system scope before the CTA barrier, and the barrier orders them before
// the release (causality order is transitive through bar.sync). Readers: one thread spins with
// ld.acquire.sys on its own window's flags, bar.sync, then every thread fences (acq_rel.sys) before
// reading data, so no load of the window is satisfied before the flag was seen. gpu scope would not
// do: the stores come from another GPU over NVLink. Every flag of set N/R is written by one block of
// one peer, so the waits need no atomics, only NB x W loads. A wait that exceeds timeoutNs traps (the
// job then fails with a launch error instead of hanging: a peer that never arrives ran another plan).
import type { DType } from "../../../compiler/ir/types.ts";
import { ctype, memo, PRELUDE } from "./sources.ts";

/** Largest expert-axis group the kernels take (their flag and bound arrays are sized by it). */
export const NVL_MAX_RANKS = 8;
/** Threads per block of every NVLink kernel (8 warps; one block per SM: the grid is the SM budget). */
export const NVL_BLOCK = 256;

/** Flag primitives, device and emulation (the emulation runs ranks one after another: waits never spin long). */
const SYNC = `
#ifdef __CUDA_ARCH__
__device__ __forceinline__ void nvl_st_release(unsigned long long* p, unsigned long long v) { asm volatile("st.release.sys.global.u64 [%0], %1;" :: "l"(p), "l"(v) : "memory"); }
__device__ __forceinline__ unsigned long long nvl_ld_acquire(const unsigned long long* p) { unsigned long long v; asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory"); return v; }
__device__ __forceinline__ long long nvl_now() { long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
__device__ __forceinline__ void nvl_fence() { __threadfence_system(); }
__device__ __forceinline__ void nvl_trap() { __trap(); }
#else
inline void nvl_st_release(unsigned long long* p, unsigned long long v) { std::atomic_ref<unsigned long long>(*p).store(v, std::memory_order_release); }
inline unsigned long long nvl_ld_acquire(const unsigned long long* p) { return std::atomic_ref<unsigned long long>(*const_cast<unsigned long long*>(p)).load(std::memory_order_acquire); }
inline long long nvl_now() { return (long long)std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
inline void nvl_fence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void nvl_trap() { fprintf(stderr, "nvl barrier timed out\\n"); abort(); }
#endif
#define NVL_WIN(q, off) (reinterpret_cast<char*>(peers[q]) + (off))
/** Signals flag [me * NB + block] of every peer's set at offset \`off\` (all data stores of this block done). */
__device__ __forceinline__ void nvl_signal(const unsigned long long* peers, int W, int me, long long off, unsigned long long epoch) {
  nvl_fence();
  __syncthreads();
  if ((int)threadIdx.x < W) nvl_st_release(reinterpret_cast<unsigned long long*>(NVL_WIN(threadIdx.x, off)) + (long long)me * gridDim.x + blockIdx.x, epoch);
}
/** Waits until every peer's every block signalled set \`off\` of this rank's window with \`epoch\`. */
__device__ __forceinline__ void nvl_wait(const unsigned long long* peers, int W, int me, long long off, unsigned long long epoch, long long timeoutNs) {
  if (threadIdx.x == 0) {
    const unsigned long long* f = reinterpret_cast<const unsigned long long*>(NVL_WIN(me, off));
    const long long t0 = nvl_now();
    for (long long i = 0; i < (long long)W * gridDim.x; i++)
      while (nvl_ld_acquire(f + i) < epoch) if (nvl_now() - t0 > timeoutNs) nvl_trap();
  }
  __syncthreads();
  nvl_fence();
}
/** A warp copies a row; four words per lane in flight (one at a time leaves NVLink stores latency-bound). */
template <typename T> __device__ __forceinline__ void nvl_copy_row(T* __restrict__ d, const T* __restrict__ s, long long words, int lane) {
  long long i = lane;
  for (; i + 96 < words; i += 128) { const T a = s[i], b = s[i + 32], c = s[i + 64], e = s[i + 96]; d[i] = a; d[i + 32] = b; d[i + 64] = c; d[i + 96] = e; }
  for (; i < words; i += 32) d[i] = s[i];
}
/** Rows per batch entry of expert rank \`me\` (sum of its counts piece [B, ne]), into every peer's lens[me][b]. */
__device__ __forceinline__ void nvl_notify_lens(const unsigned long long* peers, int W, int me, long long oLens, const int* counts, int B, int ne) {
  for (long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x; b < B; b += (long long)gridDim.x * blockDim.x) {
    int l = 0;
    for (int e = 0; e < ne; e++) l += counts[b * ne + e];
    for (int q = 0; q < W; q++) reinterpret_cast<int*>(NVL_WIN(q, oLens))[(long long)me * B + b] = l;
  }
}
`;

const HEAD = `${PRELUDE}#ifndef __CUDA_ARCH__
#include <atomic>
#include <chrono>
#endif
${SYNC}`;

const word = (V: 16 | 4 | 1) => (V === 16 ? "uint4" : V === 4 ? "unsigned int" : "unsigned char");

/**
 * Dispatch (`weighted` undefined: rows are bytes moved as V-byte words, bounds from the local
 * counts [Bloc, G]) or redispatch (weighted in `weighted`'s dtype or plain words, bounds from the
 * lens table its notify phase fills). geo = efirst[W+1] | dstOf[Bloc]. Sorted row j of batch entry
 * lb (perm order) lands at peer q's rows[dstOf[lb], j - start_q(lb)], q the rank whose experts hold j.
 */
export function moeNvlPush(o: NvlPush): { name: string; source: string } {
  const key = `${o.redispatch ? "r" : "d"}${o.V}${o.weighted ?? ""}`;
  let k = pushKernels.get(key);
  if (!k) pushKernels.set(key, (k = makePush(o)));
  return k;
}
type NvlPush = { redispatch: boolean; V: 16 | 4 | 1; weighted?: DType };
/** Built once per specialisation (the executor looks sources up by identity on every launch). */
const pushKernels = new Map<string, { name: string; source: string }>();
function makePush(o: NvlPush): { name: string; source: string } {
  const W_T = o.weighted ? ctype(o.weighted) : word(o.V);
  const name = `shardts_moe_nvl_${o.redispatch ? "redispatch" : "dispatch"}_${o.weighted ? `w_${o.weighted}` : `v${o.V}`}`;
  const copy = o.weighted
    ? `const float wv = to_f(w[lb * n + s]); for (long long i = lane; i < words; i += 32) d[i] = from_f<${W_T}>(to_f(src[i]) * wv);`
    : `nvl_copy_row(d, src, words, lane);`;
  const notify = o.redispatch
    ? `nvl_notify_lens(peers, W, me, oLens, counts, Bdst, efirst[me + 1] - efirst[me]);`
    : `for (int lb = blockIdx.x; lb < Bloc; lb += gridDim.x) for (int q = 0; q < W; q++) for (int g = threadIdx.x; g < G; g += blockDim.x) reinterpret_cast<int*>(NVL_WIN(q, oCounts))[(long long)dstOf[lb] * G + g] = counts[(long long)lb * G + g];`;
  // bounds of batch entry lb: st[q] = sorted rows before rank q's experts
  const bounds = o.redispatch
    ? `if (threadIdx.x == 0) { const int* L = reinterpret_cast<const int*>(NVL_WIN(me, oLens)); st[0] = 0; for (int q = 0; q < W; q++) st[q + 1] = st[q] + L[(long long)q * Bdst + dstOf[lb]]; }`
    : `if ((int)threadIdx.x <= W) st[threadIdx.x] = 0;
      __syncthreads();
      for (int g = threadIdx.x; g < G; g += blockDim.x) { int q = 0; while (g >= efirst[q + 1]) q++; atomicAdd(&st[q + 1], counts[(long long)lb * G + g]); }
      __syncthreads();
      if (threadIdx.x == 0) for (int q = 0; q < W; q++) st[q + 1] += st[q];`;
  const consumeLen = o.redispatch
    ? `const int len = reinterpret_cast<const int*>(NVL_WIN(me, oLens))[(long long)me * Bdst + b];`
    : `int len = 0;
      for (int e = efirst[me] + lane; e < efirst[me + 1]; e += 32) len += wc[b * G + e];
      for (int m = 16; m; m >>= 1) len += __shfl_xor_sync(0xffffffffu, len, m);`;
  return {
    name,
    source: `${HEAD}
typedef ${W_T} ${name}_t;
#define nvl_word ${name}_t
extern "C" __global__ void __launch_bounds__(${NVL_BLOCK}, 1) ${name}(const unsigned long long* __restrict__ peers, const int* __restrict__ geo, int W, int me,
    unsigned long long* __restrict__ epochs, int phases, long long timeoutNs, long long oFlagN, long long oFlagR, long long oCounts, long long oCountsOdd, long long oLens, long long oLensOdd, long long oRows,
    const nvl_word* __restrict__ x, const int* __restrict__ perm, const int* __restrict__ counts, const ${o.weighted ? W_T : "void"}* __restrict__ w,
    int Bloc, int Bdst, int G, int n, int per, long long srcRows, long long words, nvl_word* __restrict__ out, int* __restrict__ outCounts) {
  __shared__ int st[${NVL_MAX_RANKS + 1}];
  const unsigned long long epoch = epochs[blockIdx.x] + 1;
  if (epoch & 1) ${o.redispatch ? "oLens = oLensOdd" : "oCounts = oCountsOdd"};
  const int* efirst = geo;
  const int* dstOf = geo + W + 1;
  const int lane = threadIdx.x & 31;
  const long long warp0 = blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5), warps = (long long)gridDim.x * (blockDim.x >> 5);
  if (phases & 1) {
    ${notify}
    nvl_signal(peers, W, me, oFlagN, epoch);
  }
  if (phases & 2) {
    nvl_wait(peers, W, me, oFlagN, epoch, timeoutNs);
    for (int lb = 0; lb < Bloc; lb++) {
      ${bounds}
      __syncthreads();
      const int total = st[W];
      for (long long j = warp0; j < total; j += warps) {
        int q = 0;
        while (j >= st[q + 1]) q++;
        const int s = perm[(long long)lb * n + j];
        const nvl_word* src = x + ((long long)lb * srcRows + s / per) * words;
        nvl_word* d = reinterpret_cast<nvl_word*>(NVL_WIN(q, oRows)) + ((long long)dstOf[lb] * n + (j - st[q])) * words;
        ${copy}
      }
      __syncthreads();
    }
    nvl_signal(peers, W, me, oFlagR, epoch);
  }
  if (phases & 4) {
    nvl_wait(peers, W, me, oFlagR, epoch, timeoutNs);
    if (threadIdx.x == 0) epochs[blockIdx.x] = epoch;
    const nvl_word* rows = reinterpret_cast<const nvl_word*>(NVL_WIN(me, oRows));
    ${o.redispatch ? "" : "const int* wc = reinterpret_cast<const int*>(NVL_WIN(me, oCounts));"}
    for (long long r = warp0; r < (long long)Bdst * n; r += warps) {
      const long long b = r / n, j = r % n;
      ${consumeLen}
      nvl_word* d = out + r * words;
      if (j < len) nvl_copy_row(d, rows + r * words, words, lane);
      else for (long long i = lane; i < words; i += 32) d[i] = nvl_word{};
    }
    ${o.redispatch ? "" : `const int ne = efirst[me + 1] - efirst[me];
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (long long)Bdst * ne; i += (long long)gridDim.x * blockDim.x) outCounts[i] = wc[(i / ne) * G + efirst[me] + i % ne];`}
  }
}
#undef nvl_word`,
  };
}

/**
 * Combine's way back: expert rank \`me\` stores its rows [Bdst, n] into each batch entry's token-side
 * owner srcRank[b] at rows[srcLb[b], start_me(b) + j] (start from the lens table), so the owner's
 * window holds the rows in the tokens' sorted layout, which moeInvert + moeCombine then read in
 * place. geo = efirst[W+1] | srcRank[Bdst] | srcLb[Bdst].
 */
export const moeNvlCombine = memo((V: 16 | 4 | 1): { name: string; source: string } => {
  const name = `shardts_moe_nvl_combine_v${V}`;
  return {
    name,
    source: `${HEAD}
typedef ${word(V)} ${name}_t;
#define nvl_word ${name}_t
extern "C" __global__ void __launch_bounds__(${NVL_BLOCK}, 1) ${name}(const unsigned long long* __restrict__ peers, const int* __restrict__ geo, int W, int me,
    unsigned long long* __restrict__ epochs, int phases, long long timeoutNs, long long oFlagN, long long oFlagR, long long oLens, long long oLensOdd, long long oRows,
    const nvl_word* __restrict__ rows, const int* __restrict__ counts, int Bdst, int n, long long words) {
  const unsigned long long epoch = epochs[blockIdx.x] + 1;
  if (epoch & 1) oLens = oLensOdd;
  const int* efirst = geo;
  const int* srcRank = geo + W + 1;
  const int* srcLb = srcRank + Bdst;
  const int lane = threadIdx.x & 31;
  const long long warp0 = blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5), warps = (long long)gridDim.x * (blockDim.x >> 5);
  if (phases & 1) {
    nvl_notify_lens(peers, W, me, oLens, counts, Bdst, efirst[me + 1] - efirst[me]);
    nvl_signal(peers, W, me, oFlagN, epoch);
  }
  if (phases & 2) {
    nvl_wait(peers, W, me, oFlagN, epoch, timeoutNs);
    const int* L = reinterpret_cast<const int*>(NVL_WIN(me, oLens));
    for (long long r = warp0; r < (long long)Bdst * n; r += warps) {
      const long long b = r / n, j = r % n;
      if (j >= L[(long long)me * Bdst + b]) continue;
      int start = 0;
      for (int q = 0; q < me; q++) start += L[(long long)q * Bdst + b];
      nvl_word* d = reinterpret_cast<nvl_word*>(NVL_WIN(srcRank[b], oRows)) + ((long long)srcLb[b] * n + start + j) * words;
      nvl_copy_row(d, rows + r * words, words, lane);
    }
    nvl_signal(peers, W, me, oFlagR, epoch);
  }
  if (phases & 4) {
    nvl_wait(peers, W, me, oFlagR, epoch, timeoutNs);
    if (threadIdx.x == 0) epochs[blockIdx.x] = epoch;
  }
}
#undef nvl_word`,
  };
});

export function moeNvlSources(): { name: string; source: string }[] {
  const Vs = [16, 4, 1] as const;
  return [
    ...Vs.map((V) => moeNvlPush({ redispatch: false, V })),
    ...Vs.map((V) => moeNvlPush({ redispatch: true, V })),
    ...(["f32", "bf16"] as const).map((t) => moeNvlPush({ redispatch: true, V: 1, weighted: t })),
    ...Vs.map((V) => moeNvlCombine(V)),
  ];
}
