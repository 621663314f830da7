// The FP8 GEMM emitter's configurations and launch geometry (compiler/codegen/cuda/gemm/): what is
// accepted and why not, shared-memory sizes, the tile raster (every tile exactly once), and the
// emitted source's parameters and per-configuration pieces.
import { describe, expect, it } from "vitest";
import {
  blockM,
  bBoxRows,
  configName,
  saTileBytes,
  sbTileBytes,
  rowScaledCandidates,
  defaultRowScaledConfig,
  configProblem,
  CONSUMER_OVERHEAD_REGS,
  defaultGemmConfig,
  consumerRegs,
  gemmCandidates,
  experimentalGemmCandidates,
  geometryOf,
  maxStages,
  SMEM_LIMIT,
  shapeProblem,
  smemBytes,
  spansScaleBlocks,
  tileCoords,
  type Fp8GemmConfig,
} from "../../compiler/codegen/cuda/gemm/config.ts";
import { emitFp8Gemm } from "../../compiler/codegen/cuda/gemm/emit.ts";
import { CompileError } from "../../compiler/errors.ts";

const base: Fp8GemmConfig = { consumers: 2, blockN: 128, stages: 4, persistent: true, grouped: false };

describe("FP8 GEMM configurations", () => {
  it("the first candidate is the plain one: one consumer, 64x128, 4 stages, one CTA per tile", () => {
    for (const g of [false, true]) expect(gemmCandidates(g)[0]).toEqual({ consumers: 1, blockN: 128, stages: 4, persistent: false, grouped: g });
  });

  it("every candidate fits shared memory and passes validation", () => {
    for (const g of [false, true])
      for (const c of gemmCandidates(g)) {
        expect(configProblem(c)).toBeUndefined();
        expect(smemBytes(c)).toBeLessThanOrEqual(SMEM_LIMIT);
      }
  });

  it("refuses configurations it cannot emit, saying why", () => {
    expect(configProblem({ ...base, blockN: 256 })).toMatch(/from 16 to 192.*256 with chunked/);
    expect(configProblem({ ...base, blockN: 100 })).toMatch(/multiple of 16/);
    expect(configProblem({ ...base, stages: 9 })).toMatch(/shared memory/);
    expect(configProblem({ ...base, stages: 1 })).toMatch(/stages/);
    expect(() => emitFp8Gemm({ ...base, blockN: 176 })).toThrow(CompileError);
    expect(configProblem({ ...base, blockN: 176 })).toMatch(/three 128-column scale blocks/);
  });

  it("chunked 128 x 256 tiles: blockN 256 only chunked, one 64-register temporary, refusals say why; names and stages", () => {
    const ch: Fp8GemmConfig = { ...base, blockN: 256, stages: 3, chunked: true, tmaStore: true };
    expect(configProblem(ch)).toBeUndefined();
    expect(configName(ch)).toBe("sh_fp8_gemm_dense_m128n256_s3_p_ts_ch");
    expect(configProblem({ ...ch, blockN: 128 })).toMatch(/blockN must be 256/);
    expect(configProblem({ ...ch, overlap: true })).toMatch(/no overlap with chunked/);
    // row-scaled B chunked: each column's scale from the stage, which the staged block scales, the deferred store, A in registers and turns do not combine with
    expect(configProblem({ ...ch, tmaStore: true, bRows: true })).toBeUndefined();
    for (const v of [{ stagedBScales: true }, { deferStore: true }, { aRegs: true }, { orderedChunks: true }]) expect(configProblem({ ...ch, tmaStore: true, bRows: true, ...v })).toMatch(/without stagedBScales, deferStore, aRegs or orderedChunks/);
    expect(configProblem({ ...ch, ab: "bf16" })).toMatch(/bf16 has no promotion/);
    expect(configProblem({ ...ch, stages: 4 })).toMatch(/shared memory/); // whole-tile staging leaves room for 3
    expect(configProblem({ ...ch, stages: 4, storeByBox: true })).toBeUndefined(); // box by box: 4
    expect(configProblem({ ...base, deferStore: true })).toMatch(/needs chunked and tmaStore/);
    expect(configProblem({ ...base, orderedChunks: true })).toMatch(/needs chunked/);
    expect(configProblem({ ...base, storeByBox: true })).toMatch(/needs tmaStore/);
    for (const g of [false, true]) {
      const names = gemmCandidates(g).filter((c) => c.chunked).map(configName);
      expect(names).toContain(`sh_fp8_gemm_${g ? "grouped" : "dense"}_m128n256_s3_p_ts_ch`);
      expect(names).toContain(`sh_fp8_gemm_${g ? "grouped" : "dense"}_m128n256_s4_p_tsb_ch`);
    }
  });

  it("the default kernel: 128 x 256 chunked with at least a wave of its tiles (or no shape), 128 x 128 overlapped below", () => {
    const name = (c: Fp8GemmConfig) => configName(c).replace(/^sh_fp8_gemm_(dense|grouped)_/, "");
    expect(name(defaultGemmConfig(false))).toBe("m128n256_s3_p_ts_ch_g16_sm_pn");
    expect(name(defaultGemmConfig(true, { M: 53120, N: 2816 }))).toBe("m128n256_s3_p_ts_ch_g16_sm_pn");
    expect(name(defaultGemmConfig(false, { M: 4096, N: 2048 }))).toBe("m128n256_s3_p_ts_ch_g16_sm_pn"); // 32 x 8 = 256 tiles
    expect(name(defaultGemmConfig(false, { M: 128, N: 7168 }))).toBe("m128n128_s5_p_ov_ts"); // 28 tiles
    expect(name(defaultGemmConfig(false, { M: 1024, N: 4096 }, 132))).toBe("m128n128_s5_p_ov_ts"); // 8 x 16 = 128 < 132
    expect(name(defaultGemmConfig(false, { M: 1024, N: 4096 }, 128))).toBe("m128n256_s3_p_ts_ch_g16_sm_pn");
  });

  it("overlapped promotion: candidates keep every plain one and add _ov ones whose three fragments fit the registers", () => {
    for (const g of [false, true]) {
      const names = gemmCandidates(g).map(configName);
      const kind = g ? "grouped" : "dense";
      // the plain configurations the H100 run measured are all still there (one stage fewer where A's
      // scales, 4 B a row per stage, no longer leave room for the last one)
      for (const n of ["m64n128_s4", "m128n128_s6_p", "m128n192_s5_p", "m128n160_s6_p", "m128n96_s7_p", "m64n128_s8_p", "m64n192_s7_p", "m64n64_s8_p", "m64n32_s8_p", "m128n128_s6"])
        expect(names, n).toContain(`sh_fp8_gemm_${kind}_${n}`);
      const ov = gemmCandidates(g).filter((c) => c.overlap && !c.multicast && !c.tmaStore);
      expect(ov.map(configName)).toEqual(["m128n128_s6_p_ov", "m128n112_s7_p_ov", "m128n96_s7_p_ov", "m64n128_s8_p_ov"].map((n) => `sh_fp8_gemm_${kind}_${n}`));
      for (const c of ov) expect(3 * (c.blockN / 2) + CONSUMER_OVERHEAD_REGS).toBeLessThanOrEqual(consumerRegs(c));
    }
    expect(configProblem({ ...base, blockN: 192, overlap: true })).toMatch(/3 fragments of 96 registers \+ 32 = 320 .* more than its 232; use blockN <= 128/);
    expect(configProblem({ ...base, blockN: 144, overlap: true })).toMatch(/more than its 232/);
    expect(configProblem({ ...base, consumers: 1, blockN: 144, overlap: true })).toMatch(/more than its 240; use blockN <= 128/);
    expect(configProblem({ ...base, stages: 2, overlap: true })).toMatch(/stages must be >= 3/);
    expect(configProblem({ ...base, overlap: true })).toBeUndefined();
    const k = emitFp8Gemm({ ...base, overlap: true });
    expect(k.source).toContain("float acc[64], t0[64], t1[64];");
    expect(k.source).toContain("sh_wgmma_wait<1>();");
    expect(emitFp8Gemm(base).source).not.toContain("sh_wgmma_wait<1>");
  });

  it("stages: as many as fit (capped), and smem = 1 KiB slack + stages x (A + B tiles + A's scales) + staging + barriers", () => {
    const shape = (consumers: 1 | 2, blockN: number, tmaStore = false) => ({ consumers, blockN, persistent: true, grouped: false, tmaStore });
    expect(maxStages(shape(2, 128))).toBe(6);
    expect(maxStages(shape(2, 192))).toBe(5);
    expect(maxStages(shape(1, 128))).toBe(8);
    expect(maxStages(shape(2, 128, true))).toBe(5);
    expect(maxStages(shape(2, 192, true))).toBe(4);
    expect(smemBytes({ ...base, stages: 4 })).toBe(1024 + 4 * (128 * 128 + 128 * 128 + 128 * 4) + 64);
    expect(smemBytes({ ...base, stages: 4, globalScales: true })).toBe(1024 + 4 * (128 * 128 + 128 * 128) + 64);
    expect(smemBytes({ ...base, stages: 4, tmaStore: true })).toBe(1024 + 4 * (128 * 128 + 128 * 128 + 128 * 4) + 128 * 128 * 2 + 64);
    expect(configProblem({ ...base, blockN: 96, tmaStore: true })).toMatch(/multiple of 64/);
    expect(blockM({ ...base, consumers: 1 })).toBe(64);
  });

  it("a tile spans two scale blocks of B only when blockN does not divide 128", () => {
    expect(spansScaleBlocks({ ...base, blockN: 128 })).toBe(false);
    expect(spansScaleBlocks({ ...base, blockN: 64 })).toBe(false);
    expect(spansScaleBlocks({ ...base, blockN: 192 })).toBe(true);
    expect(spansScaleBlocks({ ...base, blockN: 96 })).toBe(true);
  });

  it("geometry: persistent grids stop at the SM count; tiles cover the problem", () => {
    const g = geometryOf(base, { M: 4096, N: 7168, K: 2048 }, 132);
    expect(g).toMatchObject({ mBlocks: 32, nBlocks: 56, tiles: 1792, grid: 132, block: 384 });
    expect(geometryOf({ ...base, persistent: false }, { M: 4096, N: 7168, K: 2048 }, 132).grid).toBe(1792);
    expect(geometryOf({ ...base, consumers: 1, blockN: 32 }, { M: 64, N: 2112, K: 7168 }, 132)).toMatchObject({ tiles: 66, grid: 66, block: 256 });
  });

  it("row-scaled B (the Wgrad form): dense only, a B-scale row per stage in shared memory, its own name", () => {
    const br = { ...base, bRows: true };
    expect(configProblem(br)).toBeUndefined();
    expect(configName(br)).toMatch(/_br$/);
    expect(configProblem({ ...br, grouped: true })).toMatch(/dense or K-grouped, without multicast/);
    expect(configProblem({ ...br, multicast: true })).toMatch(/dense or K-grouped, without multicast/);
    expect(smemBytes({ ...br, stages: 4 })).toBe(1024 + 4 * (128 * 128 + 128 * 128 + 128 * 4 + 128 * 4) + 64);
    const rs = rowScaledCandidates();
    expect(rs.map((c) => configName(c).replace("sh_fp8_gemm_dense_", ""))).toEqual(["m128n128_s5_p_ov_ts_br", "m128n128_s5_p_ts_br", "m128n128_s6_p_ov_br", "m128n192_s4_p_ts_br", "m128n256_s3_p_ts_ch_g16_br", "m128n256_s3_p_ts_ch_g16_br_sm"]);
    for (const c of rs) expect([c.bRows, c.grouped, configProblem(c)]).toEqual([true, false, undefined]);
  });

  it("skipPastN (_pn) is for the plain chunked forms: the wide defaults take it, and the autotuner has it beside the same kernel without", () => {
    const d = defaultGemmConfig(false);
    expect(d.skipPastN).toBe(true);
    expect(configName(d)).toBe(`${configName({ ...d, skipPastN: false })}_pn`);
    for (const v of [{ stagedBScales: true }, { deferStore: true }, { aRegs: true }, { orderedChunks: true }, { chunked: false, blockN: 128 }, { multicast: true }])
      expect(configProblem({ ...d, ...v }), JSON.stringify(v)).toMatch(/skipPastN emits the plain chunked K loop twice/);
    for (const g of [false, true]) {
      const names = gemmCandidates(g).map(configName), wide = configName(defaultGemmConfig(g));
      expect([names.includes(wide), names.includes(wide.replace(/_pn$/, ""))]).toEqual([true, true]);
    }
  });

  it("the row-scaled default is 192 wide where its tiles take less time (tiles an SM x 1.37 against x 1), else 128", () => {
    const pick = (M: number, N: number, sms?: number) => configName(defaultRowScaledConfig({ M, N }, sms)).replace("sh_fp8_gemm_dense_", "");
    expect(configName(defaultRowScaledConfig())).toBe("sh_fp8_gemm_dense_m128n128_s5_p_ts_br");
    // a 2048 -> 1408 Linear's Wgrad: 176 tiles of 128 (2 an SM) against 128 of 192 (1 an SM: 1.37)
    expect([pick(2048, 1408), pick(1408, 2048)]).toEqual(["m128n192_s4_p_ts_br", "m128n192_s4_p_ts_br"]);
    // 7168 x 2048: 896 tiles of 128 (7 an SM) against 616 of 192 (5 an SM: 6.85)
    expect(pick(7168, 2048)).toBe("m128n192_s4_p_ts_br");
    // one tile an SM either way: 128; 4096 x 1536: 32 x 12 = 384 of 128 (3) against 32 x 8 = 256 of 192 (2: 2.74)
    expect([pick(256, 160), pick(4096, 1536)]).toEqual(["m128n128_s5_p_ts_br", "m128n192_s4_p_ts_br"]);
    // fewer SMs (some held by the NVLink kernels): 176 tiles of 128 on 120 SMs are 2 an SM, 128 of 192 now 2 as well
    expect(pick(2048, 1408, 120)).toBe("m128n128_s5_p_ts_br");
  });

  it("multicast: tile pairs per cluster, grids in whole clusters, B's box halved; dense only", () => {
    const mc = { ...base, multicast: true };
    expect(configProblem(mc)).toBeUndefined();
    // 32 m-blocks -> 16 pairs x 56 n-blocks; 66 clusters of 2 on 132 SMs
    expect(geometryOf(mc, { M: 4096, N: 7168, K: 2048 }, 132)).toMatchObject({ tiles: 896, grid: 132 });
    // an odd m-block count: the last pair's second CTA computes a block it does not store
    expect(geometryOf({ ...mc, persistent: false }, { M: 300, N: 528, K: 1040 }, 132)).toMatchObject({ mBlocks: 3, tiles: 2 * Math.ceil(528 / mc.blockN), grid: 4 * Math.ceil(528 / mc.blockN) });
    expect(geometryOf(mc, { M: 4096, N: 7168, K: 2048 }, 131).grid).toBe(130);
    expect(bBoxRows(mc)).toBe(mc.blockN / 2);
    expect(bBoxRows(base)).toBe(base.blockN);
    expect(configProblem({ ...mc, grouped: true })).toMatch(/dense only/);
    expect(configName(mc)).toMatch(/_mc$/);
  });

  it("groupM: another raster height, its own name and helper; the raster still visits every tile once", () => {
    const c: Fp8GemmConfig = { ...base, blockN: 256, stages: 3, chunked: true, tmaStore: true, groupM: 16 };
    expect(configName(c)).toBe("sh_fp8_gemm_dense_m128n256_s3_p_ts_ch_g16");
    expect(configName({ ...c, groupM: 8 })).toBe("sh_fp8_gemm_dense_m128n256_s3_p_ts_ch");
    expect(configProblem({ ...c, groupM: 0 })).toMatch(/groupM must be an integer/);
    const src = emitFp8Gemm(c).source;
    expect(src).toContain("tile_coords_g<16>(tile, mBlocks, nBlocks, mb, nb);");
    expect(emitFp8Gemm({ ...c, groupM: undefined }).source).not.toContain("tile_coords_g");
    for (const [mB, nB] of [[64, 32], [17, 5], [3, 9]] as const) {
      const seen = new Set<string>();
      for (let t = 0; t < mB * nB; t++) {
        const { mb, nb } = tileCoords(t, mB, nB, 16);
        expect(mb < mB && nb < nB).toBe(true);
        seen.add(`${mb},${nb}`);
      }
      expect(seen.size).toBe(mB * nB);
    }
    expect(Array.from({ length: 17 }, (_, t) => tileCoords(t, 64, 32, 16)).slice(15)).toEqual([{ mb: 15, nb: 0 }, { mb: 0, nb: 1 }]);
  });

  it("the raster visits every tile exactly once, GROUP_M row blocks at a time", () => {
    for (const [mB, nB] of [[32, 56], [3, 5], [9, 1], [1, 17], [17, 3]] as const) {
      const seen = new Set<number>();
      for (let t = 0; t < mB * nB; t++) {
        const { mb, nb } = tileCoords(t, mB, nB);
        expect(mb).toBeLessThan(mB);
        expect(nb).toBeLessThan(nB);
        seen.add(mb * nB + nb);
      }
      expect(seen.size).toBe(mB * nB);
    }
    // the first 16 tiles of a tall problem walk down 8 row blocks, then the next column
    expect(Array.from({ length: 9 }, (_, t) => tileCoords(t, 32, 56))).toEqual([...Array.from({ length: 8 }, (_, i) => ({ mb: i, nb: 0 })), { mb: 0, nb: 1 }]);
  });

  it("shapes the kernels refuse go to the fallback, with the reason", () => {
    expect(shapeProblem({ M: 64, N: 2112, K: 7168 })).toBeUndefined();
    expect(shapeProblem({ M: 64, N: 2112, K: 7000 })).toMatch(/K = 7000/);
    expect(shapeProblem({ M: 64, N: 2100, K: 7168 })).toMatch(/N = 2100/);
  });

  it("the emitted source: parameters in order, the wgmma for blockN, setmaxnreg split, grouped expert lookup", () => {
    const k = emitFp8Gemm({ ...base, blockN: 192, stages: 5, grouped: true });
    expect(k.name).toBe("sh_fp8_gemm_grouped_m128n192_s5_p");
    expect(k.threads).toBe(384);
    expect(k.source).toMatch(/const __grid_constant__ sh_tensor_map tmA, const __grid_constant__ sh_tensor_map tmB,\s+const __grid_constant__ sh_tensor_map tmSA, const __grid_constant__ sh_tensor_map tmD,\s+const __grid_constant__ sh_tensor_map tmSB,\s+const float\* __restrict__ sa, const float\* __restrict__ sb, unsigned short\* __restrict__ d,\s+const int\* __restrict__ blockExpert,\s+int M, int N, int K\)/);
    expect(k.source).toContain("wgmma.mma_async.sync.aligned.m64n192k32.f32.e4m3.e4m3");
    expect(k.source).toContain("sh_setmaxnreg_dec<40>");
    expect(k.source).toContain("sh_setmaxnreg_inc<232>");
    expect(k.source).toContain("blockExpert[(mb * 128) / 128]");
    expect(k.source).toContain("e * N + nb * BN");
    expect(k.source).toContain("float b1 = second ? sbTile[KB + 0]");
    expect(k.source).toContain("const float nb1 = kb + 1 < KB && second ? sbTile[KB + kb + 1]");
    const dense = emitFp8Gemm(base);
    expect(dense.source).not.toContain("blockExpert");
    expect(dense.source).not.toContain("b1");
    expect(dense.source).toContain("sh_mbar_init(bars + 8 * (S + s), 8)");
  });

  it("every candidate's producer expects exactly the bytes its TMA loads bring: A's and B's scales counted only where TMA loads them", () => {
    const all = [...gemmCandidates(false), ...gemmCandidates(true), ...rowScaledCandidates(), ...experimentalGemmCandidates(false), ...experimentalGemmCandidates(true)];
    for (const c of all) {
      const src = emitFp8Gemm(c).source;
      const expect_ = /sh_mbar_arrive_expect_tx\([^;]*\);/.exec(src)?.[0] ?? "";
      expect(expect_, configName(c)).not.toBe("");
      // a scale region of 0 bytes may be named (it adds nothing); one with bytes is expected only where TMA fills it
      if (saTileBytes(c) > 0) expect(/SA_BYTES/.test(expect_), `${configName(c)}: A's scales`).toBe(/sh_tma_load_2d\(sas \+/.test(src));
      if (sbTileBytes(c) > 0) expect(/SB_BYTES/.test(expect_), `${configName(c)}: B's scales`).toBe(/sh_tma_load_2d\(sbs \+/.test(src));
    }
    expect(all.filter((c) => c.stagedBScales).length, "staged-B-scale candidates checked").toBeGreaterThan(0);
  });

  it("the experimental variants are for the bench only: the autotuner's candidates (and so its cache key) do not include them", () => {
    for (const g of [false, true]) {
      const tuned = new Set(gemmCandidates(g).map(configName));
      const exp = experimentalGemmCandidates(g);
      expect(exp.map(configName).filter((n) => tuned.has(n))).toEqual([]);
      // B multicast with the staged scales: dense only (a grouped tile pair may straddle two experts); the wide default skipping past N
      expect(exp.map((c) => configName(c).replace(/^sh_fp8_gemm_(dense|grouped)_/, ""))).toEqual(g ? [] : ["m128n256_s3_p_mc_ts_ch_g16_sbs_sm", "m128n256_s3_p_mc_ts_ch_g16_sbs"]);
      expect(gemmCandidates(g).some((c) => c.trace)).toBe(false);
      // the staged B scales and the stmatrix staging (measured: bench/NOTES.md, sixth session) are tuned
      for (const v of ["_sbs", "_sm", "_sbs_sm"]) expect(tuned.has(`sh_fp8_gemm_${g ? "grouped" : "dense"}_m128n256_s3_p_ts_ch_g16${v}`), v).toBe(true);
    }
  });
});
