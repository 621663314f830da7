// Fast data-movement kernels that work on words instead of elements: the move does not depend on the
// dtype, only on the bytes, so each kernel is specialised by word size (1, 2, 4, 8 or 16 bytes) and
// the host (runtime/cuda/copy-plan.ts) picks the widest word the shapes and pointers allow.
// - runs: a strided copy whose innermost dim is contiguous on both sides; a warp per run, index
//   arithmetic once per run instead of once per element;
// - transpose: a strided copy that swaps which dim is contiguous (in: dim P, out: dim L), through a
//   32 x 33 shared tile so both the reads and the writes are coalesced; batch offsets once per tile;
// - row gather: out row q = x row idx[q] (zeros for -1 or rows held elsewhere); a warp per row.
// Every index is computed in 64 bits, but divisions happen per run, tile or row, never per element.
import { MAX_DIMS, memo } from "./sources.ts";

type Kernel = { name: string; source: string };
export type Word = 1 | 2 | 4 | 8 | 16;
export const WORDS: Word[] = [16, 8, 4, 2, 1];
/** Element sizes a transpose moves (one element per access: a transpose cannot widen its words). */
export const ELEMENT_BYTES: Word[] = [1, 2, 4, 8];
const wordType = (w: Word) => (w === 16 ? "uint4" : w === 8 ? "unsigned long long" : w === 4 ? "unsigned int" : w === 2 ? "unsigned short" : "unsigned char");

/** Outer geometry of a run copy / batch geometry of a transpose (at most MAX_DIMS - 1 outer dims; strides in words or elements). */
const MOVE_PRELUDE = `#ifndef SHARDTS_MOVE_PRELUDE
#define SHARDTS_MOVE_PRELUDE
struct MoveGeo { int nd; int shape[${MAX_DIMS}]; long long istride[${MAX_DIMS}]; long long ostride[${MAX_DIMS}]; };
__device__ __forceinline__ void move_offsets(const MoveGeo& g, long long r, long long& io, long long& oo) {
  io = 0; oo = 0;
  for (int d = g.nd - 1; d >= 0; d--) {
    long long c = r % g.shape[d];
    r /= g.shape[d];
    io += c * g.istride[d];
    oo += c * g.ostride[d];
  }
}
#endif
`;

/**
 * out[oo(r) + w] = in[io(r) + w] for w < run, over the runs r of the outer geometry (all in words); each
 * run is cut into chunks of `chunk` words, a warp per (run, chunk).
 */
export const runCopy = memo((w: Word): Kernel => {
  const T = wordType(w), name = `shardts_copy_runs_w${w}`;
  return {
    name,
    source: `${MOVE_PRELUDE}
extern "C" __global__ void ${name}(${T}* __restrict__ out, const ${T}* __restrict__ in, MoveGeo g, long long runs, long long run,
                                   long long chunks, long long chunk) {
  const int lane = threadIdx.x & 31;
  const long long warps = ((long long)gridDim.x * blockDim.x) >> 5, items = runs * chunks;
  for (long long q = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; q < items; q += warps) {
    const long long r = q / chunks, c0 = (q % chunks) * chunk, c1 = c0 + chunk < run ? c0 + chunk : run;
    long long io, oo;
    move_offsets(g, r, io, oo);
    for (long long i = c0 + lane; i < c1; i += 32) out[oo + i] = in[io + i];
  }
}`,
  };
});

/**
 * A batched transpose of elements of `e` bytes: in[ib + p + l*lis] -> out[ob + p*pos + l] for p < P,
 * l < L, the batch offsets ib/ob from the batch geometry; one 32 x 32 tile per block iteration.
 */
export const transposeCopy = memo((e: Word): Kernel => transposeTiles(e, 1));

/**
 * The transpose for 1- and 2-byte elements, moving 4-byte words: V = 4 / e elements of a row per lane,
 * tiles of 32V x 32V (64 x 64 bf16, 128 x 128 bytes), so each warp access is 128 contiguous bytes.
 * Needs P, L, lis, pos and the batch strides to be multiples of V, and both pointers 4-byte aligned
 * (copy-plan.ts checks); otherwise transposeCopy moves single elements.
 */
export const transposeWide = memo((e: 1 | 2): Kernel => transposeTiles(e, 4 / e));

/** The tiled transpose of `e`-byte elements, `V` neighbours a lane (packed into one 4-byte word when V > 1). */
function transposeTiles(e: Word, V: number): Kernel {
  const E = wordType(e), T = 32 * V, name = V === 1 ? `shardts_transpose_e${e}` : `shardts_transpose_wide_e${e}`;
  // a lane's V neighbours along p read as one word, and along l written as one
  const read = V === 1
    ? "tile[j][tx] = in[ib + p + l * lis];"
    : `{
        const unsigned int w = *(const unsigned int*)(in + ib + p + l * lis);
        for (int i = 0; i < ${V}; i++) tile[j][${V} * tx + i] = (${E})(w >> (${8 * e} * i));
      }`;
  const write = V === 1
    ? "out[ob + p * pos + l] = tile[tx][j];"
    : `{
        unsigned int w = 0;
        for (int i = 0; i < ${V}; i++) w |= (unsigned int)tile[${V} * tx + i][j] << (${8 * e} * i);
        *(unsigned int*)(out + ob + p * pos + l) = w;
      }`;
  return {
    name,
    source: `${MOVE_PRELUDE}
extern "C" __global__ void ${name}(${E}* __restrict__ out, const ${E}* __restrict__ in, MoveGeo g, long long batches,
                                   long long P, long long L, long long lis, long long pos) {
  __shared__ ${E} tile[${T}][${T + 1}];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;  // 256 threads: 32 x 8
  const long long tp = (P + ${T - 1}) / ${T}, tl = (L + ${T - 1}) / ${T}, tiles = batches * tp * tl;
  for (long long t = blockIdx.x; t < tiles; t += gridDim.x) {
    const long long b = t / (tp * tl), rem = t % (tp * tl), p0 = (rem / tl) * ${T}, l0 = (rem % tl) * ${T};
    long long ib, ob;
    move_offsets(g, b, ib, ob);
    // read: lanes along p (contiguous in the input)
    for (int j = ty; j < ${T}; j += 8) {
      const long long p = p0 + ${V === 1 ? "tx" : `${V} * tx`}, l = l0 + j;
      if (p < P && l < L) ${read}
    }
    __syncthreads();
    // write: lanes along l (contiguous in the output)
    for (int j = ty; j < ${T}; j += 8) {
      const long long l = l0 + ${V === 1 ? "tx" : `${V} * tx`}, p = p0 + j;
      if (p < P && l < L) ${write}
    }
    __syncthreads();
  }
}`,
  };
}

/**
 * out[q, :] = x[b(q)·rows + idx[q] - off, :] over W words per row (q = b·J + j), zeros where idx[q] is -1
 * or the row is not held here (outside [off, off + rows)); an index outside [0, global) other than -1 is
 * written to *bad. A warp per row.
 */
export const rowGather = memo((w: Word): Kernel => {
  const T = wordType(w), name = `shardts_gather_rows_w${w}`;
  return {
    name,
    source: `${MOVE_PRELUDE}
extern "C" __global__ void ${name}(${T}* __restrict__ out, const ${T}* __restrict__ x, const int* __restrict__ idx,
                                   long long B, long long J, long long W, long long rows, long long off, long long global, int* __restrict__ bad) {
  const int lane = threadIdx.x & 31;
  const long long warps = ((long long)gridDim.x * blockDim.x) >> 5, n = B * J;
  for (long long q = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; q < n; q += warps) {
    const int g = idx[q];
    const ${T}* src = nullptr;
    if (g != -1) {
      if ((g < 0 || g >= global) && lane == 0) atomicExch(bad, g);
      const long long l = (long long)g - off;
      if (l >= 0 && l < rows) src = x + ((q / J) * rows + l) * W;
    }
    ${T}* dst = out + q * W;
    const ${T} zero{};
    for (long long i = lane; i < W; i += 32) dst[i] = src ? src[i] : zero;
  }
}`,
  };
});

/** Every specialisation, for the compile test. */
export function moveSources(): Kernel[] {
  return [...WORDS.flatMap((w) => [runCopy(w), rowGather(w)]), ...ELEMENT_BYTES.map((e) => transposeCopy(e)), transposeWide(1), transposeWide(2)];
}
