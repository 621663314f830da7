// The word-wise data-movement kernels (runtime/cuda/kernels/move-sources.ts) run, as text, on the CPU
// emulation of test/codegen/emu, with the geometry and word size the host planner
// (runtime/cuda/copy-plan.ts) picks: transposes (2 to 4 dims, bf16 / f32 / bytes, partial tiles, an
// element or a 4-byte word a lane),
// contiguous runs (chunked long runs, concat-like output strides, broadcast inputs, pointers off
// 16 bytes so narrower words are used, FP8 bytes), and row gathers at each word width with -1,
// rows held elsewhere and out-of-range indices. Every output byte must equal a plain element-wise
// copy, and bytes outside the destination's elements must be left alone. Skipped, saying so, without g++.
import { describe, expect, it } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { planCopy, RUN_CHUNK, type CopyPlan, type MoveGeo } from "../../runtime/cuda/copy-plan.ts";
import { rowGather, runCopy, transposeCopy, transposeWide, type Word } from "../../runtime/cuda/kernels/move-sources.ts";
import { mulberry32 } from "../helpers/prng.ts";
import { GXX, noteIfNoGxx, runEmulated } from "./gxx.ts";

noteIfNoGxx("move-emulation");

interface CopyCase { label: string; eb: number; shape: number[]; istride: number[]; ostride: number[]; srcOff?: number; dstOff?: number; kind: CopyPlan["kind"]; word?: Word; wide?: boolean; grid: number }

/** Strides of a contiguous tensor of `shape`, then read in the order `perm` (a permuted view). */
const contiguous = (shape: number[]) => shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
const permuted = (shape: number[], perm: number[]) => {
  const st = contiguous(shape);
  return { shape: perm.map((p) => shape[p]!), istride: perm.map((p) => st[p]!), ostride: contiguous(perm.map((p) => shape[p]!)) };
};

const CASES: CopyCase[] = [
  { label: "bf16 [3][40][72] -> [3][72][40] (the expert weights' transpose, partial tiles), pairs a lane", eb: 2, ...permuted([3, 40, 72], [0, 2, 1]), kind: "transpose", wide: true, grid: 5 },
  { label: "bf16 [2][130][66] -> [2][66][130] (more than one 64 x 64 tile each way), pairs a lane", eb: 2, ...permuted([2, 130, 66], [0, 2, 1]), kind: "transpose", wide: true, grid: 3 },
  { label: "bf16 [3][37][41] -> [3][41][37] (odd sizes: an element a lane)", eb: 2, ...permuted([3, 37, 41], [0, 2, 1]), kind: "transpose", wide: false, grid: 5 },
  { label: "f32 [33][65] -> [65][33]", eb: 4, ...permuted([33, 65], [1, 0]), kind: "transpose", wide: false, grid: 3 },
  { label: "bytes [2][20][3][36] -> [3][2][36][20] (two batch dims), 4 a lane", eb: 1, ...permuted([2, 20, 3, 36], [2, 0, 3, 1]), kind: "transpose", wide: true, grid: 4 },
  { label: "bytes [2][136][132] -> [2][132][136] (128 x 128 tiles, partial), 4 a lane", eb: 1, ...permuted([2, 136, 132], [0, 2, 1]), kind: "transpose", wide: true, grid: 3 },
  { label: "bytes [5][33][40] -> [5][40][33] (an element a lane)", eb: 1, ...permuted([5, 33, 40], [0, 2, 1]), kind: "transpose", wide: false, grid: 3 },
  { label: "f32 contiguous, 20000 elements: one run cut into chunks", eb: 4, shape: [20000], istride: [1], ostride: [1], kind: "runs", word: 16, grid: 2 },
  { label: "f32 [4][6][48] into a wider output (concat-like)", eb: 4, shape: [4, 6, 48], istride: [288, 48, 1], ostride: [600, 100, 1], kind: "runs", word: 16, grid: 3 },
  { label: "bf16 broadcast [3][1->5][32]", eb: 2, shape: [3, 5, 32], istride: [32, 0, 1], ostride: [160, 32, 1], kind: "runs", word: 16, grid: 2 },
  { label: "bf16 [10][40] rows, source 2 bytes off 16", eb: 2, shape: [10, 40], istride: [40, 1], ostride: [48, 1], srcOff: 2, kind: "runs", word: 2, grid: 2 },
  { label: "bf16 [10][40] rows, destination 8 bytes off 16", eb: 2, shape: [10, 40], istride: [40, 1], ostride: [40, 1], dstOff: 8, kind: "runs", word: 8, grid: 2 },
  { label: "fp8 bytes [7][100] rows", eb: 1, shape: [7, 100], istride: [100, 1], ostride: [128, 1], kind: "runs", word: 4, grid: 2 },
];

const PATTERN = (i: number) => (i * 131 + 7) & 255;
const span = (shape: number[], stride: number[]) => shape.reduce((m, s, d) => m + (s - 1) * stride[d]!, 0) + 1;
const wordType = (w: number) => (w === 16 ? "uint4" : w === 8 ? "unsigned long long" : w === 4 ? "unsigned int" : w === 2 ? "unsigned short" : "unsigned char");

function geoInit(name: string, g: MoveGeo): string {
  return [`MoveGeo ${name}{}; ${name}.nd = ${g.shape.length};`, ...g.shape.map((s, i) => `${name}.shape[${i}] = ${s}; ${name}.istride[${i}] = ${g.istride[i]}LL; ${name}.ostride[${i}] = ${g.ostride[i]}LL;`)].join(" ");
}

/** The expected destination bytes of a copy case (0xEE where no element lands). */
function expected(c: CopyCase, dstBytes: number): Uint8Array {
  const out = new Uint8Array(dstBytes).fill(0xee), n = c.shape.reduce((a, b) => a * b, 1);
  for (let i = 0; i < n; i++) {
    let r = i, io = 0, oo = 0;
    for (let d = c.shape.length - 1; d >= 0; d--) {
      const k = r % c.shape[d]!;
      r = Math.floor(r / c.shape[d]!);
      io += k * c.istride[d]!;
      oo += k * c.ostride[d]!;
    }
    for (let b = 0; b < c.eb; b++) out[oo * c.eb + b] = PATTERN(io * c.eb + b);
  }
  return out;
}

function copyCall(c: CopyCase, p: CopyPlan): string {
  if (p.kind === "runs") {
    const T = wordType(p.word);
    return `${geoInit("g", p.outer)} emu_launch(${c.grid}, 256, [&] { ${runCopy(p.word).name}((${T}*)dst, (const ${T}*)src, g, ${p.runs}LL, ${p.run}LL, ${p.chunks}LL, ${RUN_CHUNK}LL); });`;
  }
  if (p.kind === "transpose") {
    const T = wordType(p.elem), k = p.wide ? transposeWide(p.elem as 1 | 2) : transposeCopy(p.elem);
    return `${geoInit("g", p.batch)} emu_launch(${c.grid}, 256, [&] { ${k.name}((${T}*)dst, (const ${T}*)src, g, ${p.batches}LL, ${p.P}LL, ${p.L}LL, ${p.lis}LL, ${p.pos}LL); });`;
  }
  throw new Error(`${c.label}: planned as ${p.kind}`);
}

interface GatherCase { label: string; w: Word; B: number; J: number; words: number; rows: number; off: number; global: number; grid: number }
const GATHERS: GatherCase[] = [
  { label: "16-byte words, 2 batch entries, rows held 10..39 of 60", w: 16, B: 2, J: 50, words: 8, rows: 30, off: 10, global: 60, grid: 3 },
  { label: "4-byte words, rows of 25 words (over a warp)", w: 4, B: 1, J: 40, words: 45, rows: 20, off: 0, global: 20, grid: 2 },
  { label: "1-byte words, rows of 6 bytes", w: 1, B: 3, J: 17, words: 6, rows: 12, off: 3, global: 15, grid: 2 },
];

describe.skipIf(!GXX)("word-wise move kernels, run on a CPU emulation of the GPU", () => {
  it("strided copies and row gathers equal an element-wise copy byte for byte", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-moveemu-"));
    const rng = mulberry32(11);
    const blocks: string[] = [], checks: ((out: Buffer, at: number) => number)[] = [];
    for (const c of CASES) {
      const srcOff = c.srcOff ?? 0, dstOff = c.dstOff ?? 0;
      const p = planCopy(c.eb, BigInt(4096 + dstOff), BigInt(8192 + srcOff), c.shape, c.istride, c.ostride);
      expect(p.kind, c.label).toBe(c.kind);
      if (c.word !== undefined && p.kind === "runs") expect(p.word, c.label).toBe(c.word);
      if (c.wide !== undefined && p.kind === "transpose") expect(p.wide, c.label).toBe(c.wide);
      const srcBytes = span(c.shape, c.istride) * c.eb, dstBytes = span(c.shape, c.ostride) * c.eb;
      blocks.push(`{ // ${c.label}
  std::vector<unsigned char> sv(${srcBytes} + 64), dv(${dstBytes} + 64);
  unsigned char* src = align64(sv.data()) + ${srcOff}; unsigned char* dst = align64(dv.data()) + ${dstOff};
  for (long long i = 0; i < ${srcBytes}; ++i) src[i] = (unsigned char)((i * 131 + 7) & 255);
  memset(dst, 0xEE, ${dstBytes});
  ${copyCall(c, p)}
  fwrite(dst, 1, ${dstBytes}, o);
}`);
      const want = expected(c, dstBytes);
      checks.push((out, at) => {
        const got = out.subarray(at, at + dstBytes);
        const bad = want.findIndex((b, i) => got[i] !== b);
        expect(bad, `${c.label}: first differing byte`).toBe(-1);
        return at + dstBytes;
      });
    }
    for (const g of GATHERS) {
      const n = g.B * g.J, wb = g.w * g.words;
      // indices: -1, held rows, rows held elsewhere, one out of range (reported through bad)
      const idx = Array.from({ length: n }, (_, q) => (q === 7 ? g.global + 5 : rng() < 0.1 ? -1 : Math.floor(rng() * g.global)));
      const xBytes = g.B * g.rows * wb, outBytes = n * wb;
      blocks.push(`{ // gather: ${g.label}
  std::vector<unsigned char> xv(${xBytes} + 64), ov(${outBytes} + 64);
  unsigned char* x = align64(xv.data()); unsigned char* out = align64(ov.data());
  for (long long i = 0; i < ${xBytes}; ++i) x[i] = (unsigned char)((i * 131 + 7) & 255);
  memset(out, 0xEE, ${outBytes});
  std::vector<int> idx = {${idx.join(", ")}};
  int bad = -1;
  typedef ${wordType(g.w)} W;
  emu_launch(${g.grid}, 256, [&] { ${rowGather(g.w).name}((W*)out, (const W*)x, idx.data(), ${g.B}LL, ${g.J}LL, ${g.words}LL, ${g.rows}LL, ${g.off}LL, ${g.global}LL, &bad); });
  fwrite(out, 1, ${outBytes}, o);
  fwrite(&bad, 4, 1, o);
}`);
      checks.push((out, at) => {
        const want = new Uint8Array(outBytes);
        for (let q = 0; q < n; q++) {
          const l = idx[q]! - g.off, b = Math.floor(q / g.J);
          if (idx[q] === -1 || l < 0 || l >= g.rows) continue;
          for (let i = 0; i < wb; i++) want[q * wb + i] = PATTERN((b * g.rows + l) * wb + i);
        }
        const got = out.subarray(at, at + outBytes), bad = want.findIndex((v, i) => got[i] !== v);
        expect(bad, `gather ${g.label}: first differing byte`).toBe(-1);
        expect(out.readInt32LE(at + outBytes), `gather ${g.label}: bad index flag`).toBe(g.global + 5);
        return at + outBytes + 4;
      });
    }
    const kernels = new Set<string>();
    for (const c of CASES) {
      const p = planCopy(c.eb, BigInt(4096 + (c.dstOff ?? 0)), BigInt(8192 + (c.srcOff ?? 0)), c.shape, c.istride, c.ostride);
      if (p.kind === "runs") kernels.add(runCopy(p.word).source);
      if (p.kind === "transpose") kernels.add((p.wide ? transposeWide(p.elem as 1 | 2) : transposeCopy(p.elem)).source);
    }
    for (const g of GATHERS) kernels.add(rowGather(g.w).source);
    await runEmulated(dir, "move", `${[...kernels].join("\n")}
static unsigned char* align64(unsigned char* p) { return (unsigned char*)(((unsigned long long)p + 63) & ~63ULL); }`, blocks, checks);
  }, 120_000);
});
