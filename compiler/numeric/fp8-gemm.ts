// Block-scaled FP8 GEMM emulation (DeepSeek-V3 §3.3): the CPU reference the GPU kernels
// (compiler/codegen/cuda/gemm/) and the cuBLASLt fallback are checked against.
//
//   A: M×K e4m3 codes, row-major (K contiguous), one f32 dequantization scale per 1×128 tile;
//   B: N×K e4m3 codes, row-major ("NT": both operands K-major), one f32 scale per 128×128 block;
//   D[m,n] = Σ_kb sa[m,kb]·sb[n/128,kb]·(Σ_{k in kb} a[m,k]·b[n,k]),  rounded once to bf16 (RNE).
//
// Scale layouts (the ones the kernels and cuBLASLt read, so a tile's scales are contiguous):
//   sa: [ceil(K/128)][M]             sa[kb*M + m]            ("outer-dim-major", M contiguous)
//   sb: [ceil(N/128)][ceil(K/128)]   sb[nb*KB + kb]          (K-block contiguous)
// Row-scaled B (`bRows`, the Wgrad form: both operands quantized along K in 1×128 tiles, "1D1D"):
//   sb: [ceil(K/128)][N]             sb[kb*N + n]            (like sa), D[m,n] uses sa[m,kb]·sb[n,kb].
// Grouped: B is [E][N][K], sb is [E][ceil(N/128)][ceil(K/128)], and the rows of A are contiguous
// per-expert segments, each padded to GROUPED_M_ALIGN rows; blockExpert[i] names the expert of rows
// [128 i, 128 i + 128) (-1: padding only, left unwritten).
//
// Promotion as on Hopper: the tensor cores sum one 128-wide K chunk (here: exactly, in f64, then
// rounded to f32), the chunk is scaled by fround(sa·sb) and added into an f32 accumulator with one
// rounding (an FMA). Error model against the exact product of the dequantized operands: the chunk
// sums on the GPU keep fewer bits than f32 (~2^-14 relative to the chunk's largest partial sum),
// the f32 accumulation adds ~K/128 · 2^-24, and the bf16 output rounding adds up to half a bf16
// spacing (2^-8 .. 2^-9 relative; RMS over random values ≈ 1.6e-3, measured on the bench's
// inputs). So relative Frobenius error vs f64 ≈ 1.6e-3, dominated by the bf16 output rounding.
import { roundToBf16 } from "./bf16.ts";
import { E4M3_MAX, e4m3FromBits, e4m3ToBits } from "./fp8.ts";

export const FP8_BLOCK = 128;
export const GROUPED_M_ALIGN = 128;

/** The 256 e4m3 codes decoded (NaN codes 0x7f/0xff decode to NaN). */
export const E4M3_TABLE: Float32Array = (() => {
  const t = new Float32Array(256);
  for (let i = 0; i < 256; i++) t[i] = e4m3FromBits(i);
  return t;
})();

export const kBlocks = (K: number): number => Math.ceil(K / FP8_BLOCK);

export interface Fp8GemmProblem {
  M: number;
  N: number;
  K: number;
  /** M×K e4m3 codes. */
  a: Uint8Array;
  /** [ceil(K/128)][M]. */
  sa: Float32Array;
  /** N×K e4m3 codes (grouped: E×N×K). */
  b: Uint8Array;
  /** [ceil(N/128)][ceil(K/128)] (grouped: one such block per expert); with bRows [ceil(K/128)][N]. */
  sb: Float32Array;
  /** B scaled per row and K block (1×128 tiles, the Wgrad form) instead of per 128×128 block; dense only. */
  bRows?: boolean;
  /** Grouped only: the expert of each 128-row block of A (-1: padding). */
  blockExpert?: Int32Array;
}

function checkProblem(p: Fp8GemmProblem): number {
  const { M, N, K } = p;
  const KB = kBlocks(K), NB = Math.ceil(N / FP8_BLOCK);
  const experts = p.blockExpert ? p.b.length / (N * K) : 1;
  if (p.a.length !== M * K) throw new RangeError(`fp8 gemm: a has ${p.a.length} codes, M×K = ${M * K}`);
  if (p.sa.length !== KB * M) throw new RangeError(`fp8 gemm: sa has ${p.sa.length} scales, ceil(K/128)×M = ${KB * M}`);
  if (!Number.isInteger(experts) || p.b.length !== experts * N * K) throw new RangeError(`fp8 gemm: b has ${p.b.length} codes, not a multiple of N×K = ${N * K}`);
  if (p.bRows && p.blockExpert) throw new RangeError("fp8 gemm: row-scaled B is dense only");
  if (p.bRows ? p.sb.length !== KB * N : p.sb.length !== experts * NB * KB)
    throw new RangeError(`fp8 gemm: sb has ${p.sb.length} scales, expected ${p.bRows ? `ceil(K/128)×N = ${KB}×${N}` : `${experts}×${NB}×${KB}`}`);
  if (p.blockExpert && p.blockExpert.length * GROUPED_M_ALIGN !== M)
    throw new RangeError(`fp8 gemm: grouped M = ${M} must be blockExpert.length (${p.blockExpert.length}) × ${GROUPED_M_ALIGN}`);
  return experts;
}

/** The expert whose weights row m multiplies (0 for a dense problem; -1 for a padding block). */
export function expertOfRow(p: Fp8GemmProblem, m: number): number {
  return p.blockExpert ? p.blockExpert[Math.floor(m / GROUPED_M_ALIGN)]! : 0;
}

/**
 * The promoted-accumulation result for the given rows (default: all), before the bf16 rounding:
 * out[i*N + n] for rows[i]. Rows of a padding block are NaN (the kernel leaves them unwritten).
 */
export function fp8GemmF32(p: Fp8GemmProblem, rows?: ArrayLike<number>): Float32Array {
  const { M, N, K } = p, KB = kBlocks(K), NB = Math.ceil(N / FP8_BLOCK);
  const arow = new Float64Array(K);
  return eachRow(p, rows, (n) => new Float32Array(n), (m, e, out, at) => {
    for (let k = 0; k < K; k++) arow[k] = E4M3_TABLE[p.a[m * K + k]!]!;
    for (let n = 0; n < N; n++) {
      const bOff = (e * N + n) * K, sbAt = bScaleAt(p, e, n, KB, NB);
      let acc = 0;
      for (let kb = 0; kb < KB; kb++) {
        let chunk = 0;
        const k1 = Math.min(K, (kb + 1) * FP8_BLOCK);
        for (let k = kb * FP8_BLOCK; k < k1; k++) chunk += arow[k]! * E4M3_TABLE[p.b[bOff + k]!]!;
        const sc = Math.fround(p.sa[kb * M + m]! * p.sb[sbAt(kb)]!);
        acc = Math.fround(Math.fround(chunk) * sc + acc);
      }
      out[at + n] = acc;
    }
  });
}

/** Where B's scale of row n (expert e) for K block kb sits in sb. */
function bScaleAt(p: Fp8GemmProblem, e: number, n: number, KB: number, NB: number): (kb: number) => number {
  if (p.bRows) return (kb) => kb * p.N + n;
  const off = (e * NB + Math.floor(n / FP8_BLOCK)) * KB;
  return (kb) => off + kb;
}

/** Runs `row` for each listed row (default: all) into its N outputs at `at`; padding rows' outputs are NaN. */
function eachRow<T extends Float32Array | Float64Array>(p: Fp8GemmProblem, rows: ArrayLike<number> | undefined, make: (n: number) => T, row: (m: number, expert: number, out: T, at: number) => void): T {
  checkProblem(p);
  const list = rows ?? Array.from({ length: p.M }, (_, i) => i);
  const out = make(list.length * p.N);
  for (let i = 0; i < list.length; i++) {
    const m = list[i]!, e = expertOfRow(p, m);
    if (e < 0) out.fill(NaN, i * p.N, (i + 1) * p.N);
    else row(m, e, out, i * p.N);
  }
  return out;
}

/** The kernels' output for the given rows: fp8GemmF32 rounded to bf16 (values, not codes). */
export function fp8GemmRef(p: Fp8GemmProblem, rows?: ArrayLike<number>): Float32Array {
  const out = fp8GemmF32(p, rows);
  for (let i = 0; i < out.length; i++) out[i] = roundToBf16(out[i]!);
  return out;
}

/** The exact product of the dequantized operands (f64), for the given rows: the error model's truth. */
export function fp8GemmF64(p: Fp8GemmProblem, rows?: ArrayLike<number>): Float64Array {
  const { M, N, K } = p, KB = kBlocks(K), NB = Math.ceil(N / FP8_BLOCK);
  const arow = new Float64Array(K);
  return eachRow(p, rows, (n) => new Float64Array(n), (m, e, out, at) => {
    for (let k = 0; k < K; k++) arow[k] = E4M3_TABLE[p.a[m * K + k]!]! * p.sa[Math.floor(k / FP8_BLOCK) * M + m]!;
    for (let n = 0; n < N; n++) {
      const bOff = (e * N + n) * K, sbAt = bScaleAt(p, e, n, KB, NB);
      let acc = 0;
      for (let k = 0; k < K; k++) acc += arow[k]! * (E4M3_TABLE[p.b[bOff + k]!]! * p.sb[sbAt(Math.floor(k / FP8_BLOCK))]!);
      out[at + n] = acc;
    }
  });
}

/** Quantizes M×K values in 1×128 tiles: codes, and dequantization scales laid out [ceil(K/128)][M]. */
export function quantizeActivations(x: ArrayLike<number>, M: number, K: number): { q: Uint8Array; s: Float32Array } {
  const KB = kBlocks(K);
  const q = new Uint8Array(M * K), s = new Float32Array(KB * M);
  for (let m = 0; m < M; m++)
    for (let kb = 0; kb < KB; kb++) {
      const k0 = kb * FP8_BLOCK, k1 = Math.min(K, k0 + FP8_BLOCK);
      let amax = 0;
      for (let k = k0; k < k1; k++) amax = Math.max(amax, Math.abs(x[m * K + k]!));
      const scale = amax > 0 ? Math.fround(amax / E4M3_MAX) : 1;
      s[kb * M + m] = scale;
      for (let k = k0; k < k1; k++) q[m * K + k] = e4m3ToBits(x[m * K + k]! / scale);
    }
  return { q, s };
}

/** Quantizes N×K values in 128×128 blocks: codes, and scales laid out [ceil(N/128)][ceil(K/128)]. */
export function quantizeWeights(w: ArrayLike<number>, N: number, K: number): { q: Uint8Array; s: Float32Array } {
  const KB = kBlocks(K), NB = Math.ceil(N / FP8_BLOCK);
  const q = new Uint8Array(N * K), s = new Float32Array(NB * KB);
  for (let nb = 0; nb < NB; nb++)
    for (let kb = 0; kb < KB; kb++) {
      const n1 = Math.min(N, (nb + 1) * FP8_BLOCK), k0 = kb * FP8_BLOCK, k1 = Math.min(K, k0 + FP8_BLOCK);
      let amax = 0;
      for (let n = nb * FP8_BLOCK; n < n1; n++) for (let k = k0; k < k1; k++) amax = Math.max(amax, Math.abs(w[n * K + k]!));
      const scale = amax > 0 ? Math.fround(amax / E4M3_MAX) : 1;
      s[nb * KB + kb] = scale;
      for (let n = nb * FP8_BLOCK; n < n1; n++) for (let k = k0; k < k1; k++) q[n * K + k] = e4m3ToBits(w[n * K + k]! / scale);
    }
  return { q, s };
}

/** Relative Frobenius error ‖got − want‖ / ‖want‖ over the finite entries of want, and their count. */
export function relFrobenius(got: ArrayLike<number>, want: ArrayLike<number>): { rel: number; compared: number } {
  let num = 0, den = 0, compared = 0;
  for (let i = 0; i < want.length; i++) {
    const w = want[i]!;
    if (!Number.isFinite(w)) continue;
    const d = got[i]! - w;
    num += d * d;
    den += w * w;
    compared++;
  }
  return { rel: den > 0 ? Math.sqrt(num / den) : Math.sqrt(num), compared };
}
