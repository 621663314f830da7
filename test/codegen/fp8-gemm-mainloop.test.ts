// The FP8 GEMM consumer's K loop (compiler/codegen/cuda/gemm/mainloop.ts) runs, as emitted text, on the
// CPU: g++ compiles it against a model of the Hopper pieces it calls, which checks the protocol as it
// goes: stages are waited for in ring order with the right mbarrier parity and never more than S
// ahead of the releases (else the producer deadlocks), released in order and only once no pending
// wgmma group reads them, every wgmma batch follows a wgmma.fence, a fragment is never re-issued or
// read (sh_reg_fence) while a group writing it is pending, and nothing is pending at the tile's end.
// The model's wgmma writes a value that names the K block it read, and the promotion must pair each
// fragment with its own block's scale: acc[i] = sum_kb 10 (kb+1)^2 (i+1) (a swapped pairing gives
// less). Over K blocks 1..7 (the peeled tail's cases), stage counts 3..8, three tiles in a row (the
// ring carries over), the plain loop (known good on the H100) and the overlapped one. The bf16 loop
// (no scales) runs on the same model, where a tile's first wgmma starts acc afresh and every later one
// accumulates, chaining groups on acc as PTX allows for wgmmas of one shape:
// acc[i] = sum_kb 10 (kb+1) (i+1). The K-grouped loop runs over tiles of different K lengths, empty
// experts (K = 0) among them, which must take no stage: the ring carries over between them, and an empty
// tile's acc stays zero. Skipped without g++.
import { describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bf16Loop, chunkedLoop, kGroupedLoop, overlappedLoop, plainLoop } from "../../compiler/codegen/cuda/gemm/mainloop.ts";
import { configName, configProblem, isBf16, wgmmaN, type Fp8GemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { wgmmaName, wgmmaRsName } from "../../compiler/codegen/cuda/gemm/ptx.ts";
import { GXX, noteIfNoGxx } from "./gxx.ts";

noteIfNoGxx("fp8-gemm-mainloop");

/**
 * The model around `loop`. Without `perTile`: K blocks 1..7, three tiles each, stages 3..8. With it
 * (K-grouped): one pass over tiles of those K lengths (0: an empty expert), stages 2..8.
 */
function harness(c: Fp8GemmConfig, loop: string, perTile?: number[], skipSecond = false): string {
  // acc covers the tile (F), a wgmma group writes FT of it (a 128-column chunk's 64 when chunked)
  const F = c.blockN / 2, FT = wgmmaN(c) / 2, CH = c.chunked ? 1 : 0;
  return String.raw`#include <cstdio>
#include <cstdlib>
#include <cmath>
using std::fmaf;
#include <vector>
typedef unsigned int sh_u32;
typedef unsigned long long sh_u64;
#define FAIL(...) do { std::printf("FAIL KB=%d S=%d tile=%d: ", KB, S, tile); std::printf(__VA_ARGS__); std::printf("\n"); std::exit(1); } while (0)
static const int F = ${F}, FT = ${FT}, BF16 = ${isBf16(c) ? 1 : 0}, CH = ${CH};
static int KB, S, tile, tileStart, loads, releases, issued;
${perTile ? `static const int PER_TILE[] = {${perTile.join(", ")}}, TILES = ${perTile.length}, KB_RUNS = 1, S_MIN = 2;` : "static const int TILES = 3, KB_RUNS = 7, S_MIN = 3;"}
static bool fenced;
static std::vector<int> stageBlock, stageHeld;
static const sh_u32 bars = 1u << 20, tilesA = 0, tilesB = 1u << 24, A_BYTES = 1u << 14, B_BYTES = 1u << 15;
static const int wg = 1, lane = 0;
struct Group { std::vector<float*> frags; std::vector<int> stages; bool readsA = false; };
static std::vector<Group> pending;
static Group open;

static void sh_mbar_wait(sh_u32 bar, sh_u32 parity) {
  const int s = (int)(bar - bars) / 8;
  if (s < 0 || s >= S) FAIL("waited on barrier %d, not a full barrier", s);
  if (s != loads % S) FAIL("waited on stage %d, the producer fills %d next", s, loads % S);
  if (parity != (sh_u32)((loads / S) & 1)) FAIL("stage %d waited with parity %u in phase %d", s, parity, (loads / S) & 1);
  if (loads - releases >= S) FAIL("stage %d is still held: the producer would wait forever", s);
  stageBlock[s] = loads++ - tileStart;  // the block's index in its tile
  stageHeld[s] = 1;
}
static void sh_mbar_arrive(sh_u32 bar) {
  const int s = (int)(bar - bars) / 8 - S;
  if (s != releases % S || !stageHeld[s]) FAIL("released stage %d, expected %d", s, releases % S);
  for (const Group& g : pending)
    for (int st : g.stages)
      if (st == s) FAIL("released stage %d while a wgmma group reading it is pending", s);
  stageHeld[s] = 0;
  releases++;
}
// multicast kernels release a stage to both CTAs' producers, lane r arriving on CTA r: the model runs
// lane 0 (this CTA's side, the same checks as a plain release)
static void sh_mbar_arrive_cta(sh_u32 bar, int rank) { if (rank == 0) sh_mbar_arrive(bar); }
// A's scales as the TMA leaves them in a stage: only readable while the stage is held
static const sh_u32 sas = 1u << 28, SA_BYTES = 512;
// B's scales in the stage: row scales (bRows kernels), or a chunked tile's two block scales (stagedBScales)
static const sh_u32 sbs = 1u << 29, SB_BYTES = 1024;
static float sh_lds_f32(sh_u32 a) {
  if (a >= sbs) {  // stagedBScales: 1 for chunk 0 at +0, 3 for chunk 1 at +4, as the scale thread stores them
    const int s = (int)((a - sbs) / SB_BYTES), off = (int)((a - sbs) % SB_BYTES);
    if (s < 0 || s >= S) FAIL("B scale read from stage %d", s);
    if (!stageHeld[s]) FAIL("B scale read from stage %d, which is not held (released or not yet waited for)", s);
    if (off != 0 && off != 4) FAIL("B scale read %d bytes into the stage's pair", off);
    return off ? 3.f : 1.f;
  }
  const int s = (int)((a - sas) / SA_BYTES), row = (int)((a - sas) % SA_BYTES) / 4;
  if (s < 0 || s >= S) FAIL("scale read from stage %d", s);
  if (!stageHeld[s]) FAIL("scale read from stage %d, which is not held (released or not yet waited for)", s);
  if (row != 0 && row != 8) FAIL("scale read for row %d, the thread's rows are 0 and 8", row);
  return (float)(stageBlock[s] + 1);
}
// B's row scales (bRows kernels): readable only while the stage is held; 1, and 3 for a chunked tile's
// columns 128..255 (so that a chunk promoted with the other chunk's columns shows, as with block scales)
static void sh_lds_f32x2(sh_u32 a, float& x, float& y) {
  const int s = (int)((a - sbs) / SB_BYTES), col = (int)((a - sbs) % SB_BYTES) / 4;
  if (s < 0 || s >= S) FAIL("B scale read from stage %d", s);
  if (!stageHeld[s]) FAIL("B scale read from stage %d, which is not held (released or not yet waited for)", s);
  x = y = CH && col >= 128 ? 3.f : 1.f;
}
static sh_u64 sh_wgmma_desc(sh_u32 a) { return a; }
// the deferred store (chunked deferStore): the previous tile's acc is staged under this tile's first
// block's chunks; the model collects the packed values in order and checks them at the TMA store
static std::vector<float> staged;
static int proxyFenced, readWaited, stores, commits;
static float expectAcc(int i);
static sh_u32 sh_pack_bf16x2(float x, float y) { staged.push_back(x); staged.push_back(y); return 0; }
static void sh_sts_u32(sh_u32, sh_u32) { if (!readWaited) FAIL("staging written before the previous store was waited for"); }
static void sh_bulk_wait_read0() { readWaited = 1; }
// orderedChunks: this consumer (wg 1) waits for its turn on barrier 4 before each chunk and hands the
// turn back on barrier 3 after committing it
static int turnWaited, turnsOwed;
static void sh_named_bar(sh_u32 id, sh_u32 count) {
  if (id == 4) { if (count != 256) FAIL("turn barrier over %u threads", count); turnWaited = 1; }
}
static void sh_named_arrive(sh_u32 id, sh_u32 count) {
  if (id != 3 || count != 256) FAIL("consumer 1 arrived on barrier %u over %u threads, not the turn barrier 3 over 256", id, count);
  if (turnsOwed <= 0) FAIL("turn handed back with no chunk committed");
  turnsOwed--;
}
static void sh_fence_proxy_async() { proxyFenced = 1; }
static void sh_tma_store_2d(const int*, sh_u32, int, int) { if (!proxyFenced) FAIL("TMA store before fence.proxy.async"); stores++; }
static void sh_bulk_commit() {
  if ((int)staged.size() != F) FAIL("%d values staged, expected %d", (int)staged.size(), F);
  for (int i = 0; i < F; ++i)
    if (staged[i] != expectAcc(i)) FAIL("staged acc[%d] = %g, the previous tile's is %g", i, staged[i], expectAcc(i));
  commits++;
}
static const int tmD = 0;
static const struct { int x; } threadIdx = {0};
static const int ORDERED = ${c.orderedChunks ? 1 : 0};
static void sh_wgmma_fence() {
  if (ORDERED && !turnWaited) FAIL("a chunk issued without waiting for its turn");
  turnWaited = 0;
  fenced = true;
}
static void sh_wgmma_commit() { pending.push_back(open); open = Group(); fenced = false; if (ORDERED) turnsOwed++; }
template <int N> static void sh_wgmma_wait() { while ((int)pending.size() > N) pending.erase(pending.begin()); }
static void sh_wgmma_wait0() { pending.clear(); }
static bool isPending(const float* x) {
  for (const Group& g : pending)
    for (float* f : g.frags)
      if (x >= f && x < f + FT) return true;
  return false;
}
static void sh_reg_fence(float& x) { if (isPending(&x)) FAIL("fragment read while a group writing it is pending"); }
${c.aRegs ? `// register A (aRegs): the fragment is loaded from a held stage, each register naming that stage's block;
// the wgmma checks that its A registers came from the stage its B descriptor reads
static const int warp = 0;
static void sh_ldsm_x4(sh_u32 a, sh_u32& r0, sh_u32& r1, sh_u32& r2, sh_u32& r3) {
  const int s = (int)((a - tilesA) / A_BYTES);
  if (s < 0 || s >= S) FAIL("A fragment loaded from stage %d", s);
  if (!stageHeld[s]) FAIL("A fragment loaded from stage %d, which is not held", s);
  for (const Group& g : pending)
    if (g.readsA) FAIL("A fragment reloaded while a wgmma group reading the registers is pending");
  r0 = r1 = r2 = r3 = (sh_u32)(stageBlock[s] + 1);
}
static void wgmma_model(float (&d)[FT], sh_u64 da, sh_u64 db, int accumulate);
static void ${wgmmaRsName(wgmmaN(c))}(float (&d)[FT], sh_u32 a0, sh_u32 a1, sh_u32 a2, sh_u32 a3, sh_u64 db, int accumulate) {
  const int s = (int)((db - tilesB) / B_BYTES), k = (int)((db - tilesB) % 16384) / 2;
  if (a0 != a1 || a0 != a2 || a0 != a3 || a0 != (sh_u32)(stageBlock[s] + 1)) FAIL("A registers of block %u, B from stage %d (block %d)", a0 - 1, s, stageBlock[s]);
  wgmma_model(d, tilesA + (sh_u64)s * A_BYTES + wg * 64 * 128 + 2 * k, db, accumulate);
  open.readsA = true;
}
#define ${wgmmaName(wgmmaN(c), c.ab)} wgmma_model
` : ""}static void ${wgmmaName(wgmmaN(c), c.ab)}(float (&d)[FT], sh_u64 da, sh_u64 db, int accumulate) {
  if (!fenced) FAIL("wgmma issued without a wgmma.fence before its batch");
  // bf16 chains groups on acc (ordered by PTX for one shape); starting a pending fragment afresh is a race
  if (isPending(d) && !(BF16 && accumulate)) FAIL("wgmma into a fragment an older pending group writes");
  // a chunked kernel's chunk j reads B 16 KiB (128 rows of 128 bytes) into the stage
  const int s = (int)((db - tilesB) / B_BYTES), chunk = (int)((db - tilesB) % B_BYTES) / 16384, k = (int)((db - tilesB) % 16384) / 2;
  if (chunk && !CH) FAIL("B descriptor %d bytes into the stage", (int)((db - tilesB) % B_BYTES));
  if (da != tilesA + (sh_u64)s * A_BYTES + wg * 64 * 128 + 2 * k) FAIL("A and B descriptors name different stages");
  if (!stageHeld[s]) FAIL("wgmma reads stage %d, which is not held", s);
  if (BF16 ? (accumulate != 0) != (issued != 0) : (accumulate != 0) != (k != 0)) FAIL("k step %d (wgmma %d of the tile) with accumulate %d", k, issued, accumulate);
  issued++;
  for (int i = 0; i < FT; ++i) d[i] = (accumulate ? d[i] : 0.f) + (float)((stageBlock[s] + 1) * (k + 1) * (i + 1) * (chunk + 1));
  open.frags.push_back(d);
  open.stages.push_back(s);
}

static bool second = true;
static float expectAcc(int i) {
  // a tile whose chunk 1 lies past N leaves its half of acc as zeroed
  if (CH && i >= FT && !second) return 0.f;
  float want = 0;
  for (int kb = 0; kb < KB; ++kb) want += BF16 ? 10.f * (kb + 1) : 10.f * (kb + 1) * (kb + 1);
  // chunk i / FT: its wgmma value (x chunk + 1) times its B scale (3 for the second)
  const float chunkFactor = CH && i >= FT ? 2.f * 3.f : 1.f;
  return want * (i % FT + 1) * chunkFactor;
}

int main() {
  const int BM = 128, BN = 256, DEFER = ${c.deferStore ? 1 : 0};
  const sh_u32 mine = 0;
  const int rr = 0;
  int have = 0, pmb = 0, pnb = 0;
  (void)BM; (void)BN; (void)mine; (void)rr; (void)have; (void)pmb; (void)pnb;
  const int M = 16, m0 = 0, m1 = 8, c0 = 0, r0 = 0, split = 1 << 30;
  (void)r0;
  (void)split; (void)c0;
  for (int run = 1; run <= KB_RUNS; ++run)
    for (S = S_MIN; S <= 8; ++S) {
      KB = run;
      // B's scales: 1 for the tile's first scale block, 3 for a chunked tile's second (a swapped pairing shows)
      std::vector<float> saV(KB * M), sbV(2 * KB, 1.f);
      for (int kb = 0; kb < KB && CH; ++kb) sbV[KB + kb] = 3.f;
      for (int kb = 0; kb < KB; ++kb) for (int m = 0; m < M; ++m) saV[kb * M + m] = (float)(kb + 1);
      const float* sa = saV.data();
      const float* sbTile = sbV.data();
      stageBlock.assign(S, -1);
      stageHeld.assign(S, 0);
      loads = releases = 0;
      pending.clear();
      fenced = false;
      have = 0;
      int s = 0;
      sh_u32 phase = 0;
      float acc[F], tmp[FT], t0[FT], t1[FT];
      for (int i = 0; i < FT; ++i) tmp[i] = t0[i] = t1[i] = 0.f;
      (void)tmp; (void)t0; (void)t1;
      int done = 0;
      for (tile = 0; tile < TILES; ++tile) {
${perTile ? "        KB = PER_TILE[tile];\n" : ""}        // chunked: the tile's second chunk has its scale block (with skipSecond every other tile's lies past N)
        second = CH != 0 && !(${skipSecond ? 1 : 0} && tile % 2 == 1);
        // a deferred store zeroes acc itself, after staging it: the model leaves the last tile's values there
        if (!DEFER || tile == 0) for (int i = 0; i < F; ++i) acc[i] = DEFER ? -1.f : 0.f;
        staged.clear();
        proxyFenced = readWaited = stores = commits = 0;
        issued = 0;
        tileStart = loads;
${loop}
        done += KB;
        if (ORDERED && turnsOwed) FAIL("%d chunk(s) committed without handing the turn back", turnsOwed);
        if (DEFER && (commits != have || stores != (have ? BN / 64 : 0))) FAIL("%d commits, %d box stores of the previous tile (have %d)", commits, stores, have);
        if (DEFER) have = 1;
        if (!pending.empty()) FAIL("%d wgmma group(s) pending at the epilogue", (int)pending.size());
        if (loads != done || releases != loads) FAIL("loaded %d, released %d blocks, the producer %d", loads, releases, done);
        float want = 0;
        for (int kb = 0; kb < KB; ++kb) want += BF16 ? 10.f * (kb + 1) : 10.f * (kb + 1) * (kb + 1);
        (void)want;
        for (int i = 0; i < F; ++i)
          if (acc[i] != expectAcc(i)) FAIL("acc[%d] = %g, expected %g", i, acc[i], expectAcc(i));
      }
    }
  std::printf("ok\n");
  return 0;
}
`;
}

describe.skipIf(!GXX)("FP8 GEMM consumer K loop on a CPU model of wgmma / mbarrier", () => {
  const dir = mkdtempSync(join(tmpdir(), "shardts-gemm-loop-"));
  /** What the model prints for `loop` (a broken loop exits non-zero: its stdout still says why). */
  const modelOutput = (c: Fp8GemmConfig, loop: string, tag: string, perTile?: number[], skipSecond = false): string => {
    const src = join(dir, `${tag}.cc`), exe = join(dir, tag);
    writeFileSync(src, harness(c, loop, perTile, skipSecond));
    execFileSync(GXX!, ["-O1", "-std=c++17", "-Wno-unknown-pragmas", "-o", exe, src]);
    try {
      return execFileSync(exe, { encoding: "utf8" });
    } catch (e) {
      return String((e as { stdout?: string }).stdout ?? "");
    }
  };
  const configs: Fp8GemmConfig[] = [
    { consumers: 2, blockN: 128, stages: 7, persistent: true, grouped: false },
    { consumers: 2, blockN: 96, stages: 8, persistent: true, grouped: false },
    { consumers: 2, blockN: 128, stages: 7, persistent: true, grouped: false, multicast: true },
    { consumers: 2, blockN: 96, stages: 8, persistent: true, grouped: false, globalScales: true },
    { consumers: 2, blockN: 128, stages: 6, persistent: true, grouped: false, bRows: true },
    { consumers: 2, blockN: 192, stages: 4, persistent: true, grouped: false, bRows: true },
  ];
  for (const base of configs)
    for (const overlap of [false, true]) {
      it(`${overlap ? "overlapped" : "plain"} loop, blockN ${base.blockN}${base.multicast ? " (multicast: pair release)" : ""}${base.globalScales ? " (A scales from global memory)" : ""}${base.bRows ? " (row-scaled B: promoted before release)" : ""}: protocol checks hold and acc pairs each block with its scale`, () => {
        const c = { ...base, overlap };
        const src = join(dir, `loop_${c.blockN}_${overlap}${c.multicast ? "_mc" : ""}${c.globalScales ? "_gs" : ""}${c.bRows ? "_br" : ""}.cc`), exe = src.replace(/\.cc$/, "");
        writeFileSync(src, harness(c, overlap ? overlappedLoop(c) : plainLoop(c)));
        execFileSync(GXX!, ["-O1", "-std=c++17", "-Wno-unknown-pragmas", "-o", exe, src]);
        const out = (() => {
          try {
            return execFileSync(exe, { encoding: "utf8" });
          } catch (e) {
            return String((e as { stdout?: string }).stdout ?? e);
          }
        })();
        expect(out.trim()).toBe("ok");
      }, 60_000);
    }

  // chunked 128 x 256 tiles: two m64n128 groups per K block through one temporary, each promoted with
  // its own chunk's B scale into its half of acc; A's scales from the stage or from global memory
  const chunked: Fp8GemmConfig[] = [
    { consumers: 2, blockN: 256, stages: 4, persistent: true, grouped: false, chunked: true, tmaStore: true, storeByBox: true },
    { consumers: 2, blockN: 256, stages: 3, persistent: true, grouped: false, chunked: true, globalScales: true },
    { consumers: 2, blockN: 256, stages: 3, persistent: true, grouped: false, chunked: true, tmaStore: true, deferStore: true },
    { consumers: 2, blockN: 256, stages: 3, persistent: true, grouped: false, chunked: true, tmaStore: true, deferStore: true, multicast: true },
    { consumers: 2, blockN: 256, stages: 3, persistent: true, grouped: false, chunked: true, tmaStore: true, orderedChunks: true },
    { consumers: 2, blockN: 256, stages: 3, persistent: true, grouped: false, chunked: true, tmaStore: true, aRegs: true },
    { consumers: 2, blockN: 256, stages: 3, persistent: true, grouped: false, chunked: true, tmaStore: true, stagedBScales: true },
    { consumers: 2, blockN: 256, stages: 3, persistent: true, grouped: false, chunked: true, tmaStore: true, stagedBScales: true, deferStore: true },
    { consumers: 2, blockN: 256, stages: 3, persistent: true, grouped: false, chunked: true, tmaStore: true, stagedBScales: true, globalScales: true },
    { consumers: 2, blockN: 256, stages: 3, persistent: true, grouped: false, chunked: true, tmaStore: true, stagedBScales: true, multicast: true },
    { consumers: 2, blockN: 256, stages: 3, persistent: true, grouped: false, chunked: true, tmaStore: true, bRows: true },
  ];
  for (const c of chunked)
    it(`chunked loop, blockN 256${c.globalScales ? " (A scales from global memory)" : ""}${c.deferStore ? " (the previous tile's store under the first block)" : ""}${c.multicast ? " (multicast)" : ""}${c.orderedChunks ? " (chunks in turns)" : ""}${c.aRegs ? " (A from registers)" : ""}${c.stagedBScales ? " (B's scales from the stage)" : ""}${c.bRows ? " (row-scaled B: each column's scale from the stage)" : ""}: protocol checks hold, each chunk promoted with its own scale into its half of acc`, () => {
      expect(modelOutput(c, chunkedLoop(c), `loop_chunked${c.globalScales ? "_gs" : ""}${c.deferStore ? "_ds" : ""}${c.multicast ? "_mc" : ""}${c.orderedChunks ? "_oc" : ""}${c.aRegs ? "_ra" : ""}${c.stagedBScales ? "_sbs" : ""}${c.bRows ? "_br" : ""}`).trim()).toBe("ok");
    }, 60_000);

  it("skipPastN: a tile whose second chunk lies past N runs the one-chunk loop (the stage handed back after chunk 0); full tiles the two-chunk loop; the model catches a one-chunk loop that keeps the stage", () => {
    for (const base of chunked.filter((x) => configProblem({ ...x, skipPastN: true }) === undefined)) {
      const c = { ...base, skipPastN: true };
      expect(modelOutput(c, chunkedLoop(c), `loop_chunked_pn${c.globalScales ? "_gs" : ""}`, undefined, true).trim(), configName(c)).toBe("ok");
    }
    const c = { ...chunked[0]!, skipPastN: true }, good = chunkedLoop(c);
    const oneChunk = good.indexOf("} else {");
    const broken = good.slice(0, oneChunk) + good.slice(oneChunk).replace(/if \(lane == 0\) sh_mbar_arrive\(bars \+ 8 \* \(S \+ s\)\);/, "");
    expect(broken).not.toBe(good);
    expect(modelOutput(c, broken, "broken_chunked_sk", undefined, true)).toMatch(/released|not held|wait/);
  }, 60_000);

  it("the model catches broken chunked loops: swapped chunk scales, the stage released before the last chunk is done, a chunk promoted while pending", () => {
    const c = chunked[0]!;
    const good = chunkedLoop(c);
    const mutants: [string, RegExp][] = [
      [good.replace("u0 = a0 * b1, u1 = a1 * b1", "u0 = a0 * b0, u1 = a1 * b0"), /acc\[64\] = .*, expected/],
      [good.replace(/(\/\/ chunk 1[^]*?)sh_wgmma_wait0\(\);/, "$1"), /while a wgmma group reading it is pending|fragment read while a group writing it is pending/],
      [good.replace("+ 16384)", ")"), /acc\[64\] = .*, expected/],
    ];
    mutants.forEach(([broken, why], i) => {
      expect(broken).not.toBe(good);
      expect(modelOutput(c, broken, `broken_chunked_${i}`)).toMatch(why);
    });
  }, 60_000);

  it("the model catches broken staged B scales: the second chunk's scale read from the first's slot", () => {
    const c = chunked.find((x) => x.stagedBScales && !x.deferStore && !x.globalScales)!;
    const good = chunkedLoop(c);
    const broken = good.replace("b1 = sh_lds_f32(sbs + s * SB_BYTES + 4)", "b1 = sh_lds_f32(sbs + s * SB_BYTES)");
    expect(broken).not.toBe(good);
    expect(modelOutput(c, broken, "broken_sbs")).toMatch(/acc\[64\] = .*, expected/);
  }, 60_000);

  it("the model catches broken row-scaled chunks: chunk 1 promoted with chunk 0's columns, the stage released before the last chunk's promotion", () => {
    const c = chunked.find((x) => x.bRows)!;
    const good = chunkedLoop(c);
    // the release (and the ring's advance) moved ahead of the last chunk's scale reads
    const early = good.replace(/(\/\/ chunk 1[^]*?for \(int i = 0; i < 64; \+\+i\) sh_reg_fence\(tmp\[i\]\);\n)([^]*?)(\s*\/\/ the last chunk is promoted[^]*?phase \^= 1; \}\n)/, "$1$3$2");
    const mutants: [string, RegExp][] = [
      [good.replace("(128 + 8 * j + c0) * 4", "(0 + 8 * j + c0) * 4"), /acc\[64\] = .*, expected/],
      [early, /not held/],
    ];
    mutants.forEach(([broken, why], i) => {
      expect(broken).not.toBe(good);
      expect(modelOutput(c, broken, `broken_chunked_br_${i}`)).toMatch(why);
    });
  }, 60_000);

  it("the model catches broken register-A loops: A loaded from the stage after the one B is read from, or reloaded while a wgmma group still reads it", () => {
    const c = chunked[5]!;
    const good = chunkedLoop(c);
    const broken = good.replace("tilesA + s * A_BYTES + (wg * 64", "tilesA + ((s + 1) % S) * A_BYTES + (wg * 64");
    expect(broken).not.toBe(good);
    expect(modelOutput(c, broken, "broken_ra")).toMatch(/A registers of block|not held/);
    // ar loaded again under chunk 0's wgmmas, which still read it
    const load = /\n( *\{\n *const sh_u32 rowAddr[^]*?sh_ldsm_x4[^]*?\n *\}\n)/.exec(good)?.[1];
    expect(load).toBeDefined();
    const early = good.replace(/(\/\/ chunk 0[^]*?sh_wgmma_commit\(\);\n)/, `$1${load}`);
    expect(early).not.toBe(good);
    expect(modelOutput(c, early, "broken_ra_early")).toMatch(/reloaded while a wgmma group reading the registers is pending/);
  }, 60_000);

  it("the model catches broken turns: a chunk issued without its turn, the turn not handed back", () => {
    const c = chunked[4]!;
    const good = chunkedLoop(c);
    const mutants: [string, RegExp][] = [
      [good.replace(/sh_named_bar\(wg == 0 \? 3 : 4, 256\);.*\n/, "\n"), /issued without waiting for its turn/],
      [good.replace(/sh_named_arrive\(wg == 0 \? 4 : 3, 256\);.*\n/, "\n"), /without handing the turn back/],
    ];
    mutants.forEach(([broken, why], i) => {
      expect(broken, `mutant ${i}`).not.toBe(good);
      expect(modelOutput(c, broken, `broken_turns_${i}`)).toMatch(why);
    });
  }, 60_000);

  it("the model catches broken deferred stores: a half zeroed before it is staged, the store before the fence, no wait for the previous store", () => {
    const c = chunked[2]!;
    const good = chunkedLoop(c);
    const zeroFirst = good.replace(/(\/\/ chunk 0[^]*?)(\s*\/\/ the previous tile's columns 0\.\.127[^]*?\n(?:.*\n)*?\s*\}\n)(#pragma unroll\n.*acc\[i\] = 0\.f;.*\n)/, "$1\n$3$2");
    const mutants: [string, RegExp][] = [
      [zeroFirst, /staged acc\[0\] = 0, the previous tile's is/],
      [good.replace("sh_fence_proxy_async();", ""), /TMA store before fence\.proxy\.async/],
      [good.replace("if (threadIdx.x % 128 == 0) sh_bulk_wait_read0();", ""), /staging written before the previous store was waited for/],
    ];
    mutants.forEach(([broken, why], i) => {
      expect(broken, `mutant ${i}`).not.toBe(good);
      expect(modelOutput(c, broken, `broken_deferred_${i}`)).toMatch(why);
    });
  }, 60_000);

  const bf16Configs: Fp8GemmConfig[] = [
    { ab: "bf16", consumers: 2, blockN: 128, stages: 6, persistent: true, grouped: true, tmaStore: true },
    { ab: "bf16", consumers: 2, blockN: 256, stages: 3, persistent: true, grouped: false, multicast: true, tmaStore: true },
  ];
  for (const c of bf16Configs)
    it(`bf16 loop, blockN ${c.blockN}${c.multicast ? " (multicast: pair release)" : ""}: protocol checks hold, acc sums every block once`, () => {
      const src = join(dir, `loop_bf16_${c.blockN}${c.multicast ? "_mc" : ""}.cc`), exe = src.replace(/\.cc$/, "");
      writeFileSync(src, harness(c, bf16Loop(c)));
      execFileSync(GXX!, ["-O1", "-std=c++17", "-Wno-unknown-pragmas", "-o", exe, src]);
      let out = "";
      try {
        out = execFileSync(exe, { encoding: "utf8" });
      } catch (e) {
        out = String((e as { stdout?: string }).stdout ?? e);
      }
      expect(out.trim()).toBe("ok");
    }, 60_000);

  // K-grouped: the bf16 loop over each tile's own K length, empty experts (0) before, between and after
  const kgTiles = [0, 3, 0, 1, 0, 0, 5, 2, 7, 0, 1, 4, 0];
  it("K-grouped loop over tiles of different K lengths with empty experts: the ring stays in step, acc sums each tile's blocks, empty tiles stay zero", () => {
    const c: Fp8GemmConfig = { ab: "bf16", consumers: 2, blockN: 128, stages: 6, persistent: true, grouped: true, kGrouped: true, tmaStore: true };
    expect(modelOutput(c, kGroupedLoop(c), "loop_kg", kgTiles).trim()).toBe("ok");
    // the plain bf16 loop takes a stage even for an empty expert: the model says so
    expect(modelOutput(c, bf16Loop(c), "broken_kg", kgTiles)).toMatch(/FAIL .*tile=0: .*(loaded|producer|waited)/);
  }, 60_000);

  it("the model catches broken bf16 loops: a stage released before its group is done, a block that overwrites acc", () => {
    const c = bf16Configs[0]!;
    const good = bf16Loop(c);
    const mutants: [string, RegExp][] = [
      [good.replace("sh_wgmma_wait<1>();", ""), /while a wgmma group reading it is pending/],
      [good.replace(/db \+ 2 \* k, 1\)/, "db + 2 * k, k)"), /with accumulate 0|older pending group/],
    ];
    mutants.forEach(([broken, why], i) => {
      expect(broken).not.toBe(good);
      expect(modelOutput(c, broken, `broken_bf16_${i}`)).toMatch(why);
    });
  }, 60_000);

  it("the model catches broken loops: promoting the pending fragment, or with the wrong block's scale", () => {
    const c: Fp8GemmConfig = { consumers: 2, blockN: 128, stages: 4, persistent: true, grouped: false, overlap: true };
    const g: Fp8GemmConfig = { ...c, globalScales: true };
    const good = overlappedLoop(c), goodGlobal = overlappedLoop(g);
    const mutants: [Fp8GemmConfig, string, string, RegExp][] = [
      // fence (read) the block just issued instead of the older one: its group is still pending
      [c, good, good.replace("sh_reg_fence(t0[i])", "sh_reg_fence(t1[i])"), /fragment read while a group writing it is pending/],
      // the second step of a pair takes the first one's scales (A's from global memory)
      [g, goodGlobal, goodGlobal.replace("const int bk = kb + 1;", "const int bk = kb;"), /acc\[0\] = .*, expected/],
      // A's scales read from the stage just issued instead of the block being promoted
      [c, good, good.replace("sh_lds_f32(sas + (held)", "sh_lds_f32(sas + (s)"), /acc\[0\] = .*, expected|not held/],
    ];
    mutants.forEach(([cfg, ok, broken, why], i) => {
      expect(broken).not.toBe(ok);
      expect(modelOutput(cfg, broken, `broken${i}`)).toMatch(why);
    });
  }, 60_000);
});
