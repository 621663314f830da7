// The block-scaled FP8 GEMM reference (compiler/numeric/fp8-gemm.ts) against float64 arithmetic:
// exact cases worked by hand, the promotion order, the grouped layout, and the error model on
// random quantized operands.
import { describe, expect, it } from "vitest";
import {
  E4M3_TABLE,
  fp8GemmF32,
  fp8GemmF64,
  fp8GemmRef,
  quantizeActivations,
  quantizeWeights,
  relFrobenius,
  type Fp8GemmProblem,
} from "../../../compiler/numeric/fp8-gemm.ts";
import { roundToBf16 } from "../../../compiler/numeric/bf16.ts";
import { mulberry32 } from "../../helpers/prng.ts";

const ONE = 0x38; // e4m3 1.0

function gaussian(seed: number, n: number, std = 1): Float32Array {
  const u = mulberry32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = std * Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
  return out;
}

function randomProblem(seed: number, M: number, N: number, K: number): Fp8GemmProblem & { x: Float32Array; w: Float32Array } {
  const x = gaussian(seed, M * K), w = gaussian(seed + 1, N * K, 0.05);
  // outliers, so the per-tile scales differ by orders of magnitude
  for (let i = 0; i < x.length; i += 97) x[i]! *= 40;
  const qa = quantizeActivations(x, M, K), qb = quantizeWeights(w, N, K);
  return { M, N, K, a: qa.q, sa: qa.s, b: qb.q, sb: qb.s, x, w };
}

describe("fp8 block-scaled GEMM reference", () => {
  it("applies each chunk's scales at promotion (worked by hand)", () => {
    const M = 1, N = 1, K = 256;
    const p: Fp8GemmProblem = { M, N, K, a: new Uint8Array(K).fill(ONE), sa: new Float32Array([2, 0.5]), b: new Uint8Array(K).fill(ONE), sb: new Float32Array([3, 5]) };
    // 128·(2·3) + 128·(0.5·5) = 768 + 320
    expect(Array.from(fp8GemmRef(p))).toEqual([1088]);
    expect(Array.from(fp8GemmF64(p))).toEqual([1088]);
  });

  it("row-scaled B (the Wgrad form): each column takes its own scale per K block (worked by hand)", () => {
    const M = 1, N = 2, K = 256;
    // sb [KB][N]: block 0 scales 3 (col 0) and 7 (col 1), block 1 scales 5 and 11
    const p: Fp8GemmProblem = { M, N, K, a: new Uint8Array(K).fill(ONE), sa: new Float32Array([2, 0.5]), b: new Uint8Array(N * K).fill(ONE), sb: new Float32Array([3, 7, 5, 11]), bRows: true };
    // col 0: 128·2·3 + 128·0.5·5 = 1088; col 1: 128·2·7 + 128·0.5·11 = 1792 + 704 = 2496
    expect(Array.from(fp8GemmRef(p))).toEqual([1088, 2496]);
    expect(Array.from(fp8GemmF64(p))).toEqual([1088, 2496]);
    // and on random operands, the same error model as the block-scaled form
    const x = gaussian(7, 96 * 384), w = gaussian(8, 160 * 384, 0.05);
    const qa = quantizeActivations(x, 96, 384), qb = quantizeActivations(w, 160, 384);
    const r: Fp8GemmProblem = { M: 96, N: 160, K: 384, a: qa.q, sa: qa.s, b: qb.q, sb: qb.s, bRows: true };
    expect(relFrobenius(fp8GemmRef(r), fp8GemmF64(r)).rel).toBeLessThan(5e-3);
    expect(() => fp8GemmRef({ ...r, sb: qb.s.subarray(1) })).toThrow(/ceil\(K\/128\)×N/);
  });

  it("rounds the f32 accumulator once to bf16 (RNE)", () => {
    // 1 + 2^-8 + 2^-10 is not a bf16: it rounds up to 1 + 2^-7; the f64 truth keeps it
    const K = 384, M = 1, N = 1;
    const a = new Uint8Array(K).fill(ONE), b = new Uint8Array(K).fill(ONE);
    const sa = new Float32Array([1 / 128, 2 ** -8 / 128, 2 ** -10 / 128]);
    const p: Fp8GemmProblem = { M, N, K, a, sa, b, sb: new Float32Array([1, 1, 1]) };
    expect(fp8GemmF32(p)[0]).toBe(1 + 2 ** -8 + 2 ** -10);
    expect(fp8GemmRef(p)[0]).toBe(1 + 2 ** -7);
    expect(fp8GemmRef(p)[0]).toBe(roundToBf16(fp8GemmF64(p)[0]!));
  });

  it("handles K and N that are not multiples of 128 (a partial last block)", () => {
    const p = randomProblem(3, 5, 130, 200);
    const want = fp8GemmF64(p), got = fp8GemmRef(p);
    const { rel, compared } = relFrobenius(got, want);
    expect(compared).toBe(5 * 130);
    expect(rel).toBeGreaterThan(0);
    expect(rel).toBeLessThan(4e-3);
  });

  it("on random quantized operands, stays within the bf16 error model of the f64 product", () => {
    const p = randomProblem(11, 48, 256, 512);
    const got = fp8GemmRef(p), want = fp8GemmF64(p);
    const { rel } = relFrobenius(got, want);
    // bf16 output rounding: RMS ≈ 1.6e-3 relative on random values
    expect(rel).toBeGreaterThan(3e-4);
    expect(rel).toBeLessThan(2.5e-3);
    // every element within one bf16 rounding (2^-8 relative) of the truth, plus f32 accumulation slack
    const scale = Math.sqrt(want.reduce((s, v) => s + v * v, 0) / want.length);
    for (let i = 0; i < want.length; i++) expect(Math.abs(got[i]! - want[i]!)).toBeLessThanOrEqual(2 ** -8 * Math.abs(want[i]!) + 1e-5 * scale);
    // and the quantization itself is what separates it from the unquantized product (a few %)
    let num = 0, den = 0;
    for (let m = 0; m < p.M; m++)
      for (let n = 0; n < p.N; n++) {
        let s = 0;
        for (let k = 0; k < p.K; k++) s += p.x[m * p.K + k]! * p.w[n * p.K + k]!;
        num += (s - want[m * p.N + n]!) ** 2;
        den += s * s;
      }
    expect(Math.sqrt(num / den)).toBeGreaterThan(rel);
    expect(Math.sqrt(num / den)).toBeLessThan(0.1);
  });

  it("computes a subset of rows exactly as the full product does", () => {
    const p = randomProblem(5, 20, 64, 256);
    const full = fp8GemmRef(p), rows = [19, 0, 7];
    const some = fp8GemmRef(p, rows);
    rows.forEach((m, i) => expect(Array.from(some.subarray(i * 64, (i + 1) * 64))).toEqual(Array.from(full.subarray(m * 64, (m + 1) * 64))));
  });

  it("grouped: each 128-row block uses its expert's weights and scales; padding blocks are unwritten (NaN)", () => {
    const N = 96, K = 256, E = 2;
    const dense0 = randomProblem(21, 128, N, K), dense1 = randomProblem(22, 128, N, K);
    const M = 3 * 128;
    const a = new Uint8Array(M * K), sa = new Float32Array(2 * M).fill(1);
    a.set(dense0.a, 0);
    a.set(dense1.a, 2 * 128 * K);
    for (let kb = 0; kb < 2; kb++) {
      sa.set(dense0.sa.subarray(kb * 128, (kb + 1) * 128), kb * M);
      sa.set(dense1.sa.subarray(kb * 128, (kb + 1) * 128), kb * M + 256);
    }
    const b = new Uint8Array(E * N * K), sb = new Float32Array(E * 2);
    b.set(dense0.b, 0);
    b.set(dense1.b, N * K);
    sb.set(dense0.sb, 0);
    sb.set(dense1.sb, 2);
    const g: Fp8GemmProblem = { M, N, K, a, sa, b, sb, blockExpert: new Int32Array([0, -1, 1]) };
    const out = fp8GemmRef(g);
    expect(Array.from(out.subarray(0, 128 * N))).toEqual(Array.from(fp8GemmRef(dense0)));
    expect(Array.from(out.subarray(256 * N))).toEqual(Array.from(fp8GemmRef(dense1)));
    expect(out.subarray(128 * N, 256 * N).every((v) => Number.isNaN(v))).toBe(true);
  });

  it("quantizes each tile to within e4m3 precision of the input, amax mapping to 448", () => {
    const M = 3, K = 300, x = gaussian(9, M * K);
    const { q, s } = quantizeActivations(x, M, K);
    for (let m = 0; m < M; m++)
      for (let k = 0; k < K; k++) {
        const v = E4M3_TABLE[q[m * K + k]!]! * s[Math.floor(k / 128) * M + m]!;
        expect(Math.abs(v - x[m * K + k]!)).toBeLessThanOrEqual(2 ** -4 * Math.abs(x[m * K + k]!) + s[Math.floor(k / 128) * M + m]! * 2 ** -9);
      }
    expect(q.some((c) => (c & 0x7f) === 0x7e)).toBe(true); // 448 appears (the tile max)
  });

  it("refuses operands whose sizes disagree", () => {
    expect(() => fp8GemmRef({ M: 2, N: 2, K: 128, a: new Uint8Array(256), sa: new Float32Array(1), b: new Uint8Array(256), sb: new Float32Array(1) })).toThrow(/sa has 1 scales/);
  });
});
