// The FP8 GEMM tile timeline (config trace): the summary of a synthetic trace laid out as the kernel writes
// it (compiler/codegen/cuda/gemm/trace.ts) gives back the phases it was built from, and a trace with a
// missing or disordered stamp is refused rather than summed.
import { describe, expect, it } from "vitest";
import { TRACE, TRACE_CTA, TRACE_SLOTS, traceWords } from "../../compiler/codegen/cuda/gemm/trace.ts";
import { configProblem, defaultGemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { stat, summarizeTrace, tilesOf } from "../../bench/gpu/lib/gemm-trace-summary.ts";

/** A trace of `grid` CTAs over `tiles` tiles: each tile starts 100 cycles after the last, waits 50 for its first stage, loops 1000, stores in 200; clock 2 cycles per ns. */
function synthetic(grid: number, tiles: number): BigUint64Array {
  const maxT = Math.ceil(tiles / grid), w = new BigUint64Array(traceWords(tiles, grid));
  for (let b = 0; b < grid; b++) {
    const start = 10_000 + b, put = (i: number, slot: number, v: number) => (w[(b * (maxT + 1) + i) * TRACE_SLOTS + slot] = BigInt(v));
    let t = start + 300; // setup
    const n = tilesOf(b, grid, tiles);
    for (let i = 0; i < n; i++) {
      for (const c of [0, 1]) {
        const o = c * TRACE.consumerStride, top = t + 7 * c;
        put(i, o + TRACE.top, top);
        put(i, o + TRACE.firstStage, top + 50);
        put(i, o + TRACE.loopEnd, top + 1050);
        put(i, o + TRACE.epilogueEnd, top + 1250);
        put(i, o + TRACE.stageWaits, 80);
      }
      put(i, TRACE.producerTop, t - 400);
      put(i, TRACE.producerFirstFree, t - 390);
      put(i, TRACE.freeWaits, 900);
      put(i, TRACE.sm, b);
      put(i, TRACE.tile, b + i * grid);
      t += 1250 + 100;
    }
    const end = t - 100 + 20;
    put(maxT, TRACE_CTA.clockStart, start);
    put(maxT, TRACE_CTA.clockEnd, end);
    put(maxT, TRACE_CTA.timerStart, 5000);
    put(maxT, TRACE_CTA.timerEnd, 5000 + (end - start) / 2);
  }
  return w;
}

describe("the GEMM tile timeline summary", () => {
  it("gives back the phases a synthetic trace was built from", () => {
    const s = summarizeTrace(synthetic(3, 8), 3, 8, 11);
    expect(s.ctas).toBe(3);
    expect(s.tiles).toBe(8);
    expect(s.ghz.median).toBeCloseTo(2, 6);
    expect(s.start.median).toBe(50);
    expect(s.loop.mean).toBe(1000);
    expect(s.loopPerBlock.mean).toBeCloseTo(1000 / 11, 9);
    expect(s.epilogue.mean).toBe(200);
    expect(s.gap.mean).toBe(100); // consumer 1 is 7 cycles late at both ends of every tile
    expect(s.gap.n).toBe(2 * (8 - 3)); // tiles after each CTA's first, two consumers
    expect(s.skew.mean).toBe(7);
    expect(s.producerFirstFree.mean).toBe(10);
    // issued at t - 390: the consumers' tops 390 / 397 later, their first stages 50 after that
    expect(s.firstIssueToTop.mean).toBe(393.5);
    expect(s.firstIssueToLanded.mean).toBe(443.5);
    expect(s.setup.mean).toBe(300);
    expect(s.drain.mean).toBeCloseTo((20 + 13) / 2, 6); // consumer 0 ends 20 before the CTA, consumer 1 13
    expect(s.inLoop).toBeGreaterThan(0.6);
    expect(s.inLoop).toBeLessThan(0.8);
  });

  it("refuses a trace whose stamps are missing or out of order, or too short for the grid", () => {
    const w = synthetic(2, 3);
    expect(() => summarizeTrace(w.slice(0, 10), 2, 3, 4)).toThrow(/needs/);
    const blank = new BigUint64Array(w.length);
    expect(() => summarizeTrace(blank, 2, 3, 4)).toThrow(/no start\/end stamps/);
    const swapped = w.slice();
    swapped[TRACE.loopEnd] = swapped[TRACE.top]! - 1n;
    expect(() => summarizeTrace(swapped, 2, 3, 4)).toThrow(/out of order/);
    const wrongTile = w.slice();
    wrongTile[TRACE.tile] = 5n;
    expect(() => summarizeTrace(wrongTile, 2, 3, 4)).toThrow(/names tile 5/);
  });

  it("tilesOf and stat", () => {
    expect([0, 1, 2, 3].map((b) => tilesOf(b, 4, 6))).toEqual([2, 2, 1, 1]);
    expect(tilesOf(5, 8, 4)).toBe(0);
    expect(stat([3, 1, 2, 10])).toEqual({ n: 4, mean: 4, median: 3, p90: 10 });
  });

  it("trace is a chunked-kernel instrument: other kernels refuse it", () => {
    const c = defaultGemmConfig(false, { M: 4096, N: 7168 });
    expect(configProblem({ ...c, trace: true })).toBeUndefined();
    expect(configProblem({ ...c, trace: true, deferStore: true })).toMatch(/trace stamps/);
    expect(configProblem({ ...defaultGemmConfig(false, { M: 128, N: 256 }), trace: true })).toMatch(/needs chunked/);
  });
});
