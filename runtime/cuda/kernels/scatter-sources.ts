// scatter_add by target rows (runtime/cuda/ops.ts scatterAdd, for rows of at least a warp's width): the
// source rows are bucketed by their target (a count, one block's scan, a fill), then a warp per target
// row sums its sources in f32 registers and writes the result in the output's dtype once. So nothing is
// added by atomics into an f32 buffer that must be zeroed first and cast afterwards: the MoE combine's
// 49152 rows of 2048 into 8192 read their 201 MB and write the 33 MB result, where the atomic form also
// zeroes, adds into and casts 67 MB of f32 (bench/NOTES.md, ninth session). A row's sources are summed
// in the order the fill placed them (atomics: not a fixed order), as the atomic form's were.
import type { DType } from "../../../compiler/ir/types.ts";
import { PRELUDE, ctype, memo } from "./sources.ts";

type Kernel = { name: string; source: string };

/** Threads of the scan's one block. */
export const SCATTER_SCAN_BLOCK = 1024;

const GRID_STRIDE = "for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < B * J; i += (long long)gridDim.x * blockDim.x)";

/**
 * cnt[b·size + idx[b, j]] += 1 for every source row (b, j) whose index is in [0, size); -1 is skipped,
 * any other index outside the range flagged in `bad` (as the atomic form does).
 */
export const scatterCount = memo((): Kernel => {
  const name = "shardts_scatter_count";
  return {
    name,
    source: `extern "C" __global__ void ${name}(const int* __restrict__ idx, long long B, long long J, long long size, int* __restrict__ cnt, int* __restrict__ bad) {
  ${GRID_STRIDE} {
    const int g = idx[i];
    if (g == -1) continue;
    if (g < 0 || g >= size) { atomicExch(bad, g); continue; }
    atomicAdd(&cnt[i / J * size + g], 1);
  }
}`,
  };
});

/** start[0..n) = the exclusive prefix sum of cnt[0..n), start[n] = the total; one block of SCATTER_SCAN_BLOCK threads, a run of cnt each. */
export const scatterScan = memo((): Kernel => {
  const name = "shardts_scatter_scan", T = SCATTER_SCAN_BLOCK;
  return {
    name,
    source: `extern "C" __global__ void __launch_bounds__(${T}) ${name}(const int* __restrict__ cnt, long long n, int* __restrict__ start) {
  __shared__ int part[${T}];
  const int t = threadIdx.x;
  const long long per = (n + ${T - 1}) / ${T}, lo = t * per < n ? t * per : n, hi = lo + per < n ? lo + per : n;
  int s = 0;
  for (long long i = lo; i < hi; i++) s += cnt[i];
  part[t] = s;
  __syncthreads();
  for (int d = 1; d < ${T}; d <<= 1) {
    const int v = t >= d ? part[t - d] : 0;
    __syncthreads();
    part[t] += v;
    __syncthreads();
  }
  int acc = part[t] - s;
  for (long long i = lo; i < hi; i++) { start[i] = acc; acc += cnt[i]; }
  if (t == ${T - 1}) start[n] = acc;
}`,
  };
});

/** list[start[t] + k] = the source rows of target t (k by arrival: `cursor` zeroed first), for the rows scatterCount counted. */
export const scatterFill = memo((): Kernel => {
  const name = "shardts_scatter_fill";
  return {
    name,
    source: `extern "C" __global__ void ${name}(const int* __restrict__ idx, long long B, long long J, long long size, const int* __restrict__ start, int* __restrict__ cursor, int* __restrict__ list) {
  ${GRID_STRIDE} {
    const int g = idx[i];
    if (g < 0 || g >= size) continue;
    const long long t = i / J * size + g;
    list[start[t] + atomicAdd(&cursor[t], 1)] = (int)i;
  }
}`,
  };
});

/**
 * out[t, r] = Σ src[list[k], r] over k in [start[t], start[t + 1]) in f32, written as `o` (0 where t has no
 * source): a warp per target row, each lane V consecutive values of a 32·V-wide chunk of the row (V = 16
 * bytes of src where `vec`: R % V == 0 and src and out aligned to V elements; else 1).
 */
export const scatterSum = memo((s: DType, o: DType): Kernel => {
  const S = ctype(s), O = ctype(o), name = `shardts_scatter_sum_${s}_${o}`, V = 16 / (s === "bf16" ? 2 : 4);
  return {
    name,
    source: `${PRELUDE}
template <typename X, int N> struct alignas(sizeof(X) * N) ss_pack { X v[N]; };
template <int N> __device__ __forceinline__ void ss_row(${O}* __restrict__ out, const ${S}* __restrict__ src, const int* __restrict__ list, int k0, int k1, long long R, int lane) {
  for (long long r0 = (long long)N * lane; r0 < R; r0 += 32LL * N) {
    float a[N];
#pragma unroll
    for (int e = 0; e < N; e++) a[e] = 0.f;
    for (int k = k0; k < k1; k++) {
      const ss_pack<${S}, N> v = *reinterpret_cast<const ss_pack<${S}, N>*>(src + (long long)list[k] * R + r0);
#pragma unroll
      for (int e = 0; e < N; e++) a[e] += to_f(v.v[e]);
    }
    ss_pack<${O}, N> w;
#pragma unroll
    for (int e = 0; e < N; e++) w.v[e] = from_f<${O}>(a[e]);
    *reinterpret_cast<ss_pack<${O}, N>*>(out + r0) = w;
  }
}
extern "C" __global__ void ${name}(${O}* __restrict__ out, const ${S}* __restrict__ src, const int* __restrict__ start, const int* __restrict__ list,
                                   long long targets, long long R, int vec) {
  const int lane = threadIdx.x & 31;
  const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
  for (long long t = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5; t < targets; t += warps) {
    const int k0 = start[t], k1 = start[t + 1];
    if (vec) ss_row<${V}>(out + t * R, src, list, k0, k1, R, lane);
    else ss_row<1>(out + t * R, src, list, k0, k1, R, lane);
  }
}`,
  };
});

/** Every kernel of this file (the sums for the dtypes scatter_add runs on), for the compile test. */
export function scatterSources(): Kernel[] {
  return [scatterCount(), scatterScan(), scatterFill(), ...(["f32", "bf16"] as const).flatMap((s) => (["f32", "bf16"] as const).map((o) => scatterSum(s, o)))];
}
