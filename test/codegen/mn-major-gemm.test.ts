// The bf16 GEMM reading B MN-major (bMnMajor in compiler/codegen/cuda/gemm/config.ts: B [E][K][N] as
// segment_dot's weights are, no transpose first). On the CPU: the configurations it takes and refuses;
// the emitted loads (blockN/64 3-D boxes of 64 N columns x 64 K rows, 8 KiB apart, those wholly past N
// not loaded), B's descriptor and
// its k16 start-address steps, the transposed-B wgmma. With nvcc: every candidate compiles for sm_90a with
// no warnings, spills or serialized wgmmas, the PTX has the trans-b immediate, and the SASS's HGMMAs are
// printed for the record. With g++: whole M-grouped row-run kernels (and dense ones) run on the CPU model
// of test/codegen/emu/hopper-gemm-emu.h, which decodes the descriptors from their bits (leading and
// stride byte offsets, K-major or MN-major, the 128-byte swizzle) - first the K-major kernels that pass on
// the GPU, then the MN-major ones on the same problems - and D must equal the f64 reference's bf16
// exactly (small integer operands: every sum is exact). Mutants (a wrong LBO, SBO or k step, B read
// K-major) must fail there.
import { describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { emitFp8Gemm, type Fp8GemmKernel } from "../../compiler/codegen/cuda/gemm/emit.ts";
import { aTileBytes, bTileBytes, bf16MnMajorCandidates, blockM, configName, configProblem, defaultBf16GemmConfig, stagingBytes, type Fp8GemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { MN_BOX_BYTES, MN_K16_STEP } from "../../compiler/codegen/cuda/gemm/ptx.ts";
import { EMU, GXX, NVCC, gemmModel, noteIfNoGxx, noteIfNoNvcc } from "./gxx.ts";
import { compileGemmKernel } from "./gemm-ptxas.ts";

noteIfNoNvcc("mn-major-gemm.test.ts");
noteIfNoGxx("mn-major-gemm.test.ts");
/** cuobjdump beside nvcc or on PATH, for the SASS listing (absent on some CPU machines: then skipped, said). */
const CUOBJDUMP: string | undefined = (() => {
  for (const c of [NVCC && join(NVCC, "..", "cuobjdump"), "cuobjdump", "/usr/local/cuda/bin/cuobjdump"])
    if (c)
      try {
        execFileSync(c, ["--version"], { stdio: "ignore" });
        return c;
      } catch {
        // not this one
      }
  return undefined;
})();

/** The row-run kernel segment_dot launches, with B MN-major or K-major. */
const rowRun = (N: number, bMnMajor: boolean): Fp8GemmConfig => ({ ...defaultBf16GemmConfig(true, N), rowRuns: true, ...(bMnMajor ? { bMnMajor } : {}) });

describe("MN-major B bf16 GEMM configurations", () => {
  it("names it _bn and takes it with row runs, grouped or dense, blockN a multiple of 64", () => {
    expect(configName(rowRun(2816, true))).toBe("sh_bf16_gemm_grouped_m128n256_s3_p_ts_rr_bn");
    expect(configName(rowRun(1408, true))).toBe("sh_bf16_gemm_grouped_m128n128_s6_p_ts_rr_bn");
    expect(configProblem({ ...defaultBf16GemmConfig(false, 4096), bMnMajor: true })).toBeUndefined();
    const names = bf16MnMajorCandidates(true).map(configName);
    expect(names).toEqual(["sh_bf16_gemm_grouped_m128n128_s6_p_ts_bn", "sh_bf16_gemm_grouped_m128n256_s3_p_ts_bn", "sh_bf16_gemm_grouped_m128n192_s4_p_ts_bn", "sh_bf16_gemm_grouped_m128n128_s7_p_bn", "sh_bf16_gemm_grouped_m128n256_s4_p_bn"]);
    expect(bf16MnMajorCandidates(false).length).toBe(5);
  });

  it("refuses e4m3, K-grouped, multicast and blockN not a multiple of 64, saying why", () => {
    const base = { ...rowRun(1408, true), stages: 3 };
    expect(configProblem({ ...base, ab: undefined, rowRuns: false })).toMatch(/bMnMajor.*bf16/);
    expect(configProblem({ ...base, rowRuns: false, kGrouped: true })).toMatch(/K-grouped|kGrouped/);
    expect(configProblem({ ...base, grouped: false, rowRuns: false, multicast: true })).toMatch(/multicast/);
    expect(configProblem({ ...base, blockN: 176, tmaStore: false })).toMatch(/multiple of 64/);
  });

  it("loads blockN/64 boxes of B [E][K][N] a stage, 8 KiB apart, and steps B's MN-major descriptor 16 rows a k16", () => {
    for (const N of [2816, 1408]) {
      const k = emitFp8Gemm(rowRun(N, true)), BN = k.config.blockN;
      expect(bTileBytes(k.config)).toBe((BN / 64) * MN_BOX_BYTES); // the stage's bytes: the boxes the producer loads
      expect(k.source).toContain(`const int bBoxes = min(${BN / 64}, (N - nb * BN + 63) / 64);`);
      expect(k.source).toContain("sh_mbar_arrive_expect_tx(bars + 8 * s, A_BYTES + bBoxes * 8192);");
      expect(k.source).toContain(`for (int j = 0; j < bBoxes; ++j) sh_tma_load_3d(tilesB + s * B_BYTES + j * 8192, &tmB, nb * BN + 64 * j, kb * 64, e, bars + 8 * s);`);
      expect(k.source).toContain("db = sh_wgmma_desc_mn(tilesB + s * B_BYTES);");
      expect(k.source).toContain(`sh_wgmma_bf16_tb_m64n${BN}(acc, da + 2 * k, db + 128 * k, k);`);
      expect(k.source).toContain(`p, 1, 1, 0, 1;`); // imm-trans-b = 1
      expect(k.source).not.toContain("sh_tma_load_2d(tilesB");
      expect(k.source).toContain("((sh_u64)(8192 >> 4) << 16) | ((sh_u64)(1024 >> 4) << 32) | ((sh_u64)1 << 62)");
    }
    // a k16 step is 16 K rows of 128 bytes: the start addresses of a stage's four steps, in bytes
    expect([0, 1, 2, 3].map((k) => (k * MN_K16_STEP) << 4)).toEqual([0, 2048, 4096, 6144]);
    // the model's K-major descriptor (GEMM_PTX is skipped under the model) is the kernel's, character for character
    const model = readFileSync(join(EMU, "hopper-gemm-emu.h"), "utf8"), at = model.indexOf("SH_DEV sh_u64 sh_wgmma_desc(sh_u32 smem) {");
    expect(at).toBeGreaterThan(0);
    expect(emitFp8Gemm(rowRun(2816, true)).source).toContain(model.slice(at, model.indexOf("}", at) + 1));
    // the K-major kernel is untouched
    const km = emitFp8Gemm(rowRun(1408, false));
    expect(km.source).not.toMatch(/desc_mn|_tb_|load_3d/);
  });
});

describe.skipIf(!NVCC)("MN-major B kernels compile for sm_90a", () => {
  const dir = mkdtempSync(join(tmpdir(), "shardts-bn-gemm-"));
  it("every candidate and the row-run defaults: no warnings, spills or serialized wgmmas; trans-b wgmma, 3-D B loads", async () => {
    const kernels = [rowRun(2816, true), rowRun(1408, true), ...bf16MnMajorCandidates(true), ...bf16MnMajorCandidates(false)].map(emitFp8Gemm);
    const rows: string[] = [];
    for (let i = 0; i < kernels.length; i += 4)
      await Promise.all(
        kernels.slice(i, i + 4).map(async (k) => {
          const { ptx, regs, cubin } = await compileGemmKernel(k, dir);
          expect(ptx, k.name).toMatch(new RegExp(`wgmma\\.mma_async\\.sync\\.aligned\\.m64n${k.config.blockN}k16\\.f32\\.bf16\\.bf16 [^;]*, p, 1, 1, 0, 1;`));
          expect(ptx, k.name).not.toMatch(/, p, 1, 1, 0, 0;/);
          expect(ptx, k.name).toContain("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes");
          expect(ptx, k.name).toContain("wgmma.wait_group.sync.aligned 1");
          let hgmma = ["(no cuobjdump: SASS not listed)"];
          if (CUOBJDUMP) {
            const sass = execFileSync(CUOBJDUMP, ["-sass", cubin], { encoding: "utf8", maxBuffer: 64 << 20 });
            hgmma = [...new Set(sass.match(/HGMMA\.[^ ]+ [^;]*/g)?.map((l) => l.replace(/R\d+|UR\d+|gdesc\[[^\]]*\]/g, "_")) ?? [])];
            expect(hgmma.length, k.name).toBeGreaterThan(0);
          }
          rows.push(`${k.name.padEnd(48)} ${regs} regs, ${k.smemBytes} B smem; SASS ${hgmma.slice(0, 2).join(" | ")}`);
        }),
      );
    console.log(rows.sort().join("\n"));
  }, 600_000);
});

/**
 * A program that runs `k` (grouped over row runs, or dense) on the CPU model: argv K N E grid wait gap
 * then (expert, rows) per segment; A's rows are the segments' in order, `gap` unrouted rows before each;
 * D's rows are A's. Dense (E = 1): one segment of M rows, gap 0. B is [E][K][N] (MN-major kernels) or
 * [E][N][K], the same values W[e][k][n] either way.
 */
function harness(k: Fp8GemmKernel): string {
  const c = k.config, S = c.stages, mn = c.bMnMajor === true;
  const bars = S * aTileBytes(c) + S * bTileBytes(c) + stagingBytes(c);
  const decl = "extern __shared__ unsigned char smem_raw[];";
  expect(k.source).toContain(decl);
  const source = k.source.replace(decl, "unsigned char* smem_raw = emu_smem;");
  const args = c.grouped ? "D.data(), table.data(), M, N, K" : "D.data(), M, N, K";
  return `#include "hopper-gemm-emu.h"
#define SHARDTS_WGMMA_BF16${mn ? "_TB" : ""}_N${c.blockN}
EMU_WGMMA_BF16${mn ? "_TB" : ""}(${c.blockN})
${source}
int main(int argc, char** argv) {
  const int K = std::atoi(argv[1]), N = std::atoi(argv[2]), E = std::atoi(argv[3]), grid = std::atoi(argv[4]), gap = std::atoi(argv[6]);
  emu_wait_s = std::atof(argv[5]);
  std::vector<int> sg, sm, first;  // segments: expert, rows, A's first row
  int rows = 0;
  for (int i = 7; i + 1 < argc; i += 2) {
    rows += gap;
    sg.push_back(std::atoi(argv[i]));
    sm.push_back(std::atoi(argv[i + 1]));
    first.push_back(rows);
    rows += sm.back();
  }
  rows += gap;
  // the row-run table (bf16-segment.ts rowRunTable): expert-major, 128-row blocks of each segment
  std::vector<int> table;
  for (int e = 0; e < E; ++e)
    for (size_t i = 0; i < sg.size(); ++i)
      if (sg[i] == e)
        for (int r = 0; r < sm[i]; r += 128) table.insert(table.end(), {e, first[i] + r, first[i] + r, std::min(128, sm[i] - r)});
  const int M = ${c.grouped ? "(int)table.size() / 4 * 128" : "rows"};
  std::vector<unsigned short> A((size_t)rows * K), W((size_t)E * K * N), B(W.size());
  unsigned s = 12345;
  auto draw = [&] { s = s * 1664525u + 1013904223u; return emu_bf16((float)((int)(s >> 29) % 5 - 2)); };
  for (auto& x : A) x = draw();
  for (auto& x : W) x = draw();  // W[e][k][n]
  for (int e = 0; e < E; ++e)
    for (int kk = 0; kk < K; ++kk)
      for (int n = 0; n < N; ++n) B[${mn ? "((size_t)e * K + kk) * N + n" : "((size_t)e * N + n) * K + kk"}] = W[((size_t)e * K + kk) * N + n];
  const size_t guard = 4096;
  std::vector<unsigned short> D((size_t)rows * N + guard, 0x7fc0);  // NaN: anything not stored shows
  const EmuMap ma{(unsigned char*)A.data(), 2, 2, {K, rows, 1}, {2, 2LL * K, 0}, {64, ${blockM(c)}, 1}};
  const EmuMap mb = ${mn ? "EmuMap{(unsigned char*)B.data(), 3, 2, {N, K, E}, {2, 2LL * N, 2LL * K * N}, {64, 64, 1}}" : `EmuMap{(unsigned char*)B.data(), 2, 2, {K, (long long)E * N, 1}, {2, 2LL * K, 0}, {64, ${c.blockN}, 1}}`};
  const EmuMap md{(unsigned char*)D.data(), 2, 2, {N, rows, 1}, {2, 2LL * N, 0}, {64, 64, 1}};
  const sh_tensor_map tA = emu_tensor_map(&ma), tB = emu_tensor_map(&mb), tD = emu_tensor_map(&md), none{};
  std::thread([] { std::this_thread::sleep_for(std::chrono::seconds(240)); std::printf("FAIL: the kernel hung outside any mbarrier wait\\n"); std::fflush(stdout); std::_Exit(2); }).detach();
  emu_gemm_launch(grid, ${k.threads}, [&] {
    ${k.name}(tA, tB, none, tD, none, nullptr, nullptr, ${args});
  }, [&] {
    for (int st = 0; st < ${S}; ++st) {
      const unsigned full = emu_bars[${bars} + 8 * st].phase, empty = emu_bars[${bars} + 8 * (${S} + st)].phase;
      if (full != empty) { std::printf("FAIL block %u: stage %d filled %u times, released %u times\\n", blockIdx.x, st, full, empty); return std::exit(1); }
    }
  });
  std::vector<int> expert(rows, -1);
  for (size_t i = 0; i < sg.size(); ++i)
    for (int r = 0; r < sm[i]; ++r) expert[first[i] + r] = sg[i];
  for (int m = 0; m < rows; ++m)
    for (int n = 0; n < N; ++n) {
      const unsigned short got = D[(size_t)m * N + n];
      if (expert[m] < 0) {
        if (got != 0x7fc0) { std::printf("FAIL: D[row %d, col %d] outside every segment was written\\n", m, n); return 1; }
        continue;
      }
      double ref = 0;
      for (int kk = 0; kk < K; ++kk) ref += (double)emu_f32(A[(size_t)m * K + kk]) * emu_f32(W[((size_t)expert[m] * K + kk) * N + n]);
      const unsigned short want = emu_bf16((float)ref);
      if (got != want) { std::printf("FAIL: D[row %d (expert %d), col %d] = %g (bits %04x), expected %g\\n", m, expert[m], n, emu_f32(got), got, emu_f32(want)); return 1; }
    }
  for (size_t i = (size_t)rows * N; i < D.size(); ++i)
    if (D[i] != 0x7fc0) { std::printf("FAIL: D written %zu elements past its end\\n", i - (size_t)rows * N); return 1; }
  std::printf("ok\\n");
  return 0;
}
`;
}

describe.skipIf(!GXX)("MN-major B kernels run whole on the CPU model, descriptors decoded from their bits", () => {
  const { build, output } = gemmModel(mkdtempSync(join(tmpdir(), "shardts-bn-emu-")), (k: Fp8GemmKernel) => harness(k));
  // [K, N, E, grid, gap, (expert, rows)...]: K not a multiple of 64 (the 3-D map's zeros past an expert's
  // K), N not a multiple of the tile or of 64, segments of several blocks and partial ones, an expert with
  // none, experts out of order, one CTA or several
  const grouped: number[][] = [
    [208, 320, 3, 3, 5, 2, 130, 0, 1, 2, 255],
    [144, 208, 4, 1, 0, 1, 300, 3, 37, 0, 128],
    [64, 256, 2, 2, 3, 1, 64],
    // N = 48: the tile's boxes past the first lie wholly past N (not loaded, not counted)
    [80, 48, 2, 2, 1, 1, 140, 0, 20],
  ];
  const configs: [string, Fp8GemmConfig][] = [
    ["row runs n256", rowRun(2816, false)],
    ["row runs n128", rowRun(1408, false)],
    ["row runs n128, 2 stages", { ...rowRun(1408, false), stages: 2 }],
    ["row runs n256, plain epilogue", { ...rowRun(2816, false), tmaStore: false, stages: 4 }],
  ];
  for (const mn of [false, true])
    for (const [what, base] of configs) {
      const c: Fp8GemmConfig = mn ? { ...base, bMnMajor: true } : base;
      it(`${mn ? "MN-major" : "K-major (passes on the GPU)"} ${what} (${configName(c)}): D equals the reference, nothing else written`, async () => {
        const exe = await build(emitFp8Gemm(c), configName(c));
        for (const p of grouped) expect((await output(exe, [p[0]!, p[1]!, p[2]!, p[3]!, 20, ...p.slice(4)])).trim(), p.join(" ")).toBe("ok");
      }, 600_000);
    }

  it("dense MN-major (E = 1): D equals the reference, K and N not multiples of the tile", async () => {
    const c: Fp8GemmConfig = { ...defaultBf16GemmConfig(false, 320), bMnMajor: true };
    const exe = await build(emitFp8Gemm(c), configName(c));
    for (const [K, N, M] of [[208, 320, 200], [64, 128, 128], [96, 48, 130]]) expect((await output(exe, [K!, N!, 1, 2, 20, 0, 0, M!])).trim(), `${K} ${N} ${M}`).toBe("ok");
  }, 600_000);

  it("catches wrong MN-major descriptors: LBO, SBO, the k16 step, B's boxes, B read K-major", async () => {
    const good = emitFp8Gemm(rowRun(2816, true));
    const mutants: [string, string, string, RegExp][] = [
      ["LBO 1024", "((sh_u64)(8192 >> 4) << 16)", "((sh_u64)(1024 >> 4) << 16)", /FAIL: D\[/],
      ["SBO 128", "((sh_u64)(1024 >> 4) << 32) | ((sh_u64)1 << 62);\n}\n#endif", "((sh_u64)(128 >> 4) << 32) | ((sh_u64)1 << 62);\n}\n#endif", /FAIL: D\[/],
      ["k step 32 B", "db + 128 * k", "db + 2 * k", /FAIL: D\[/],
      ["boxes swapped", "nb * BN + 64 * j, kb * 64, e,", "nb * BN + 64 * (j ^ 1), kb * 64, e,", /FAIL: D\[/],
      ["boxes past N counted", "A_BYTES + bBoxes * 8192", "A_BYTES + B_BYTES", /FAIL.*deadlock/],
      ["B's K-major descriptor", "db = sh_wgmma_desc_mn(", "db = sh_wgmma_desc(", /FAIL: D\[/],
    ];
    for (const [what, from, to, why] of mutants) {
      expect(good.source, what).toContain(from);
      const exe = await build({ ...good, source: good.source.replace(from, to) }, `mutant-${what.replace(/\W+/g, "-")}`);
      expect(await output(exe, [208, 320, 3, 2, 5, 1, 2, 130, 0, 1, 2, 255]), what).toMatch(why);
    }
    // the wgmma read K-major (imm-trans-b 0) on the MN-major stage
    const kmajorRead = harness(good).replace("#define SHARDTS_WGMMA_BF16_TB_N256\nEMU_WGMMA_BF16_TB(256)", "#define SHARDTS_WGMMA_BF16_TB_N256\nEMU_WGMMA_BF16(256)\nSH_DEV void sh_wgmma_bf16_tb_m64n256(float (&d)[128], sh_u64 da, sh_u64 db, int acc) { sh_wgmma_bf16_m64n256(d, da, db, acc); }");
    const exe = await gemmModel(mkdtempSync(join(tmpdir(), "shardts-bn-emu-")), (source: string) => source).build(kmajorRead, "mutant-trans-b-0");
    expect(await output(exe, [208, 320, 3, 2, 5, 1, 2, 130, 0, 1, 2, 255])).toMatch(/FAIL/);
  }, 600_000);
});
