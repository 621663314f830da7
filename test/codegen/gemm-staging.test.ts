// The TMA-store epilogue's staging writes (compiler/codegen/cuda/gemm/staging.ts) run, as emitted text, on
// the CPU: g++ compiles each form against a model of st.shared and of stmatrix's warp-wide m8n8.x4 (matrix m's
// row i at the address lane 8m + i gives, its elements register m of lanes 4i..4i+3), for a warpgroup's 4
// warps x 32 lanes whose accumulator fragments name their own (row, column). Every form must put element
// (r, c) of the warpgroup's 64 rows at the 128-byte-swizzled place the TMA store reads: box c / 64,
// row r, 16-byte chunk ((c % 64) / 8) ^ (r % 8), and nothing anywhere else. Skipped without g++.
import { describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stagingWrites } from "../../compiler/codegen/cuda/gemm/staging.ts";
import { GXX, noteIfNoGxx } from "./gxx.ts";

noteIfNoGxx("gemm-staging");

/** A program that runs `snippet` for every lane of a warpgroup (per box b when oneBox) and checks the layout of `columns` columns. */
function harness(snippet: string, columns: number, oneBox: boolean): string {
  return String.raw`#include <cstdio>
#include <cstdlib>
#include <map>
#include <vector>
typedef unsigned int sh_u32;
#define FAIL(...) do { std::printf("FAIL: "); std::printf(__VA_ARGS__); std::printf("\n"); std::exit(1); } while (0)
static std::map<sh_u32, unsigned> mem;  // byte address -> the 16-bit value written there
static void put(sh_u32 a, sh_u32 v) {
  for (sh_u32 h = 0; h < 2; ++h) {
    if (mem.count(a + 2 * h)) FAIL("byte %u written twice", a + 2 * h);
    mem[a + 2 * h] = (v >> (16 * h)) & 0xffff;
  }
}
static void sh_sts_u32(sh_u32 a, sh_u32 v) { if (a % 4) FAIL("st.shared.b32 at %u", a); put(a, v); }
struct Rec { sh_u32 addr, r[4]; };
static std::vector<std::vector<Rec>> calls;  // per stmatrix call of the loop, per lane
static int curLane, callIdx;
static void sh_stsm_x4(sh_u32 a, sh_u32 r0, sh_u32 r1, sh_u32 r2, sh_u32 r3) {
  if (a % 16) FAIL("stmatrix row address %u not 16-byte aligned", a);
  if ((int)calls.size() <= callIdx) calls.resize(callIdx + 1, std::vector<Rec>(32));
  calls[callIdx++][curLane] = Rec{a, {r0, r1, r2, r3}};
}
static sh_u32 sh_pack_bf16x2(float x, float y) { return (sh_u32)x | ((sh_u32)y << 16); }
static unsigned id(int r, int c) { return (unsigned)(r * 512 + c + 1); }
static void body(int warp, int lane, const float* acc, int b) {
  const sh_u32 mine = 0;
  const int rr = warp * 16 + lane / 4;
  (void)rr; (void)b; (void)mine;
${snippet}
}
int main() {
  const int COLUMNS = ${columns}, ONE_BOX = ${oneBox ? 1 : 0};
  for (int b = 0; b < (ONE_BOX ? COLUMNS / 64 : 1); ++b) {
    mem.clear();
    for (int warp = 0; warp < 4; ++warp) {
      calls.clear();
      for (int lane = 0; lane < 32; ++lane) {
        // the wgmma accumulator fragment: acc[4j + {0,1}] row lane/4, acc[4j + {2,3}] row lane/4 + 8, columns 8j + 2 (lane % 4) + {0,1}
        std::vector<float> acc(COLUMNS / 2);
        const int r0 = warp * 16 + lane / 4, c0 = 2 * (lane % 4);
        for (int j = 0; j < COLUMNS / 8; ++j) {
          acc[4 * j + 0] = (float)id(r0, 8 * j + c0);
          acc[4 * j + 1] = (float)id(r0, 8 * j + c0 + 1);
          acc[4 * j + 2] = (float)id(r0 + 8, 8 * j + c0);
          acc[4 * j + 3] = (float)id(r0 + 8, 8 * j + c0 + 1);
        }
        curLane = lane;
        callIdx = 0;
        body(warp, lane, acc.data(), b);
      }
      // stmatrix, warp-wide: matrix m's row i at lane 8m + i's address, its 8 elements register m of lanes 4i..4i+3
      for (const std::vector<Rec>& k : calls)
        for (int m = 0; m < 4; ++m)
          for (int i = 0; i < 8; ++i)
            for (int t = 0; t < 4; ++t) put(k[8 * m + i].addr + 4 * t, k[4 * i + t].r[m]);
    }
    const int c0 = ONE_BOX ? 64 * b : 0, c1 = ONE_BOX ? c0 + 64 : COLUMNS;
    if ((int)mem.size() != 64 * (c1 - c0)) FAIL("%d bf16 written, expected %d", (int)mem.size(), 64 * (c1 - c0));
    for (int r = 0; r < 64; ++r)
      for (int c = c0; c < c1; ++c) {
        const sh_u32 at = (ONE_BOX ? 0 : (c / 64) * 8192) + r * 128 + ((((c % 64) / 8) ^ (r % 8)) * 16) + (c % 8) * 2;
        if (!mem.count(at) || mem[at] != (id(r, c) & 0xffff)) FAIL("element (%d, %d) not at byte %u (found %u)", r, c, at, mem.count(at) ? mem[at] : 0);
      }
  }
  std::printf("ok\n");
  return 0;
}
`;
}

describe.skipIf(!GXX)("FP8 GEMM epilogue staging writes on a CPU model of st.shared and stmatrix", () => {
  const dir = mkdtempSync(join(tmpdir(), "shardts-staging-"));
  const run = (src: string, tag: string): string => {
    const cc = join(dir, `${tag}.cc`), exe = join(dir, tag);
    writeFileSync(cc, src);
    execFileSync(GXX!, ["-O1", "-std=c++17", "-Wno-unknown-pragmas", "-o", exe, cc]);
    try {
      return execFileSync(exe, { encoding: "utf8" });
    } catch (e) {
      return String((e as { stdout?: string }).stdout ?? "");
    }
  };
  for (const stmatrix of [false, true])
    for (const columns of [128, 256]) {
      it(`${stmatrix ? "stmatrix" : "st.shared.b32"}, whole tile of ${columns} columns: every element at its swizzled place`, () => {
        expect(run(harness(stagingWrites(0, columns / 8, "  ", false, stmatrix), columns, false), `whole_${stmatrix}_${columns}`).trim()).toBe("ok");
      }, 60_000);
      it(`${stmatrix ? "stmatrix" : "st.shared.b32"}, box by box (${columns} columns): each 64-column box at its swizzled place`, () => {
        expect(run(harness(stagingWrites("8 * b", "8 * b + 8", "  ", true, stmatrix), columns, true), `box_${stmatrix}_${columns}`).trim()).toBe("ok");
      }, 60_000);
    }
  it("the model catches a broken stmatrix form: the swizzle taken from the row's half, or the matrices' column groups swapped", () => {
    const good = stagingWrites(0, 32, "  ", false, true);
    const mutants = [good.replace("(jj % 8) ^ (lane % 8)", "(jj % 8) ^ ((lane / 8) % 8)"), good.replace("const int jj = j + lane / 16", "const int jj = j + 1 - lane / 16")];
    mutants.forEach((broken, i) => {
      expect(broken).not.toBe(good);
      expect(run(harness(broken, 256, false), `broken_${i}`)).toMatch(/FAIL/);
    });
  }, 60_000);
});
