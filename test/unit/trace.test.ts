// The run timeline (runtime/cuda/trace.ts): Chrome trace JSON that Perfetto reads, and the CLI's
// --trace refusing a backend that has no CUDA events. (The events themselves are recorded on the GPU
// machine: bench/results/*-trace-*.json.)
import { describe, expect, it } from "vitest";
import { chromeTrace, commOverlap, traceTotals } from "../../runtime/cuda/trace.ts";
import { main } from "../../stdlib/cli/main.ts";

describe("--trace", () => {
  it("writes complete events in microseconds with a process name, one row per stream", () => {
    const j = JSON.parse(chromeTrace([
      { name: "sh_row_softmax_1234", cat: "kernel", ts: 0, dur: 12.34567, tid: "stream", args: { fuses: "softmax" } },
      { name: "all_to_all[ep]", cat: "comm", ts: 20, dur: 5, tid: "rank 1" },
    ], 1, "shardts run examples/moe-layer.ts"));
    expect(j.displayTimeUnit).toBe("ms");
    expect(j.traceEvents[0]).toEqual({ name: "process_name", ph: "M", pid: 1, args: { name: "shardts run examples/moe-layer.ts" } });
    expect(j.traceEvents[1]).toEqual({ name: "sh_row_softmax_1234", cat: "kernel", ph: "X", ts: 0, dur: 12.346, pid: 1, tid: "stream", args: { fuses: "softmax" } });
    expect(j.traceEvents[2]).toMatchObject({ name: "all_to_all[ep]", ph: "X", ts: 20, dur: 5, tid: "rank 1" });
  });

  it("measures how much comm-stream time ran while compute-stream spans did", () => {
    const ov = commOverlap([
      { name: "k0", cat: "kernel", ts: 0, dur: 10, tid: "rank 0" },
      { name: "g0", cat: "gemm", ts: 5, dur: 10, tid: "rank 0" }, // overlaps k0: one busy interval [0, 15)
      { name: "k1", cat: "kernel", ts: 30, dur: 10, tid: "rank 0" },
      { name: "ag1", cat: "comm", ts: 10, dur: 10, tid: "rank 0 comm" }, // 5 us inside [0, 15)
      { name: "ag2", cat: "comm", ts: 35, dur: 20, tid: "rank 0 comm" }, // 5 us inside [30, 40)
    ]);
    expect(ov).toEqual({ commUs: 30, overlapUs: 10, computeUs: 25, wallUs: 55, commSpans: 2 });
    expect(commOverlap([{ name: "k", cat: "kernel", ts: 0, dur: 4, tid: "r" }])).toMatchObject({ commUs: 0, overlapUs: 0, commSpans: 0 });
  });

  it("is refused on the CPU backend, saying what it needs", async () => {
    const errs: string[] = [];
    const code = await main(["run", "examples/tp-mlp.ts", "--backend", "cpu", "--trace", "/tmp/never.json"], () => {}, (s) => errs.push(s));
    expect(code).not.toBe(0);
    expect(errs.join("\n")).toMatch(/--trace records CUDA events: it needs the CUDA backend \(this run uses cpu/);
  });
  it("traceTotals adds up time per instruction name and kind, largest first", () => {
    const t = traceTotals([
      { name: "dot", cat: "gemm", ts: 0, dur: 3, tid: "r" },
      { name: "all_to_all[ep]", cat: "comm", ts: 1, dur: 5, tid: "c" },
      { name: "dot", cat: "gemm", ts: 4, dur: 4, tid: "r" },
      { name: "dot", cat: "op", ts: 9, dur: 1, tid: "r" },
    ]);
    expect(t).toEqual([
      { cat: "gemm", name: "dot", n: 2, us: 7 },
      { cat: "comm", name: "all_to_all[ep]", n: 1, us: 5 },
      { cat: "op", name: "dot", n: 1, us: 1 },
    ]);
    expect(traceTotals([])).toEqual([]);
  });
});
