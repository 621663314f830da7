// Stream-K for the last partial wave of a persistent FP8 GEMM (config `streamK`, suffix _sk). With T tiles
// on a grid of G CTAs, the first floor(T / G) waves run whole tiles, as without it (CTA c takes tiles
// c, c + G, ...). The rem = T mod G tiles left would run as a last wave with G - rem CTAs idle; instead
// their rem · KB K blocks are cut into G contiguous ranges, one per CTA, [c·I/G, (c+1)·I/G) with
// I = rem · KB, so every CTA ends at about the same time. A tile cut between CTAs has 2 or 3 parts: each
// part sums its own K blocks (promoted as usual), and the part that arrives last at the tile's counter
// adds the others' sums in K order and stores the tile; the others write theirs to a workspace slot and
// count themselves written. The last waits only for parts that have already arrived, so a CTA never
// waits for one that may not be resident. Where I < G (fewer K blocks than CTAs), every tile runs whole.
//
// This file holds the decomposition, once in TypeScript (the host's workspace size and the tests) and
// once as the CUDA helpers the kernel calls (STREAM_K_HELPERS); the two must agree.

/** The most parts a cut tile may have: the host cuts only where no tile would have more (streamKWorkspace). */
export const STREAM_K_MAX_PARTS = 4;

/** One CTA's unit of work: tile `tile`'s K blocks [k0, k1). */
export interface StreamKUnit {
  tile: number;
  k0: number;
  k1: number;
}

/**
 * The wave split: whole waves, the tiles left, their K blocks, and whether those are cut at all: not where
 * nothing is left, where there are fewer K blocks than CTAs, or where a tile would have more than
 * STREAM_K_MAX_PARTS parts (then the last wave runs whole tiles, as without stream-K). The host passes
 * the decision to the kernel (its skSlots parameter: 0 = nothing cut).
 */
export function streamKSplit(tiles: number, kb: number, grid: number): { full: number; rem: number; iters: number; cut: boolean; slots: number } {
  const full = Math.floor(tiles / grid), rem = tiles % grid, iters = rem * kb;
  if (rem === 0 || iters < grid) return { full, rem, iters, cut: false, slots: 0 };
  let slots = 1;
  for (let q = 0; q < rem; q++) slots = Math.max(slots, streamKParts(q, kb, iters, grid).parts);
  return slots > STREAM_K_MAX_PARTS ? { full, rem, iters, cut: false, slots: 0 } : { full, rem, iters, cut: true, slots };
}

/** The CTA whose range holds K-block iteration i of the cut region: the largest c with floor(c·I/G) <= i. */
export const streamKCta = (i: number, iters: number, grid: number): number => Math.floor(((i + 1) * grid - 1) / iters);

/** Every unit CTA `cta` runs, in order (the kernel's sk_unit, unit by unit). */
export function streamKUnits(tiles: number, kb: number, grid: number, cta: number): StreamKUnit[] {
  const { full, iters, cut } = streamKSplit(tiles, kb, grid);
  const out: StreamKUnit[] = [];
  for (let u = 0; ; u++) {
    if (u < full || !cut) {
      const tile = cta + u * grid;
      if (tile >= tiles) break;
      out.push({ tile, k0: 0, k1: kb });
      continue;
    }
    const lo = Math.floor((iters * cta) / grid), hi = Math.floor((iters * (cta + 1)) / grid), j = u - full;
    const i = j === 0 ? lo : (Math.floor(lo / kb) + j) * kb;
    if (i >= hi) break;
    const q = Math.floor(i / kb);
    out.push({ tile: full * grid + q, k0: i - q * kb, k1: Math.min(kb, hi - q * kb) });
  }
  return out;
}

/** How many CTAs share cut tile q (its first K block's CTA to its last one's), and the first of them. */
export function streamKParts(q: number, kb: number, iters: number, grid: number): { first: number; parts: number } {
  const first = streamKCta(q * kb, iters, grid), last = streamKCta(q * kb + kb - 1, iters, grid);
  return { first, parts: last - first + 1 };
}

/**
 * The workspace a launch needs: `slots` partial sums per cut tile (its most parts), each a BM x BN f32
 * tile, and two counters per cut tile (arrived, written), which start at zero and which the last part
 * sets back to zero. Zero bytes where nothing is cut.
 */
export function streamKWorkspace(tiles: number, kb: number, grid: number, bm: number, bn: number): { slots: number; workBytes: number; flagBytes: number } {
  const { rem, cut, slots } = streamKSplit(tiles, kb, grid);
  if (!cut) return { slots: 0, workBytes: 0, flagBytes: 0 };
  return { slots, workBytes: rem * slots * bm * bn * 4, flagBytes: rem * 2 * 4 };
}

/** The kernel's side of the same decomposition (CUDA C++; `tiles` and `KB` as the kernel computes them). */
export const STREAM_K_HELPERS = `#ifndef SHARDTS_GEMM_STREAM_K
#define SHARDTS_GEMM_STREAM_K
// stream-K (compiler/codegen/cuda/gemm/stream-k.ts): the CTA whose range holds iteration i of the cut region
// (32-bit: the host refuses a problem whose iters x grid reaches 2^31)
static __device__ __forceinline__ int sk_cta(int i, int iters, int grid) {
  return ((i + 1) * grid - 1) / iters;
}
// unit u of this CTA: a whole tile in the first tiles / grid waves (or everywhere when nothing is cut: skSlots 0),
// then the pieces of its range [lo, hi) of the cut region's K blocks; false past its last unit
static __device__ __forceinline__ bool sk_unit(int u, int tiles, int KB, bool cut, int& tile, int& k0, int& k1) {
  const int G = gridDim.x, full = tiles / G, rem = tiles % G, iters = rem * KB;
  if (u < full || !cut) {
    tile = blockIdx.x + u * G; k0 = 0; k1 = KB;
    return tile < tiles;
  }
  const int lo = iters * (int)blockIdx.x / G, hi = iters * ((int)blockIdx.x + 1) / G, j = u - full;
  const int i = j == 0 ? lo : (lo / KB + j) * KB;
  if (i >= hi) return false;
  const int q = i / KB;
  tile = full * G + q;
  k0 = i - q * KB;
  k1 = min(KB, hi - q * KB);
  return true;
}
static __device__ __forceinline__ int sk_ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
#endif
`;

/**
 * The consumers' end of a unit with streamK (CUDA C++ in the kernel body): where the unit is a part of a
 * cut tile, it counts itself arrived; a part that is not the last writes its sums (acc, `frag` floats a
 * thread, as float4 columns so a warp's stores are contiguous) to its slot and counts itself written; the
 * last waits for the others' writes, adds the parts in K order into acc, resets the tile's counters for
 * the next launch and goes on to `store` (the tile's usual epilogue), which whole tiles run directly.
 */
export function streamKEpilogue(frag: number, store: string): string {
  const q4 = (i: string) => `make_float4(acc[4 * ${i}], acc[4 * ${i} + 1], acc[4 * ${i} + 2], acc[4 * ${i} + 3])`;
  return `    // stream-K: a tile cut between CTAs is summed and stored by the part that arrives last
    bool skStore = true;
    if (kbBegin != 0 || kbEnd != KB) {
      const int G = gridDim.x, q = tile - (tiles / G) * G, iters = (tiles % G) * KB, t0 = q * KB;
      const int first = sk_cta(t0, iters, G), parts = sk_cta(t0 + KB - 1, iters, G) - first + 1, pos = (int)blockIdx.x - first;
      int* arrived = skFlags + 2 * q;
      int* written = arrived + 1;
      float4* slots = reinterpret_cast<float4*>(skWork) + (long long)q * skSlots * (BM * BN / 4);
      const int ct = threadIdx.x;  // both consumers: 0..255
      if (ct == 0) skArrived = atomicAdd(arrived, 1);
      sh_named_bar(5, 256);
      const bool last = skArrived == parts - 1;
      sh_named_bar(5, 256);  // everyone has read skArrived before a later unit writes it
      if (!last) {
        float4* mine = slots + (long long)pos * (BM * BN / 4);
#pragma unroll
        for (int i = 0; i < ${frag / 4}; ++i) __stcg(mine + i * 256 + ct, ${q4("i")});
        __threadfence();
        sh_named_bar(5, 256);
        if (ct == 0) atomicAdd(written, 1);  // after every thread's sums and fence
        skStore = false;
      } else {
        if (ct == 0) {
          while (sk_ld_acquire(written) < parts - 1) {}  // the others have arrived: they are running
          *arrived = 0;
          *written = 0;
        }
        sh_named_bar(5, 256);
        // the parts' sums in K order (position 0 first; this part's own at its position)
#pragma unroll
        for (int i = 0; i < ${frag / 4}; ++i) {
          float4 sum = pos == 0 ? ${q4("i")} : __ldcg(slots + i * 256 + ct);
#pragma unroll
          for (int p = 1; p < ${STREAM_K_MAX_PARTS}; ++p)
            if (p < parts) {
              const float4 v = p == pos ? ${q4("i")} : __ldcg(slots + p * (BM * BN / 4) + i * 256 + ct);
              sum.x += v.x; sum.y += v.y; sum.z += v.z; sum.w += v.w;
            }
          acc[4 * i] = sum.x; acc[4 * i + 1] = sum.y; acc[4 * i + 2] = sum.z; acc[4 * i + 3] = sum.w;
          // loads a group of 16 columns at a time: all hoisted together they spill, one column at a time they wait
          // out an L2 latency each (the first GPU run: ~15 us a cut tile)
          if (i % 16 == 15) asm volatile("" ::: "memory");
        }
      }
    }
    if (skStore) {
${store.replace(/^(?=.)/gm, "  ")}    }
`;
}
