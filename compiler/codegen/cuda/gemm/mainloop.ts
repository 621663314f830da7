// The consumer warpgroup's K loop of an FP8 GEMM kernel (emitted into emit.ts's kernel body), in two
// forms. Plain: per 128-wide K block, 4 wgmma k32 steps into one temporary fragment, wait_group 0,
// promote (acc += tmp · sa·sb): the tensor cores idle while the warpgroup promotes. Overlapped: two
// temporaries ping-ponged, as DeepGEMM and CUTLASS's FP8 "2x accumulation" mainloops do: block k+1's
// wgmmas are issued before block k is waited for with wait_group 1 (PTX: waits until at most one
// committed group is pending, i.e. block k's group is done), so its promotion runs under block k+1's
// MMAs. The loop is unrolled by two so each temporary is a statically named register array.
//
// The bf16 loop (bf16Loop) has no scales: each block's 4 wgmma k16 steps accumulate straight into
// acc, and block k+1's group is issued before block k's is waited for (wait_group 1), so the tensor
// cores always have a group queued while the warpgroup waits and releases a stage.
//
// Names the kernel body defines: acc, tmp (plain) or t0/t1 (overlapped), s/phase (the ring position),
// bars, tilesA/tilesB, A_BYTES/B_BYTES, S, wg, lane, sa, sbTile, m0/m1, r0, c0, sas/SA_BYTES,
// sbs/SB_BYTES (row-scaled B), M, KB, split/second (when a tile spans two scale blocks of B).
import { FP8_BLOCK } from "../../../numeric/fp8-gemm.ts";
import { A_REGS, ORDER_BARRIERS, spansScaleBlocks, type Fp8GemmConfig } from "./config.ts";
import { MN_K16_STEP, wgmmaName, wgmmaRsName } from "./ptx.ts";
import { stagingFlush, stagingWrites } from "./staging.ts";
import { traceConsumerWait } from "./trace.ts";

/**
 * Scales. A's (two rows per thread, a0/a1) arrive by TMA with each stage, SA_BYTES per stage from
 * `sas`, and are read from shared memory once the stage has landed, before it is released (the
 * global loads they replace were a new 128-row line every block, and the promotion stalled on their
 * L2 latency: bench/results/2026-11-22-fp8-gemm-profile-h100.txt). B's (b0, and b1 when the tile
 * spans two scale blocks) are one broadcast float per block, loaded from global memory one K block
 * ahead. With globalScales (M % 4 != 0: no TMA for the scale rows) A's are loaded like B's.
 */
function scaleLoads(c: Fp8GemmConfig, kb: string, prefix: string, pad: string, decl: string, guard: string): string {
  const g = guard ? `${guard} && ` : "";
  const a = globalAScales(c, kb, prefix, pad, decl, guard);
  if (c.bRows) return a; // B's scales are per column, read from the stage in the promotion
  return `${a}${pad}${decl}${prefix}b0 = ${guard ? `${guard} ? sbTile[${kb}] : 0.f` : `sbTile[${kb}]`};
${spansScaleBlocks(c) ? `${pad}${decl}${prefix}b1 = ${g}second ? sbTile[KB + ${kb}] : 0.f;\n` : ""}`;
}
/** With globalScales, A's two row scales of block `kb` from global memory (zero past M, or where `guard` fails). */
function globalAScales(c: Fp8GemmConfig, kb: string, prefix: string, pad: string, decl: string, guard: string): string {
  const g = guard ? `${guard} && ` : "";
  return c.globalScales
    ? `${pad}${decl}${prefix}a0 = ${g}m0 < M ? sa[(long long)(${kb}) * M + m0] : 0.f, ${prefix}a1 = ${g}m1 < M ? sa[(long long)(${kb}) * M + m1] : 0.f;\n`
    : "";
}
/** Declares the scale registers and loads block 0's. */
const firstScales = (c: Fp8GemmConfig, pad: string): string => scaleLoads(c, "0", "", pad, "float ", "");
/** Block bk + 1's scales into nb0.. (zeros past the last block). */
const nextScales = (c: Fp8GemmConfig, bk: string, pad: string): string => scaleLoads(c, `${bk} + 1`, "n", pad, "const float ", `${bk} + 1 < KB`);
/** The prefetched scales become the current ones. */
const advanceScales = (c: Fp8GemmConfig, pad: string): string => {
  const parts = [...(c.globalScales ? ["a0 = na0; a1 = na1;"] : []), ...(c.bRows ? [] : [`b0 = nb0;${spansScaleBlocks(c) ? " b1 = nb1;" : ""}`])];
  return parts.length ? `${pad}${parts.join(" ")}\n` : "";
};
/** A's scales of the block in `stage` (landed, not yet released), from shared memory. */
const stageScales = (c: Fp8GemmConfig, stage: string, pad: string): string =>
  c.globalScales ? "" : `${pad}const float a0 = sh_lds_f32(sas + (${stage}) * SA_BYTES + r0 * 4), a1 = sh_lds_f32(sas + (${stage}) * SA_BYTES + (r0 + 8) * 4);\n`;

/**
 * acc += frag · scale: fragment register 4j+{0,1} is row r0, 4j+{2,3} row r0+8, columns 8j + c0 + {0,1}.
 * With bRows each column has its own B scale for the block, read from `stage` (still held).
 */
function promote(c: Fp8GemmConfig, frag: string, pad: string, stage: string): string {
  if (c.bRows) return rowScaledPromote(frag, pad, stage, c.blockN / 8);
  const two = spansScaleBlocks(c);
  return `${pad}const float s00 = a0 * b0, s10 = a1 * b0;
${two ? `${pad}const float s01 = a0 * b1, s11 = a1 * b1;\n` : ""}#pragma unroll
${pad}for (int j = 0; j < ${c.blockN / 8}; ++j) {
${two ? `${pad}  const bool hi = 8 * j + c0 >= split;\n${pad}  const float u0 = hi ? s01 : s00, u1 = hi ? s11 : s10;\n` : `${pad}  const float u0 = s00, u1 = s10;\n`}${fmaGroup(frag, "", pad + "  ")}${pad}}
`;
}

/**
 * Row-scaled B (the Wgrad form): `groups` column groups of `frag` into acc from acc[`acc0`] on, each
 * column with its own B scale of the block, read from `stage` (still held) for this thread's columns
 * `col0` + 8j + c0 and the one after (a chunked tile's chunk j: col0 128j, acc0 64j).
 */
function rowScaledPromote(frag: string, pad: string, stage: string, groups: number, col0 = 0, acc0 = 0): string {
  const col = col0 ? `${col0} + ` : "", at = (r: number) => `acc[${acc0 ? `${acc0} + ` : ""}4 * j + ${r}]`;
  return `#pragma unroll
${pad}for (int j = 0; j < ${groups}; ++j) {
${pad}  float b0, b1;  // the row scales of B for this thread's columns ${col}8j + c0 and ${col}8j + c0 + 1
${pad}  sh_lds_f32x2(sbs + (${stage}) * SB_BYTES + (${col}8 * j + c0) * 4, b0, b1);
${[0, 1, 2, 3].map((r) => `${pad}  ${at(r)} = fmaf(${frag}[4 * j + ${r}], a${r >> 1} * b${r & 1}, ${at(r)});\n`).join("")}${pad}}
`;
}

/**
 * Column group j's four FMAs (inside a loop over j): acc[`base`4j + r] += frag[4j + r] · u0 for the row r0
 * pair (r 0, 1), · u1 for the row r0 + 8 pair (r 2, 3). `base` offsets acc ("64 + ": a chunk's half).
 */
const fmaGroup = (frag: string, base: string, pad: string): string =>
  [0, 1, 2, 3].map((r) => `${pad}acc[${base}4 * j + ${r}] = fmaf(${frag}[4 * j + ${r}], ${r < 2 ? "u0" : "u1"}, acc[${base}4 * j + ${r}]);\n`).join("");

/**
 * Waits for stage s, issues its 4 wgmma steps (k32 e4m3 or k16 bf16: 32 bytes of K each) into `frag`
 * as one committed group, advances the ring. `accumulate` is step k's flag: `k` starts the fragment
 * afresh, `1` adds to it (bf16 blocks after a tile's first).
 */
function issue(c: Fp8GemmConfig, frag: string, pad: string, accumulate = "k"): string {
  // MN-major B (bMnMajor): its own descriptor, a k16 step 16 rows of 128 bytes further (ptx.ts MN_MAJOR_B)
  const mn = c.bMnMajor === true;
  return `${pad}sh_mbar_wait(bars + 8 * s, phase);  // the stage's bytes have landed
${pad}{
${pad}  const sh_u64 da = sh_wgmma_desc(tilesA + s * A_BYTES + wg * 64 * ${FP8_BLOCK}), db = ${mn ? "sh_wgmma_desc_mn" : "sh_wgmma_desc"}(tilesB + s * B_BYTES);
${pad}  sh_wgmma_fence();
#pragma unroll
${pad}  for (int k = 0; k < ${FP8_BLOCK / 32}; ++k) ${wgmmaName(c.blockN, c.ab, mn)}(${frag}, da + 2 * k, db + ${mn ? MN_K16_STEP : 2} * k, ${accumulate});
${pad}  sh_wgmma_commit();
${pad}}
${pad}if (++s == S) { s = 0; phase ^= 1; }
`;
}

/**
 * A read stage goes back to this CTA's producer (lane 0 of each consumer warp arrives), or with
 * multicast to both producers of the pair: lane r arrives on CTA r's barrier, the two in parallel.
 */
const release = (c: Fp8GemmConfig, bar: string): string =>
  c.multicast ? `if (lane < 2) sh_mbar_arrive_cta(${bar}, lane);` : `if (lane == 0) sh_mbar_arrive(${bar});`;

/** The wgmmas' registers of `frag` (`n` of them) are read only after their group is waited for. */
const fenceAll = (n: number, frag: string, pad: string): string => `#pragma unroll
${pad}for (int i = 0; i < ${n}; ++i) sh_reg_fence(${frag}[i]);
`;

/**
 * The plain loop: wait for the stage, 4 wgmmas, wait_group 0, then release the stage and promote
 * (with row-scaled B: promote first, its scales are in the stage).
 */
export function plainLoop(c: Fp8GemmConfig): string {
  const p = "      ";
  return `${firstScales(c, "    ")}    for (int kb = 0; kb < KB; ++kb) {
      // the next block's scales (plain loads: they do not wait for the stage)
${nextScales(c, "kb", p)}${p}sh_mbar_wait(bars + 8 * s, phase);  // the stage's bytes have landed
${stageScales(c, "s", p)}${p}const sh_u64 da = sh_wgmma_desc(tilesA + s * A_BYTES + wg * 64 * ${FP8_BLOCK}), db = sh_wgmma_desc(tilesB + s * B_BYTES);
${p}sh_wgmma_fence();
#pragma unroll
${p}for (int k = 0; k < ${FP8_BLOCK / 32}; ++k) sh_wgmma_m64n${c.blockN}(tmp, da + 2 * k, db + 2 * k, k);
${p}sh_wgmma_commit();
${p}sh_wgmma_wait0();
${fenceAll(c.blockN / 2, "tmp", p)}${c.bRows ? `${p}// promotion first: B's scales are read from the stage
${promote(c, "tmp", p, "s")}` : ""}${handBack(c, p, "the wgmmas have read the stage")}${c.bRows ? "" : `${p}// promotion: fragment register 4j+{0,1} is row r0, 4j+{2,3} row r0+8, columns 8j + c0 + {0,1}
${promote(c, "tmp", p, "s")}`}${advanceScales(c, p)}    }
`;
}

/**
 * One overlapped step: block `kb`'s group (in `cur`) is in flight. With `next`, block kb+1 is issued
 * into the other fragment first and only the older group is waited for (wait_group 1); the last
 * block waits for everything (wait_group 0). Then block kb's stage goes back and `cur` is promoted.
 */
function step(c: Fp8GemmConfig, kb: string, cur: string, next: string | undefined, pad: string): string {
  const q = pad + "  ";
  const wait = next
    ? `${issue(c, next, q)}${q}sh_wgmma_wait<1>();  // block bk's group is done; block bk + 1's runs on\n`
    : `${q}sh_wgmma_wait0();\n`;
  return `${pad}{
${q}const int bk = ${kb};
${q}(void)bk;
${stageScales(c, "held", q)}${nextScales(c, "bk", q)}${wait}${fenceAll(c.blockN / 2, cur, q)}${c.bRows ? promote(c, cur, q, "held") : ""}${q}${release(c, "bars + 8 * (S + held)")}  // block bk's stage is read
${q}if (++held == S) held = 0;
${c.bRows ? "" : promote(c, cur, q, "held")}${advanceScales(c, q)}${pad}}
`;
}

/**
 * Peeled so that every path has the same groups pending where paths meet (ptxas otherwise serializes
 * the wgmmas, C7514): t0 holds the block in flight at the loop head; pairs of steps while two more
 * blocks follow, then a tail of one or two blocks that ends with wait_group 0.
 */
export function overlappedLoop(c: Fp8GemmConfig): string {
  const p = "      ";
  return `    // overlapped promotion: 'held' is the ring stage of the oldest block still in flight
    int held = s;
${firstScales(c, "    ")}    {
${issue(c, "t0", p)}    }
    int kb = 0;
    for (; kb + 2 < KB; kb += 2) {
${step(c, "kb", "t0", "t1", p)}${step(c, "kb + 1", "t1", "t0", p)}    }
    if (kb + 1 < KB) {
${step(c, "kb", "t0", "t1", p)}${step(c, "kb + 1", "t1", undefined, p)}    } else {
${step(c, "kb", "t0", undefined, p)}    }
`;
}

/**
 * The chunked loop (128 x 256 tiles): per K block, for each 128-column chunk j, 4 wgmma m64n128 steps
 * over the chunk's rows of B (16 KiB further into the stage per chunk) into tmp, wait_group 0, promote
 * into acc[64 j ..] with chunk j's B scale (b0, b1: one scale block each); the stage goes back after
 * the last chunk's wait, before its promotion (with row-scaled B, bRows, after it: each column's scale
 * is read from the stage). The other consumer's wgmmas run under each promotion.
 *
 * With deferStore the first K block is peeled: while chunk j's wgmmas run, the previous tile's half j of
 * acc (when there is one: `have`) goes into the staging buffer, then that half is zeroed for this tile;
 * after the last chunk's writes, one thread stores the boxes by TMA at the previous tile's (pmb, pnb).
 * Without it, acc is zeroed before the loop (emit.ts) and the tile's epilogue follows it.
 */
export function chunkedLoop(c: Fp8GemmConfig): string {
  if (!c.skipPastN) return chunkedLoopOf(c, c.blockN / FP8_BLOCK);
  return `    if (second) {  // the tile's second chunk holds columns below N: both chunks
${indent(chunkedLoopOf(c, 2))}    } else {  // the second chunk lies past N: the first alone, the block's last
${indent(chunkedLoopOf(c, 1))}    }
`;
}
/** Code one level deeper (its non-empty lines by two spaces). */
const indent = (code: string) => code.replace(/^(?=.)/gm, "  ");

/** The chunked K loop over the tile's first `chunks` chunks (the last of them hands the stage back). */
function chunkedLoopOf(c: Fp8GemmConfig, chunks: number): string {
  const p = "      ";
  // with aRegs the stage was waited for and A's fragment loaded ahead: before the loop, or under the last block's last chunk
  const wait = traceConsumerWait(c, "sh_mbar_wait(bars + 8 * s, phase);  // the stage's bytes have landed", p);
  const block = (first: boolean) => `${chunkScales(c, "kb + 1", "n", p, "const float ", "kb + 1 < KB", chunks)}${c.aRegs ? "" : wait}${stageScales(c, "s", p)}${c.stagedBScales ? `${p}const float b0 = sh_lds_f32(sbs + s * SB_BYTES), b1 = sh_lds_f32(sbs + s * SB_BYTES + 4);  // B's scales, put in the stage by the scale thread
` : ""}${c.aRegs ? "" : `${p}const sh_u64 da = sh_wgmma_desc(tilesA + s * A_BYTES + wg * 64 * ${FP8_BLOCK});
`}${Array.from({ length: chunks }, (_, j) => chunk(c, j, first, chunks)).join("")}${c.globalScales ? `${p}a0 = na0; a1 = na1;\n` : ""}${c.stagedBScales || c.bRows ? "" : `${p}${Array.from({ length: chunks }, (_, j) => `b${j} = nb${j};`).join(" ")}\n`}`;
  const loop = `    for (int kb = ${c.deferStore ? 1 : 0}; kb < KB; ++kb) {
      // the next block's scales (plain loads: they do not wait for the stage)
${block(false)}    }
`;
  return `${chunkScales(c, "0", "", "    ", "float ", "", chunks)}${c.aRegs ? `    sh_u32 ar[${A_REGS}];  // A's fragment of the block about to run
${traceConsumerWait(c, "sh_mbar_wait(bars + 8 * s, phase);  // block 0's stage has landed", "    ", "true")}${aFragment("    ")}` : ""}${c.deferStore ? `    {  // K block 0, with the previous tile's store under its chunks
      const int kb = 0;${c.stagedBScales && !c.globalScales ? " (void)kb;" : ""}
${block(true)}    }
` : ""}${loop}`;
}

/**
 * aRegs: the consumer's 64 rows of the stage's A (128-byte rows, 128-byte swizzle: 16-byte chunk j of row
 * r at chunk j ^ (r % 8)) into ar[16], four registers per k32 step, with one ldmatrix.x4 per step: lane
 * l names row (l / 8 % 2) · 8 + l % 8 of its warp's 16 and the step's 16-byte chunk 2k + l / 16 (the warp's
 * first row is a multiple of 8, so the row's swizzle phase is l % 8).
 */
function aFragment(p: string): string {
  return `${p}{
${p}  const sh_u32 rowAddr = tilesA + s * A_BYTES + (wg * 64 + warp * 16 + ((lane / 8) % 2) * 8 + lane % 8) * ${FP8_BLOCK};
#pragma unroll
${p}  for (int k = 0; k < ${FP8_BLOCK / 32}; ++k) sh_ldsm_x4(rowAddr + (((2 * k + lane / 16) ^ (lane % 8)) * 16), ar[4 * k], ar[4 * k + 1], ar[4 * k + 2], ar[4 * k + 3]);
${p}}
`;
}

/**
 * aRegs: the next block's stage waited for and its A fragment loaded into ar, once the last chunk's wgmmas
 * (the last readers of ar) are done and before that chunk's promotion, whose FFMAs then cover the
 * ldmatrix latency (loaded at the block's top instead, the fourth session's form, it ran 5-6% slower).
 */
const aheadA = (c: Fp8GemmConfig, q: string): string => `${q}if (kb + 1 < KB) {
${traceConsumerWait(c, "sh_mbar_wait(bars + 8 * s, phase);  // the next block's stage has landed", q + "  ", "false")}${aFragment(q + "  ")}${q}}
`;

/** Chunk j of a K block: its wgmmas, (deferStore, first block) the previous tile's half j staged under them, wait, promote. */
function chunk(c: Fp8GemmConfig, j: number, first: boolean, chunks = c.blockN / FP8_BLOCK): string {
  const p = "      ", q = p + "  ", frag = FP8_BLOCK / 2;
  const last = j === chunks - 1, groups = FP8_BLOCK / 8;
  const deferred = first
    ? `${q}// the previous tile's columns ${j * FP8_BLOCK}..${(j + 1) * FP8_BLOCK - 1} into the staging buffer while the wgmmas run
${q}if (have) {
${j === 0 ? `${q}  if (threadIdx.x % 128 == 0) sh_bulk_wait_read0();  // the store before it has read the buffer
${q}  sh_named_bar(1 + wg, 128);
` : ""}${stagingWrites(j * groups, (j + 1) * groups, q + "  ", false, c.stmatrix)}${last ? stagingFlush(`${q}    for (int b = 0; b < ${c.blockN / 64}; ++b) sh_tma_store_2d(&tmD, mine + b * 8192, pnb * BN + 64 * b, pmb * BM + wg * 64);\n`, q + "  ") : ""}${q}}
#pragma unroll
${q}for (int i = ${j * frag}; i < ${(j + 1) * frag}; ++i) acc[i] = 0.f;  // this tile's half starts at zero
`
    : "";
  return `${p}{  // chunk ${j}: columns ${j * FP8_BLOCK}..${(j + 1) * FP8_BLOCK - 1} of the tile
${q}const sh_u64 db = sh_wgmma_desc(tilesB + s * B_BYTES + ${j * FP8_BLOCK * FP8_BLOCK});
${c.orderedChunks ? `${q}sh_named_bar(wg == 0 ? ${ORDER_BARRIERS[0]} : ${ORDER_BARRIERS[1]}, 256);  // the other consumer has issued its chunk before this one
` : ""}${q}sh_wgmma_fence();
#pragma unroll
${q}for (int k = 0; k < ${FP8_BLOCK / 32}; ++k) ${c.aRegs ? `${wgmmaRsName(FP8_BLOCK)}(tmp, ar[4 * k], ar[4 * k + 1], ar[4 * k + 2], ar[4 * k + 3], db + 2 * k, k)` : `${wgmmaName(FP8_BLOCK, c.ab)}(tmp, da + 2 * k, db + 2 * k, k)`};
${q}sh_wgmma_commit();
${c.orderedChunks ? `${q}sh_named_arrive(wg == 0 ? ${ORDER_BARRIERS[1]} : ${ORDER_BARRIERS[0]}, 256);  // the other consumer's turn
` : ""}${deferred}${q}sh_wgmma_wait0();
${fenceAll(FP8_BLOCK / 2, "tmp", q)}${c.bRows ? `${rowScaledPromote("tmp", q, "s", frag / 4, j * FP8_BLOCK, j * frag)}${last ? handBack(c, q, "the last chunk is promoted (it read its B scales from the stage)") : ""}` : `${last ? `${handBack(c, q, "the last chunk's wgmmas have read the stage")}${c.aRegs ? aheadA(c, q) : ""}` : ""}${q}const float u0 = a0 * b${j}, u1 = a1 * b${j};
#pragma unroll
${q}for (int j = 0; j < ${frag / 4}; ++j) {
${fmaGroup("tmp", `${j * frag} + `, q + "  ")}${q}}
`}${p}}
`;
}

/** The stage goes back to the producer and the ring advances. */
const handBack = (c: Fp8GemmConfig, q: string, why: string): string => `${q}// ${why}: hand it back to the producer
${q}${release(c, "bars + 8 * (S + s)")}
${q}if (++s == S) { s = 0; phase ^= 1; }
`;

/** Chunk j's B scale b<j> for the loop's first `chunks` chunks (its own scale block: sbTile[j·KB + kb], zero past B's last block) and, with globalScales, A's. */
function chunkScales(c: Fp8GemmConfig, kb: string, prefix: string, pad: string, decl: string, guard: string, chunks = c.blockN / FP8_BLOCK): string {
  const a = globalAScales(c, kb, prefix, pad, decl, guard);
  if (c.stagedBScales || c.bRows) return a; // B's scales come with the stage (stagedBScales; bRows: per column, by TMA)
  const b = Array.from({ length: chunks }, (_, j) => {
    const cond = [guard, j > 0 ? "second" : ""].filter(Boolean).join(" && ");
    const read = `sbTile[${j > 0 ? `${j} * KB + ` : ""}${kb}]`;
    return `${prefix}b${j} = ${cond ? `${cond} ? ${read} : 0.f` : read}`;
  });
  return `${a}${pad}${decl}${b.join(", ")};
`;
}

/**
 * The bf16 loop: block 0's group starts acc afresh, each later block's adds to it and is issued before
 * the previous group is waited for (wait_group 1), whose stage then goes back. PTX orders wgmmas of one
 * shape on the same accumulators without a fence, so chaining groups on acc is allowed; at the loop
 * head exactly one group is pending on every path (no C7514 serialization).
 */
export function bf16Loop(c: Fp8GemmConfig): string {
  const p = "      ";
  return `    // bf16: no scales; 'held' is the ring stage of the group in flight
    int held = s;
    {
${issue(c, "acc", p)}    }
    for (int kb = 1; kb < KB; ++kb) {
      const int next = s;
${issue(c, "acc", p, "1")}${p}sh_wgmma_wait<1>();  // the previous block's group is done; this one runs on
${p}${release(c, "bars + 8 * (S + held)")}
${p}held = next;
    }
    sh_wgmma_wait0();
    ${release(c, "bars + 8 * (S + held)")}
${fenceAll(c.blockN / 2, "acc", "    ")}`;
}

/**
 * The K-grouped loop: the bf16 loop (e4m3 with row-scaled B: the plain loop, each block promoted with
 * its row scales from the stage) over the tile's expert's KB blocks (KB from blockExpert, per tile),
 * skipped whole when the expert has none, so that an empty expert's tile neither waits on nor releases
 * a stage; the producer loads exactly KB blocks for the same tile, so the ring stays in step across
 * tiles of different K. acc stays as zeroed: the tile is stored as zeros.
 */
export function kGroupedLoop(c: Fp8GemmConfig): string {
  return `    if (KB > 0) {  // an empty expert: no stage taken, acc stays zero
${indent(c.ab === "bf16" ? bf16Loop(c) : plainLoop(c))}    }
`;
}
