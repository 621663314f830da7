// The FFMA yield edit (runtime/cuda/sass-yield.ts) on a real cubin: the default chunked FP8 GEMM
// compiled by the machine's nvcc. It finds the kernel's text, counts the promotion's FFMAs (two
// 128-column chunks of 64), and changes nothing but the yield and operand-B reuse bits of FFMAs in the
// first 9/16 of each run, both cleared ("deepgemm"), or only the yield bit, set on every FFMA of a run ("none"). Whether its opcode test names exactly the instructions
// cuobjdump calls FFMA is checked where cuobjdump is, on the GPU machine (bench/gpu/sass-yield.ts).
// Skipped, saying so, without nvcc.
import { describe, expect, it } from "vitest";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { emitFp8Gemm } from "../../compiler/codegen/cuda/gemm/emit.ts";
import { defaultGemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { interleaveFfmaYield, isFfma, textSection } from "../../runtime/cuda/sass-yield.ts";
import { NVCC, noteIfNoNvcc } from "./gxx.ts";
import { compileGemmKernel } from "./gemm-ptxas.ts";

noteIfNoNvcc("sass-yield.test.ts");

describe.skipIf(!NVCC)("FFMA yield edit of a compiled FP8 GEMM", () => {
  it("edits only the yield and reuse bits of the promotion's FFMAs, in the first 9/16 of each run", async () => {
    const k = emitFp8Gemm(defaultGemmConfig(false, { M: 4096, N: 7168 }, 132));
    const { cubin: path } = await compileGemmKernel(k, mkdtempSync(join(tmpdir(), "shardts-yield-")));
    const cubin = new Uint8Array(readFileSync(path));
    const text = textSection(cubin, k.name)!;
    expect(text, "the kernel's .text section").toBeDefined();
    expect(textSection(cubin, "no_such_kernel")).toBeUndefined();
    expect(text.size % 16).toBe(0);

    const p = interleaveFfmaYield(cubin, k.name);
    expect(p.ffma, "promotion FFMAs: 2 chunks x 64").toBe(128);
    expect(p.runs).toBeGreaterThanOrEqual(2);
    expect(p.changed).toBeGreaterThan(16);
    expect(p.changed).toBeLessThanOrEqual(Math.ceil((p.ffma * 9) / 16));
    expect(Buffer.compare(Buffer.from(cubin), Buffer.from(readFileSync(path)))).toBe(0); // the input is not modified

    const word = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset).getBigUint64(at, true);
    const changedAt = new Set(p.at);
    let differing = 0;
    for (let i = 0; i < cubin.length; i++) if (cubin[i] !== p.cubin[i]) differing++;
    expect(differing).toBeGreaterThan(0);
    for (let off = 0; off < text.size; off += 16) {
      const lo0 = word(cubin, text.offset + off), hi0 = word(cubin, text.offset + off + 8);
      const lo1 = word(p.cubin, text.offset + off), hi1 = word(p.cubin, text.offset + off + 8);
      expect(lo1).toBe(lo0);
      if (!changedAt.has(off)) {
        expect(hi1, `instruction at ${off.toString(16)} unchanged`).toBe(hi0);
        continue;
      }
      expect(isFfma(lo0)).toBe(true);
      expect(hi0 ^ hi1, "only bits 45 (yield) and 59 (reuse B) differ").toBe((1n << 45n) | (1n << 59n));
      expect(hi1 & ((1n << 45n) | (1n << 59n)), "both cleared").toBe(0n);
    }
    // nothing outside the kernel's text moves
    for (let i = 0; i < cubin.length; i++) if (i < text.offset || i >= text.offset + text.size) if (cubin[i] !== p.cubin[i]) throw new Error(`byte ${i} outside the text changed`);
 
    // "none": every FFMA of a run keeps the warp (bit 45 set), nothing else changes
    const q = interleaveFfmaYield(cubin, k.name, "none");
    expect(q.changed).toBeGreaterThan(32); // ptxas lets every other one yield
    const qAt = new Set(q.at);
    for (let off = 0; off < text.size; off += 16) {
      const hi0 = word(cubin, text.offset + off + 8), hi1 = word(q.cubin, text.offset + off + 8);
      expect(word(q.cubin, text.offset + off)).toBe(word(cubin, text.offset + off));
      if (qAt.has(off)) expect(hi1 ^ hi0).toBe(1n << 45n);
      else expect(hi1).toBe(hi0);
      if (isFfma(word(cubin, text.offset + off)) && qAt.has(off)) expect(hi1 & (1n << 45n)).toBe(1n << 45n);
    }
  });

  it("refuses a cubin without the kernel", () => {
    expect(() => interleaveFfmaYield(new Uint8Array(64), "k")).toThrow(/no section \.text\.k/);
  });
});
