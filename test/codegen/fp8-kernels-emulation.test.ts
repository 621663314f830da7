// The standalone FP8 quantize kernels (runtime/cuda/kernels/fp8-sources.ts) run, as text, on the
// CPU emulation of test/codegen/emu (g++; threads for a block's lanes, barriers for __syncthreads
// and shuffles): the register-tile kernel in both modes (128x128 one scale per tile, 128x1 one per
// column of a 128-row tile, in place) and the 1x128 row kernel, on shapes with partial tiles in
// both dims, a leading batch dim, zero tiles, a NaN and an Inf. The e4m3 bytes and f32 scales must
// equal compiler/ops/quantize.ts's bit for bit. The dequantize kernels (scalar, and 16 codes a thread)
// the same way: every code byte, 128x128 and 1x128 scale layouts, f32 and bf16 outputs equal to
// dequantizeValues (then rounded) bit for bit. And the byte moves of the FP8 GEMM paths: the tiled
// code transpose on partial tiles, the 16-byte row gather with padding and a bad index; the routed and dense Wgrads' gather + 128x1 quantize + transpose (a row map, or runs
// of rows padded to 128 without one). Skipped,
// saying so, without g++.
import { describe, expect, it } from "vitest";
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { dequantize, dequantizeVec, quantizeFlat, quantizeRows, quantizeTiles, wgradColumns, wgradGrid } from "../../runtime/cuda/kernels/fp8-sources.ts";
import { dequantizeValues, quantizeValues } from "../../compiler/ops/quantize.ts";
import { e4m3FromBits, e4m3ToBits } from "../../compiler/numeric/fp8.ts";
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

interface Case { label: string; kernel: { name: string; source: string }; O: number; N: number; K: number; mode: "rows" | "flat" | "block" | "blockT" | "cols"; f32?: boolean }
const CASES: Case[] = [
  { label: "128x128 [200, 264]", kernel: quantizeTiles("bf16", "block"), O: 1, N: 200, K: 264, mode: "block" },
  { label: "128x128 [2, 130, 136]", kernel: quantizeTiles("bf16", "block"), O: 2, N: 130, K: 136, mode: "block" },
  // and the transposed codes too (qT [O, K, N]): partial tiles in both dims, N a multiple of 16
  { label: "128x128 + transposed [2, 144, 264]", kernel: quantizeTiles("bf16", "block", true), O: 2, N: 144, K: 264, mode: "blockT" },
  { label: "128x128 + transposed [1, 256, 136]", kernel: quantizeTiles("bf16", "block", true), O: 1, N: 256, K: 136, mode: "blockT" },
  // f32 weights (the FP8 recipe's master weights): 4 columns a load, 8 rows a pass
  { label: "128x128 + transposed f32 [2, 144, 264]", kernel: quantizeTiles("f32", "block", true), O: 2, N: 144, K: 264, mode: "blockT", f32: true },
  { label: "128x1 [200, 264]", kernel: quantizeTiles("bf16", "cols"), O: 1, N: 200, K: 264, mode: "cols" },
  { label: "128x1 [3, 130, 24]", kernel: quantizeTiles("bf16", "cols"), O: 3, N: 130, K: 24, mode: "cols" },
  { label: "1x128 [5, 300]", kernel: quantizeRows("bf16"), O: 5, N: 1, K: 300, mode: "rows" },
  { label: "1x128 [5, 302]", kernel: quantizeRows("bf16"), O: 5, N: 1, K: 302, mode: "rows" }, // a row ending inside a lane's 4 elements
  // the flat kernel (K % 128 == 0): 35 tiles on 2 blocks, so warps stride, and a trip's last loads fall past the end
  { label: "1x128 flat [7, 640]", kernel: quantizeFlat("bf16"), O: 7, N: 1, K: 640, mode: "flat" },
  { label: "1x128 flat [7, 640] unroll 1", kernel: quantizeFlat("bf16", 1), O: 7, N: 1, K: 640, mode: "flat" },
  { label: "1x128 flat [3, 1024] unroll 8", kernel: quantizeFlat("bf16", 8), O: 3, N: 1, K: 1024, mode: "flat" },
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
      const rows = c.mode === "rows" || c.mode === "flat";
      const shape = rows ? [O, K] : [O, N, K];
      const tiled = rows ? [false, true] : c.mode === "block" || c.mode === "blockT" ? [false, true, true] : [false, true, false];
      const ref = quantizeValues(x, shape, tiled);
      const tiles = rows ? O * Math.ceil(K / 128) : O * Math.ceil(N / 128) * Math.ceil(K / 128);
      const grid = c.mode === "flat" ? 2 : c.mode === "rows" ? Math.ceil(tiles / 8) : tiles;
      const args = c.mode === "flat" ? `q, s, x, ${tiles}LL` : c.mode === "rows" ? `q, s, x, ${O}LL, ${K}` : `q, s, x, ${O}LL, ${N}, ${K}${c.mode === "blockT" ? ", qT" : ""}`;
      const exe = join(dir, c.kernel.name + c.label.replace(/\W+/g, "_"));
      writeFileSync(`${exe}.cpp`, `#include "cuda-emu.h"
${c.kernel.source}
int main(int, char** argv) {
  const long long n = ${x.length}, ns = ${ref.scales.length};
  ${c.f32 ? "float" : "__nv_bfloat16"}* x = (${c.f32 ? "float" : "__nv_bfloat16"}*)aligned_alloc(64, (n * ${c.f32 ? 4 : 2} + 63) / 64 * 64);
  unsigned char* q = (unsigned char*)aligned_alloc(64, (n + 63) / 64 * 64);
  float* s = (float*)aligned_alloc(64, (ns * 4 + 63) / 64 * 64);
  unsigned char* qT = (unsigned char*)aligned_alloc(64, (n + 63) / 64 * 64);
  memset(q, 0xAA, n); memset(qT, 0xAA, n); memset(s, 0xff, ns * 4);
  FILE* f = fopen(argv[1], "rb"); if (fread(x, ${c.f32 ? 4 : 2}, n, f) != (size_t)n) return 2; fclose(f);
  emu_launch(${grid}, 256, [&] { ${c.kernel.name}(${args}); });
  FILE* o = fopen(argv[2], "wb"); fwrite(q, 1, n, o); fwrite(s, 4, ns, o); fwrite(qT, 1, n, o); fclose(o);
  return 0;
}
`);
      writeFileSync(`${exe}.in`, c.f32 ? Buffer.from(x.buffer, x.byteOffset, x.byteLength) : bf16Bytes(x));
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
      // the transposed codes: qT[o][k][n] is q[o][n][k], byte for byte
      let nt = 0;
      if (c.mode === "blockT") {
        const qT = got.subarray(x.length + ref.scales.length * 4);
        for (let o = 0; o < O; o++) for (let k = 0; k < K; k++) for (let r = 0; r < N; r++) if (qT[(o * K + k) * N + r] !== got[(o * N + r) * K + k]) nt++;
      }
      if (nq || ns || nt) bad.push(`${c.label} (${c.kernel.name}): ${nq}/${x.length} bytes, ${ns}/${ref.scales.length} scales, ${nt} transposed bytes differ`);
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
  it("the routed Wgrad's gather + 128x1 quantize + transpose equals quantizeValues on the gathered (dequantized) rows; a padding-only block is not written", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-fp8emu-"));
    const run = promisify(execFile);
    const bad: string[] = [];
    const rows = 300;
    // four segments padded to whole 128-row blocks (the first spans two), padding rows -1: 5 blocks, so
    // with e4m3's two row blocks a CUDA block one block holds a used and a padding-only row block, and the
    // last a padding-only one and one past M
    const segs = [[0, 130], [200, 60], [140, 128], [270, 30]] as const;
    const segMap: number[] = [];
    for (const [r0, m] of segs) for (let i = 0; i < Math.ceil(m / 128) * 128; i++) segMap.push(i < m ? r0 + i : -1);
    // and two blocks of padding only (the device plan's capacity past the used blocks): left as they were
    const segUsed = segMap.length;
    for (let i = 0; i < 256; i++) segMap.push(-1);
    // no map (scaled_dot_wgrad's tokens): runs of 150 rows, each padded to 256, as this explicit map says
    const RUN = 150, runMap = Array.from({ length: (rows / RUN) * 256 }, (_, p) => (p % 256 < RUN ? Math.floor(p / 256) * RUN + (p % 256) : -1));
    for (const { rowMap, used, runLen } of [{ rowMap: segMap, used: segUsed, runLen: 0 }, { rowMap: runMap, used: runMap.length, runLen: RUN }]) {
    const M = rowMap.length;
    for (const [src, width] of [["fp8", 272], ["fp8", 200], ["bf16", 264], ["bf16", 100], ["f32", 136], ["f32", 70]] as const) {
      const kt = Math.ceil(width / 128), n = rows * width;
      let seed = 5;
      const rnd = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32);
      // source values: fp8 codes (every byte but NaN's) with 1x128 row scales, or bf16 / f32 values; a spike and a zero column tile
      const codes = Uint8Array.from({ length: n }, () => { const b = Math.floor(rnd() * 256); return (b & 0x7f) === 0x7f ? 0 : b; });
      const xs = Float32Array.from({ length: rows * kt }, () => Math.fround(rnd() * 2 ** Math.floor(rnd() * 12 - 6)));
      const vals = Float32Array.from({ length: n }, (_, i) => {
        const r = Math.floor(i / width), c = i % width;
        if (src === "fp8") return Math.fround(e4m3FromBits(codes[i]!) * xs[r * kt + Math.floor(c / 128)]!);
        if (r < 130 && c < 8) return 0;
        const v = (rnd() - 0.5) * 2 ** ((r % 7) - 3) + (r === 77 && c === 5 ? 900 : 0);
        return src === "bf16" ? roundToBf16(v) : Math.fround(v);
      });
      // the reference: each 128-row block of the gathered values quantized 128x1, transposed
      const wantQ = new Uint8Array(width * M), wantS = new Float32Array((M / 128) * width);
      for (let c = 0; c < width; c++) wantQ.fill(0xaa, c * M + used, c * M + M);
      wantS.fill(NaN, (used / 128) * width);
      for (let b = 0; b < used / 128; b++) {
        const blk = new Float32Array(128 * width);
        for (let i = 0; i < 128; i++) if (rowMap[b * 128 + i]! >= 0) blk.set(vals.subarray(rowMap[b * 128 + i]! * width, (rowMap[b * 128 + i]! + 1) * width), i * width);
        const r = quantizeValues(blk, [128, width], [true, false]);
        for (let i = 0; i < 128; i++) for (let c = 0; c < width; c++) wantQ[c * M + b * 128 + i] = e4m3ToBits(r.q[i * width + c]!);
        wantS.set(r.scales, b * width);
      }
      const k = wgradColumns(src), eb = src === "f32" ? 4 : src === "bf16" ? 2 : 1;
      const vec = (width * eb) % 16 === 0 ? 1 : 0;
      const xBytes = src === "fp8" ? Buffer.from(codes) : src === "bf16" ? bf16Bytes(vals) : Buffer.from(vals.buffer);
      const T = src === "fp8" ? "unsigned char" : src === "bf16" ? "__nv_bfloat16" : "float";
      const exe = join(dir, `${k.name}_${width}_${runLen}`);
      writeFileSync(`${exe}.cpp`, `#include "cuda-emu.h"
${k.source}
int main(int, char** argv) {
  const long long nx = ${xBytes.length}, ns = ${xs.length}, M = ${M};
  ${T}* x = (${T}*)aligned_alloc(64, (nx + 63) / 64 * 64);
  float* xs = (float*)aligned_alloc(64, (ns * 4 + 63) / 64 * 64);
  int* map = (int*)aligned_alloc(64, (M * 4 + 63) / 64 * 64);
  unsigned char* q = (unsigned char*)aligned_alloc(64, (${width} * M + 63) / 64 * 64);
  float* s = (float*)aligned_alloc(64, (M / 128 * ${width} * 4 + 63) / 64 * 64);
  memset(q, 0xAA, ${width} * M); memset(s, 0xff, M / 128 * ${width} * 4);
  FILE* f = fopen(argv[1], "rb");
  if (fread(x, 1, nx, f) != (size_t)nx || fread(xs, 4, ns, f) != (size_t)ns || fread(map, 4, M, f) != (size_t)M) return 2;
  fclose(f);
  emu_launch(${wgradGrid(src, M, width)}, 256, [&] { ${k.name}(q, s, x, xs, ${runLen ? "nullptr" : "map"}, ${rows}LL, ${width}, M, ${vec}, ${runLen}LL); });
  FILE* o = fopen(argv[2], "wb"); fwrite(q, 1, ${width} * M, o); fwrite(s, 4, M / 128 * ${width}, o); fclose(o);
  return 0;
}
`);
      writeFileSync(`${exe}.in`, Buffer.concat([xBytes, Buffer.from(xs.buffer), Buffer.from(Int32Array.from(rowMap).buffer)]));
      await run(GXX!, ["-std=c++20", "-O1", "-pthread", "-w", `-I${EMU}`, `-I${join(EMU, "include")}`, "-x", "c++", `${exe}.cpp`, "-o", exe]);
      execFileSync(exe, [`${exe}.in`, `${exe}.out`]);
      const got = readFileSync(`${exe}.out`);
      let nq = 0, ns = 0;
      for (let i = 0; i < wantQ.length; i++) if (got[i] !== wantQ[i]) nq++;
      const sc = new Float32Array(got.buffer.slice(got.byteOffset + wantQ.length, got.byteOffset + wantQ.length + wantS.length * 4));
      for (let i = 0; i < wantS.length; i++) if (!Object.is(sc[i], wantS[i])) ns++;
      if (nq || ns) bad.push(`${k.name} width ${width} (vec ${vec}, run ${runLen}): ${nq}/${wantQ.length} codes, ${ns}/${wantS.length} scales differ`);
    }
    }
    expect(bad).toEqual([]);
  }, 300_000);
});
