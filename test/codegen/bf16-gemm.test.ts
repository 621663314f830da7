// The bf16 variant of the generated Hopper GEMM (ab: "bf16" in compiler/codegen/cuda/gemm/config.ts):
// the e4m3 kernels' sources are byte-identical to before the option existed (a hash over every
// candidate), the scale-only features are refused with a CompileError that says why, and every bf16
// candidate (dense and grouped) compiles for sm_90a with the machine's nvcc: no warnings, no spills,
// no stack, no serialized wgmmas; the PTX has m64nNk16 bf16 wgmmas, one group kept in flight
// (wait_group 1), A and B by TMA and no scale reads. Where cuobjdump runs, the SASS has HGMMA and no
// local memory. The nvcc parts skip, saying so, without nvcc.
import { describe, expect, it } from "vitest";
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CompileError } from "../../compiler/errors.ts";
import { emitFp8Gemm } from "../../compiler/codegen/cuda/gemm/emit.ts";
import { bf16GemmCandidates, configName, configProblem, defaultBf16GemmConfig, gemmCandidates, kBlock, rowScaledCandidates, type Fp8GemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { NVCC, noteIfNoNvcc } from "./gxx.ts";
import { compileGemmKernel } from "./gemm-ptxas.ts";

noteIfNoNvcc("bf16-gemm.test.ts");

/** cuobjdump next to nvcc or on PATH, or undefined (the SASS check skips). */
const CUOBJDUMP: string | undefined = (() => {
  for (const c of ["cuobjdump", "/usr/local/cuda/bin/cuobjdump"]) {
    try {
      execFileSync(c, ["--version"], { stdio: "ignore" });
      return c;
    } catch {
      // not this one
    }
  }
  return undefined;
})();

describe("bf16 GEMM configurations", () => {
  it("leaves every e4m3 kernel's source byte-identical (hash of all candidates, and a globalScales one, from before ab existed)", () => {
    // the candidates that existed then (the chunked 128 x 256 ones and the 192-wide row-scaled one came later and are their own kernels)
    const all = [...gemmCandidates(false), ...gemmCandidates(true), ...rowScaledCandidates()].filter((c) => !c.chunked && !(c.bRows && c.blockN === 192));
    const h = createHash("sha256");
    for (const c of all) h.update(emitFp8Gemm(c).source);
    expect(all.length).toBe(43);
    expect(h.digest("hex")).toBe("c6d40ca35caf8be5a7f80cc6f2bd722c863382f8db2a30e91a17955ab35985e7");
    const gs = { ...gemmCandidates(false).find((c) => c.persistent && c.consumers === 2 && c.blockN === 128)!, globalScales: true };
    expect(createHash("sha256").update(emitFp8Gemm(gs).source).digest("hex")).toBe("5278ab7e0cf771b9b56b835fc07bdcebe8d00ab653251d13d3f63cd29c132454");
    // ab: "e4m3" spelled out is the default
    expect(emitFp8Gemm({ ...all[0]!, ab: "e4m3" }).source).toBe(emitFp8Gemm(all[0]!).source);
  });

  it("leaves every bf16 kernel's source byte-identical since the K-grouped variant (kGrouped) came (hash of the candidates and the row-run kernels)", () => {
    const all = [...bf16GemmCandidates(false), ...bf16GemmCandidates(true)];
    for (const N of [1408, 2816]) all.push({ ...defaultBf16GemmConfig(true, N), rowRuns: true }, { ...defaultBf16GemmConfig(true, N), tmaStore: undefined, rowRuns: true });
    const h = createHash("sha256");
    for (const c of all) h.update(emitFp8Gemm(c).source);
    expect(all.length).toBe(23);
    expect(h.digest("hex")).toBe("a6c3503620f11d1631402d277783ce03a3d03970624ba7f39ce7e7ed8407e839");
  });

  it("refuses the scale-only features for bf16, saying why and what to set", () => {
    const base: Fp8GemmConfig = { ab: "bf16", consumers: 2, blockN: 128, stages: 4, persistent: true, grouped: false };
    expect(configProblem(base)).toBeUndefined();
    for (const [extra, why] of [
      [{ overlap: true }, /overlapped promotion .* set overlap off/],
      [{ bRows: true }, /row-scaled B .* set bRows off/],
      [{ globalScales: true }, /globalScales .* set globalScales off/],
    ] as const) {
      expect(() => emitFp8Gemm({ ...base, ...extra })).toThrow(CompileError);
      expect(() => emitFp8Gemm({ ...base, ...extra })).toThrow(why);
    }
    // bf16 has one fragment, so n256 fits; e4m3 stays capped at 192
    expect(configProblem({ ...base, blockN: 256, stages: 3 })).toBeUndefined();
    expect(configProblem({ ...base, ab: undefined, blockN: 256, stages: 3 })).toMatch(/from 16 to 192/);
    expect(configProblem({ ...base, blockN: 272 })).toMatch(/from 16 to 256/);
    expect(configProblem({ ...base, grouped: true, multicast: true })).toMatch(/dense only/);
    expect(kBlock(base)).toBe(64);
  });

  it("defaults to 128 x 256 tiles where N is a multiple of 256 and 128 x 128 otherwise", () => {
    expect(configName(defaultBf16GemmConfig(false))).toMatch(/_m128n256_s\d+_p_ts$/);
    expect(configName(defaultBf16GemmConfig(true, 2816))).toMatch(/_grouped_m128n256_s\d+_p_ts$/);
    expect(configName(defaultBf16GemmConfig(true, 1408))).toMatch(/_grouped_m128n128_s\d+_p_ts$/);
    for (const N of [1408, 2048, 2816]) expect(configProblem(defaultBf16GemmConfig(true, N))).toBeUndefined();
  });

  it("emits no scale loads and steps K by 64 elements", () => {
    const k = emitFp8Gemm(defaultBf16GemmConfig(true, 1408));
    expect(k.name).toMatch(/^sh_bf16_gemm_grouped_m128n128_s\d+_p_ts$/);
    expect(k.source).toContain("SA_BYTES = 0, SB_BYTES = 0");
    expect(k.source).toContain("const int KB = (K + 63) / 64");
    expect(k.source).toContain("kb * 64, mb * BM");
    expect(k.source).not.toContain("tmSA, mb * BM");
    expect(k.source).not.toMatch(/sbTile|tmp\[|t0\[/);
    expect(k.source).toContain("sh_wgmma_bf16_m64n128(acc, da + 2 * k, db + 2 * k, 1)");
  });
});

describe("bf16 GEMM over row runs (segment_dot's kernel: rows read and written where they are)", () => {
  const rr = (N: number) => ({ ...defaultBf16GemmConfig(true, N), rowRuns: true });
  it("reads each block's expert, A row, D row and valid rows from the table; full blocks store by TMA, a run's last block directly", () => {
    const k = emitFp8Gemm(rr(1408));
    expect(k.name).toMatch(/^sh_bf16_gemm_grouped_m128n128_s\d+_p_ts_rr$/);
    expect(k.source).toContain("const int e = blockExpert[4 * mb];");
    expect(k.source).toContain("&tmA, kb * 64, blockExpert[4 * mb + 1], bars");
    expect(k.source).toContain("const int dRow = blockExpert[4 * mb + 2], rows = blockExpert[4 * mb + 3];");
    expect(k.source).toContain("if (rows == BM) {");
    expect(k.source).toContain("n0 + 64 * b, dRow + wg * 64);");
    expect(k.source).toContain("if (m0 < rows) *reinterpret_cast<sh_u32*>(d + (long long)(dRow + m0) * N + n)");
    // the padded kernels are unchanged
    expect(emitFp8Gemm(defaultBf16GemmConfig(true, 1408)).source).toContain("blockExpert[(mb * 128) / 128]");
  });
  it("is refused where it cannot work", () => {
    const base = rr(1408);
    // e4m3 takes row runs too (A's scales by TMA in the blocks' layout), but not globalScales or deferStore
    expect(configProblem({ ...base, ab: undefined, stages: 4 })).toBeUndefined();
    expect(configProblem({ ...base, ab: undefined, stages: 4, globalScales: true })).toMatch(/row runs are for grouped kernels with two consumers.*globalScales/);
    expect(configProblem({ ...base, grouped: false })).toMatch(/row runs are for grouped kernels with two consumers/);
    expect(configProblem({ ...base, consumers: 1 })).toMatch(/row runs are for grouped kernels with two consumers/);
    expect(configProblem(base)).toBeUndefined();
    expect(configProblem(rr(2816))).toBeUndefined();
  });
});

describe.skipIf(!NVCC)("bf16 GEMM kernels compile for sm_90a", () => {
  const dir = mkdtempSync(join(tmpdir(), "shardts-bf16-gemm-"));

  it("the row-run kernels (N 1408 and 2816 defaults, and a plain-epilogue one): no spills; TMA and direct stores", async () => {
    const kernels = [{ ...defaultBf16GemmConfig(true, 1408), rowRuns: true }, { ...defaultBf16GemmConfig(true, 2816), rowRuns: true }, { ...defaultBf16GemmConfig(true, 1408), tmaStore: undefined, rowRuns: true }].map(emitFp8Gemm);
    await Promise.all(
      kernels.map(async (k) => {
        const { ptx } = await compileGemmKernel(k, dir);
        expect(ptx, k.name).toContain(`wgmma.mma_async.sync.aligned.m64n${k.config.blockN}k16.f32.bf16.bf16`);
        expect(ptx, k.name).toMatch(/st\.global/);
        if (k.config.tmaStore) expect(ptx, k.name).toContain("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group");
      }),
    );
  }, 300_000);

  for (const grouped of [false, true]) {
    it(`every ${grouped ? "grouped" : "dense"} candidate: no warnings, spills, stack or serialization; bf16 wgmma k16 + TMA, no scales`, async () => {
      const kernels = bf16GemmCandidates(grouped).map(emitFp8Gemm);
      expect(kernels.length).toBeGreaterThanOrEqual(7);
      expect(kernels.filter((k) => k.config.multicast).length, "multicast candidates").toBe(grouped ? 0 : 1);
      expect(kernels.some((k) => k.config.blockN === 256), "an n256 candidate").toBe(true);
      const rows: string[] = [];
      for (let i = 0; i < kernels.length; i += 2) {
        await Promise.all(
          kernels.slice(i, i + 2).map(async (k) => {
            const { cubin, ptx, regs } = await compileGemmKernel(k, dir);
            expect(ptx, k.name).toContain(`wgmma.mma_async.sync.aligned.m64n${k.config.blockN}k16.f32.bf16.bf16`);
            expect(ptx, k.name).not.toContain(".e4m3");
            expect(ptx, k.name).toContain("wgmma.wait_group.sync.aligned 1");
            expect(ptx, k.name).toContain("wgmma.wait_group.sync.aligned 0");
            expect(ptx, k.name).toMatch(/mbarrier\.try_wait\.parity/);
            expect(ptx, k.name).toContain("setmaxnreg.dec.sync.aligned.u32 40");
            // A and B by TMA (B multicast in clusters); no scale is read from shared or global memory
            expect(ptx, k.name).toContain("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes");
            expect(ptx, k.name).not.toMatch(/ld\.shared\.f32|ld\.global(\.nc)?\.f32/);
            if (k.config.tmaStore) expect(ptx, k.name).toContain("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group");
            else expect(ptx, k.name).toMatch(/st\.global/);
            if (CUOBJDUMP) {
              const sass = execFileSync(CUOBJDUMP, ["--dump-sass", cubin], { encoding: "utf8", maxBuffer: 64 << 20 });
              expect(sass, k.name).toMatch(/HGMMA/);
              expect(sass, k.name).not.toMatch(/\bQGMMA\b|\bLDL\b|\bSTL\b/);
            }
            rows.push(`${k.name.padEnd(40)} ${regs} regs, ${k.smemBytes} B smem`);
          }),
        );
      }
      if (!CUOBJDUMP) rows.push("(no cuobjdump here: SASS not checked)");
      console.log(rows.sort().join("\n"));
    }, 300_000);
  }
});
