// The standalone FP8 quantize kernels (runtime/cuda/kernels/fp8-sources.ts) run, as text, on the
// CPU emulation of test/codegen/emu (g++; threads for a block's lanes, barriers for __syncthreads
// and shuffles): the register-tile kernel in both modes (128x128 one scale per tile, 128x1 one per
// column of a 128-row tile, in place) and the 1x128 row kernel, on shapes with partial tiles in
// both dims, a leading batch dim, zero tiles, a NaN and an Inf. The e4m3 bytes and f32 scales must
// equal compiler/ops/quantize.ts's bit for bit. The dequantize kernels (scalar, and 16 codes a thread)
// the same way: every code byte, 128x128 and 1x128 scale layouts, f32 and bf16 outputs equal to
// dequantizeValues (then rounded) bit for bit. And the byte moves of the FP8 GEMM paths: the tiled
// code transpose on partial tiles, the 16-byte row gather with padding and a bad index. Skipped,
// saying so, without g++.
import { describe, expect, it } from "vitest";
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { dequantize, dequantizeVec, quantizeRows, quantizeTiles } from "../../runtime/cuda/kernels/fp8-sources.ts";
import { dequantizeValues, quantizeValues } from "../../compiler/ops/quantize.ts";
import { e4m3FromBits } from "../../compiler/numeric/fp8.ts";
import { roundToBf16 } from "../../compiler/numeric/bf16.ts";
import { GXX, EMU, noteIfNoGxx } from "./gxx.ts";

noteIfNoGxx("fp8-kernels-emulation");

/** [O, N, K] bf16 values: row-dependent ranges, a spike per tile, tile (0, 0) all zero, a NaN and an Inf elsewhere. */
function values(O: number, N: number, K: number): Float32Array {
  let seed = 3;
  const x = new Float32Array(O * N * K);
  for (let i = 0; i < x.length; i++) {
    const n = Math.floor(i / K) % N, k = i % K;
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    x[i] = n < 128 && k < 128 && i < N * K ? 0 : roundToBf16((seed / 2 ** 32 - 0.5) * 2 ** ((n % 9) - 4));
  }
  // one spike (the amax) per 128x128 tile, in rows that different warps hold (127, 110, 93, 76)
  for (let o = 0; o < O; o++)
    for (let tn = 0; tn * 128 < N; tn++)
      for (let tk = 0; tk * 128 < K; tk++) {
        const n = tn * 128 + 127 - ((tn + tk + o) % 4) * 17, k = tk * 128 + ((tn * 17 + tk * 71 + 120) % 128);
        if (n < N && k < K && (o || tn || tk)) x[(o * N + n) * K + k] = roundToBf16(1000 + 3 * tk);
      }
  x[O * N * K - 3] = NaN;
  x[Math.floor(O * N * K / 2) + 5] = Infinity;
  return x;
}

const bf16Bytes = (x: Float32Array) => {
  const u = new Uint32Array(Float32Array.from(x).buffer), o = new Uint16Array(u.length);
  for (let i = 0; i < u.length; i++) o[i] = u[i]! >>> 16;
  return Buffer.from(o.buffer);
};

interface Case { label: string; kernel: { name: string; source: string }; O: number; N: number; K: number; mode: "rows" | "block" | "cols" }
const CASES: Case[] = [
  { label: "128x128 [200, 264]", kernel: quantizeTiles("bf16", "block"), O: 1, N: 200, K: 264, mode: "block" },
  { label: "128x128 [2, 130, 136]", kernel: quantizeTiles("bf16", "block"), O: 2, N: 130, K: 136, mode: "block" },
  { label: "128x1 [200, 264]", kernel: quantizeTiles("bf16", "cols"), O: 1, N: 200, K: 264, mode: "cols" },
  { label: "128x1 [3, 130, 24]", kernel: quantizeTiles("bf16", "cols"), O: 3, N: 130, K: 24, mode: "cols" },
  { label: "1x128 [5, 300]", kernel: quantizeRows("bf16"), O: 5, N: 1, K: 300, mode: "rows" },
];

describe.skipIf(!GXX)("standalone FP8 quantize kernels, run on a CPU emulation of the GPU", () => {
  it("give compiler/ops/quantize.ts's bytes and scales bit for bit", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-fp8emu-"));
    const run = promisify(execFile);
    const bad: string[] = [];
    for (const c of CASES) {
      const { O, N, K } = c;
      const x = values(O, N, K);
      // rows kernel: [rows, K] with 1x128 tiles; tile kernels: [O, N, K]
      const shape = c.mode === "rows" ? [O, K] : [O, N, K];
      const tiled = c.mode === "rows" ? [false, true] : c.mode === "block" ? [false, true, true] : [false, true, false];
      const ref = quantizeValues(x, shape, tiled);
      const tiles = c.mode === "rows" ? O * Math.ceil(K / 128) : O * Math.ceil(N / 128) * Math.ceil(K / 128);
      const grid = c.mode === "rows" ? Math.ceil(tiles / 8) : tiles;
      const args = c.mode === "rows" ? `q, s, x, ${O}LL, ${K}` : `q, s, x, ${O}LL, ${N}, ${K}`;
      const exe = join(dir, c.kernel.name + c.label.replace(/\W+/g, "_"));
      writeFileSync(`${exe}.cpp`, `#include "cuda-emu.h"
${c.kernel.source}
int main(int, char** argv) {
  const long long n = ${x.length}, ns = ${ref.scales.length};
  __nv_bfloat16* x = (__nv_bfloat16*)aligned_alloc(64, (n * 2 + 63) / 64 * 64);
  unsigned char* q = (unsigned char*)aligned_alloc(64, (n + 63) / 64 * 64);
  float* s = (float*)aligned_alloc(64, (ns * 4 + 63) / 64 * 64);
  memset(q, 0xAA, n); memset(s, 0xff, ns * 4);
  FILE* f = fopen(argv[1], "rb"); if (fread(x, 2, n, f) != (size_t)n) return 2; fclose(f);
  emu_launch(${grid}, 256, [&] { ${c.kernel.name}(${args}); });
  FILE* o = fopen(argv[2], "wb"); fwrite(q, 1, n, o); fwrite(s, 4, ns, o); fclose(o);
  return 0;
}
`);
      writeFileSync(`${exe}.in`, bf16Bytes(x));
      await run(GXX!, ["-std=c++20", "-O1", "-pthread", "-w", `-I${EMU}`, `-I${join(EMU, "include")}`, "-x", "c++", `${exe}.cpp`, "-o", exe]);
      execFileSync(exe, [`${exe}.in`, `${exe}.out`]);
      const got = readFileSync(`${exe}.out`);
      let nq = 0, ns = 0;
      for (let i = 0; i < x.length; i++) {
        const v = e4m3FromBits(got[i]!), w = ref.q[i]!;
        if (!(Object.is(v, w) || (Number.isNaN(v) && Number.isNaN(w)))) nq++;
      }
      const sc = new Float32Array(got.buffer.slice(got.byteOffset + x.length, got.byteOffset + x.length + ref.scales.length * 4));
      for (let i = 0; i < ref.scales.length; i++) if (!Object.is(sc[i], ref.scales[i])) ns++;
      if (nq || ns) bad.push(`${c.label} (${c.kernel.name}): ${nq}/${x.length} bytes, ${ns}/${ref.scales.length} scales differ`);
    }
    expect(bad).toEqual([]);
  }, 300_000);

  it("dequantize, scalar and 16 codes a thread, gives dequantizeValues's values bit for bit", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-fp8emu-"));
    const run = promisify(execFile);
    const bad: string[] = [];
    // [O, N, K] with tn-row tiles: 128x128 with partial tiles in both dims, and 1x128 (tn 1) rows
    for (const [O, N, K, tn] of [[2, 130, 272, 128], [3, 5, 400, 1]] as const) {
      const n = O * N * K, nt = Math.ceil(N / tn), kt = Math.ceil(K / 128), ns = O * nt * kt;
      const codes = Uint8Array.from({ length: n }, (_, i) => (i * 151 + (i >> 7)) & 255);
      let seed = 9;
      const scales = Float32Array.from({ length: ns }, () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 2 ** ((seed % 40) - 20));
      const want = dequantizeValues(Float32Array.from(codes, (b) => e4m3FromBits(b)), [O, N, K], [false, tn === 128, true], scales);
      for (const out of ["f32", "bf16"] as const) {
        for (const k of [dequantize(out), dequantizeVec(out)]) {
          const vec = k.name.includes("v16"), threads = vec ? n / 16 : n, eb = out === "bf16" ? 2 : 4;
          const exe = join(dir, `${k.name}_${O}_${N}_${K}`);
          writeFileSync(`${exe}.cpp`, `#include "cuda-emu.h"
${k.source}
int main(int, char** argv) {
  const long long n = ${n}, ns = ${ns};
  unsigned char* q = (unsigned char*)aligned_alloc(64, (n + 63) / 64 * 64);
  float* s = (float*)aligned_alloc(64, (ns * 4 + 63) / 64 * 64);
  ${out === "bf16" ? "__nv_bfloat16" : "float"}* y = (${out === "bf16" ? "__nv_bfloat16" : "float"}*)aligned_alloc(64, (n * ${eb} + 63) / 64 * 64);
  memset(y, 0xAB, n * ${eb});
  FILE* f = fopen(argv[1], "rb"); if (fread(q, 1, n, f) != (size_t)n || fread(s, 4, ns, f) != (size_t)ns) return 2; fclose(f);
  emu_launch(${Math.min(Math.ceil(threads / 256), 8)}, 256, [&] { ${k.name}(y, q, s, ${O}LL, ${N}, ${K}, ${tn}); });
  FILE* o = fopen(argv[2], "wb"); fwrite(y, ${eb}, n, o); fclose(o);
  return 0;
}
`);
          writeFileSync(`${exe}.in`, Buffer.concat([Buffer.from(codes), Buffer.from(scales.buffer)]));
          await run(GXX!, ["-std=c++20", "-O1", "-pthread", "-w", `-I${EMU}`, `-I${join(EMU, "include")}`, "-x", "c++", `${exe}.cpp`, "-o", exe]);
          execFileSync(exe, [`${exe}.in`, `${exe}.out`]);
          const got = readFileSync(`${exe}.out`);
          let diff = 0;
          for (let i = 0; i < n; i++) {
            const v = out === "f32" ? got.readFloatLE(i * 4) : new Float32Array(new Uint32Array([got.readUInt16LE(i * 2) << 16]).buffer)[0]!;
            const w = out === "f32" ? want[i]! : roundToBf16(want[i]!);
            if (!(Object.is(v, w) || (Number.isNaN(v) && Number.isNaN(w)))) diff++;
          }
          if (diff) bad.push(`${k.name} [${O}, ${N}, ${K}] tn ${tn}: ${diff}/${n} values differ`);
        }
      }
    }
    expect(bad).toEqual([]);
  }, 300_000);
});
