// FP8 block-scaled GEMM kernel configurations (Hopper, sm_90a) and their launch geometry.
//
// A CTA is (consumers + 1) warpgroups of 128 threads: warpgroups 0..consumers-1 are consumers, each
// owning 64 rows of the BLOCK_M × BLOCK_N tile (one m64nBLOCK_N wgmma per k32 step), and the last
// warpgroup is the producer, whose one elected thread issues the TMA loads into a ring of `stages`
// shared-memory buffers. So BLOCK_M = 64 · consumers. A consumer holds BLOCK_N/2 f32 accumulators
// and as many for the chunk being promoted, which caps BLOCK_N at 192 (2·96 + addressing < 232
// registers). Every smem tile is K-major with 128-byte rows (128 e4m3 = one K block = one 128-byte
// swizzle atom wide), so A's tile is BLOCK_M × 128 B and B's BLOCK_N × 128 B per stage.
//
// With `ab: "bf16"` the operands are bf16 and unscaled: a 128-byte row holds 64 bf16, so a stage's K
// block is 64 wide (4 wgmma k16 steps), and the f32 accumulators take all of K directly (no scales,
// no temporary fragment, no promotion), which leaves room for blockN up to 256.
//
// With `kGrouped` (bf16, grouped, two consumers) the grouping is over K instead of M: D holds one M x N
// block per expert, each summed over its expert's 64-column blocks of A [M][P] and B [N][P] (the MoE
// weight gradient). The tile index runs expert-major (kGroupedTileCoords), and D is stored through a
// 3-D map [E][M][N], so M needs no alignment: a tile's rows past M are clipped at its expert's block.
//
// With `bMnMajor` (bf16, not K-grouped, no multicast) B is read in its natural [E][K][N] layout (N
// contiguous: segment_dot's weights) instead of [E][N][K]: each stage takes blockN/64 TMA boxes of
// 64 K rows x 64 N columns (128 bytes, 128-byte swizzle), each into its own 8 KiB region, and the
// wgmmas read B N-major (imm-trans-b = 1) through an MN-major descriptor (ptx.ts sh_wgmma_desc_mn).
import { CompileError } from "../../../errors.ts";
import { FP8_BLOCK, GROUPED_M_ALIGN } from "../../../numeric/fp8-gemm.ts";

export interface Fp8GemmConfig {
  /** The operands' element type (absent = e4m3 with block scales; "bf16": unscaled, f32 accumulation over all of K). */
  ab?: "e4m3" | "bf16";
  /** Consumer warpgroups (1 or 2); BLOCK_M = 64 · consumers. */
  consumers: 1 | 2;
  /** The tile's columns: a multiple of 16 from 16 to 192 (bf16: to 256). */
  blockN: number;
  /** Shared-memory pipeline depth. */
  stages: number;
  /** A grid of min(tiles, SMs) CTAs, each looping over tiles (true), or one CTA per tile. */
  persistent: boolean;
  /** Grouped layout: B is [E][N][K] and each 128-row block of A names its expert. */
  grouped: boolean;
  /**
   * Promotion overlapped with the MMAs (absent = off): two temporary fragments ping-ponged, so
   * k-block k+1's wgmmas are issued before block k is waited for (wait_group 1) and promoted. Costs
   * a third fragment of blockN/2 registers, which caps blockN (see overlapRegisterProblem).
   */
  overlap?: boolean;
  /**
   * Two-CTA clusters along M with B multicast (absent = off; dense only): the CTAs of a cluster take
   * m-blocks 2p and 2p+1 of the same n-block, each loads its own A and one half of the B tile, and
   * TMA multicasts that half into both CTAs' shared memory, so each CTA reads A + B/2 from L2 per
   * k-block instead of A + B. A stage is released to both producers (remote mbarrier arrivals).
   */
  multicast?: boolean;
  /**
   * The epilogue through shared memory and TMA (absent = off; blockN a multiple of 64): each consumer
   * warpgroup writes its 64 x blockN bf16 rows into a 128-byte-swizzled staging buffer and one thread
   * stores it with cp.async.bulk.tensor, so the next tile's MMAs start while the store drains, instead
   * of every thread issuing blockN/4 scattered 4-byte global stores (the LSU queue stalls them).
   */
  tmaStore?: boolean;
  /**
   * A's scales read from global memory in the K loop instead of arriving by TMA with each stage (set by
   * the launcher when M % 4 != 0: the scale rows' stride is then no multiple of 16 bytes, which TMA needs).
   */
  globalScales?: boolean;
  /**
   * B scaled per row and K block (1×128 tiles along K, sb laid out [KB][N]: the Wgrad form, both
   * operands quantized along the contracted dim) instead of per 128×128 block. B's scales of the tile
   * arrive by TMA with each stage; each thread's promotion takes its columns' scales from shared
   * memory (2 per 8-column group), so the stage is released after the promotion. Dense only.
   */
  bRows?: boolean;
  /**
   * Grouped over unpadded row runs (absent = off; two consumers, no multicast, globalScales or
   * deferStore): blockExpert holds four int32 per 128-row block — expert, A's first row, D's first row,
   * valid rows — so A is read and D written where the rows already are (no gather into a padded layout
   * and back). Rows past a run's end are computed from whatever A holds there and not stored: full
   * blocks store by TMA (with tmaStore), a run's last partial block stores its valid rows directly.
   * e4m3: A's 1×128 scales are laid out by block, sa [KB][M] with M = 128 x the blocks (row 128 b + i of
   * block b, zero past its valid rows: runtime/cuda/kernels/segment-sources.ts segmentRunScales), so
   * they still arrive by TMA at the block's own 128-row offset.
   */
  rowRuns?: boolean;
  /**
   * Grouped over K (absent = off; grouped, two consumers; the MoE weight gradient in one launch):
   * D[e·M + m][n] = Σ A[m][p]·B[n][p] over expert e's K blocks of p (64 columns bf16, 128 e4m3), for
   * every expert at once. A is [M][P] and B [N][P] (P contiguous), blockExpert holds two int32 per expert
   * (its first K block, its block count); the tiles are E × ceil(M/BM) × ceil(N/BN), expert-major. An
   * expert with no blocks has its D block stored as zeros, its tiles waiting on and releasing no stage.
   * e4m3 takes row-scaled B (bRows: sa [P/128][M], sb [P/128][N], both scaled per 128-column block of P,
   * the Wgrad form) with plain promotion. See kGroupedProblem.
   * persistent and tmaStore are optional (defaultKGroupedConfig sets both, as the M-grouped kernel's
   * measurements favour); the kernel takes one more parameter, E, after K.
   */
  kGrouped?: boolean;
  /**
   * B MN-major (absent = off; bf16, blockN a multiple of 64, not K-grouped, no multicast): B is [E][K][N]
   * bf16 (N contiguous; dense: [K][N]) and loaded through a 3-D map [E][K][N] in blockN/64 boxes of 64 N
   * columns x 64 K rows a stage (so K past an expert's end reads zeros, not the next expert's rows);
   * the wgmmas take B transposed (imm-trans-b 1). Name suffix _bn.
   */
  bMnMajor?: boolean;
  /**
   * The tile's columns in chunks of 128 (absent = off; e4m3, blockN 256, without overlap or row-scaled
   * B): each K block runs as two m64n128 wgmma groups, each waited for and promoted into its
   * half of acc before the next is issued, through one 64-register temporary. So a 128 x 256 tile fits
   * (acc 128 + 64 + overhead registers, where n256 would need 2 x 128), and each stage's A and B are read
   * from shared memory per 128 x 256 x 128 block: 144 KiB of wgmma reads and TMA writes per block, against
   * 2 x 80 KiB for two 128 x 128 tiles. A chunk is one scale block of B. The warpgroup waits for each
   * chunk (no ping-pong), so the other consumer's wgmmas are what run under its promotion. Suffix _ch.
   */
  chunked?: boolean;
  /**
   * The TMA-store epilogue staged one 64 x 64 box at a time (absent = the whole tile; needs tmaStore):
   * 8 KiB of staging per consumer, each box waiting for the previous box's store to have read it, so a
   * 128 x 256 tile keeps 4 stages instead of 3. Suffix _tsb (for _ts).
   */
  storeByBox?: boolean;
  /**
   * The tile's store deferred into the next tile's first K block (absent = off; chunked with tmaStore,
   * whole-tile staging): each half of acc is written into the staging buffer while the next tile's wgmmas
   * for that chunk run, and stored by TMA after them; the last tile's store follows the tile loop. So
   * the tensor cores are not idle while the shared-memory writes of the epilogue run, which costs most
   * on short K (16 blocks per tile at K = 2048). Suffix _ds.
   */
  deferStore?: boolean;
  /**
   * The two consumers take turns issuing chunks (absent = off; chunked): consumer 0 issues a chunk, then
   * consumer 1 its own, then consumer 0 its next, through two named barriers (ORDER_BARRIERS). Without it
   * both wait for the same stage, issue together and finish together, and then both promote while the
   * tensor cores idle; in turns, one promotes while the other's chunk runs. Suffix _oc.
   */
  orderedChunks?: boolean;
  /**
   * Rows per raster group (absent = GROUP_M, 8): consecutive tiles walk down groupM m-blocks before
   * moving along N. With 128 x 256 tiles on 8192³ a wave of 132 CTAs under GROUP_M 8 touches 8 row panels
   * of A and 16.5 column panels of B (16 + 66 MiB, more than L2); 16 rows make it 32 + 33 MiB. Suffix _g<N>.
   */
  groupM?: number;
  /**
   * A from registers (absent = off; chunked): each K block's A rows of the consumer (64 x 128 e4m3) are
   * loaded once into 16 registers with ldmatrix, and both chunks' wgmmas take A from them (the
   * register-A form of wgmma) instead of each reading A from shared memory: per 128 x 256 x 128 block,
   * 128 KiB of shared-memory traffic instead of 144. The next block's fragment is loaded as soon as the
   * last chunk's wgmmas are done, under that chunk's promotion (mainloop.ts aheadA). Registers as without
   * it (consumers 232: acc 128 + tmp 64 + A 16 + overhead; producer 40). Measured 3-7% slower than the
   * same kernel without it on an H200, in both forms (bench/NOTES.md, fourth and twelfth sessions). Suffix _ra.
   */
  aRegs?: boolean;
  /**
   * A timeline of the tiles (absent = off; chunked without deferStore or multicast; a measuring
   * instrument, never a candidate): clock stamps at each tile's boundaries into a trailing kernel
   * parameter (trace.ts has the layout; bench/gpu/gemm-trace.ts reads it). Suffix _tr.
   */
  trace?: boolean;
  /**
   * B's block scales put in each stage by a second producer thread (absent = off; chunked): lane 0 of the
   * producer's second warp loads the stage's two scales (one per 128-column chunk) from global memory
   * while the stage is still in use, stores them into the stage once it is free and arrives on its full
   * barrier (which then counts two arrivals), so the consumers read them from shared memory after the
   * stage's wait. Without it the consumers load them from global memory one block ahead. Measured on an
   * H200 (bench/NOTES.md, sixth session): a tile's start fell from ~1150 to ~380 cycles and a K block from
   * ~1320 to ~1230, so it is the faster on K = 2048 (+2%); on K = 7168 and 8192 the SM clock fell as much
   * as the cycles did (the card is at its power limit) and it ran 1% slower. Suffix _sbs.
   */
  stagedBScales?: boolean;
  /**
   * The TMA-store staging written with stmatrix (absent = st.shared.b32; needs tmaStore): one
   * m8n8.x4 per two 8-column groups of the warp's 16 rows, 16 stores a thread for a 64 x 256 half-tile
   * instead of 64, same swizzled layout. The tile timeline put the epilogue at ~1130 cycles a tile, of
   * which the 64 KiB of writes need 512 at 128 B/clk. Suffix _sm.
   */
  stmatrix?: boolean;
  /**
   * A tile whose second 128-column chunk lies wholly past N runs a K loop of the first chunk alone
   * (absent = off; the plain chunked forms: without staged or row scales, deferStore, orderedChunks,
   * aRegs or multicast): the loop is emitted twice and the tile picks one, so full tiles run the same
   * loop as without it. N = 1408 (5.5 tiles of 256) otherwise spends the last column tile's second half
   * on wgmmas of columns past N, scaled by 0. A branch around the chunk inside the K loop instead ran
   * full tiles 1.7-2.8% slower on an H200 (bench/NOTES.md, fourteenth session). Suffix _pn.
   */
  skipPastN?: boolean;
}

export const SMEM_LIMIT = 232448; // 227 KiB: the opt-in maximum per block on H100 / H200
const SMEM_ALIGN_SLACK = 1024; // dynamic smem is re-aligned to 1024 B (the 128-byte swizzle's atom)
/** Named barriers the consumers take turns through (orderedChunks): consumer 0 waits on the first, consumer 1 on the second. */
export const ORDER_BARRIERS = [3, 4] as const;
/** Rows per raster group: consecutive tiles walk down GROUP_M m-blocks before moving along N. */
export const GROUP_M = 8;
/** setmaxnreg targets (multiples of 8; the CTA's total stays within 64K registers). */
export const PRODUCER_REGS = 40;
/** The producer's setmaxnreg target: PRODUCER_REGS for every configuration (register A gave it 24 until its consumers fit 232). */
export const producerRegs = (_c: Fp8GemmConfig): number => PRODUCER_REGS;
export const consumerRegs = (c: Fp8GemmConfig): number => (c.consumers === 1 ? 240 : 232);
/** Registers of A's fragment per consumer thread with aRegs: 4 k32 steps x 4 (64 rows x 32 e4m3 over 128 threads). */
export const A_REGS = 16;

export const blockM = (c: Fp8GemmConfig): number => 64 * c.consumers;
export const isBf16 = (c: Pick<Fp8GemmConfig, "ab">): boolean => c.ab === "bf16";
/** Elements of K per stage: one 128-byte smem row (128 e4m3 or 64 bf16). */
export const kBlock = (c: Pick<Fp8GemmConfig, "ab">): number => (isBf16(c) ? 64 : FP8_BLOCK);
/** The largest blockN: two f32 fragments of blockN/2 with e4m3 (accumulator + promoted temporary), one with bf16. */
const maxBlockN = (c: Pick<Fp8GemmConfig, "ab" | "chunked">): number => (isBf16(c) || c.chunked ? 256 : 192);
/** Columns one wgmma group covers: a 128-column chunk when chunked, else the whole tile. */
export const wgmmaN = (c: Pick<Fp8GemmConfig, "blockN" | "chunked">): number => (c.chunked ? FP8_BLOCK : c.blockN);
export const threadsOf = (c: Fp8GemmConfig): number => 128 * (c.consumers + 1);
export const aTileBytes = (c: Fp8GemmConfig): number => blockM(c) * FP8_BLOCK;
export const bTileBytes = (c: Fp8GemmConfig): number => c.blockN * FP8_BLOCK;
/** A's scales of one K block for the tile's rows (f32), loaded with the stage unless globalScales. */
export const saTileBytes = (c: Fp8GemmConfig): number => (c.globalScales || isBf16(c) ? 0 : blockM(c) * 4);
/** B's row scales of one K block for the tile's columns (f32), with bRows. */
export const sbTileBytes = (c: Fp8GemmConfig): number => (c.bRows ? c.blockN * 4 : c.stagedBScales ? 16 : 0);
/** The bf16 tile staged for the TMA store (0 without it); 1024-byte aligned boxes of 64 x 64. */
export const stagingBytes = (c: Fp8GemmConfig): number => (c.tmaStore ? blockM(c) * (c.storeByBox ? 64 : c.blockN) * 2 : 0);
export const stageBytes = (c: Fp8GemmConfig): number => aTileBytes(c) + bTileBytes(c) + saTileBytes(c) + sbTileBytes(c);
export const smemBytes = (c: Fp8GemmConfig): number => SMEM_ALIGN_SLACK + c.stages * stageBytes(c) + stagingBytes(c) + 2 * c.stages * 8;

/** Whether a tile's columns can span two 128-wide scale blocks of B (then each column picks its own). */
export const spansScaleBlocks = (c: Fp8GemmConfig): boolean => !isBf16(c) && !c.chunked && FP8_BLOCK % c.blockN !== 0;

export function configName(c: Fp8GemmConfig): string {
  return `sh_${isBf16(c) ? "bf16" : "fp8"}_gemm_${c.grouped ? "grouped" : "dense"}_m${blockM(c)}n${c.blockN}_s${c.stages}${c.persistent ? "_p" : ""}${c.overlap ? "_ov" : ""}${c.multicast ? "_mc" : ""}${c.tmaStore ? (c.storeByBox ? "_tsb" : "_ts") : ""}${c.chunked ? "_ch" : ""}${c.deferStore ? "_ds" : ""}${c.orderedChunks ? "_oc" : ""}${c.groupM !== undefined && c.groupM !== GROUP_M ? `_g${c.groupM}` : ""}${c.aRegs ? "_ra" : ""}${c.globalScales ? "_gs" : ""}${c.bRows ? "_br" : ""}${c.rowRuns ? "_rr" : ""}${c.kGrouped ? "_kg" : ""}${c.bMnMajor ? "_bn" : ""}${c.stagedBScales ? "_sbs" : ""}${c.stmatrix ? "_sm" : ""}${c.skipPastN ? "_pn" : ""}${c.trace ? "_tr" : ""}`;
}

/** Why a configuration cannot be emitted, or undefined. */
export function configProblem(c: Fp8GemmConfig): string | undefined {
  if (c.consumers !== 1 && c.consumers !== 2) return `consumers must be 1 or 2, got ${c.consumers}`;
  if (c.ab !== undefined && c.ab !== "e4m3" && c.ab !== "bf16") return `ab must be "e4m3" or "bf16", got ${JSON.stringify(c.ab)}`;
  if (isBf16(c)) {
    const why = bf16Problem(c);
    if (why) return why;
  }
  if (!Number.isInteger(c.blockN) || c.blockN < 16 || c.blockN > maxBlockN(c) || c.blockN % 16 !== 0)
    return isBf16(c)
      ? `blockN must be a multiple of 16 from 16 to 256 (the widest wgmma, n256), got ${c.blockN}`
      : `blockN must be a multiple of 16 from 16 to ${maxBlockN(c)} (two f32 fragments of blockN/2 registers per thread${c.chunked ? "" : "; 256 with chunked"}), got ${c.blockN}`;
  // the tile starting at j·blockN must touch at most two scale blocks: (j·blockN mod 128) + blockN <= 256
  if (!isBf16(c))
    for (let j = 0; j < FP8_BLOCK; j++) if (((j * c.blockN) % FP8_BLOCK) + c.blockN > 2 * FP8_BLOCK) return `blockN ${c.blockN} lets a tile span three 128-column scale blocks`;
  if (!Number.isInteger(c.stages) || c.stages < 2) return `stages must be an integer >= 2, got ${c.stages}`;
  if (smemBytes(c) > SMEM_LIMIT) return `${c.stages} stages of ${blockM(c)}x${c.blockN} need ${smemBytes(c)} B of shared memory, more than ${SMEM_LIMIT}`;
  if (c.grouped && GROUPED_M_ALIGN % blockM(c) !== 0) return `grouped kernels need BLOCK_M to divide ${GROUPED_M_ALIGN}, got ${blockM(c)}`;
  if (c.tmaStore && c.blockN % 64 !== 0) return `the TMA-store epilogue stages 64-column boxes: blockN must be a multiple of 64, got ${c.blockN}`;
  if (c.bRows && ((c.grouped && !c.kGrouped) || c.multicast)) return "row-scaled B (the Wgrad form) is dense or K-grouped, without multicast";
  if (c.multicast && c.grouped) return "B multicast needs both CTAs of a cluster on the same weights: dense only (a grouped tile pair may straddle two experts)";
  if (c.rowRuns && !(c.grouped && c.consumers === 2 && !c.multicast && !c.globalScales && !c.deferStore))
    return "row runs are for grouped kernels with two consumers (128-row blocks), without multicast, globalScales or deferStore (e4m3: A's scales by TMA in the blocks' padded layout; the deferred store names its tile by m-block)";
  if (c.kGrouped && !(c.grouped && c.consumers === 2 && !c.multicast && !c.rowRuns && (isBf16(c) || (c.bRows && !c.chunked && !c.overlap && !c.globalScales))))
    return "K-grouped kernels (kGrouped) are grouped kernels with two consumers, without multicast or row runs, on bf16 operands or e4m3 with row-scaled B (the Wgrad form: both operands scaled per 128-column block of K), plain promotion and A's scales by TMA: set ab \"bf16\", or bRows without chunked, overlap or globalScales";
  if (c.bMnMajor) {
    if (!isBf16(c)) return "MN-major B (bMnMajor) is for bf16 operands (wgmma transposes only 16-bit B): set ab \"bf16\" or bMnMajor off";
    if (c.kGrouped || c.multicast) return "MN-major B (bMnMajor) is for the M-grouped and dense bf16 kernels, without kGrouped or multicast";
    if (c.blockN % 64 !== 0) return `MN-major B (bMnMajor) loads 64-column boxes of B: blockN must be a multiple of 64, got ${c.blockN}`;
  }
  if (c.storeByBox && !c.tmaStore) return "storeByBox stages the TMA-store epilogue box by box: it needs tmaStore";
  if (c.deferStore && !(c.chunked && c.tmaStore && !c.storeByBox)) return "deferStore writes each half of the tile into the whole-tile staging buffer under the next tile's chunks: it needs chunked and tmaStore, without storeByBox";
  if (c.groupM !== undefined && !(Number.isInteger(c.groupM) && c.groupM >= 1 && c.groupM <= 64)) return `groupM must be an integer from 1 to 64, got ${c.groupM}`;
  if (c.aRegs && !c.chunked) return "aRegs loads A once per K block for both chunks' wgmmas: it needs chunked";
  if (c.orderedChunks && !(c.chunked && c.consumers === 2)) return "orderedChunks alternates the two consumers' chunks: it needs chunked and two consumers";
  if (c.stagedBScales && !c.chunked) return "stagedBScales puts a chunked tile's two B scales in each stage: it needs chunked";
  if (c.stmatrix && !c.tmaStore) return "stmatrix writes the TMA-store epilogue's staging: it needs tmaStore";
  if (c.trace && !(c.chunked && !c.deferStore && !c.multicast)) return "trace stamps the chunked kernel's tile boundaries: it needs chunked, without deferStore or multicast";
  if (c.skipPastN && !(c.chunked && !c.stagedBScales && !c.bRows && !c.deferStore && !c.orderedChunks && !c.aRegs && !c.multicast))
    return "skipPastN emits the plain chunked K loop twice (with and without the second chunk): it needs chunked, without stagedBScales, bRows, deferStore, orderedChunks, aRegs or multicast";
  if (c.chunked) return chunkedProblem(c);
  if (c.overlap) return overlapProblem(c);
  return undefined;
}

/**
 * Why a chunked configuration cannot work, or undefined: e4m3 with 128-column chunks that are B's scale
 * blocks (blockN 256), one temporary (no overlap), no row-scaled B (its scales are read per column from
 * the stage, not one per chunk), and acc + the temporary (+ A's fragment with aRegs) within the
 * consumer's registers.
 */
function chunkedProblem(c: Fp8GemmConfig): string | undefined {
  if (isBf16(c)) return "chunked splits the e4m3 promotion into 128-column chunks; bf16 has no promotion and takes blockN 256 whole: set chunked off";
  if (c.blockN !== 2 * FP8_BLOCK) return `chunked tiles are two 128-column chunks: blockN must be 256, got ${c.blockN}`;
  if (c.overlap) return "chunked tiles wait for and promote each chunk before the next: no overlap with chunked";
  if (c.bRows && (c.stagedBScales || c.deferStore || c.aRegs || c.orderedChunks)) return "chunked row-scaled B (the Wgrad form) reads B's row scales from the stage by TMA: without stagedBScales, deferStore, aRegs or orderedChunks";
  // with aRegs the fragment replaces A's descriptor and its address arithmetic: ptxas -v fits that consumer in 232
  // registers without spills (2026-11-24), where the 24-register producer spilled its scale thread (_ra_sbs)
  const aRegs = c.aRegs ? A_REGS : 0, overhead = c.aRegs ? CONSUMER_OVERHEAD_REGS - 8 : CONSUMER_OVERHEAD_REGS;
  const need = c.blockN / 2 + FP8_BLOCK / 2 + aRegs + overhead;
  if (need > consumerRegs(c)) return `chunked promotion needs ${c.blockN / 2} + ${FP8_BLOCK / 2}${aRegs ? ` + ${aRegs}` : ""} + ${overhead} = ${need} registers per consumer thread, more than its ${consumerRegs(c)}`;
  return undefined;
}

/**
 * The e4m3 features a bf16 kernel has no use for: they all concern the block scales, which bf16
 * operands do not have (its accumulators take all of K, so there is nothing to promote or overlap).
 */
function bf16Problem(c: Fp8GemmConfig): string | undefined {
  if (c.overlap) return "overlapped promotion hides the e4m3 scale promotion; bf16 accumulates in the wgmma's f32 registers over all of K and has none: set overlap off";
  if (c.bRows) return "row-scaled B (bRows) picks B's block scales; bf16 operands are unscaled: set bRows off";
  if (c.globalScales) return "globalScales says how A's scales are loaded; bf16 operands are unscaled: set globalScales off";
  return undefined;
}

/** CTAs per cluster: 2 with B multicast, else 1. */
export const clusterSize = (c: Fp8GemmConfig): 1 | 2 => (c.multicast ? 2 : 1);
/** Rows of B one CTA loads per stage (its half when multicast). */
export const bBoxRows = (c: Fp8GemmConfig): number => c.blockN / clusterSize(c);

/** Registers a consumer thread needs besides its fragments (addresses, scales, loop state); measured with ptxas -v. */
export const CONSUMER_OVERHEAD_REGS = 32;

/**
 * Why an overlapped (ping-pong) configuration cannot work, or undefined: the accumulator and the two
 * temporaries are 3 x blockN/2 f32 registers per thread, plus the overhead, within the setmaxnreg budget
 * (232 with two consumers: blockN <= 128; 240 with one: blockN <= 136). Two stages in flight per
 * consumer need at least 3 stages so the producer is not starved.
 */
function overlapProblem(c: Fp8GemmConfig): string | undefined {
  const need = 3 * (c.blockN / 2) + CONSUMER_OVERHEAD_REGS;
  if (need > consumerRegs(c))
    return `overlapped promotion needs 3 fragments of ${c.blockN / 2} registers + ${CONSUMER_OVERHEAD_REGS} = ${need} registers per consumer thread, more than its ${consumerRegs(c)}; use blockN <= ${Math.floor(((consumerRegs(c) - CONSUMER_OVERHEAD_REGS) * 2) / 3 / 16) * 16} or overlap off`;
  if (c.stages < 3) return `overlapped promotion holds two stages per consumer: stages must be >= 3, got ${c.stages}`;
  return undefined;
}

export function checkConfig(c: Fp8GemmConfig): void {
  const why = configProblem(c);
  if (why) throw new CompileError(`FP8 GEMM config ${JSON.stringify(c)}: ${why}; pick another from gemmCandidates()`);
}

export type Fp8GemmShapeless = Omit<Fp8GemmConfig, "stages">;

/** The most stages of configuration `c` that fit in shared memory (at most `cap`). */
export function maxStages(c: Fp8GemmShapeless, cap = 8): number {
  const one: Fp8GemmConfig = { ...c, stages: 1 };
  return Math.min(cap, Math.floor((SMEM_LIMIT - SMEM_ALIGN_SLACK - stagingBytes(one)) / (stageBytes(one) + 16)));
}

/** `c` with as many stages as fit. */
const filled = (c: Fp8GemmShapeless): Fp8GemmConfig => ({ ...c, stages: maxStages(c) });

/** Overlapped candidates (consumers, blockN), tried after the plain-promotion ones. */
const OVERLAP_SHAPES: [1 | 2, number][] = [[2, 128], [2, 112], [2, 96], [1, 128]];
/** Multicast candidates (blockN, overlapped promotion), two consumers each. */
const MULTICAST_SHAPES: [number, boolean][] = [[128, true], [192, false], [160, false], [128, false]];
/** TMA-store candidates (blockN, overlapped promotion, multicast), two consumers each. */
const TMA_STORE_SHAPES: [number, boolean, boolean][] = [[128, true, false], [192, false, false], [128, false, false], [128, true, true], [192, false, true]];
/**
 * 128 x 256 chunked candidates, each on top of { consumers 2, blockN 256, persistent, chunked }: whole-tile
 * staging (3 stages), box by box (4), direct stores (4), the store deferred under the next tile's chunks,
 * B multicast (dense only), the 16-row raster, A from registers, the consumers' chunks in turns, and with
 * the 16-row raster B's scales staged by the scale thread and/or the staging written by stmatrix (sixth
 * session: _sbs_sm the fastest on K = 2048, _sm on K = 7168 and 8192 and grouped; bench/NOTES.md).
 */
const CHUNKED_VARIANTS: Partial<Fp8GemmConfig>[] = [
  { tmaStore: true },
  { tmaStore: true, storeByBox: true },
  {},
  { tmaStore: true, deferStore: true },
  { tmaStore: true, multicast: true },
  { tmaStore: true, deferStore: true, multicast: true },
  { tmaStore: true, groupM: 16 },
  { tmaStore: true, groupM: 16, aRegs: true },
  { tmaStore: true, orderedChunks: true },
  { tmaStore: true, storeByBox: true, orderedChunks: true },
  { tmaStore: true, groupM: 16, stagedBScales: true },
  { tmaStore: true, groupM: 16, stmatrix: true },
  // the default (bench/NOTES.md, fourteenth session: level on full tiles, +3.5% on grouped N = 1408)
  { tmaStore: true, groupM: 16, stmatrix: true, skipPastN: true },
  { tmaStore: true, groupM: 16, stagedBScales: true, stmatrix: true },
];
/**
 * Chunked variants the GPU bench runs (bench/gpu/fp8-gemm.ts, gemm-trace.ts) but the autotuner does not
 * time, each on top of { tmaStore, groupM 16, stagedBScales, stmatrix } (the fastest on K = 2048): B
 * multicast over 2-CTA clusters (dense only), with and without stmatrix. Measured 1-3% slower than
 * _sbs_sm (bench/results/2026-11-23-fp8-gemm-h200-multicast-sbs.txt); kept so the bench keeps checking
 * the scale thread under multicast, which no tuned kernel exercises.
 */
const EXPERIMENTAL_CHUNKED_VARIANTS: Partial<Fp8GemmConfig>[] = [{ multicast: true }, { multicast: true, stmatrix: false }];

/**
 * The configurations the autotuner times, the first being the plain one (one consumer, 64×128,
 * 4 stages, one CTA per tile) that the GPU bench checks first so a broken fancy variant is told
 * apart from a broken basis.
 */
export function gemmCandidates(grouped: boolean): Fp8GemmConfig[] {
  const out: Fp8GemmConfig[] = [{ consumers: 1, blockN: 128, stages: 4, persistent: false, grouped }];
  const shapes: [1 | 2, number][] = [[2, 128], [2, 160], [2, 192], [2, 96], [1, 128], [1, 192], [1, 64], [1, 32]];
  for (const [consumers, blockN] of shapes) out.push(filled({ consumers, blockN, persistent: true, grouped }));
  out.push(filled({ consumers: 2, blockN: 128, persistent: false, grouped }));
  // overlapped promotion (ping-pong temporaries): blockN is capped by the third fragment
  for (const [consumers, blockN] of OVERLAP_SHAPES) out.push(filled({ consumers, blockN, persistent: true, grouped, overlap: true }));
  // two-CTA clusters with B multicast (dense): half the B traffic from L2 per CTA
  if (!grouped)
    for (const [blockN, overlap] of MULTICAST_SHAPES) out.push(filled({ consumers: 2, blockN, persistent: true, grouped, ...(overlap ? { overlap } : {}), multicast: true }));
  // the TMA-store epilogue (one stage fewer: the staging buffer takes its shared memory)
  for (const [blockN, overlap, multicast] of TMA_STORE_SHAPES)
    if (!(multicast && grouped)) out.push(filled({ consumers: 2, blockN, persistent: true, grouped, ...(overlap ? { overlap } : {}), ...(multicast ? { multicast } : {}), tmaStore: true }));
  // 128 x 256 tiles in two 128-column chunks (less shared-memory traffic per FLOP than 128 x 128)
  for (const v of CHUNKED_VARIANTS) if (!(v.multicast && grouped)) out.push(filled({ consumers: 2, blockN: 256, persistent: true, grouped, chunked: true, ...v }));
  return out.filter((c) => configProblem(c) === undefined);
}

/** The experimental chunked variants (EXPERIMENTAL_CHUNKED_VARIANTS): for the GPU bench, never the autotuner. */
export function experimentalGemmCandidates(grouped: boolean): Fp8GemmConfig[] {
  return EXPERIMENTAL_CHUNKED_VARIANTS.map((v) =>
    filled({ consumers: 2, blockN: 256, persistent: true, grouped, chunked: true, tmaStore: true, groupM: 16, stagedBScales: true, stmatrix: true, ...v }),
  ).filter((c) => configProblem(c) === undefined);
}

/**
 * Candidates for row-scaled B (the Wgrad form; dense): the default kernel's shape with and without
 * overlapped promotion and the TMA-store epilogue, the same 192 wide, and 128 x 256 chunked tiles (each chunk promoted
 * with its columns' row scales from the stage), with and without stmatrix staging. On an H200 the
 * chunked ones ran 904-913 TFLOP/s against 976-978 for m128n128_s5_p_ts_br (the default) on the
 * 8192-deep Wgrad shapes (bench/results/2026-11-23-fp8-gemm-h200-wgrad-chunked.txt): each column
 * group's scale load and multiply sit in the promotion's path.
 */
export function rowScaledCandidates(): Fp8GemmConfig[] {
  const out: Fp8GemmConfig[] = [];
  for (const [overlap, tmaStore] of [[true, true], [false, true], [true, false]] as const)
    out.push(filled({ consumers: 2, blockN: 128, persistent: true, grouped: false, ...(overlap ? { overlap } : {}), ...(tmaStore ? { tmaStore } : {}), bRows: true }));
  // 192 wide (defaultRowScaledConfig's pick where its tiles take less time)
  out.push(filled({ consumers: 2, blockN: 192, persistent: true, grouped: false, tmaStore: true, bRows: true }));
  for (const stmatrix of [false, true])
    out.push(filled({ consumers: 2, blockN: 256, persistent: true, grouped: false, chunked: true, tmaStore: true, groupM: 16, bRows: true, ...(stmatrix ? { stmatrix } : {}) }));
  return out.filter((c) => configProblem(c) === undefined);
}

/**
 * TMA-store and plain-epilogue bf16 shapes (consumers, blockN, tmaStore), tried after the basic one.
 * 176 (plain epilogue: the TMA store takes 64-column boxes) tiles the MoE expert widths 1408 and 2816
 * exactly (8 and 16 tiles) and is wider than 128, which tiles them too; 256 leaves 1408 a half-empty last tile.
 */
const BF16_SHAPES: [1 | 2, number, boolean][] = [[2, 128, true], [2, 256, true], [2, 192, true], [2, 128, false], [2, 256, false], [2, 176, false], [1, 256, true], [1, 128, false]];

/**
 * The bf16 configurations to time (dense or grouped), the first being the plain one (one consumer,
 * 64x128, 4 stages, one CTA per tile), as for e4m3; dense adds the B-multicast pair.
 */
export function bf16GemmCandidates(grouped: boolean): Fp8GemmConfig[] {
  const out: Fp8GemmConfig[] = [{ ab: "bf16", consumers: 1, blockN: 128, stages: 4, persistent: false, grouped }];
  for (const [consumers, blockN, tmaStore] of BF16_SHAPES) out.push(filled({ ab: "bf16", consumers, blockN, persistent: true, grouped, ...(tmaStore ? { tmaStore } : {}) }));
  if (!grouped) out.push(filled({ ab: "bf16", consumers: 2, blockN: 256, persistent: true, grouped, multicast: true, tmaStore: true }));
  return out.filter((c) => configProblem(c) === undefined);
}

/**
 * The MN-major-B bf16 configurations to time (bMnMajor: B [E][K][N] as segment_dot's weights are), dense or
 * grouped: BF16_SHAPES's two-consumer shapes whose blockN is a multiple of 64 (the 64-column boxes of B).
 */
export function bf16MnMajorCandidates(grouped: boolean): Fp8GemmConfig[] {
  const out: Fp8GemmConfig[] = [];
  for (const [consumers, blockN, tmaStore] of BF16_SHAPES)
    if (consumers === 2 && blockN % 64 === 0) out.push(filled({ ab: "bf16", consumers, blockN, persistent: true, grouped, ...(tmaStore ? { tmaStore } : {}), bMnMajor: true }));
  return out.filter((c) => configProblem(c) === undefined);
}

/**
 * The bf16 configuration launched without tuning: persistent, two consumers, TMA-store epilogue, 128 x 256
 * tiles where N is a multiple of 256 and 128 x 128 otherwise (N = 1408 would leave 256's last tile half
 * empty). The fastest candidates on an H200 (bench/results/2026-11-23-bf16-gemm-h200.txt): 128 x 256 on
 * dense 4096x7168x2048 (768 TFLOP/s) and grouped N2816/K2048 and N2048/K1408 (700, 672), 128 x 128 on
 * grouped N1408/K2048 (649; 128 x 256 there: 618).
 */
export function defaultBf16GemmConfig(grouped: boolean, N?: number): Fp8GemmConfig {
  const blockN = N === undefined || N % 256 === 0 ? 256 : 128;
  return filled({ ab: "bf16", consumers: 2, blockN, persistent: true, grouped, tmaStore: true });
}

/**
 * The K-grouped configurations to time (MoE weight gradients): 128 x 256 and 128 x 128 tiles with the
 * TMA-store epilogue (the default's two widths), and both with the plain epilogue.
 */
export function kGroupedCandidates(): Fp8GemmConfig[] {
  const out: Fp8GemmConfig[] = [];
  for (const [blockN, tmaStore] of [[256, true], [128, true], [256, false], [128, false]] as const)
    out.push(filled({ ab: "bf16", consumers: 2, blockN, persistent: true, grouped: true, kGrouped: true, ...(tmaStore ? { tmaStore } : {}) }));
  return out.filter((c) => configProblem(c) === undefined);
}

/**
 * The K-grouped configuration launched without tuning, chosen as defaultBf16GemmConfig chooses for the
 * M-grouped kernel (not yet measured for this one): persistent, two consumers, TMA-store epilogue,
 * 128 x 256 tiles where N is a multiple of 256 and 128 x 128 otherwise.
 */
export function defaultKGroupedConfig(N: number): Fp8GemmConfig {
  return { ...defaultBf16GemmConfig(true, N), kGrouped: true };
}

/**
 * The K-grouped e4m3 configuration (scaled_segment_wgrad on device-side counts): the dense Wgrad form's
 * kernel (defaultRowScaledConfig: 128 x 128, plain promotion, TMA store) over every expert's K blocks.
 */
export function defaultKGroupedRowScaledConfig(): Fp8GemmConfig {
  return { ...defaultRowScaledConfig(), grouped: true, kGrouped: true };
}

/** SMs of the Hopper parts the defaults were measured on (H100 / H200 SXM). */
export const HOPPER_SMS = 132;

/**
 * The configuration the executor launches without tuning (dense or grouped). Where the problem has at
 * least a wave of its tiles on `sms` SMs (or its shape is not given): the persistent 128 x 256 chunked
 * kernel with the TMA-store epilogue, the 16-row raster and the stmatrix staging, the fastest on every large
 * dense and grouped shape on an H200 (bench/results/2026-11-23-fp8-gemm-h200-chunked*.txt: 1224-1404 TFLOP/s
 * on the four large dense shapes, 5-8% above the 128 x 128 one; _g16 +1% on 8192³, even elsewhere; _sm
 * -0.2% to +1.4% against _g16 in three calls, -sixth.txt the last: level on long K, ahead on K = 2048 and
 * grouped; _sbs_sm, a tuner candidate, is 1-2% faster on dense K = 2048 and 1% slower on long K), whose tiles with
 * their second chunk past N run a one-chunk K loop (_pn: level on full tiles, +3.5% on grouped N = 1408 in two
 * A/B calls, bench/results/2026-11-24-fp8-gemm-h200-skip-past-n-ab.txt). With fewer tiles
 * (small M: 128x7168x2048 ran 209 TFLOP/s chunked, 282 at 128 x 128), the persistent 128 x 128 kernel
 * with overlapped promotion and the TMA store.
 */
export function defaultGemmConfig(grouped: boolean, shape?: { M: number; N: number }, sms = HOPPER_SMS): Fp8GemmConfig {
  const [wide, narrow] = DEFAULT_GEMM_CONFIGS[grouped ? 1 : 0];
  return shape === undefined || Math.ceil(shape.M / blockM(wide)) * Math.ceil(shape.N / wide.blockN) >= sms ? wide : narrow;
}
/** [wide, narrow] defaults, dense then grouped: built once, the executor asks for one per launch. */
const DEFAULT_GEMM_CONFIGS = [false, true].map(
  (grouped) =>
    [
      filled({ consumers: 2, blockN: 256, persistent: true, grouped, chunked: true, tmaStore: true, groupM: 16, stmatrix: true, skipPastN: true }),
      filled({ consumers: 2, blockN: 128, persistent: true, grouped, overlap: true, tmaStore: true }),
    ] as const,
);

/**
 * The configuration for row-scaled B (the Wgrad form), 128 x 128 or 128 x 192 with the TMA-store
 * epilogue and plain promotion: given the problem's M and N, the one whose tiles take less time on `sms`
 * SMs, counted as tiles an SM (ceil(tiles / sms)) times the time of one tile. A 192-wide tile takes 1.37
 * of a 128-wide one's (the fit to bench/results/2026-11-24-fp8-gemm-h200-wgrad-192.txt, an H200: 192
 * ran 0.0511 ms against 0.0731 on 2048x1408x8192, 2 tiles an SM against 1; 0.2385 against 0.2443 on
 * 7168x2048x8192, 5 against 7), so 192 also wins where the waves come out even. Without a shape: 128.
 */
export function defaultRowScaledConfig(shape?: { M: number; N: number }, sms = HOPPER_SMS): Fp8GemmConfig {
  const [[narrow], [wide, wideTime]] = ROW_SCALED_CONFIGS;
  if (!shape) return narrow;
  const perSm = (c: Fp8GemmConfig) => Math.ceil((Math.ceil(shape.M / blockM(c)) * Math.ceil(shape.N / c.blockN)) / Math.max(1, sms));
  return perSm(wide) * wideTime < perSm(narrow) ? wide : narrow;
}
/** [configuration, time of one tile in 128-wide tiles]. */
const ROW_SCALED_CONFIGS = ([[128, 1], [192, 1.37]] as const).map(([blockN, t]) => [filled({ consumers: 2, blockN, persistent: true, grouped: false, tmaStore: true, bRows: true }), t] as const);

export interface Fp8GemmShape {
  M: number;
  N: number;
  K: number;
}

/** Why this problem cannot run on the generated kernels (the cuBLASLt fallback takes it), or undefined. */
export function shapeProblem(s: Fp8GemmShape): string | undefined {
  if (!(s.M > 0 && s.N > 0 && s.K > 0)) return `empty problem ${s.M}x${s.N}x${s.K}`;
  if (s.K % 16 !== 0) return `K = ${s.K} is not a multiple of 16 (TMA needs 16-byte row strides)`;
  if (s.N % 16 !== 0) return `N = ${s.N} is not a multiple of 16 (the epilogue stores column pairs)`;
  if (s.M >= 2 ** 31 / Math.max(s.N, s.K)) return `M = ${s.M} overflows 32-bit offsets`;
  return undefined;
}

export interface Fp8GemmGeometry {
  grid: number;
  block: number;
  smemBytes: number;
  tiles: number;
  mBlocks: number;
  nBlocks: number;
}

/**
 * The launch: `tiles` counts the scheduling units (tile pairs with multicast: a cluster takes both
 * m-blocks of a pair, the odd last one computing an out-of-range block it does not store), and the
 * grid is in CTAs (a multiple of the cluster size; persistent grids fill the SMs by clusters).
 */
export function geometryOf(c: Fp8GemmConfig, s: Fp8GemmShape & { experts?: number }, smCount: number): Fp8GemmGeometry {
  const cs = clusterSize(c);
  // K-grouped: every expert has its own M x N block of D
  const mBlocks = Math.ceil(s.M / blockM(c)), nBlocks = Math.ceil(s.N / c.blockN), tiles = Math.ceil(mBlocks / cs) * nBlocks * (c.kGrouped ? s.experts! : 1);
  const clusters = c.persistent ? Math.min(tiles, Math.floor(smCount / cs)) : tiles;
  return { grid: clusters * cs, block: threadsOf(c), smemBytes: smemBytes(c), tiles, mBlocks, nBlocks };
}

/** The tile a linear tile index names (GROUP_M-row raster), as the kernel computes it. */
export function tileCoords(tile: number, mBlocks: number, nBlocks: number, groupM = GROUP_M): { mb: number; nb: number } {
  const perGroup = groupM * nBlocks;
  const first = Math.floor(tile / perGroup) * groupM;
  const rows = Math.min(mBlocks - first, groupM);
  const r = tile % perGroup;
  return { mb: first + (r % rows), nb: Math.floor(r / rows) };
}

/**
 * The tile a K-grouped kernel's linear tile index names: expert-major (an expert's tiles together, so
 * its A and B columns stay in L2 while its tiles run), the GROUP_M raster inside the expert. Mirrored
 * by kg_tile_coords in the kernel (emit.ts).
 */
export function kGroupedTileCoords(tile: number, mBlocks: number, nBlocks: number): { e: number; mb: number; nb: number } {
  const perExpert = mBlocks * nBlocks, e = Math.floor(tile / perExpert);
  return { e, ...tileCoords(tile - e * perExpert, mBlocks, nBlocks) };
}

/**
 * Why a K-grouped problem cannot run, or undefined: M (each expert's rows of D), N and K (= P, the
 * padded columns A and B hold) as for shapeProblem, K a positive multiple of the 64-column blocks
 * blockExpert counts in (an all-empty routing still passes one block), and the experts' D rows and
 * the tiles within 32-bit indices.
 */
export function kGroupedProblem(s: Fp8GemmShape & { experts?: number }, kBlockCols = 64): string | undefined {
  const E = s.experts;
  if (E === undefined || !Number.isInteger(E) || E < 1) return `K-grouped GEMMs need experts >= 1 (one M x N block of D each), got ${E}`;
  const why = shapeProblem(s);
  if (why) return why;
  if (s.K % kBlockCols !== 0) return `K = P = ${s.K} must be a multiple of ${kBlockCols} (blockExpert counts ${kBlockCols}-column blocks of A and B; pad each expert's columns with zeros)`;
  if (kBlockCols === FP8_BLOCK && s.M % 4 !== 0) return `M = ${s.M}: A's scale rows [P/128][M] need 16-byte strides for TMA (M a multiple of 4)`;
  if (E * s.M >= 2 ** 31 / s.N) return `E x M = ${E * s.M} rows of D overflow 32-bit offsets`;
  return undefined;
}
