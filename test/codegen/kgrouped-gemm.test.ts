// The K-grouped bf16 GEMM (kGrouped in compiler/codegen/cuda/gemm/config.ts: the MoE weight gradient,
// D[e·M + m][n] = Σ over expert e's 64-column blocks of A[m][p]·B[n][p], in one launch). On the CPU:
// the configurations and problems it refuses say why; the tile decode covers every (expert, m-block,
// n-block) once, expert-major, and the kernel's kg_tile_coords (run by g++) agrees with config.ts's.
// With nvcc: every candidate compiles for sm_90a with no warnings, spills or serialized wgmmas. With
// g++: whole kernels (producer and both consumer warpgroups, every tile of persistent CTAs) run on the
// CPU model of test/codegen/emu/hopper-gemm-emu.h and store exactly the f64 reference's bf16 values
// (small integer operands, so every sum is exact), with empty experts among experts of different K
// lengths, M and N not multiples of the tile, one CTA or several, and 2 stages up to the most that
// fit; the model fails a wait that never completes, so a ring the producer and the consumers step
// differently shows as a deadlock, not a hang. Mutated kernels show the model catches both.
import { describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CompileError } from "../../compiler/errors.ts";
import { emitFp8Gemm, type Fp8GemmKernel } from "../../compiler/codegen/cuda/gemm/emit.ts";
import {
  aTileBytes,
  bTileBytes,
  blockM,
  configName,
  configProblem,
  defaultKGroupedConfig,
  geometryOf,
  GROUP_M,
  kGroupedCandidates,
  kGroupedProblem,
  kGroupedTileCoords,
  stagingBytes,
  type Fp8GemmConfig,
} from "../../compiler/codegen/cuda/gemm/config.ts";
import { GXX, NVCC, gemmModel, noteIfNoGxx, noteIfNoNvcc } from "./gxx.ts";
import { compileGemmKernel } from "./gemm-ptxas.ts";

noteIfNoNvcc("kgrouped-gemm.test.ts");
noteIfNoGxx("kgrouped-gemm.test.ts");

describe("K-grouped bf16 GEMM configurations", () => {
  it("takes the interface's configuration, names it _kg, and defaults to 128 x 256 tiles where N is a multiple of 256", () => {
    for (const blockN of [128, 256]) {
      const c: Fp8GemmConfig = { ab: "bf16", consumers: 2, blockN, stages: 3, persistent: true, grouped: true, kGrouped: true, tmaStore: true };
      expect(configProblem(c)).toBeUndefined();
      expect(configName(c)).toBe(`sh_bf16_gemm_grouped_m128n${blockN}_s3_p_ts_kg`);
    }
    expect(configName(defaultKGroupedConfig(2816))).toBe("sh_bf16_gemm_grouped_m128n256_s3_p_ts_kg");
    expect(configName(defaultKGroupedConfig(2048))).toBe("sh_bf16_gemm_grouped_m128n256_s3_p_ts_kg");
    expect(configName(defaultKGroupedConfig(1408))).toBe("sh_bf16_gemm_grouped_m128n128_s6_p_ts_kg");
    const names = kGroupedCandidates().map(configName);
    expect(names).toEqual(["sh_bf16_gemm_grouped_m128n256_s3_p_ts_kg", "sh_bf16_gemm_grouped_m128n128_s6_p_ts_kg", "sh_bf16_gemm_grouped_m128n256_s4_p_kg", "sh_bf16_gemm_grouped_m128n128_s7_p_kg"]);
    // one CTA per tile works too (the same loop, run once)
    expect(configProblem({ ...defaultKGroupedConfig(2816), persistent: false })).toBeUndefined();
  });

  it("refuses what it is not, saying what to set", () => {
    const base = defaultKGroupedConfig(1408);
    // e4m3 only with row-scaled B (the Wgrad form), plain promotion and A's scales by TMA
    for (const bad of [{ ab: undefined }, { ab: "e4m3" as const }, { grouped: false }, { consumers: 1 as const }, { rowRuns: true }, { ab: "e4m3" as const, bRows: true, overlap: true }, { ab: "e4m3" as const, bRows: true, globalScales: true }])
      expect(configProblem({ ...base, ...bad, stages: 3 }), JSON.stringify(bad)).toMatch(/K-grouped kernels \(kGrouped\) are grouped kernels with two consumers.*set ab "bf16", or bRows without chunked, overlap or globalScales/);
    expect(configProblem({ ...base, ab: "e4m3", bRows: true, stages: 3 })).toBeUndefined();
    expect(configProblem({ ...base, multicast: true })).toMatch(/dense only/);
    expect(() => emitFp8Gemm({ ...base, grouped: false })).toThrow(CompileError);
    expect(configProblem({ ...base, blockN: 192, stages: 3 })).toBeUndefined();
    expect(configProblem({ ...base, blockN: 160, stages: 3 })).toMatch(/TMA-store epilogue .* multiple of 64/);
  });

  it("refuses problems it cannot run: no experts, K not in 64-column blocks, N not a multiple of 16", () => {
    const ok = { M: 2048, N: 2816, K: 64 * 800, experts: 64 };
    expect(kGroupedProblem(ok)).toBeUndefined();
    expect(kGroupedProblem({ ...ok, M: 1408, N: 2048 })).toBeUndefined();
    expect(kGroupedProblem({ ...ok, M: 200, N: 320, K: 64 })).toBeUndefined(); // M and N need not fill the tile
    expect(kGroupedProblem({ ...ok, experts: undefined })).toMatch(/experts >= 1/);
    expect(kGroupedProblem({ ...ok, experts: 0 })).toMatch(/experts >= 1/);
    expect(kGroupedProblem({ ...ok, K: 64 * 800 + 16 })).toMatch(/multiple of 64 .*pad each expert's columns/);
    expect(kGroupedProblem({ ...ok, K: 0 })).toMatch(/empty problem/);
    expect(kGroupedProblem({ ...ok, N: 2824 })).toMatch(/not a multiple of 16/);
    expect(kGroupedProblem({ ...ok, experts: 1 << 12, M: 1 << 12 })).toMatch(/overflow 32-bit/);
  });

  it("decodes tiles expert-major, the GROUP_M raster inside an expert, covering every tile once", () => {
    for (const [E, mBlocks, nBlocks] of [[1, 1, 1], [3, 2, 2], [5, 11, 8], [4, 16, 11], [2, GROUP_M + 3, 5], [7, 1, 9]] as const) {
      const seen = new Set<string>();
      let lastE = 0;
      for (let t = 0; t < E * mBlocks * nBlocks; t++) {
        const { e, mb, nb } = kGroupedTileCoords(t, mBlocks, nBlocks);
        expect(e >= lastE && e < E && mb >= 0 && mb < mBlocks && nb >= 0 && nb < nBlocks, `tile ${t} of ${E}x${mBlocks}x${nBlocks}: ${e},${mb},${nb}`).toBe(true);
        lastE = e;
        seen.add(`${e},${mb},${nb}`);
      }
      expect(seen.size).toBe(E * mBlocks * nBlocks);
    }
    const g = geometryOf(defaultKGroupedConfig(2816), { M: 2048, N: 2816, K: 51200, experts: 64 }, 132);
    expect(g).toMatchObject({ tiles: 64 * 16 * 11, grid: 132, mBlocks: 16, nBlocks: 11, block: 384 });
  });

  it("emits the expert's K range for the producer, the same count for the consumers, and D's rows at e·M through a 3-D map", () => {
    const k = emitFp8Gemm(defaultKGroupedConfig(2816));
    expect(k.source).toContain("int M, int N, int K, int E) {");
    expect(k.source).toContain("tiles = E * mBlocks * nBlocks;");
    expect(k.source).toContain("kg_tile_coords(tile, mBlocks, nBlocks, e, mb, nb);");
    expect(k.source).toContain("const int kb0 = blockExpert[2 * e], kbEnd = kb0 + blockExpert[2 * e + 1];");
    expect(k.source).toContain("const int KB = blockExpert[2 * e + 1];");
    expect(k.source).toContain("if (KB > 0) {");
    expect(k.source).toContain("&tmA, kb * 64, mb * BM, bars");
    expect(k.source).toContain("&tmB, kb * 64, nb * BN, bars"); // one B of N rows, not E x N
    expect(k.source).toContain("sh_tma_store_3d(&tmD, mine + b * 8192, n0 + 64 * b, mb * BM + wg * 64, e);");
    expect(k.source).not.toContain("sh_tma_store_2d(&tmD");
    const direct = emitFp8Gemm(kGroupedCandidates().find((c) => !c.tmaStore)!);
    expect(direct.source).toContain("if (m0 < M) *reinterpret_cast<sh_u32*>(d + (long long)(e * M + m0) * N + n)");
    expect(direct.source).not.toContain("sh_tma_store_3d(");
  });
});

describe.skipIf(!GXX)("K-grouped tile decode in the kernel", () => {
  it("kg_tile_coords (the emitted C++) names the tiles kGroupedTileCoords names", () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-kg-coords-"));
    const src = emitFp8Gemm(defaultKGroupedConfig(2816)).source;
    const helpers = src.slice(0, src.indexOf("// bf16 GEMM"));
    expect(helpers).toContain("kg_tile_coords");
    const shapes = [[3, 2, 2], [5, 11, 8], [2, GROUP_M + 3, 5], [7, 1, 9]];
    writeFileSync(
      join(dir, "coords.cpp"),
      `#include <algorithm>
#include <cstdio>
using std::min;
#define __device__
#define __forceinline__ inline
${helpers}
int main() {
  const int shapes[][3] = {${shapes.map((s) => `{${s.join(", ")}}`).join(", ")}};
  for (const auto& s : shapes)
    for (int t = 0; t < s[0] * s[1] * s[2]; ++t) {
      int e, mb, nb;
      kg_tile_coords(t, s[1], s[2], e, mb, nb);
      std::printf("%d,%d,%d\\n", e, mb, nb);
    }
}
`,
    );
    execFileSync(GXX!, ["-std=c++17", "-O1", "-o", join(dir, "coords"), join(dir, "coords.cpp")]);
    const got = execFileSync(join(dir, "coords"), { encoding: "utf8" }).trim().split("\n");
    const want = shapes.flatMap(([E, mB, nB]) => Array.from({ length: E! * mB! * nB! }, (_, t) => Object.values(kGroupedTileCoords(t, mB!, nB!)).join(",")));
    expect(got).toEqual(want);
  });
});

describe.skipIf(!NVCC)("K-grouped bf16 GEMM kernels compile for sm_90a", () => {
  const dir = mkdtempSync(join(tmpdir(), "shardts-kg-gemm-"));
  it("every candidate: no warnings, spills, stack or serialized wgmmas; bf16 k16 wgmmas kept in flight, 3-D TMA store", async () => {
    const kernels = kGroupedCandidates().map(emitFp8Gemm);
    expect(kernels.length).toBe(4);
    const rows: string[] = [];
    for (let i = 0; i < kernels.length; i += 2)
      await Promise.all(
        kernels.slice(i, i + 2).map(async (k) => {
          const { ptx, regs } = await compileGemmKernel(k, dir);
          expect(ptx, k.name).toContain(`wgmma.mma_async.sync.aligned.m64n${k.config.blockN}k16.f32.bf16.bf16`);
          expect(ptx, k.name).toContain("wgmma.wait_group.sync.aligned 1");
          expect(ptx, k.name).toContain("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes");
          expect(ptx, k.name).not.toMatch(/ld\.shared\.f32/);
          if (k.config.tmaStore) {
            expect(ptx, k.name).toContain("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group");
            expect(ptx, k.name).not.toMatch(/st\.global/);
          } else expect(ptx, k.name).toMatch(/st\.global/);
          rows.push(`${k.name.padEnd(44)} ${regs} regs, ${k.smemBytes} B smem`);
        }),
      );
    console.log(rows.sort().join("\n"));
  }, 600_000);
});

/** A program that runs kernel `k` on the CPU model for the problem in argv and checks D against the exact reference. */
function emulationHarness(k: Fp8GemmKernel): string {
  const c = k.config, S = c.stages;
  const bars = S * aTileBytes(c) + S * bTileBytes(c) + stagingBytes(c);
  const decl = "extern __shared__ unsigned char smem_raw[];";
  expect(k.source).toContain(decl);
  const source = k.source.replace(decl, "unsigned char* smem_raw = emu_smem;");
  return `#include "hopper-gemm-emu.h"
#define SHARDTS_WGMMA_BF16_N${c.blockN}
EMU_WGMMA_BF16(${c.blockN})
${source}
// argv: M N grid waitSeconds blocks-per-expert...; P = the experts' blocks + 1 unused block
int main(int argc, char** argv) {
  const int M = std::atoi(argv[1]), N = std::atoi(argv[2]), grid = std::atoi(argv[3]), E = argc - 5;
  emu_wait_s = std::atof(argv[4]);
  std::vector<int> table(2 * E);
  int P = 64;
  for (int e = 0; e < E; ++e) {
    table[2 * e] = P / 64;  // block 0 is the unused one: the experts' blocks start at 1
    table[2 * e + 1] = std::atoi(argv[5 + e]);
    P += 64 * table[2 * e + 1];
  }
  // operands in {-2, ..., 2}: every product and sum is exact in f32, so D is the reference's bf16 exactly
  std::vector<unsigned short> A((size_t)M * P), B((size_t)N * P);
  unsigned s = 12345;
  auto draw = [&] { s = s * 1664525u + 1013904223u; return emu_bf16((float)((int)(s >> 29) % 5 - 2)); };
  for (auto& x : A) x = draw();
  for (auto& x : B) x = draw();
  const size_t dSize = (size_t)E * M * N, guard = 4096;
  std::vector<unsigned short> D(dSize + guard, 0x7fc0);  // NaN: anything not stored shows
  const EmuMap ma{(unsigned char*)A.data(), 2, 2, {P, M, 1}, {2, 2LL * P, 0}, {64, ${blockM(c)}, 1}};
  const EmuMap mb{(unsigned char*)B.data(), 2, 2, {P, N, 1}, {2, 2LL * P, 0}, {64, ${c.blockN}, 1}};
  const EmuMap md{(unsigned char*)D.data(), 3, 2, {N, M, E}, {2, 2LL * N, 2LL * M * N}, {64, 64, 1}};
  const sh_tensor_map tA = emu_tensor_map(&ma), tB = emu_tensor_map(&mb), tD = emu_tensor_map(&md), none{};
  std::thread([] { std::this_thread::sleep_for(std::chrono::seconds(240)); std::printf("FAIL: the kernel hung outside any mbarrier wait\\n"); std::fflush(stdout); std::_Exit(2); }).detach();
  emu_gemm_launch(grid, ${k.threads}, [&] {
    ${k.name}(tA, tB, none, tD, none, nullptr, nullptr, D.data(), table.data(), M, N, P, E);
  }, [&] {
    // every block the producer loaded into a stage was consumed and released: the ring ends balanced
    for (int st = 0; st < ${S}; ++st) {
      const unsigned full = emu_bars[${bars} + 8 * st].phase, empty = emu_bars[${bars} + 8 * (${S} + st)].phase;
      if (full != empty) { std::printf("FAIL block %u: stage %d filled %u times, released %u times\\n", blockIdx.x, st, full, empty); return std::exit(1); }
    }
  });
  for (int e = 0; e < E; ++e)
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        double ref = 0;
        for (int p = 64 * table[2 * e]; p < 64 * (table[2 * e] + table[2 * e + 1]); ++p) ref += (double)emu_f32(A[(size_t)m * P + p]) * emu_f32(B[(size_t)n * P + p]);
        const unsigned short got = D[((size_t)e * M + m) * N + n], want = emu_bf16((float)ref);
        if (got != want) { std::printf("FAIL: D[expert %d, row %d, col %d] = %g (bits %04x), expected %g\\n", e, m, n, emu_f32(got), got, emu_f32(want)); return 1; }
      }
  for (size_t i = dSize; i < D.size(); ++i)
    if (D[i] != 0x7fc0) { std::printf("FAIL: D written %zu elements past its end\\n", i - dSize); return 1; }
  std::printf("ok\\n");
  return 0;
}
`;
}

describe.skipIf(!GXX)("K-grouped kernels run whole on a CPU model of TMA / mbarrier / wgmma", () => {
  const { build, output } = gemmModel(mkdtempSync(join(tmpdir(), "shardts-kg-emu-")), (k: Fp8GemmKernel) => emulationHarness(k));
  // [M, N, grid, blocks per expert...]: empty experts between, before and after ones of different K
  // lengths; M and N with partial last tiles; one CTA taking every tile, or several striding over them
  const problems: number[][] = [
    [200, 320, 3, 0, 2, 0, 3, 1, 0, 5],
    [200, 320, 1, 1, 0, 4, 0, 0, 2],
    [64, 176, 2, 0, 0, 0],
  ];
  const stress = (c: Fp8GemmConfig): Fp8GemmConfig => ({ ...c, stages: 2 });
  const configs: [string, Fp8GemmConfig][] = [
    ["default n256", defaultKGroupedConfig(2816)],
    ["default n128", defaultKGroupedConfig(1408)],
    ["n128, 2 stages", stress(defaultKGroupedConfig(1408))],
    ["plain epilogue n128", kGroupedCandidates().find((c) => !c.tmaStore && c.blockN === 128)!],
  ];
  for (const [what, c] of configs)
    it(`${what} (${configName(c)}): D equals the reference on every problem, the ring ends balanced`, async () => {
      const exe = await build(emitFp8Gemm(c), configName(c));
      for (const p of problems) expect((await output(exe, [p[0]!, p[1]!, p[2]!, 20, ...p.slice(3)])).trim(), p.join(" ")).toBe("ok");
    }, 600_000);

  it("catches broken kernels: an empty expert's stage waited for, wrong blocks loaded, a stage or the staging buffer reused early, D's expert dropped", async () => {
    const good = emitFp8Gemm(defaultKGroupedConfig(1408));
    const mutants: [string, string, RegExp][] = [
      ["if (KB > 0) {", "{", /FAIL.*(deadlock|filled|pending wgmma)/],
      ["const int kb0 = blockExpert[2 * e],", "const int kb0 = blockExpert[2 * e] - 1,", /FAIL: D\[expert/],
      // the previous block's stage released while its wgmmas may still read it
      ["sh_wgmma_wait<1>();", "", /FAIL.*(pending wgmma|D\[expert)/],
      // the staging buffer rewritten before the previous tile's store has read it
      ["if (threadIdx.x % 128 == 0) sh_bulk_wait_read0();", "", /FAIL: D\[expert/],
      ["mb * BM + wg * 64, e);", "mb * BM + wg * 64, 0);", /FAIL: D\[expert/],
    ];
    for (const [i, [from, to, why]] of mutants.entries()) {
      expect(good.source).toContain(from);
      const exe = await build({ ...good, source: good.source.replace(from, to) }, `mutant${i}`);
      expect(await output(exe, [200, 320, 2, 5, 0, 2, 0, 3, 1])).toMatch(why);
    }
  }, 600_000);
});
