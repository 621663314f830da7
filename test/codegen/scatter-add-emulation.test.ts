// scatter_add's kernel (runtime/cuda/kernels/sources.ts scatterAdd: a warp per source row, 4 values a
// lane with one 4-wide atomic where the rows allow) runs, as text, on the CPU emulation of
// test/codegen/emu against the sum written out here: f32 and bf16 sources, the 4-wide path (R a multiple
// of 4) and the one-value path (R not), several batch entries, rows whose index is -1 (skipped) and one
// out of range (flagged, its row not added), more rows than the grid's warps. The values are small
// integers, so every order of the atomic adds gives the same f32 sums. Skipped, saying so, without g++.
import { describe, expect, it } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { scatterAdd } from "../../runtime/cuda/kernels/sources.ts";
import { GXX, noteIfNoGxx, runEmulated } from "./gxx.ts";

noteIfNoGxx("scatter-add-emulation");

interface Case { t: "f32" | "bf16"; B: number; J: number; R: number; size: number; vec: number; grid: number }
const CASES: Case[] = [
  { t: "bf16", B: 1, J: 40, R: 136, size: 7, vec: 1, grid: 1 },
  { t: "bf16", B: 2, J: 33, R: 70, size: 5, vec: 0, grid: 2 },
  { t: "f32", B: 3, J: 20, R: 260, size: 9, vec: 1, grid: 2 },
  { t: "f32", B: 1, J: 50, R: 3, size: 4, vec: 0, grid: 1 },
];

/** The index of source row bj: -1 every 7th, one out of range (size + 2) at row 5, else spread over [0, size). */
const index = (bj: number, size: number) => (bj === 5 ? size + 2 : bj % 7 === 3 ? -1 : (bj * 5 + 1) % size);
const value = (i: number) => ((i * 37) % 11) - 5;

describe.skipIf(!GXX)("scatter_add's kernel on a CPU emulation of the GPU", () => {
  it("adds each row into its index's row (4 a lane or one), skips -1, flags the out-of-range index", async () => {
    const blocks = CASES.map((c) => {
      const T = c.t === "f32" ? "float" : "__nv_bfloat16", n = c.B * c.J * c.R;
      return `{ // ${c.t} B ${c.B} J ${c.J} R ${c.R} vec ${c.vec}
  std::vector<${T}> src(${n});
  for (long long i = 0; i < ${n}; ++i) src[i] = from_f<${T}>((float)(((i * 37) % 11) - 5));
  std::vector<int> idx(${c.B * c.J});
  for (int bj = 0; bj < ${c.B * c.J}; ++bj) idx[bj] = bj == 5 ? ${c.size + 2} : bj % 7 == 3 ? -1 : (bj * 5 + 1) % ${c.size};
  std::vector<float> acc(${c.B * c.size * c.R}, 0.f);
  int bad = 0;
  emu_launch(${c.grid}, 128, [&] { ${scatterAdd(c.t).name}(acc.data(), src.data(), idx.data(), ${c.B}LL, ${c.J}LL, ${c.R}LL, ${c.size}LL, &bad, ${c.vec}); });
  fwrite(acc.data(), 4, acc.size(), o); fwrite(&bad, 4, 1, o);
}`;
    });
    const checks = CASES.map((c) => (out: Buffer, at: number) => {
      const want = new Float32Array(c.B * c.size * c.R);
      for (let b = 0; b < c.B; b++)
        for (let j = 0; j < c.J; j++) {
          const bj = b * c.J + j, g = index(bj, c.size);
          if (g < 0 || g >= c.size) continue;
          for (let r = 0; r < c.R; r++) want[(b * c.size + g) * c.R + r]! += value(bj * c.R + r);
        }
      const got = Array.from({ length: want.length }, (_, i) => out.readFloatLE(at + 4 * i));
      at += 4 * want.length;
      expect(got, `${c.t} R ${c.R} vec ${c.vec}`).toEqual(Array.from(want));
      expect(out.readInt32LE(at), `${c.t} R ${c.R}: the out-of-range index flagged`).toBe(c.size + 2);
      return at + 4;
    });
    // one program per dtype (each kernel is its own NVRTC program at run time too)
    const dir = mkdtempSync(join(tmpdir(), "shardts-scatter-"));
    for (const t of ["f32", "bf16"] as const) {
      const mine = CASES.map((c, i) => [c, i] as const).filter(([c]) => c.t === t).map(([, i]) => i);
      await runEmulated(dir, `scatter_${t}`, scatterAdd(t).source, mine.map((i) => blocks[i]!), mine.map((i) => checks[i]!));
    }
  }, 120_000);
});
