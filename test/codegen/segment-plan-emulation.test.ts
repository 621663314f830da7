// The device-side segment plan (runtime/cuda/kernels/segment-sources.ts) runs, as text, on the CPU
// emulation of test/codegen/emu (g++; threads for lanes, barriers for __syncthreads and shuffles),
// against the host: the row-run table equals bf16-segment.ts's rowRunTable over segment-gemm.ts's
// segments() (then expert -1 up to rowRunCapacity), Y's rows outside the segments are zeroed and the
// others left alone, and the column layout equals each expert's
// segments laid end to end and padded to 64 columns (transcribed below from segments()); the
// transposing gather equals Xᵀ gathered by that layout, bit for bit, over the used columns only; the
// FP8 ops' expansions of the row-run table equal it too: A's scales laid out by block (zero past a
// block's rows), the padded row map, and each expert's consecutive blocks (first, count).
// Layouts: random, skewed, empty experts and entries, bt > 1, packed and unpacked (local groups
// past the counts' first), rows clipped at R, more than 32 groups and entries (several warp chunks,
// several entries a warp), grids of several blocks. Skipped, saying so, without g++.
import { describe, expect, it } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { segments, type SegmentLayout } from "../../runtime/cuda/segment-gemm.ts";
import { rowRunTable } from "../../runtime/cuda/bf16-segment.ts";
import { columnCapacity, rowRunCapacity } from "../../runtime/cuda/segment-device.ts";
import { segmentColumnsPlan, segmentGatherT, segmentPlanInts, segmentRunBlocks, segmentRunScales, segmentRunsPlan, SEGMENT_GATHER_BLOCK, SEGMENT_PLAN_BLOCK, SEGMENT_PLAN_SMEM_INTS } from "../../runtime/cuda/kernels/segment-sources.ts";
import { mulberry32 } from "../helpers/prng.ts";
import { GXX, noteIfNoGxx, runEmulated } from "./gxx.ts";

noteIfNoGxx("segment-plan-emulation");

interface Case { label: string; l: SegmentLayout; Rout: number; K: number; grid: number }

/** The host's column layout: expert g's segments (entries in order) end to end from column 64·first_g, padded with -1 to 64. */
function columnsOf(l: SegmentLayout): { be: number[]; colmap: number[] } {
  const segs = segments(l), be: number[] = [], colmap: number[] = [];
  for (let g = 0; g < l.groups; g++) {
    const first = colmap.length / 64;
    for (const s of segs) if (s.g === g) for (let i = 0; i < s.m; i++) colmap.push(s.t * l.R + s.row + i);
    while (colmap.length % 64) colmap.push(-1);
    be.push(first, colmap.length / 64 - first);
  }
  be.push(colmap.length / 64, 0);
  return { be, colmap };
}

function randomLayout(rnd: () => number, o: { bt: number; gC: number; packed: boolean; clip: boolean; skew?: boolean; hot?: number }): SegmentLayout {
  const { bt, gC, packed } = o;
  const first = Math.floor(rnd() * gC), groups = 1 + Math.floor(rnd() * (gC - first));
  const counts = Array.from({ length: bt * gC }, (_, i) =>
    o.skew && i % gC === first ? (o.hot ?? 300) + Math.floor(rnd() * 50) : rnd() < 0.33 ? 0 : rnd() < 0.2 ? 20 + Math.floor(rnd() * 140) : Math.floor(rnd() * 9));
  const need = Math.max(1, ...Array.from({ length: bt }, (_, t) => counts.slice(t * gC, (t + 1) * gC).reduce((a, b) => a + b, 0)));
  return { counts, bt, gC, first, groups, packed, R: o.clip ? 1 + Math.floor(need * rnd()) : need };
}

function cases(): Case[] {
  const rnd = mulberry32(2027), out: Case[] = [];
  for (let i = 0; i < 24; i++) {
    const l = randomLayout(rnd, { bt: 1 + Math.floor(rnd() * 5), gC: 1 + Math.floor(rnd() * 10), packed: i % 2 === 0, clip: i % 3 === 0, skew: i % 4 === 1 });
    out.push({ label: `random ${i}: bt ${l.bt}, gC ${l.gC}, first ${l.first}, E ${l.groups}, ${l.packed ? "packed" : "unpacked"}, R ${l.R}`, l, Rout: l.R + (i % 5), K: [8, 72, 136][i % 3]!, grid: 1 + (i % 3) });
  }
  // skewed: one hot expert of several 128-row blocks, the others empty or small, entries of 2
  out.push({ label: "skewed, hot expert of 3 blocks, unpacked", l: randomLayout(mulberry32(5), { bt: 2, gC: 6, packed: false, clip: false, skew: true }), Rout: 0, K: 64, grid: 2 });
  // every local group empty in every entry (nothing to compute: all padding)
  out.push({ label: "all local groups empty", l: { counts: [4, 0, 0, 3, 2, 0, 0, 5], bt: 2, gC: 4, first: 1, groups: 2, packed: false, R: 9 }, Rout: 0, K: 16, grid: 2 });
  // rows clipped at R: the local groups start past R in entry 1 (unpacked), and end past it in entry 0
  out.push({ label: "clipped at R: a segment cut, an entry's local groups past R", l: { counts: [3, 150, 40, 0, 200, 5, 9, 1], bt: 2, gC: 4, first: 1, groups: 3, packed: false, R: 180 }, Rout: 0, K: 24, grid: 1 });
  // an exact multiple of 128 and 64 rows (no partial block) and one row past it
  out.push({ label: "segments of 128 and 129 rows", l: { counts: [128, 129, 64, 65], bt: 2, gC: 2, first: 0, groups: 2, packed: true, R: 257 }, Rout: 0, K: 8, grid: 3 });
  // more than 32 groups (several warp chunks) past a first over 32 (the skipped groups summed by several lanes each)
  const wide = { ...randomLayout(mulberry32(9), { bt: 3, gC: 80, packed: false, clip: false }), first: 37, groups: 43 };
  out.push({ label: "gC 80, first 37, E 43, unpacked", l: wide, Rout: 0, K: 40, grid: 2 });
  // more entries than warps (a warp takes several) and a grid of several blocks
  out.push({ label: "bt 19, gC 7, packed, clipped", l: randomLayout(mulberry32(11), { bt: 19, gC: 7, packed: true, clip: true }), Rout: 0, K: 8, grid: 4 });
  for (const c of out) if (c.Rout === 0) c.Rout = c.l.R;
  return out;
}

const SENT = 0x7eadbeef | 0;
/** K blocks of X's 1×128 scales in the FP8 expansions' emulation. */
const SKB = 3;
/** Y's row length in the emulation (two 16-byte words). */
const YN = 16;

describe.skipIf(!GXX)("segment plan and transposing gather, run on a CPU emulation of the GPU", () => {
  it("equal the host's segments() row runs and column layout, and Xᵀ gathered by it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-segplan-"));
    const cs = cases();
    const blocks: string[] = [], checks: ((out: Buffer, at: number) => number)[] = [];
    let clipped = 0, multiBlock = 0, emptyGroups = 0;
    for (const c of cs) {
      const { l } = c, E = l.groups, segs = segments(l);
      expect(segmentPlanInts(l.bt, E), c.label).toBeLessThanOrEqual(SEGMENT_PLAN_SMEM_INTS);
      if (segs.some((s) => s.m < l.counts[s.t * l.gC + l.first + s.g]!)) clipped++;
      if (segs.some((s) => s.m > 128)) multiBlock++;
      if (segs.length < l.bt * E) emptyGroups++;
      const cap = rowRunCapacity(l.bt, l.R, E), P = columnCapacity(l.bt, l.R, E);
      const host = rowRunTable(segs, E, l.R, c.Rout), cols = columnsOf(l);
      expect(host.blocks, `${c.label}: row-run capacity`).toBeLessThanOrEqual(cap);
      expect(cols.colmap.length, `${c.label}: column capacity`).toBeLessThanOrEqual(P);
      const xr = l.bt * l.R, nx = xr * c.K, ny = l.bt * c.Rout * YN;
      blocks.push(`{ // ${c.label}
  std::vector<int> counts = {${Array.from(l.counts).join(", ")}};
  std::vector<int> runs(${4 * cap} + 4, ${SENT}), be(${2 * E + 2} + 2, ${SENT}), colmap(${P} + 1, ${SENT});
  std::vector<unsigned short> y(${ny} + 8, 0xEEEE);
  emu_launch(${c.grid}, ${SEGMENT_PLAN_BLOCK}, [&] { ${segmentRunsPlan().name}(counts.data(), ${l.bt}, ${l.gC}, ${l.first}, ${E}, ${l.packed ? 1 : 0}, ${l.R}, ${c.Rout}, runs.data(), ${cap}, (uint4*)y.data(), ${YN / 8}LL); });
  emu_launch(${c.grid}, ${SEGMENT_PLAN_BLOCK}, [&] { ${segmentColumnsPlan().name}(counts.data(), ${l.bt}, ${l.gC}, ${l.first}, ${E}, ${l.packed ? 1 : 0}, ${l.R}, be.data(), colmap.data()); });
  std::vector<unsigned short> x(${nx} + 8), xt((size_t)${c.K} * ${P} + 8, 0xEEEE);
  for (long long i = 0; i < ${nx}; ++i) x[i] = (unsigned short)((i * 40503u + 17u) & 0xffff);
  emu_launch(${c.grid + 1}, ${SEGMENT_GATHER_BLOCK}, [&] { ${segmentGatherT().name}((uint4*)xt.data(), (const uint4*)x.data(), colmap.data(), be.data() + ${2 * E}, ${c.K}LL, ${P}LL); });
  fwrite(runs.data(), 4, runs.size(), o); fwrite(y.data(), 2, y.size(), o); fwrite(be.data(), 4, be.size(), o); fwrite(colmap.data(), 4, colmap.size(), o); fwrite(xt.data(), 2, xt.size(), o);
  // the FP8 ops' expansions of the table: A's scales by block, the padded row map and each expert's blocks
  std::vector<float> sx((size_t)${xr * SKB} + 1), sa((size_t)${SKB * 128 * cap} + 4, -7.f);
  for (long long i = 0; i < ${xr * SKB}; ++i) sx[i] = (float)i + 0.5f;
  std::vector<int> rowMap(${128 * cap} + 4, ${SENT}), rbe(${2 * E} + 2, ${SENT});
  emu_launch(${c.grid}, 256, [&] { ${segmentRunScales().name}(runs.data(), ${cap}, sx.data(), ${xr}LL, ${SKB}, sa.data()); });
  emu_launch(${c.grid}, 256, [&] { ${segmentRunBlocks().name}(runs.data(), ${cap}, ${E}, rowMap.data(), rbe.data()); });
  fwrite(sa.data(), 4, sa.size(), o); fwrite(rowMap.data(), 4, rowMap.size(), o); fwrite(rbe.data(), 4, rbe.size(), o);
}`);
      checks.push((out, at) => {
        const i32 = (n: number) => { const v = Array.from({ length: n }, (_, i) => out.readInt32LE(at + 4 * i)); at += 4 * n; return v; };
        const runs = i32(4 * cap + 4);
        const y = Array.from({ length: ny + 8 }, (_, i) => out.readUInt16LE(at + 2 * i));
        at += 2 * (ny + 8);
        const be = i32(2 * E + 4), colmap = i32(P + 1);
        // Y: an entry's rows past its segments zeroed, the rows they cover (the GEMM's) and past Y left alone
        const wantY: number[] = [];
        for (let t = 0; t < l.bt; t++) {
          const covered = segs.filter((q) => q.t === t).reduce((a, q) => a + q.m, 0);
          for (let i = 0; i < c.Rout * YN; i++) wantY.push(i < covered * YN ? 0xeeee : 0);
        }
        expect(y, `${c.label}: Y's zeros`).toEqual([...wantY, ...Array(8).fill(0xeeee)]);
        const want = [...host.table];
        for (let b = host.blocks; b < cap; b++) want.push(-1, 0, 0, 0);
        expect(runs.slice(0, 4 * cap), `${c.label}: row runs`).toEqual(want);
        expect(runs.slice(4 * cap), `${c.label}: past the table`).toEqual([SENT, SENT, SENT, SENT]);
        expect(be.slice(0, 2 * E + 2), `${c.label}: expert column blocks`).toEqual(cols.be);
        expect(be.slice(2 * E + 2), `${c.label}: past blockExpert`).toEqual([SENT, SENT]);
        const used = cols.colmap.length;
        expect(colmap.slice(0, used), `${c.label}: column map`).toEqual(cols.colmap);
        expect(colmap.slice(used).every((v) => v === SENT), `${c.label}: columns past the used ones untouched`).toBe(true);
        const nt = c.K * P + 8, xt = Array.from({ length: nt }, (_, i) => out.readUInt16LE(at + 2 * i));
        at += 2 * nt;
        const bad: string[] = [];
        for (let k = 0; k < c.K && bad.length < 3; k++)
          for (let p = 0; p < P && bad.length < 3; p++) {
            const src = p < used ? cols.colmap[p]! : undefined;
            const w = src === undefined ? 0xeeee : src < 0 ? 0 : (((src * c.K + k) * 40503 + 17) >>> 0) & 0xffff;
            if (xt[k * P + p] !== w) bad.push(`XT[${k}][${p}] = ${xt[k * P + p]}, want ${w}`);
          }
        expect(bad, `${c.label}: transposing gather`).toEqual([]);
        expect(xt.slice(c.K * P).every((v) => v === 0xeeee), `${c.label}: past XT`).toBe(true);
        // the expansions, against the host table: block b's row i is X's row table[4b + 1] + i while i < its valid rows
        const f32 = (n: number) => { const v = Array.from({ length: n }, (_, i) => out.readFloatLE(at + 4 * i)); at += 4 * n; return v; };
        const sa = f32(SKB * 128 * cap + 4), rowMap = i32(128 * cap + 4), rbe = i32(2 * E + 2);
        const wantMap: number[] = [];
        for (let b = 0; b < cap; b++)
          for (let i = 0; i < 128; i++) wantMap.push(b < host.blocks && i < host.table[4 * b + 3]! ? host.table[4 * b + 1]! + i : -1);
        expect(rowMap, `${c.label}: padded row map`).toEqual([...wantMap, SENT, SENT, SENT, SENT]);
        const wantSa: number[] = [];
        for (let kb = 0; kb < SKB; kb++) for (const src of wantMap) wantSa.push(src < 0 ? 0 : src * SKB + kb + 0.5);
        expect(sa, `${c.label}: A's scales by block`).toEqual([...wantSa, -7, -7, -7, -7]);
        const wantBe: number[] = [];
        for (let g = 0; g < E; g++) {
          const mine = Array.from({ length: host.blocks }, (_, b) => b).filter((b) => host.table[4 * b] === g);
          // an expert with no blocks starts where the next one's would (its count is what the GEMM reads)
          const firstAt = mine.length ? mine[0]! : Array.from({ length: host.blocks }, (_, b) => b).find((b) => host.table[4 * b]! > g) ?? host.blocks;
          wantBe.push(firstAt, mine.length);
          if (mine.length) expect(mine, `${c.label}: expert ${g}'s blocks consecutive`).toEqual(Array.from({ length: mine.length }, (_, i) => mine[0]! + i));
        }
        expect(rbe, `${c.label}: experts' blocks`).toEqual([...wantBe, SENT, SENT]);
        return at;
      });
    }
    // the cases reach what they are named for
    expect(clipped).toBeGreaterThan(3);
    expect(multiBlock).toBeGreaterThan(3);
    expect(emptyGroups).toBeGreaterThan(5);
    await runEmulated(dir, "segplan", `${segmentRunsPlan().source}
${segmentColumnsPlan().source}
${segmentGatherT().source}
${segmentRunScales().source}
${segmentRunBlocks().source}`, blocks, checks);
  }, 180_000);
});

describe("row-run and column capacities", () => {
  it("hold every layout's blocks and are reached by the worst case", () => {
    const rnd = mulberry32(77);
    for (let i = 0; i < 2000; i++) {
      const l = randomLayout(rnd, { bt: 1 + Math.floor(rnd() * 6), gC: 1 + Math.floor(rnd() * 12), packed: i % 2 === 0, clip: i % 3 === 0, skew: i % 5 === 0, hot: 100 });
      const segs = segments(l);
      expect(rowRunTable(segs, l.groups, l.R, l.R).blocks).toBeLessThanOrEqual(rowRunCapacity(l.bt, l.R, l.groups));
      expect(columnsOf(l).colmap.length).toBeLessThanOrEqual(columnCapacity(l.bt, l.R, l.groups));
    }
    // every segment one row past a block: the bound is met exactly
    const worst: SegmentLayout = { counts: [129, 129, 129, 129], bt: 2, gC: 2, first: 0, groups: 2, packed: true, R: 258 };
    expect(rowRunTable(segments(worst), 2, 258, 258).blocks).toBe(rowRunCapacity(2, 258, 2));
    const worstCols: SegmentLayout = { counts: [65, 0, 0, 65], bt: 2, gC: 2, first: 0, groups: 2, packed: true, R: 65 };
    expect(columnsOf(worstCols).colmap.length).toBe(columnCapacity(2, 65, 2));
    // never more than the brief's ceil(S/128) + bt·E - 1; no rows: nothing (columns: one block for the GEMM's P)
    expect(rowRunCapacity(4, 1000, 8)).toBeLessThanOrEqual(Math.ceil(4000 / 128) + 31);
    expect(rowRunCapacity(3, 0, 5)).toBe(0);
    expect(columnCapacity(3, 0, 5)).toBe(64);
  });
});
