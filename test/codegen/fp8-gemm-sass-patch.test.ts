// The FFMA scheduling-hint rewrite (compiler/codegen/cuda/gemm/sass-patch.ts) on a real sm_90a cubin
// of the executor's default FP8 GEMM kernel, built here by nvcc: it finds the promotion's FFMA runs
// (opcode 0x223), changes only bits 45 (yield) and 59 (Rb reuse) of FFMA instructions, "reuse" only
// where the next FFMA reads the same Rb, and refuses what is not a cubin or names no kernel in it.
import { describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { emitFp8Gemm } from "../../compiler/codegen/cuda/gemm/emit.ts";
import { defaultGemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { patchFfma } from "../../compiler/codegen/cuda/gemm/sass-patch.ts";
import { NVCC, noteIfNoNvcc } from "./gxx.ts";

noteIfNoNvcc("fp8-gemm-sass-patch.test.ts");

describe.skipIf(!NVCC)("FFMA hint rewrite on an nvcc-built sm_90a FP8 GEMM cubin", () => {
  const k = emitFp8Gemm(defaultGemmConfig(false));
  const dir = mkdtempSync(join(tmpdir(), "shardts-sass-patch-"));
  const cu = join(dir, `${k.name}.cu`), bin = join(dir, `${k.name}.cubin`);
  writeFileSync(cu, k.source);
  execFileSync(NVCC!, ["-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-o", bin, cu]);
  const cubin = new Uint8Array(readFileSync(bin));

  for (const mode of ["yield", "reuse"] as const) {
    it(`"${mode}": only the hint bits of FFMA instructions change`, () => {
      const p = patchFfma(cubin, k.name, mode);
      // two m64n128 fragments promoted per step, 64 FFMAs each, in runs of 16 or more
      expect(p.ffma).toBeGreaterThanOrEqual(256);
      expect(p.runs).toBeGreaterThanOrEqual(4);
      expect(p.changed).toBeGreaterThan(0);
      let changedInstrs = 0;
      for (let i = 0; i < cubin.length; i += 16) {
        const a = cubin.subarray(i, i + 16), b = p.cubin.subarray(i, i + 16);
        if (a.every((x, j) => x === b[j])) continue;
        changedInstrs++;
        const lo = new DataView(a.buffer, a.byteOffset, 16).getBigUint64(0, true);
        expect(lo & 0xfffn, `instruction at byte ${i}`).toBe(0x223n);
        for (let j = 0; j < 16; j++) {
          const diff = a[j]! ^ b[j]!;
          // bit 45 of the high word is byte 13 bit 5; bit 59 is byte 15 bit 3
          const allowed = j === 13 ? 0x20 : j === 15 ? 0x08 : 0;
          expect(diff & ~allowed, `byte ${j} of the instruction at ${i}`).toBe(0);
        }
      }
      expect(changedInstrs).toBe(p.changed);
      expect(cubin.length).toBe(p.cubin.length);
    });
  }

  it("refuses a kernel the cubin does not hold, and bytes that are not an ELF cubin", () => {
    expect(() => patchFfma(cubin, "no_such_kernel", "yield")).toThrow(/no code section for kernel no_such_kernel/);
    expect(() => patchFfma(new Uint8Array(100), k.name, "yield")).toThrow(/not a little-endian 64-bit ELF/);
  });
});
