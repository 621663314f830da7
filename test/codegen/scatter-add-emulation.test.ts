// scatter_add's kernel (runtime/cuda/kernels/sources.ts scatterAdd: a warp per source row, 4 values a
// lane with one 4-wide atomic where the rows allow) runs, as text, on the CPU emulation of
// test/codegen/emu against the sum written out here: f32 and bf16 sources, the 4-wide path (R a multiple
// of 4) and the one-value path (R not), several batch entries, rows whose index is -1 (skipped) and one
// out of range (flagged, its row not added), more rows than the grid's warps. The values are small
// integers, so every order of the atomic adds gives the same f32 sums. And the form for rows of a warp's
// width or more (kernels/scatter-sources.ts: count, scan, fill, a warp per target row) on the same
// indices, writing bf16 or f32, with a target no row reaches. Skipped, saying so, without g++.
import { describe, expect, it } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { scatterAdd } from "../../runtime/cuda/kernels/sources.ts";
import { SCATTER_SCAN_BLOCK, scatterCount, scatterFill, scatterScan, scatterSum } from "../../runtime/cuda/kernels/scatter-sources.ts";
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

  it("by target (count, scan, fill, a warp per target row): the same sums in the output's dtype, empty targets zero, the bad index flagged", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-scatter-t-"));
    // the output's dtype as the source's or f32 from bf16; R a multiple of the 16-byte pack (vec) or not; a target with no row
    const cases: (Case & { o: "f32" | "bf16" })[] = [
      { t: "bf16", o: "bf16", B: 1, J: 40, R: 136, size: 7, vec: 1, grid: 2 },
      { t: "bf16", o: "f32", B: 2, J: 33, R: 72, size: 5, vec: 1, grid: 3 },
      { t: "f32", o: "f32", B: 3, J: 20, R: 70, size: 9, vec: 0, grid: 2 },
      { t: "f32", o: "bf16", B: 1, J: 50, R: 36, size: 60, vec: 1, grid: 1 },
    ];
    for (const [n, c] of cases.entries()) {
      const S = c.t === "f32" ? "float" : "__nv_bfloat16", O = c.o === "f32" ? "float" : "__nv_bfloat16", rows = c.B * c.J, targets = c.B * c.size;
      const block = `{ // ${c.t} -> ${c.o} B ${c.B} J ${c.J} R ${c.R} size ${c.size}
  std::vector<${S}> src(${rows * c.R});
  for (long long i = 0; i < ${rows * c.R}; ++i) src[i] = from_f<${S}>((float)(((i * 37) % 11) - 5));
  std::vector<int> idx(${rows}), cnt(${targets + 1}, 0), start(${targets + 1}, -9), list(${rows}, -9);
  for (int bj = 0; bj < ${rows}; ++bj) idx[bj] = bj == 5 ? ${c.size + 2} : bj % 7 == 3 ? -1 : (bj * 5 + 1) % ${c.size};
  std::vector<${O}> out(${targets * c.R}, from_f<${O}>(123.f));
  int bad = 0;
  emu_launch(${c.grid}, 128, [&] { ${scatterCount().name}(idx.data(), ${c.B}LL, ${c.J}LL, ${c.size}LL, cnt.data(), &bad); });
  emu_launch(1, ${SCATTER_SCAN_BLOCK}, [&] { ${scatterScan().name}(cnt.data(), ${targets}LL, start.data()); });
  std::fill(cnt.begin(), cnt.end(), 0);
  emu_launch(${c.grid}, 128, [&] { ${scatterFill().name}(idx.data(), ${c.B}LL, ${c.J}LL, ${c.size}LL, start.data(), cnt.data(), list.data()); });
  emu_launch(${c.grid}, 128, [&] { ${scatterSum(c.t, c.o).name}(out.data(), src.data(), start.data(), list.data(), ${targets}LL, ${c.R}LL, ${c.vec}); });
  std::vector<float> f(out.size());
  for (size_t i = 0; i < out.size(); ++i) f[i] = to_f(out[i]);
  fwrite(f.data(), 4, f.size(), o); fwrite(&bad, 4, 1, o);
}`;
      const check = (out: Buffer, at: number) => {
        const want = new Float32Array(targets * c.R), reached = new Set<number>();
        for (let bj = 0; bj < rows; bj++) {
          const g = index(bj, c.size), b = Math.floor(bj / c.J);
          if (g < 0 || g >= c.size) continue;
          reached.add(b * c.size + g);
          for (let r = 0; r < c.R; r++) want[(b * c.size + g) * c.R + r]! += value(bj * c.R + r);
        }
        if (c.size === 60) expect(reached.size, "targets no row reaches (written as zeros)").toBeLessThan(targets);
        const got = Array.from({ length: want.length }, (_, i) => out.readFloatLE(at + 4 * i));
        at += 4 * want.length;
        expect(got, `${c.t} -> ${c.o} R ${c.R}`).toEqual(Array.from(want));
        expect(out.readInt32LE(at), `${c.t} -> ${c.o}: the out-of-range index flagged`).toBe(c.size + 2);
        return at + 4;
      };
      await runEmulated(dir, `scatter_by_target_${n}`, [scatterCount(), scatterScan(), scatterFill(), scatterSum(c.t, c.o)].map((k) => k.source).join("\n"), [block], [check]);
    }
  }, 180_000);
});
