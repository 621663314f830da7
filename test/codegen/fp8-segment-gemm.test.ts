// The FP8 GEMM kernels the routed experts run on device-side counts (runtime/cuda/fp8-segment-device.ts):
// the grouped e4m3 kernel over row runs (config rowRuns: A's codes and D's rows where they are, A's
// scales by block) in both of the executor's grouped defaults (128 x 256 chunked, 128 x 128 overlapped),
// and the K-grouped row-scaled kernel (kGrouped with bRows: dW of every expert in one launch). On the CPU:
// the configurations they take and refuse, with reasons, and their names. With nvcc: each compiles for
// sm_90a with no warnings, spills, stack or serialized wgmmas, e4m3 wgmmas, A and the scales by TMA,
// and reads its table as it should (the row run's A row and D row; an expert's first block and count).
// Their numerics run on the GPU (bench/gpu/cuda-ops-check.ts "device counts" cases against the CPU).
import { describe, expect, it } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { emitFp8Gemm } from "../../compiler/codegen/cuda/gemm/emit.ts";
import { configName, configProblem, defaultGemmConfig, defaultKGroupedRowScaledConfig, defaultRowScaledConfig, kGroupedProblem, type Fp8GemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { NVCC, noteIfNoNvcc } from "./gxx.ts";
import { compileGemmKernel } from "./gemm-ptxas.ts";

noteIfNoNvcc("fp8-segment-gemm.test.ts");

const rowRun = (wide: boolean): Fp8GemmConfig => ({ ...defaultGemmConfig(true, wide ? undefined : { M: 128, N: 128 }), rowRuns: true });

describe("FP8 GEMM configurations for device-side counts", () => {
  it("row runs on the grouped e4m3 defaults, and the K-grouped row-scaled kernel, each with its name", () => {
    expect(configProblem(rowRun(true))).toBeUndefined();
    expect(configProblem(rowRun(false))).toBeUndefined();
    expect(configName(rowRun(true))).toMatch(/^sh_fp8_gemm_grouped_m128n256_s3_p_ts_ch_g16_rr_sm_pn$/);
    expect(configName(rowRun(false))).toMatch(/^sh_fp8_gemm_grouped_m128n128_s\d+_p_ov_ts_rr$/);
    const kg = defaultKGroupedRowScaledConfig();
    expect(configProblem(kg)).toBeUndefined();
    expect(configName(kg)).toBe(configName(defaultRowScaledConfig()).replace("_dense_", "_grouped_") + "_kg");
  });

  it("refuses what it cannot do, saying what", () => {
    expect(configProblem({ ...rowRun(true), deferStore: true })).toMatch(/row runs .* without multicast, globalScales or deferStore/);
    expect(configProblem({ ...rowRun(false), globalScales: true })).toMatch(/row runs .*globalScales/);
    const kg = defaultKGroupedRowScaledConfig();
    expect(configProblem({ ...kg, bRows: undefined })).toMatch(/K-grouped kernels .* e4m3 with row-scaled B/);
    expect(configProblem({ ...kg, overlap: true })).toMatch(/K-grouped kernels .*plain promotion/);
    expect(configProblem({ ...kg, kGrouped: undefined })).toMatch(/row-scaled B \(the Wgrad form\) is dense or K-grouped/);
    // K in 128-column blocks for e4m3, and M (A's scale rows) a multiple of 4
    expect(kGroupedProblem({ M: 2048, N: 1408, K: 128 * 400, experts: 32 }, 128)).toBeUndefined();
    expect(kGroupedProblem({ M: 2048, N: 1408, K: 64 * 801, experts: 32 }, 128)).toMatch(/multiple of 128/);
    expect(kGroupedProblem({ M: 2050, N: 1408, K: 128 * 400, experts: 32 }, 128)).toMatch(/M = 2050.*16-byte strides/);
  });
});

describe.skipIf(!NVCC)("FP8 GEMM kernels for device-side counts compile for sm_90a", () => {
  const dir = mkdtempSync(join(tmpdir(), "shardts-fp8-seg-gemm-"));

  it("row runs (chunked and overlapped): e4m3 wgmmas, A at its run's row, D at its run's row (TMA for full blocks, direct stores for the rest)", async () => {
    await Promise.all(
      [rowRun(true), rowRun(false)].map(async (c) => {
        const k = emitFp8Gemm(c), { ptx } = await compileGemmKernel(k, dir);
        expect(ptx, k.name).toMatch(/wgmma\.mma_async\.sync\.aligned\.m64n128k32\.f32\.e4m3\.e4m3/);
        expect(k.source, k.name).toContain("sh_tma_load_2d(tilesA + s * A_BYTES, &tmA, kb * 128, blockExpert[4 * mb + 1], bars + 8 * s)");
        // A's scales by TMA at the block's own rows (the blocks' layout), not at the run's row
        expect(k.source, k.name).toContain("sh_tma_load_2d(sas + s * SA_BYTES, &tmSA, mb * BM, kb, bars + 8 * s)");
        expect(k.source, k.name).toContain("const int dRow = blockExpert[4 * mb + 2], rows = blockExpert[4 * mb + 3];");
        expect(ptx, k.name).toContain("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group");
        expect(ptx, k.name).toMatch(/st\.global/);
      }),
    );
  }, 300_000);

  it("K-grouped row-scaled: e4m3 wgmmas over each expert's blocks, both row scales by TMA, D by a 3-D map", async () => {
    const k = emitFp8Gemm(defaultKGroupedRowScaledConfig()), { ptx } = await compileGemmKernel(k, dir);
    expect(ptx).toMatch(/wgmma\.mma_async\.sync\.aligned\.m64n128k32\.f32\.e4m3\.e4m3/);
    expect(k.source).toContain("const int kb0 = blockExpert[2 * e], kbEnd = kb0 + blockExpert[2 * e + 1];");
    expect(k.source).toContain("const int KB = blockExpert[2 * e + 1];");
    expect(k.source).toContain("sh_tma_load_2d(sbs + s * SB_BYTES, &tmSB, nb * BN, kb, bars + 8 * s)");
    expect(k.source).toContain("if (KB > 0) {");
    expect(ptx).toContain("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group");
  }, 300_000);
});
