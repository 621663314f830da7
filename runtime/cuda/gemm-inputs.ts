// Device inputs for timing a generated GEMM: random e4m3 operands with positive scales in the kernels'
// layouts (fp8-gemm.ts Fp8GemmBuffers), and copies of A and B at other addresses, enough sets that
// together they overflow L2 (50 MiB on H100 / H200) about three times, so that a timing loop's
// launches find L2 cold. The codes are those of quantized Gaussian values, not uniform random bytes:
// on an H200 those drew so much more power that the same kernels ran 5–22% slower under the power cap.
// Used by `shardts tune-gemm` (stdlib/cli/tune-command.ts), the FP8 GEMM bench (bench/gpu/fp8-gemm.ts)
// and its tile timeline (bench/gpu/gemm-trace.ts).
import { FP8_BLOCK, GROUPED_M_ALIGN } from "../../compiler/numeric/fp8-gemm.ts";
import { e4m3ToBits } from "../../compiler/numeric/fp8.ts";
import type { Fp8GemmBuffers, Fp8GemmProblemShape } from "./fp8-gemm.ts";
import type { NativeAddon } from "./native-types.ts";

/** `base` and copies of its A and B (2 to 8 sets in all); `alloc` owns the new buffers. */
export function rotated(a: NativeAddon, base: Fp8GemmBuffers, p: { a: { length: number }; b: { length: number } }, alloc: (n: number) => bigint): Fp8GemmBuffers[] {
  const bytes = p.a.length + p.b.length;
  const n = Math.max(2, Math.min(8, Math.ceil((160 << 20) / bytes)));
  const sets = [base];
  for (let i = 1; i < n; i++) {
    const A = alloc(p.a.length), B = alloc(p.b.length);
    a.memcpyDtoD(A, base.a, p.a.length);
    a.memcpyDtoD(B, base.b, p.b.length);
    sets.push({ ...base, a: A, b: B });
  }
  return sets;
}

// e4m3 codes of 2^16 Gaussian values scaled as a 1x128 tile's quantize scales them (448 at about 4σ)
let pool: Uint8Array | undefined;
const gaussianCodes = (): Uint8Array => {
  if (pool) return pool;
  pool = new Uint8Array(1 << 16);
  for (let i = 0; i < pool.length; i++) pool[i] = e4m3ToBits(Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random()) * 112);
  return pool;
};

/** n e4m3 codes of quantized Gaussian values (never NaN), drawn from a pool of 2^16. */
export function randomE4m3(n: number): Uint8Array {
  const codes = gaussianCodes(), q = new Uint8Array(n);
  let x = (Math.random() * 2 ** 32) >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    q[i] = codes[x >>> 16]!;
  }
  return q;
}

/** Positive scales near 1/448 (the scale of a tile whose largest value is 1). */
const randomScales = (n: number): Float32Array => Float32Array.from({ length: n }, () => (0.5 + Math.random()) / 448);

/**
 * A dense (no `experts`) or grouped FP8 problem's inputs on the device, in the kernels' layouts: A
 * M×K, A's scales [K/128][M], B (E×)N×K with 128×128 block scales, D M×N bf16; grouped, the M rows
 * (a multiple of 128, the padded rows) are split evenly over the experts by 128-row blocks.
 */
export function randomGemmInputs(a: NativeAddon, s: Fp8GemmProblemShape, alloc: (n: number) => bigint): { base: Fp8GemmBuffers; bytes: { a: { length: number }; b: { length: number } } } {
  const E = s.experts ?? 1, KB = Math.ceil(s.K / FP8_BLOCK), NB = Math.ceil(s.N / FP8_BLOCK);
  const put = (host: ArrayBufferView) => {
    const d = alloc(host.byteLength);
    a.memcpyHtoD(d, host);
    return d;
  };
  const A = randomE4m3(s.M * s.K), B = randomE4m3(E * s.N * s.K);
  const base: Fp8GemmBuffers = { a: put(A), b: put(B), sa: put(randomScales(KB * s.M)), sb: put(randomScales(E * NB * KB)), d: alloc(s.M * s.N * 2) };
  if (s.experts !== undefined) {
    const blocks = s.M / GROUPED_M_ALIGN;
    base.blockExpert = put(Int32Array.from({ length: blocks }, (_, i) => Math.floor((i * E) / blocks)));
  }
  return { base, bytes: { a: A, b: B } };
}
