// Inputs for the FP8 GEMM bench (bench/gpu/fp8-gemm.ts): seeded random e4m3 operands with per-tile
// scales in the layouts of compiler/numeric/fp8-gemm.ts, grouped routings, and the rows checked.
// Every child process regenerates the same data from the seed, so only outputs cross processes.
import { e4m3ToBits } from "../../../compiler/numeric/fp8.ts";
import { FP8_BLOCK, GROUPED_M_ALIGN, kBlocks, type Fp8GemmProblem } from "../../../compiler/numeric/fp8-gemm.ts";

export interface DenseCase {
  kind: "dense";
  name: string;
  M: number;
  N: number;
  K: number;
  /** Timed against the peers (the shapes), or a correctness-only edge case. */
  timed: boolean;
  /** B scaled per row and K block (the Wgrad form): run by the bRows kernels only. */
  bRows?: boolean;
}
export interface GroupedCase {
  kind: "grouped";
  name: string;
  experts: number;
  /** Routed rows per expert (before padding to 128). */
  rows: number[];
  N: number;
  K: number;
  timed: boolean;
}
export type GemmCase = DenseCase | GroupedCase;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Routed rows per expert: a seeded, uneven split of `total` (some experts get none). */
export function routing(experts: number, total: number, seed: number): number[] {
  const u = rng(seed), w = Array.from({ length: experts }, (_, i) => (i % 13 === 5 ? 0 : 0.2 + u() * u() * 3));
  const sum = w.reduce((a, b) => a + b, 0);
  const rows = w.map((x) => Math.floor((x / sum) * total));
  rows[0]! += total - rows.reduce((a, b) => a + b, 0);
  return rows;
}

export const paddedRows = (rows: number[]): number => rows.reduce((s, r) => s + Math.ceil(r / GROUPED_M_ALIGN) * GROUPED_M_ALIGN, 0);
export const usefulFlops = (c: GemmCase): number => 2 * (c.kind === "dense" ? c.M : c.rows.reduce((a, b) => a + b, 0)) * c.N * c.K;
export const rowsOf = (c: GemmCase): number => (c.kind === "dense" ? c.M : paddedRows(c.rows));

// e4m3 codes of ~N(0, 1)·64 values (a realistic spread of exponents), drawn by table lookup: the
// bench's largest operands have 369M codes
const CODES = (() => {
  const u = rng(99), t = new Uint8Array(4096);
  for (let i = 0; i < t.length; i++) t[i] = e4m3ToBits(64 * Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u()));
  return t;
})();

function codes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = CODES[s >>> 20]!;
  }
  return out;
}
function scales(n: number, seed: number): Float32Array {
  const u = rng(seed), out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.fround(2 ** (-8 + 4 * u())); // 2^-8 .. 2^-4: 16x spread between tiles
  return out;
}

/** The problem a case names (grouped: A rows padded per expert, padding rows zero). */
export function makeProblem(c: GemmCase, seed: number): Fp8GemmProblem & { experts: number } {
  const { N, K } = c, KB = kBlocks(K), NB = Math.ceil(N / FP8_BLOCK);
  if (c.kind === "dense") {
    const bRows = c.bRows === true;
    return { M: c.M, N, K, a: codes(c.M * K, seed), sa: scales(KB * c.M, seed + 1), b: codes(N * K, seed + 2), sb: scales(bRows ? KB * N : NB * KB, seed + 3), experts: 1, ...(bRows ? { bRows } : {}) };
  }
  const M = paddedRows(c.rows);
  const a = codes(M * K, seed), blockExpert = new Int32Array(M / GROUPED_M_ALIGN).fill(-1);
  let row = 0;
  c.rows.forEach((r, e) => {
    const padded = Math.ceil(r / GROUPED_M_ALIGN) * GROUPED_M_ALIGN;
    a.fill(0, (row + r) * K, (row + padded) * K); // padding rows are zero, as dispatch leaves them
    for (let b = row / GROUPED_M_ALIGN; b < (row + padded) / GROUPED_M_ALIGN; b++) blockExpert[b] = e;
    row += padded;
  });
  return { M, N, K, a, sa: scales(KB * M, seed + 1), b: codes(c.experts * N * K, seed + 2), sb: scales(c.experts * NB * KB, seed + 3), blockExpert, experts: c.experts };
}

/** The rows checked: all of a small problem, else block edges and a spread (grouped: rows of expert blocks only). */
export function sampleRows(p: Fp8GemmProblem, c: GemmCase): number[] {
  const real = (m: number) => c.kind === "dense" || p.blockExpert![Math.floor(m / GROUPED_M_ALIGN)]! >= 0;
  if (p.M <= 320) return Array.from({ length: p.M }, (_, i) => i).filter(real);
  const want = [0, 1, 63, 64, 127, 128, 191, 200, p.M - 129, p.M - 65, p.M - 2, p.M - 1];
  for (let i = 1; i <= 8; i++) want.push(Math.floor((p.M * i) / 9) + i);
  return [...new Set(want.filter((m) => m >= 0 && m < p.M))].filter(real).sort((x, y) => x - y);
}

export const DENSE_CASES: DenseCase[] = [
  { kind: "dense", name: "edge 300x528x1040", M: 300, N: 528, K: 1040, timed: false },
  // M % 4 != 0: the scale rows cannot come by TMA, so the kernels run their globalScales variant
  { kind: "dense", name: "edge 301x528x1040", M: 301, N: 528, K: 1040, timed: false },
  { kind: "dense", name: "small 128x256x256", M: 128, N: 256, K: 256, timed: false },
  { kind: "dense", name: "4096x7168x2048", M: 4096, N: 7168, K: 2048, timed: true },
  { kind: "dense", name: "4096x2048x7168", M: 4096, N: 2048, K: 7168, timed: true },
  { kind: "dense", name: "4096x4096x7168", M: 4096, N: 4096, K: 7168, timed: true },
  { kind: "dense", name: "8192x8192x8192", M: 8192, N: 8192, K: 8192, timed: true },
  { kind: "dense", name: "128x7168x2048", M: 128, N: 7168, K: 2048, timed: true },
  { kind: "dense", name: "64x2112x7168", M: 64, N: 2112, K: 7168, timed: true },
  // N = 1408 = 5.5 tiles of 256: the last column tile's second chunk lies past N (the FP8 Linear's Fprop at the EP layer's shared-expert size)
  { kind: "dense", name: "8192x1408x2048", M: 8192, N: 1408, K: 2048, timed: true },
  // the Wgrad form (both operands 1x128 along K = tokens): dW[out, in] over 8192 tokens
  { kind: "dense", name: "wgrad edge 300x528x1040", M: 300, N: 528, K: 1040, timed: false, bRows: true },
  { kind: "dense", name: "wgrad 2048x7168x8192", M: 2048, N: 7168, K: 8192, timed: true, bRows: true },
  { kind: "dense", name: "wgrad 7168x2048x8192", M: 7168, N: 2048, K: 8192, timed: true, bRows: true },
  // the FP8 Linear's Wgrads at the EP layer's shared-expert shapes (bench/gpu/fp8-linear.ts): 176 tiles of 128 columns, 128 of 192
  { kind: "dense", name: "wgrad 2048x1408x8192", M: 2048, N: 1408, K: 8192, timed: true, bRows: true },
  { kind: "dense", name: "wgrad 1408x2048x8192", M: 1408, N: 2048, K: 8192, timed: true, bRows: true },
];

export const GROUPED_CASES: GroupedCase[] = [
  { kind: "grouped", name: "edge E4 256x512 rows[100,0,300,37]", experts: 4, rows: [100, 0, 300, 37], N: 256, K: 512, timed: false },
  // N = 384: a 128 x 256 tile's second chunk lies past N (its scale block is absent, its B rows are the next expert's)
  { kind: "grouped", name: "edge E4 384x512 rows[100,0,300,37]", experts: 4, rows: [100, 0, 300, 37], N: 384, K: 512, timed: false },
  { kind: "grouped", name: "E64 49152 rows N2816 K2048", experts: 64, rows: routing(64, 8192 * 6, 5), N: 2816, K: 2048, timed: true },
  { kind: "grouped", name: "E64 49152 rows N2048 K1408", experts: 64, rows: routing(64, 8192 * 6, 6), N: 2048, K: 1408, timed: true },
  // a routed expert's gate or up projection alone (N = 1408: half of the last column tile past N)
  { kind: "grouped", name: "E64 49152 rows N1408 K2048", experts: 64, rows: routing(64, 8192 * 6, 7), N: 1408, K: 2048, timed: true },
];

/**
 * The cases a --shapes set keeps: "all", or "large": every correctness-only edge case (cheap, and
 * what catches a wrong new kernel) plus the timed dense shapes of M >= 4096 and the grouped ones.
 */
export function inShapeSet(c: GemmCase, set: "all" | "large"): boolean {
  return set === "all" || !c.timed || c.kind === "grouped" || c.M >= 4096 || (c.kind === "dense" && c.bRows === true);
}
