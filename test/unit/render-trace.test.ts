// bench/host/render-trace.ts: a trace's events drawn as one box each, one lane per stream row.
import { describe, expect, it } from "vitest";
import { renderSvg } from "../../bench/host/render-trace.ts";

describe("render-trace", () => {
  it("draws a box per event in a lane per row, with a title per trace", () => {
    const ev = (name: string, cat: string, ts: number, dur: number, tid: string) => ({ name, cat, ph: "X", ts, dur, tid });
    const svg = renderSvg([
      { label: "rank0.json", events: [ev("dot", "gemm", 0, 100, "rank 0"), ev("all_to_all[ep]", "comm", 20, 50, "rank 0 comm"), ev("k<1>", "kernel", 100, 10, "rank 0")] },
      { label: "rank1.json", events: [ev("dot", "gemm", 5, 90, "rank 1")] },
    ], "step");
    expect(svg.startsWith("<svg")).toBe(true);
    expect(svg.match(/<title>/g)!.length).toBe(4);
    expect(svg).toContain("k&lt;1&gt; 0.010 ms");
    for (const s of ["rank0.json", "rank1.json", "rank 0 comm", "rank 1"]) expect(svg).toContain(s);
    expect(() => renderSvg([{ label: "x", events: [] }], "empty")).toThrow(/no complete/);
  });
});
