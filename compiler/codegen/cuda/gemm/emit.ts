// Emits the CUDA C++ of one FP8 block-scaled GEMM kernel (dense NT or grouped) for a configuration.
//
// D[m,n] (bf16, M×N row-major) = Σ_kb sa[kb][m] · sb[nb(n)][kb] · (Σ_{k in kb} A[m,k] · B[n,k]):
// A (M×K e4m3) and B (N×K, or E×N×K grouped) arrive by TMA into a ring of `stages` 128-byte-swizzled
// shared-memory buffers; each consumer warpgroup runs 4 wgmma k32 steps per 128-wide K block into a
// temporary fragment, waits for it, and promotes it into its f32 accumulators with that block's
// scales (acc += tmp · sa·sb), so the tensor cores' reduced-precision sums never span more than 128
// of K. The CTA walks tiles in a GROUP_M-row raster; persistent CTAs stride over tiles by gridDim.
// The layouts of the operands and scales are those of compiler/numeric/fp8-gemm.ts.
//
// Kernel parameters, in order: tmA, tmB, tmSA (A's scales), tmD (the TMA-store epilogue's output),
// tmSB (row-scaled B's scales) — CUtensorMaps by value, 64-byte aligned, passed whether the
// configuration uses them or not — then sa, sb, d, [blockExpert when grouped], M, N, K, [E when
// K-grouped]. With row runs (rowRuns) blockExpert holds 4 int32 per 128-row block (expert, A's row, D's
// row, valid rows) and M is 128 x the blocks: A and D are the rows where they are, read and written
// through the runs. K-grouped (kGrouped): blockExpert holds 2 int32 per expert (first 64-column block,
// blocks); the producer loads those blocks and the consumers take as many stages (none for an empty
// expert, whose tile stores zeros), so both walk the ring alike across tiles of different K; D rows
// e·M + m go out through a 3-D map [E][M][N] (sh_tma_store_3d) or direct stores bounded by M.
//
// With ab = "bf16" (config.ts): D = A·Bᵀ with bf16 A and B, 64-wide K blocks, no scales (tmSA, tmSB,
// sa and sb are passed and ignored, so one launcher serves both), acc summed over all of K by the wgmmas.
// With bMnMajor, D = A·B with B [E][K][N] (tmB a 3-D map over it): the same kernel but for B's boxes,
// descriptor and wgmma transpose flag (ptx.ts MN_MAJOR_B).
import { FP8_BLOCK, GROUPED_M_ALIGN } from "../../../numeric/fp8-gemm.ts";
import {
  aTileBytes,
  bBoxRows,
  bTileBytes,
  blockM,
  saTileBytes,
  sbTileBytes,
  stagingBytes,
  checkConfig,
  configName,
  consumerRegs,
  GROUP_M,
  isBf16,
  ORDER_BARRIERS,
  kBlock,
  producerRegs,
  smemBytes,
  spansScaleBlocks,
  threadsOf,
  wgmmaN,
  type Fp8GemmConfig,
} from "./config.ts";
import { bf16Loop, chunkedLoop, kGroupedLoop, overlappedLoop, plainLoop } from "./mainloop.ts";
import { stagingBuffer, stagingFlush, stagingRow, stagingWrites } from "./staging.ts";
import { TRACE_PTX, traceConsumerTop, traceEnd, traceEpilogueEnd, traceLoopEnd, traceParam, traceProducerEnd, traceProducerTop, traceProducerWait, traceSetup } from "./trace.ts";
import { GEMM_PTX, NAMED_ARRIVE, STSM_X4, STS_F32X2, MN_BOX_BYTES, MN_MAJOR_B, TMA_STORE_3D, wgmmaRsWrapper, wgmmaWrapper } from "./ptx.ts";

export interface Fp8GemmKernel {
  name: string;
  source: string;
  config: Fp8GemmConfig;
  threads: number;
  smemBytes: number;
}

export function emitFp8Gemm(c: Fp8GemmConfig): Fp8GemmKernel {
  checkConfig(c);
  const name = configName(c), BM = blockM(c), BN = c.blockN, S = c.stages, C = c.consumers;
  // acc covers the tile's columns; a temporary, one wgmma group's (a 128-column chunk when chunked)
  const frag = BN / 2, tmpFrag = wgmmaN(c) / 2;
  const rr = c.rowRuns === true, kg = c.kGrouped === true;
  // this tile's expert (a C expression of its m-block mb)
  const expert = rr ? "blockExpert[4 * mb]" : c.grouped ? `blockExpert[(mb * ${BM}) / ${GROUPED_M_ALIGN}]` : "0";
  // A's first row of the tile: its run's (row runs) or the block's own
  const aRow = rr ? "blockExpert[4 * mb + 1]" : "mb * BM";
  // B's rows for tile (e, nb): grouped weights are stacked E×N rows deep (K-grouped: B is one N x P)
  const bRow = c.grouped && !kg ? "e * N + nb * BN" : "nb * BN";
  const twoBlocks = spansScaleBlocks(c);
  const mc = c.multicast === true, mn = c.bMnMajor === true;
  // the tile loop: one tile per unit, or (multicast) a pair of m-blocks per cluster, this CTA's by rank
  // the raster: the shared GROUP_M helper, or a template one for another group height
  const coords = c.groupM !== undefined && c.groupM !== GROUP_M ? `tile_coords_g<${c.groupM}>` : "tile_coords";
  const tileLoop = mc
    ? `const int pairsM = (mBlocks + 1) / 2, units = pairsM * nBlocks;
  for (int u = blockIdx.x / 2; u < units; u += gridDim.x / 2) {
    int pm, nb;
    ${coords}(u, pairsM, nBlocks, pm, nb);
    const int mb = 2 * pm + (int)crank;`
    : kg
      ? `for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    int e, mb, nb;
    kg_tile_coords(tile, mBlocks, nBlocks, e, mb, nb);`
      : `for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    int mb, nb;
    ${coords}(tile, mBlocks, nBlocks, mb, nb);`;
  const indent = (text: string, pad: string) => text.replace(/\n/g, "\n" + pad);
  const bf16 = isBf16(c), KBLK = kBlock(c);
  // A's scales arrive by TMA with each stage (e4m3 without globalScales)
  const saByTma = !c.globalScales && !bf16;
  const title = bf16
    ? `// bf16 GEMM (${kg ? "grouped over K: one M x N block of D per expert" : c.grouped ? "grouped over 128-row expert blocks" : "dense NT"}): BLOCK ${BM}x${BN}x${KBLK}, ${S} stages,`
    : `// FP8 block-scaled GEMM (${kg ? "grouped over K: one M x N block of D per expert, row-scaled B" : c.grouped ? `grouped over 128-row expert blocks${rr ? ", row runs" : ""}` : "dense NT"}): BLOCK ${BM}x${BN}x128, ${S} stages,`;
  // the consumer's fragments: e4m3 promotes a temporary (two with overlap) into acc; bf16 has acc only
  const frags = bf16 ? "" : c.overlap ? ", t0[" + frag + "], t1[" + frag + "]" : ", tmp[" + tmpFrag + "]";
  const fragInit = bf16 ? "" : `#pragma unroll
  for (int i = 0; i < ${tmpFrag}; ++i) ${c.overlap ? "t0[i] = t1[i] = 0.f" : "tmp[i] = 0.f"};
`;
  const sbTileLine = kg ? "    (void)sa; (void)sb;\n" : bf16 ? "    (void)sa; (void)sb; (void)NB;\n" : c.bRows ? "    (void)sb; (void)NB;\n" : c.stagedBScales ? "" : `    const float* sbTile = ${scaleRow("e", "n0")};\n`;

  const source = `${title}
// ${C} consumer warpgroup(s) + 1 producer, ${c.persistent ? "persistent grid" : "one CTA per tile"}. Generated by compiler/codegen/cuda/gemm/emit.ts.
${GEMM_PTX}${c.trace ? TRACE_PTX : ""}${c.stagedBScales ? STS_F32X2 : ""}${c.stmatrix ? STSM_X4 : ""}${c.orderedChunks ? NAMED_ARRIVE : ""}${mn ? MN_MAJOR_B : ""}${c.aRegs ? wgmmaRsWrapper(wgmmaN(c)) : wgmmaWrapper(wgmmaN(c), c.ab, mn)}${kg && c.tmaStore ? TMA_STORE_3D : ""}
extern "C" __global__ void ${mc ? "__cluster_dims__(2, 1, 1) " : ""}__launch_bounds__(${threadsOf(c)}, 1)
${name}(const __grid_constant__ sh_tensor_map tmA, const __grid_constant__ sh_tensor_map tmB,
        const __grid_constant__ sh_tensor_map tmSA, const __grid_constant__ sh_tensor_map tmD,
        const __grid_constant__ sh_tensor_map tmSB,
        const float* __restrict__ sa, const float* __restrict__ sb, unsigned short* __restrict__ d,
${c.grouped ? "        const int* __restrict__ blockExpert,\n" : ""}        int M, int N, int K${kg ? ", int E" : ""}${traceParam(c)}) {
  constexpr int BM = ${BM}, BN = ${BN}, S = ${S};
  constexpr sh_u32 A_BYTES = ${aTileBytes(c)}, B_BYTES = ${bTileBytes(c)}, SA_BYTES = ${saTileBytes(c)}, SB_BYTES = ${sbTileBytes(c)}, STAGING_BYTES = ${stagingBytes(c)};
  extern __shared__ unsigned char smem_raw[];
  // the 128-byte swizzle repeats every 1024 bytes: tiles (and the staging boxes) start on a 1024-byte boundary
  const sh_u32 base = (sh_smem_addr(smem_raw) + 1023u) & ~1023u;
  const sh_u32 tilesA = base, tilesB = base + S * A_BYTES, staging = tilesB + S * B_BYTES;
  const sh_u32 sas = staging + STAGING_BYTES, sbs = sas + S * SA_BYTES, bars = sbs + S * SB_BYTES;
  (void)sas; (void)sbs; (void)staging; (void)tmSA; (void)tmD; (void)tmSB;
  // full[s] at bars + 8 s (the producer's arrival + TMA bytes); empty[s] at bars + 8 (S + s)
  const int wg = threadIdx.x / 128, lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32;
${kg ? `  // K-grouped: every expert's M x N block of D, its K blocks (P's ${KBLK}-column blocks) from blockExpert
  const int mBlocks = (M + BM - 1) / BM, nBlocks = (N + BN - 1) / BN, tiles = E * mBlocks * nBlocks;
  (void)K;
` : `  const int mBlocks = (M + BM - 1) / BM, nBlocks = (N + BN - 1) / BN, tiles = mBlocks * nBlocks;
  const int KB = (K + ${KBLK - 1}) / ${KBLK}, NB = (N + ${FP8_BLOCK - 1}) / ${FP8_BLOCK};
`}${traceSetup(c)}${mc ? `  (void)tiles;
  // cluster of two along M: this CTA's m-block of each pair, and its half of the B tile
  const sh_u32 crank = sh_cluster_rank();
  constexpr sh_u32 B_HALF = B_BYTES / 2;
` : ""}
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      sh_mbar_init(bars + 8 * s, ${c.stagedBScales ? "2);  // the TMA thread's and the scale thread's arrivals" : "1);"}
      sh_mbar_init(bars + 8 * (S + s), ${mc ? 8 * C : 4 * C});  // one arrival per consumer warp${mc ? " of either CTA" : ""}
    }
    sh_mbar_init_fence();
  }
  ${mc ? "sh_cluster_sync();  // the peer's barriers exist before anything arrives on them" : "__syncthreads();"}

  if (wg == ${C}) {
    // ---------------- producer warpgroup: one thread issues every TMA load ----------------
    sh_setmaxnreg_dec<${producerRegs(c)}>();
    if (threadIdx.x % 128 == 0) {
    sh_tma_prefetch_map(&tmA);
    sh_tma_prefetch_map(&tmB);
${saByTma ? "    sh_tma_prefetch_map(&tmSA);\n" : ""}    int s = 0;
    sh_u32 phase = 0;
    ${indent(tileLoop, "  ")}
${kg ? `      // this expert's ${KBLK}-column blocks of A and B (none: nothing to load, no stage taken)
      const int kb0 = blockExpert[2 * e], kbEnd = kb0 + blockExpert[2 * e + 1];
      for (int kb = kb0; kb < kbEnd; ++kb) {` : `      const int e = ${expert};
      if (e < 0) continue;  // a padding block: no rows to compute
${traceProducerTop(c, "      ")}${mn ? `      // B's 64-column boxes holding columns < N: a box wholly past N is not loaded (its columns of D are
      // not stored, and D's columns depend on B's alone), so no TMA box ever lies wholly out of bounds
      const int bBoxes = min(${BN / 64}, (N - nb * BN + 63) / 64);
` : ""}      for (int kb = 0; kb < KB; ++kb) {`}
${traceProducerWait(c, `sh_mbar_wait(bars + 8 * (S + s), phase ^ 1);  // the consumers${mc ? " of both CTAs" : ""} have released this stage`, "        ")}        sh_mbar_arrive_expect_tx(bars + 8 * s, ${mn ? `A_BYTES + bBoxes * ${MN_BOX_BYTES}` : `A_BYTES + B_BYTES + SA_BYTES${c.stagedBScales ? "" : " + SB_BYTES"}`});
        sh_tma_load_2d(tilesA + s * A_BYTES, &tmA, kb * ${KBLK}, ${aRow}, bars + 8 * s);
${!saByTma ? "" : "        sh_tma_load_2d(sas + s * SA_BYTES, &tmSA, mb * BM, kb, bars + 8 * s);  // A's scales of this block's rows\n"}${c.bRows ? "        sh_tma_load_2d(sbs + s * SB_BYTES, &tmSB, nb * BN, kb, bars + 8 * s);  // B's row scales of this block's columns\n" : ""}
${mc ? `        // this CTA's half of B, into both CTAs (the peer sends the other half)
        sh_tma_load_2d_mc(tilesB + s * B_BYTES + crank * B_HALF, &tmB, kb * ${KBLK}, ${bRow} + (int)crank * ${bBoxRows(c)}, bars + 8 * s, (unsigned short)3);` : mn ? `        // B [E][K][N] MN-major: 64 K rows x 64 columns a box, box j of the tile's columns ${MN_BOX_BYTES} B in
        for (int j = 0; j < bBoxes; ++j) sh_tma_load_3d(tilesB + s * B_BYTES + j * ${MN_BOX_BYTES}, &tmB, nb * BN + 64 * j, kb * ${KBLK}, e, bars + 8 * s);` : `        sh_tma_load_2d(tilesB + s * B_BYTES, &tmB, kb * ${KBLK}, ${bRow}, bars + 8 * s);`}
        if (++s == S) { s = 0; phase ^= 1; }
      }
${traceProducerEnd(c, "      ")}    }
    }${c.stagedBScales ? scaleThread(tileLoop, expert) : ""}
  } else {
  // ---------------- consumer warpgroup wg: rows wg*64 .. wg*64+63 of the tile ----------------
  sh_setmaxnreg_inc<${consumerRegs(c)}>();
  float acc[${frag}]${frags};
${fragInit}  int s = 0;
  sh_u32 phase = 0;
  // this thread's two rows of the m64 fragment, and the column of its first pair
  const int r0 = wg * 64 + warp * 16 + lane / 4, c0 = 2 * (lane % 4);
${c.orderedChunks ? `  // chunks in turns: consumer 0 goes first (consumer 1's arrival lets it), and takes consumer 1's last arrival at the end
  if (wg == 1) sh_named_arrive(${ORDER_BARRIERS[0]}, 256);
` : ""}${c.deferStore ? `  // deferred store: the previous tile (pmb, pnb) is staged and stored under the next tile's first K block
  int have = 0, pmb = 0, pnb = 0;
${stagingBuffer(BN, "  ")}${stagingRow("  ", c.stmatrix)}` : ""}  ${tileLoop}
${kg ? `    // this expert's ${KBLK}-column blocks: the consumers take as many stages as the producer fills for the tile
    const int KB = blockExpert[2 * e + 1];
` : `    const int e = ${expert};
    if (e < 0) continue;
`}${traceConsumerTop(c, "    ")}${rr ? `    // the run's block: D's first row and the valid rows (m0, m1 are tile-relative here)
    const int dRow = blockExpert[4 * mb + 2], rows = blockExpert[4 * mb + 3];
    const int m0 = r0, m1 = m0 + 8, n0 = nb * BN;` : "    const int m0 = mb * BM + r0, m1 = m0 + 8, n0 = nb * BN;"}
    (void)m0; (void)m1; (void)c0;${c.stagedBScales ? " (void)n0;" : ""}  // unused by kernels whose scales and stores go through TMA
${sbTileLine}${twoBlocks && !c.bRows ? `    // columns from 'split' on (tile-relative) take the next scale block of B
    const int split = (n0 / ${FP8_BLOCK} + 1) * ${FP8_BLOCK} - n0;
    const bool second = ${hasSecond("n0")};
` : ""}${c.chunked && !c.stagedBScales && !c.bRows ? `    // chunk 1 (columns 128..255) lies past N when N ends inside the tile: its scale block does not exist
    const bool second = ${hasSecond("n0")};
` : ""}${c.deferStore ? "" : `#pragma unroll
    for (int i = 0; i < ${frag}; ++i) acc[i] = 0.f;
`}${kg ? kGroupedLoop(c) : bf16 ? bf16Loop(c) : c.chunked ? chunkedLoop(c) : c.overlap ? overlappedLoop(c) : plainLoop(c)}${traceLoopEnd(c, "    ")}${c.deferStore ? "    have = 1; pmb = mb; pnb = nb;  // stored under the next tile's first K block, or after the loop\n" : epilogue(c)}${traceEpilogueEnd(c, "tile", "    ")}  }
${traceEnd(c)}${c.orderedChunks ? `  if (wg == 0) sh_named_bar(${ORDER_BARRIERS[0]}, 256);  // consumer 1's arrival after its last chunk
` : ""}${c.deferStore ? `  if (have) {  // the last tile's store
${tmaStoreEpilogue(c, "pmb * BM", undefined, "pnb * BN").replace(/^(?=.)/gm, "  ")}  }
` : ""}${c.tmaStore ? "  if (threadIdx.x % 128 == 0) sh_bulk_wait0();  // this warpgroup's last store is done\n" : ""}  }
${mc ? "  sh_cluster_sync();  // the peer's last arrivals and multicasts into this CTA are done\n" : ""}}
`;
  return { name, source: (coords === "tile_coords" || kg ? TILE_COORDS : TILE_COORDS_G) + (kg ? KG_TILE_COORDS : "") + source, config: c, threads: threadsOf(c), smemBytes: smemBytes(c) };
}

/** B's scales of expert `e` for the tile whose first column is `col` (C expressions): the first 128-column block's row of KB, the next at + KB. */
const scaleRow = (e: string, col: string): string => `sb + ((long long)${e} * NB + ${col} / ${FP8_BLOCK}) * KB`;
/** Whether the tile starting at column `col` has a second 128-column scale block (N may end inside the tile). */
const hasSecond = (col: string): string => `${col} / ${FP8_BLOCK} + 1 < NB`;

/**
 * stagedBScales: lane 0 of the producer's second warp walks the tiles and blocks as the TMA thread does;
 * per block it loads B's two scales (the tile's two 128-column chunks; zero for a chunk past N) before
 * waiting for the stage to be free, stores them into the stage and arrives on its full barrier.
 */
function scaleThread(tileLoop: string, expert: string): string {
  return ` else if (threadIdx.x % 128 == 32) {
    // B's block scales into each stage, loaded while the stage is still in use
    int s = 0;
    sh_u32 phase = 0;
    ${tileLoop.replace(/\n/g, "\n  ")}
      const int e = ${expert};
      if (e < 0) continue;
      (void)mb;  // B's scales depend on the column block alone
      const float* sbTile = ${scaleRow("e", "nb * BN")};
      const bool second = ${hasSecond("nb * BN")};  // chunk 1 lies past N when N ends inside the tile
      for (int kb = 0; kb < KB; ++kb) {
        const float v0 = sbTile[kb], v1 = second ? sbTile[KB + kb] : 0.f;
        sh_mbar_wait(bars + 8 * (S + s), phase ^ 1);  // the consumers have released this stage
        sh_sts_f32x2(sbs + s * SB_BYTES, v0, v1);
        sh_mbar_arrive(bars + 8 * s);  // release: the scales are visible to the consumers' wait
        if (++s == S) { s = 0; phase ^= 1; }
      }
    }
    }`;
}

/**
 * The tile's store: by TMA or directly; with row runs, a full block (rows == BM) by TMA where the
 * configuration has it and a run's partial last block directly, its valid rows only, at D's row dRow.
 */
function epilogue(c: Fp8GemmConfig): string {
  // K-grouped: expert e's block of D starts at row e·M; its rows past M are not stored (the 3-D map's
  // bounds clip them, or the direct stores' row check), so they never reach the next expert's block
  if (c.kGrouped) return c.tmaStore ? tmaStoreEpilogue(c, "mb * BM", "e") : directEpilogue(c, "e * M + ", "M");
  if (!c.rowRuns) return c.tmaStore ? tmaStoreEpilogue(c, "mb * BM") : directEpilogue(c, "", "M");
  const direct = directEpilogue(c, "dRow + ", "rows");
  if (!c.tmaStore) return direct;
  return `    if (rows == BM) {
${tmaStoreEpilogue(c, "dRow")}    } else {
${direct}    }
`;
}

/**
 * bf16 pairs straight from the fragment to global memory (N is a multiple of 16: pairs never straddle
 * it); rows m0 / m1 below `bound` stored at row `base`m0 / `base`m1.
 */
function directEpilogue(c: Fp8GemmConfig, base: string, bound: string): string {
  const row = (m: string) => (base ? `(${base}${m})` : m);
  return `    // epilogue: bf16 pairs straight from the fragment (N is a multiple of 16, so pairs never straddle it)
#pragma unroll
    for (int j = 0; j < ${c.blockN / 8}; ++j) {
      const int n = n0 + 8 * j + c0;
      if (n < N) {
        if (m0 < ${bound}) *reinterpret_cast<sh_u32*>(d + (long long)${row("m0")} * N + n) = sh_pack_bf16x2(acc[4 * j + 0], acc[4 * j + 1]);
        if (m1 < ${bound}) *reinterpret_cast<sh_u32*>(d + (long long)${row("m1")} * N + n) = sh_pack_bf16x2(acc[4 * j + 2], acc[4 * j + 3]);
      }
    }
`;
}

/**
 * The warpgroup's 64 x blockN bf16 rows into its staging buffer (64-column boxes of 64 x 128 bytes with
 * the 128-byte swizzle: 16-byte chunk j of row r sits at chunk j ^ (r % 8), so the 8 rows a warp writes
 * at once hit 8 different chunks and no bank twice), then one thread stores the boxes by TMA (clipped
 * at M and N). The buffer is reused only after the previous tile's store has read it.
 */
function tmaStoreEpilogue(c: Fp8GemmConfig, rowBase: string, expert?: string, n0 = "n0"): string {
  const store = (box: string, b: string) =>
    expert === undefined ? `sh_tma_store_2d(&tmD, ${box}, ${n0} + 64 * ${b}, ${rowBase} + wg * 64)` : `sh_tma_store_3d(&tmD, ${box}, ${n0} + 64 * ${b}, ${rowBase} + wg * 64, ${expert})`;
  if (c.storeByBox)
    return `    // epilogue through shared memory and TMA, one 64 x 64 box at a time: this warpgroup's 64 rows, ${c.blockN / 64} boxes
    {
${stagingBuffer(64, "      ")}${stagingRow("      ", c.stmatrix)}#pragma unroll
      for (int b = 0; b < ${c.blockN / 64}; ++b) {
        if (threadIdx.x % 128 == 0) sh_bulk_wait_read0();  // the previous box's store has read the buffer
        sh_named_bar(1 + wg, 128);
${stagingWrites("8 * b", "8 * b + 8", "        ", true, c.stmatrix)}${stagingFlush(`          ${store("mine", "b")};\n`, "        ")}      }
    }
`;
  return `    // epilogue through shared memory and TMA: this warpgroup's 64 rows, ${c.blockN / 64} box(es) of 64 columns
    {
${stagingBuffer(c.blockN, "      ")}      if (threadIdx.x % 128 == 0) sh_bulk_wait_read0();  // the previous tile's store has read the buffer
      sh_named_bar(1 + wg, 128);
${stagingRow("      ", c.stmatrix)}${stagingWrites(0, c.blockN / 8, "      ", false, c.stmatrix)}${stagingFlush(`#pragma unroll
        for (int b = 0; b < ${c.blockN / 64}; ++b) ${store("mine + b * 8192", "b")};\n`, "      ")}    }
`;
}

// Tile raster (mirrors tileCoords in config.ts): GROUP_M m-blocks walked down before moving along N,
// so the CTAs resident at once share a few row blocks of A and a band of B in L2.
const TILE_COORDS = `#ifndef SHARDTS_GEMM_TILE_COORDS
#define SHARDTS_GEMM_TILE_COORDS
static __device__ __forceinline__ void tile_coords(int tile, int mBlocks, int nBlocks, int& mb, int& nb) {
  const int perGroup = ${GROUP_M} * nBlocks, first = (tile / perGroup) * ${GROUP_M};
  const int rows = min(mBlocks - first, ${GROUP_M}), r = tile % perGroup;
  mb = first + r % rows;
  nb = r / rows;
}
#endif
`;

// The same raster for a group height G other than GROUP_M (Fp8GemmConfig.groupM).
const TILE_COORDS_G = `#ifndef SHARDTS_GEMM_TILE_COORDS_G
#define SHARDTS_GEMM_TILE_COORDS_G
template <int G> static __device__ __forceinline__ void tile_coords_g(int tile, int mBlocks, int nBlocks, int& mb, int& nb) {
  const int perGroup = G * nBlocks, first = (tile / perGroup) * G;
  const int rows = min(mBlocks - first, G), r = tile % perGroup;
  mb = first + r % rows;
  nb = r / rows;
}
#endif
`;

// K-grouped tile decode (mirrors kGroupedTileCoords in config.ts): expert-major, the GROUP_M raster inside
// the expert.
const KG_TILE_COORDS = `#ifndef SHARDTS_GEMM_KG_TILE_COORDS
#define SHARDTS_GEMM_KG_TILE_COORDS
static __device__ __forceinline__ void kg_tile_coords(int tile, int mBlocks, int nBlocks, int& e, int& mb, int& nb) {
  const int perExpert = mBlocks * nBlocks;
  e = tile / perExpert;
  tile_coords(tile - e * perExpert, mBlocks, nBlocks, mb, nb);
}
#endif
`;
