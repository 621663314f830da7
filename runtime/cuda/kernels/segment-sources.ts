// The segment contractions' plan on device-side counts (runtime/cuda/segment-device.ts), so that no
// count is read on the host and a MoE step can be captured in a CUDA graph:
// - segment plan: from counts [bt][gC] (i32, on the device) and the layout the host path reads them
//   with (segment-gemm.ts SegmentLayout: local groups first..first+E, packed or not, R rows an entry),
//   the segments segments() finds on the host, clipped to R, laid out as
//   - row runs (segment_dot): bf16-segment.ts's table, 4 int32 per 128-row block (expert, X's flat
//     row, Y's flat row, valid rows), expert-major, then expert -1 up to the table's capacity; and Y's
//     rows outside every segment zeroed (only the plan knows which they are);
//   - columns (segment_wgrad): each expert's rows as one run of columns, all entries' segments of the
//     expert together, padded with -1 to a multiple of 64: blockExpert [E][2] (first 64-column block,
//     blocks), [E] = (the blocks used, 0), and colmap (column -> X's flat row, -1 = a zero column).
//   Every block of the grid computes the small per-(entry, group) tables in its shared memory (a warp
//   per entry scans its counts, a block scan orders the segments expert-major), then the grid writes
//   its share of the output: no grid-wide sync, one launch of a geometry fixed by host-known sizes.
// - transposing gather: out[k][p] = x[colmap[p]][k] (0 where colmap[p] is -1) for the columns in use,
//   bf16, through a 64 x 64 shared tile: 16-byte reads along k and 16-byte writes along p.
// - row-run expansions (the FP8 segment ops, fp8-segment-device.ts): A's scales in the blocks' layout
//   (scaled_segment_dot), and the padded row map and each expert's blocks (scaled_segment_wgrad).
// Counts are at least 0 (as every producer writes them; a negative one would read as 0), and a row
// past R saturates at R: a segment starting there is empty, as on the host.
import { GROUPED_M_ALIGN } from "../../../compiler/numeric/fp8-gemm.ts";
import { memo } from "./sources.ts";

type Kernel = { name: string; source: string };

/** Threads of a plan block (one warp per entry in the first phase). */
export const SEGMENT_PLAN_BLOCK = 256;
/** The int32 a plan block's shared tables may hold (46 KiB, under the 48 KiB of static shared memory). */
export const SEGMENT_PLAN_SMEM_INTS = 11776;
/** The 64 columns (of K, for the K-grouped GEMM) an expert's column run is padded to. */
export const SEGMENT_COLUMN_BLOCK = 64;
/** Threads of a transposing-gather block. */
export const SEGMENT_GATHER_BLOCK = 256;

/** The shared int32 a plan block needs for bt entries of E local groups: rows (E + 1 an entry), the pair scan, the expert scan. */
export const segmentPlanInts = (bt: number, E: number): number => bt * (E + 1) + bt * E + 1 + E + 1;

const PLAN_PRELUDE = `#ifndef SHARDTS_SEGMENT_PLAN_PRELUDE
#define SHARDTS_SEGMENT_PLAN_PRELUDE
__device__ __forceinline__ int seg_sat(int a, int b, int R) { const long long s = (long long)a + b; return s < R ? (int)s : R; }
__device__ __forceinline__ int seg_clip(int c, int R) { return c < 0 ? 0 : c < R ? c : R; }

// rows[t * (E + 1) + g] = min(R, the row of entry t where local group g starts), g = 0..E (E: where the
// local groups end): unpacked rows first skip the groups before 'first'. A warp per entry; a saturating
// sum is associative on counts >= 0, so the butterfly scan below gives the host loop's rows.
__device__ void seg_rows(const int* __restrict__ counts, int bt, int gC, int first, int E, int packed, int R, int* rows) {
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int t = threadIdx.x >> 5; t < bt; t += warps) {
    const int* c = counts + (long long)t * gC;
    int carry = 0;
    if (!packed) {
      for (int g = lane; g < first; g += 32) carry = seg_sat(carry, seg_clip(c[g], R), R);
      for (int d = 16; d >= 1; d >>= 1) carry = seg_sat(carry, __shfl_xor_sync(0xffffffffu, carry, d), R);
    }
    for (int g0 = 0; g0 < E; g0 += 32) {
      const int g = g0 + lane, v = g < E ? seg_clip(c[first + g], R) : 0;
      // exclusive prefix over the warp's 32 counts: at step d, the lanes of a 2d-run's upper half add the lower half's sum
      int before = 0, tot = v;
      for (int d = 1; d < 32; d <<= 1) {
        const int o = __shfl_xor_sync(0xffffffffu, tot, d);
        if (lane & d) before = seg_sat(before, o, R);
        tot = seg_sat(tot, o, R);
      }
      if (g < E) rows[t * (E + 1) + g] = seg_sat(carry, before, R);
      carry = seg_sat(carry, tot, R);
    }
    if (lane == 0) rows[t * (E + 1) + E] = carry;
  }
}

// a[0..n) becomes its exclusive prefix sum and a[n] the total; every thread of the block calls it
__device__ void seg_block_scan(int* a, int n, int* part) {
  const int T = blockDim.x, tid = threadIdx.x, per = (n + T - 1) / T;
  const int lo = tid * per < n ? tid * per : n, hi = lo + per < n ? lo + per : n;
  int s = 0;
  for (int i = lo; i < hi; i++) s += a[i];
  part[tid] = s;
  __syncthreads();
  for (int d = 1; d < T; d <<= 1) {
    const int v = tid >= d ? part[tid - d] : 0;
    __syncthreads();
    part[tid] += v;
    __syncthreads();
  }
  int acc = part[tid] - s;
  for (int i = lo; i < hi; i++) { const int v = a[i]; a[i] = acc; acc += v; }
  if (tid == T - 1) a[n] = acc;
  __syncthreads();
}

// The segment of pair j (expert-major: j = g * bt + t): its first row in entry t and its rows.
__device__ __forceinline__ void seg_pair(const int* rows, int bt, int E, int j, int& g, int& t, int& row, int& m) {
  g = j / bt;
  t = j - g * bt;
  row = rows[t * (E + 1) + g];
  m = rows[t * (E + 1) + g + 1] - row;
}
#endif
`;

const PLAN_PARAMS = "const int* __restrict__ counts, int bt, int gC, int first, int E, int packed, int R";

/**
 * The row-run table of bf16-segment.ts from device counts: runs[4 b + (0..3)] = (expert, X's flat row
 * t·R + row, Y's flat row t·Rout + row - start, valid rows) for the b-th 128-row block, experts in order
 * and entries in order within one; blocks from the total to `cap` get expert -1 (the grouped kernel
 * skips them). And Y's rows no segment covers are zeroed: an entry's local segments are one run of Y's
 * rows from its first, so rows from their end to Rout (y: Rout rows of rowWords 16-byte words an entry).
 * Grid-wide: a warp per segment, then the padding, then the zeros.
 */
export const segmentRunsPlan = memo((): Kernel => {
  const name = "shardts_segment_runs", B = SEGMENT_PLAN_BLOCK, M = GROUPED_M_ALIGN;
  return {
    name,
    source: `${PLAN_PRELUDE}
extern "C" __global__ void __launch_bounds__(${B}) ${name}(${PLAN_PARAMS}, int Rout, int* __restrict__ runs, int cap,
                                                     uint4* __restrict__ y, long long rowWords) {
  __shared__ int sm[${SEGMENT_PLAN_SMEM_INTS}];
  __shared__ int part[${B}];
  const int n = bt * E;
  int* rows = sm;                 // [bt][E + 1]
  int* blk = sm + bt * (E + 1);   // [n + 1]: the first block of each pair, expert-major
  seg_rows(counts, bt, gC, first, E, packed, R, rows);
  __syncthreads();
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    int g, t, row, m;
    seg_pair(rows, bt, E, j, g, t, row, m);
    blk[j] = (m + ${M - 1}) / ${M};
  }
  __syncthreads();
  seg_block_scan(blk, n, part);
  const int lane = threadIdx.x & 31;
  const long long gtid = (long long)blockIdx.x * blockDim.x + threadIdx.x, threads = (long long)gridDim.x * blockDim.x;
  for (long long j = gtid >> 5; j < n; j += threads >> 5) {
    int g, t, row, m;
    seg_pair(rows, bt, E, (int)j, g, t, row, m);
    const int b0 = blk[j], nb = blk[j + 1] - b0, start = rows[t * (E + 1)];
    for (int i = lane; i < nb; i += 32) {
      int* r = runs + 4LL * (b0 + i);
      r[0] = g;
      r[1] = t * R + row + ${M} * i;
      r[2] = t * Rout + row - start + ${M} * i;
      r[3] = m - ${M} * i < ${M} ? m - ${M} * i : ${M};
    }
  }
  for (long long b = blk[n] + gtid; b < cap; b += threads) {
    int* r = runs + 4 * b;
    r[0] = -1; r[1] = 0; r[2] = 0; r[3] = 0;
  }
  for (int t = 0; t < bt; t++) {
    const int covered = rows[t * (E + 1) + E] - rows[t * (E + 1)];
    for (long long w = ((long long)t * Rout + (covered < Rout ? covered : Rout)) * rowWords + gtid; w < (t + 1LL) * Rout * rowWords; w += threads) y[w] = uint4{0u, 0u, 0u, 0u};
  }
}`,
  };
});

/**
 * The column layout of segment_wgrad's K-grouped GEMM from device counts: expert g's rows (entry 0's
 * segment, then entry 1's, ...) are columns 64·be[2g] .. + (its rows), padded with -1 to be[2g + 1]
 * blocks of 64; be[2E] = the blocks used, be[2E + 1] = 0; colmap[p] = X's flat row t·R + row of column p.
 * colmap past the used blocks is left as it is (the gather and the GEMM read none of it).
 */
export const segmentColumnsPlan = memo((): Kernel => {
  const name = "shardts_segment_columns", B = SEGMENT_PLAN_BLOCK, C = SEGMENT_COLUMN_BLOCK;
  return {
    name,
    source: `${PLAN_PRELUDE}
extern "C" __global__ void __launch_bounds__(${B}) ${name}(${PLAN_PARAMS}, int* __restrict__ be, int* __restrict__ colmap) {
  __shared__ int sm[${SEGMENT_PLAN_SMEM_INTS}];
  __shared__ int part[${B}];
  const int n = bt * E;
  int* rows = sm;                        // [bt][E + 1]
  int* col = sm + bt * (E + 1);          // [n + 1]: rows of the pairs before each, expert-major
  int* cb = col + n + 1;                 // [E + 1]: the first 64-column block of each expert
  seg_rows(counts, bt, gC, first, E, packed, R, rows);
  __syncthreads();
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    int g, t, row, m;
    seg_pair(rows, bt, E, j, g, t, row, m);
    col[j] = m;
  }
  __syncthreads();
  seg_block_scan(col, n, part);
  for (int g = threadIdx.x; g < E; g += blockDim.x) cb[g] = (col[(g + 1) * bt] - col[g * bt] + ${C - 1}) / ${C};
  __syncthreads();
  seg_block_scan(cb, E, part);
  if (blockIdx.x == 0) {
    for (int g = threadIdx.x; g < E; g += blockDim.x) { be[2 * g] = cb[g]; be[2 * g + 1] = cb[g + 1] - cb[g]; }
    if (threadIdx.x == 0) { be[2 * E] = cb[E]; be[2 * E + 1] = 0; }
  }
  const int lane = threadIdx.x & 31;
  const long long gtid = (long long)blockIdx.x * blockDim.x + threadIdx.x, threads = (long long)gridDim.x * blockDim.x;
  // a warp per segment, then a warp per expert for its padding
  for (long long j = gtid >> 5; j < n + E; j += threads >> 5) {
    if (j < n) {
      int g, t, row, m;
      seg_pair(rows, bt, E, (int)j, g, t, row, m);
      int* out = colmap + ${C}LL * cb[g] + (col[j] - col[g * bt]);
      for (int i = lane; i < m; i += 32) out[i] = t * R + row + i;
    } else {
      const int g = (int)(j - n), used = col[(g + 1) * bt] - col[g * bt];
      for (long long p = ${C}LL * cb[g] + used + lane; p < ${C}LL * cb[g + 1]; p += 32) colmap[p] = -1;
    }
  }
}`,
  };
});

/**
 * out[k][p] = x[colmap[p]][k] (bf16; 0 where colmap[p] is -1) for k < K and the columns p of the first
 * used[0] 64-column blocks; out's rows hold P columns. 64 x 64 tiles through shared memory: a row of x
 * read as eight 16-byte words, a row of out written as eight. Needs K % 8 == 0, P % 64 == 0 and both
 * pointers 16-byte aligned (segment-device.ts checks).
 */
export const segmentGatherT = memo((): Kernel => {
  const name = "shardts_segment_gather_t", B = SEGMENT_GATHER_BLOCK, C = SEGMENT_COLUMN_BLOCK;
  return {
    name,
    source: `extern "C" __global__ void __launch_bounds__(${B}) ${name}(uint4* __restrict__ out, const uint4* __restrict__ x, const int* __restrict__ colmap,
                                   const int* __restrict__ used, long long K, long long P) {
  // [p][k] with rows of 66 halves: 4-byte aligned for the reads' stores, 2-way bank conflicts on the writes' loads
  __shared__ unsigned short tile[${C}][${C + 2}];
  __shared__ int src[${C}];
  const int tid = threadIdx.x;
  const long long kt = (K + ${C - 1}) / ${C}, tiles = (long long)used[0] * kt, kw = K / 8, pw = P / 8;
  for (long long tt = blockIdx.x; tt < tiles; tt += gridDim.x) {
    const long long p0 = (tt / kt) * ${C}, k0 = (tt % kt) * ${C};
    if (tid < ${C}) src[tid] = colmap[p0 + tid];
    __syncthreads();
    // read: 8 lanes a row of x (128 contiguous bytes), 64 rows
    for (int q = tid; q < ${C * 8}; q += ${B}) {
      const int p = q >> 3, c = q & 7;
      const long long kq = k0 / 8 + c;
      if (kq < kw) {
        const int s = src[p];
        const uint4 v = s >= 0 ? x[(long long)s * kw + kq] : uint4{0u, 0u, 0u, 0u};
        unsigned int* d = (unsigned int*)&tile[p][8 * c];
        d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w;
      }
    }
    __syncthreads();
    // write: 8 lanes a row of out (128 contiguous bytes), 64 rows
    for (int q = tid; q < ${C * 8}; q += ${B}) {
      const int kk = q >> 3, j = q & 7;
      if (k0 + kk < K) {
        unsigned int w[4];
        for (int i = 0; i < 4; i++) w[i] = (unsigned int)tile[8 * j + 2 * i][kk] | ((unsigned int)tile[8 * j + 2 * i + 1][kk] << 16);
        out[(k0 + kk) * pw + p0 / 8 + j] = uint4{w[0], w[1], w[2], w[3]};
      }
    }
    __syncthreads();
  }
}`,
  };
});

/** A grid-stride loop's thread index and thread count (the row-run expansions: any grid and block, CudaExecutor.launch1D's). */
const GRID_STRIDE = "const long long gtid = (long long)blockIdx.x * blockDim.x + threadIdx.x, threads = (long long)gridDim.x * blockDim.x;";

/**
 * A's 1×128 scales in the layout the grouped FP8 GEMM reads over row runs (config rowRuns), from the
 * row-run table (segmentRunsPlan's, cap blocks) and X's scales sx [rows][KB] (f32, rows = bt·R):
 * sa[kb][128 b + i] = sx[X's row of block b + i][kb] for the block's valid rows, 0 past them and in the
 * expert -1 blocks. So the scales arrive by TMA at each block's own 128-row offset while the codes are
 * read where they are. A thread an element of sa [KB][128·cap], rows fastest.
 */
export const segmentRunScales = memo((): Kernel => {
  const name = "shardts_segment_run_scales", M = GROUPED_M_ALIGN;
  return {
    name,
    source: `extern "C" __global__ void ${name}(const int* __restrict__ runs, int cap, const float* __restrict__ sx,
                                                     long long rows, int KB, float* __restrict__ sa) {
  ${GRID_STRIDE}
  const long long P = ${M}LL * cap, n = P * KB;
  for (long long q = gtid; q < n; q += threads) {
    const long long kb = q / P, p = q - kb * P;
    const int* r = runs + 4 * (p / ${M});
    const int i = (int)(p % ${M});
    const long long row = (long long)r[1] + i;
    sa[q] = r[0] >= 0 && i < r[3] && row < rows ? sx[row * KB + kb] : 0.f;
  }
}`,
  };
});

/**
 * The padded layout scaled_segment_wgrad's operands are quantized in (128×1 tiles that restart at every
 * segment, as each segment's blocks are its own), from the row-run table: rowMap[128 b + i] = X's flat
 * row of block b's row i, -1 past its valid rows and in the expert -1 blocks; and each local expert's
 * run of 128-row blocks for the K-grouped GEMM, be[2g] (first block) and be[2g + 1] (blocks): the table
 * is expert-major with the -1 blocks last, so a binary search finds where expert g's blocks start.
 */
export const segmentRunBlocks = memo((): Kernel => {
  const name = "shardts_segment_run_blocks", M = GROUPED_M_ALIGN;
  return {
    name,
    source: `// the first block of the table whose expert is >= g (the -1 blocks count as past every expert)
__device__ __forceinline__ int seg_first_block(const int* __restrict__ runs, int cap, int g) {
  int lo = 0, hi = cap;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1, e = runs[4 * mid];
    if (e >= 0 && e < g) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

extern "C" __global__ void ${name}(const int* __restrict__ runs, int cap, int E, int* __restrict__ rowMap, int* __restrict__ be) {
  ${GRID_STRIDE}
  for (long long p = gtid; p < ${M}LL * cap; p += threads) {
    const int* r = runs + 4 * (p / ${M});
    const int i = (int)(p % ${M});
    rowMap[p] = r[0] >= 0 && i < r[3] ? r[1] + i : -1;
  }
  for (long long g = gtid; g < E; g += threads) {
    const int b0 = seg_first_block(runs, cap, (int)g);
    be[2 * g] = b0;
    be[2 * g + 1] = seg_first_block(runs, cap, (int)g + 1) - b0;
  }
}`,
  };
});

/** Every kernel of this file, for the compile test. */
export function segmentSources(): Kernel[] {
  return [segmentRunsPlan(), segmentColumnsPlan(), segmentGatherT(), segmentRunScales(), segmentRunBlocks()];
}
