// The run timeline (runtime/cuda/trace.ts): Chrome trace JSON that Perfetto reads, and the CLI's
// --trace refusing a backend that has no CUDA events. (The events themselves are recorded on the GPU
// machine: bench/results/*-trace-*.json.)
import { describe, expect, it } from "vitest";
import { chromeTrace } from "../../runtime/cuda/trace.ts";
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

  it("is refused on the CPU backend, saying what it needs", async () => {
    const errs: string[] = [];
    const code = await main(["run", "examples/tp-mlp.ts", "--backend", "cpu", "--trace", "/tmp/never.json"], () => {}, (s) => errs.push(s));
    expect(code).not.toBe(0);
    expect(errs.join("\n")).toMatch(/--trace records CUDA events: it needs the CUDA backend \(this run uses cpu/);
  });
});
