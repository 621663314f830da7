// The schedule pass (compiler/passes/schedule.ts) on real MoE LM training steps with two micro-batches:
// the order it returns is a valid topological order (verifyOrder, and an independent check here),
// the step computes bit-identical results on the CPU, the predicted step time does not grow and,
// with two chains, drops below the unscheduled order's; prefetch after it keeps the order valid.
import { afterAll, describe, expect, it } from "vitest";
import { fuse } from "../../compiler/codegen/fuse.ts";
import type { FusedPlan } from "../../compiler/codegen/types.ts";
import { readsOf, writesOf } from "../../compiler/plan.ts";
import { costFromEnv, schedule, verifyOrder, type ScheduleReport } from "../../compiler/passes/schedule.ts";
import { simulate } from "../../compiler/passes/schedule-cost.ts";
import { prefetchComms } from "../../compiler/passes/prefetch.ts";
import { CompileError } from "../../compiler/errors.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { Trainer } from "../../stdlib/train/trainer.ts";
import { layoutByName } from "../../stdlib/nn/layout.ts";
import { ADAMW_DEFAULTS } from "../../stdlib/optim/adamw.ts";
import type { LmConfig } from "../../stdlib/nn/transformer.ts";
import { runFusedCpu } from "../codegen/run-fused.ts";
import { build } from "../../bench/gpu/lib/moe-build.ts";

const model: LmConfig = {
  vocab: 40, model: 16, heads: 2, layers: 2, seq: 8, ffn: 24,
  moe: { experts: 4, topK: 2, ffn: 12, shared: 1, score: "softmax", auxLoss: 0, moeFrom: 0 },
};
const B = 8;
const ids = Int32Array.from({ length: B * model.seq }, (_, i) => (i * 7 + 3) % model.vocab);
const targets = Int32Array.from({ length: B * model.seq }, (_, i) => (i * 11 + 5) % model.vocab);

/** One traced training step: its fused plan and the feeds of its first run. */
function step(layout: string, sizes: Record<string, number>, microBatches: number, fusedDispatch: boolean) {
  const cfg = { ...model, microBatches, moe: { ...model.moe!, fusedDispatch } };
  const tr = new Trainer({ model: cfg, layout: layoutByName(layout, Object.keys(sizes).length ? sizes : undefined), batch: B, opt: ADAMW_DEFAULTS, schedule: { peak: 1e-2, warmup: 1, total: 10, minRatio: 0.1 }, seed: 3, biasRate: 0 });
  let feeds: Record<string, LocalTensor[]> = {};
  const run = tr.program.runGlobal.bind(tr.program);
  tr.program.runGlobal = (f, read) => ((feeds = f), run(f, read));
  tr.run(ids, targets);
  return { fp: fuse(tr.program.plan), feeds: new Map(Object.entries(feeds)) };
}

/** Independently of verifyOrder: every slot an instruction reads that some instruction writes is written before it. */
function expectValidOrder(fp: FusedPlan): void {
  const written = new Set<number>();
  const produced = new Set(fp.instrs.flatMap((x) => writesOf(x)));
  fp.instrs.forEach((x, i) => {
    for (const s of readsOf(x)) if (produced.has(s)) expect(written.has(s), `instruction ${i} reads slot ${s} before it is written`).toBe(true);
    for (const s of writesOf(x)) written.add(s);
  });
}

const ms = (s: number) => (s * 1e3).toFixed(3);
const report: string[] = [];

describe("the schedule pass", () => {
  for (const [layout, sizes] of [["ep", { ep: 2 }], ["dp-ep", { dp: 2, ep: 2 }]] as const)
    for (const fused of [false, true])
      it(`${layout} ${JSON.stringify(sizes)}, ${fused ? "fused" : "composed"} dispatch, two micro-batches: valid, bit-identical, predicted faster`, () => {
        const { fp, feeds } = step(layout, sizes, 2, fused);
        const r = {} as ScheduleReport;
        const s = schedule(fp, undefined, r);
        expectValidOrder(s);
        expect(s.instrs.length).toBe(fp.instrs.length);
        const a = runFusedCpu(fp, feeds), b = runFusedCpu(s, feeds);
        a.outputs.forEach((o, i) => expect([...b.outputs[i]!.data], `output ${i}`).toEqual([...o.data]));
        expect(r.after.step).toBeLessThanOrEqual(r.before.step * (1 + 1e-9));
        expect(r.after.computeOnly).toBeCloseTo(r.before.computeOnly, 12);
        // prefetch after the schedule: still a valid order
        expectValidOrder(prefetchComms(s));
        report.push(`${layout} ${fused ? "fused   " : "composed"} mb=2: ${r.moved} of ${fp.instrs.length} moved; predicted step ${ms(r.before.step)} -> ${ms(r.after.step)} ms (compute ${ms(r.after.computeOnly)}, comm ${ms(r.after.commOnly)}, ${r.after.hostReads} host reads)`);
      });

  it("overlaps: with two chains the composed ep step is predicted faster than in program order", () => {
    const { fp } = step("ep", { ep: 2 }, 2, false);
    // a comm-heavy machine, so the exchanges dominate this tiny model
    const cost = costFromEnv("linkBandwidth=1e9,hostRead=1e-6");
    const r = {} as ScheduleReport;
    schedule(fp, cost, r);
    expect(r.after.step).toBeLessThan(r.before.step * 0.98);
    expect(r.after.step).toBeGreaterThanOrEqual(Math.max(r.after.computeOnly, r.after.commOnly) * (1 - 1e-9));
    report.push(`ep composed mb=2, link 1 GB/s: ${ms(r.before.step)} -> ${ms(r.after.step)} ms; max(compute, comm) ${ms(Math.max(r.after.computeOnly, r.after.commOnly))}, sum ${ms(r.after.computeOnly + r.after.commOnly)}`);
  });

  it("keeps the program order where the predicted gain is below minGain (the pipeline's default: 2%)", () => {
    const { fp } = step("ep", { ep: 2 }, 2, false);
    const cost = costFromEnv("linkBandwidth=1e9,hostRead=1e-6");
    const r = {} as ScheduleReport;
    const gain = (() => {
      const g = {} as ScheduleReport;
      schedule(fp, cost, g);
      return 1 - g.after.step / g.before.step;
    })();
    expect(gain).toBeGreaterThan(0.02);
    expect(schedule(fp, cost, r, { minGain: Math.min(0.99, gain * 1.5) })).toBe(fp);
    expect(r.moved).toBe(0);
    expect(r.after.step).toBe(r.before.step);
    expect(schedule(fp, cost, undefined, { minGain: gain * 0.5 })).not.toBe(fp);
  });

  it("places each source (input, constant, factory) just before its first reader, as program order does", () => {
    const { fp } = step("dp-ep", { dp: 2, ep: 2 }, 2, false);
    const s = schedule(fp, costFromEnv("linkBandwidth=1e9,hostRead=1e-6"));
    expect(s).not.toBe(fp);
    const isSource = (x: (typeof s.instrs)[number]) => readsOf(x).length === 0;
    let checked = 0;
    s.instrs.forEach((x, k) => {
      if (!isSource(x)) return;
      const next = s.instrs.slice(k + 1).find((y) => !isSource(y));
      const readers = s.instrs.filter((y) => readsOf(y).some((r) => writesOf(x).includes(r)));
      if (!readers.length) return;
      expect(next, `source ${k} (${x.kind === "op" ? x.op : x.kind})`).toBe(readers[0]);
      checked++;
    });
    expect(checked).toBeGreaterThan(10);
  });

  it("windowBytes holds a comm step back while compute is ready and another's output waits for its reader", () => {
    // s0 -> two independent exchanges c1, c2 (each read by k1, k2) and a compute chain x1 -> x2
    const v = (name: string) => ({ type: { dims: [{ name, size: 1024 }], dtype: "f32" as const, placements: [] }, boxes: [], shapes: [[1024]], segCounts: {} });
    const values = ["s0", "c1", "c2", "k1", "k2", "x1", "x2"].map(v);
    const op = (o: string, inputs: number[], out: number) => ({ kind: "op" as const, op: o, inputs, outputs: [out] });
    const comm = (input: number, output: number) => ({ kind: "comm" as const, input, output });
    const instrs = [op("input", [], 0), op("exp", [0], 5), op("exp", [5], 6), comm(0, 1), op("exp", [1], 3), comm(0, 2), op("exp", [2], 4)];
    const plan = { values, instrs, outputs: [3, 4, 6], lastUse: [] as number[] };
    const cost = costFromEnv("linkBandwidth=1e6");
    const at = (o: typeof plan, i: number) => o.instrs.indexOf(instrs[i]!);
    const loose = schedule(plan, cost), tight = schedule(plan, cost, undefined, { windowBytes: 4096 });
    expect(at(loose, 5)).toBeLessThan(at(loose, 4)); // unbounded: both exchanges go out at once
    expect(at(tight, 5)).toBeGreaterThan(at(tight, 4)); // one piece of window: c2 after c1's reader
    expect(at(tight, 3)).toBe(1); // c1 still first after its source
  });

  it("a host read of counts written by compute waits for their writer, not for the exchange in flight (runtime/cuda/moe-counts.ts)", () => {
    // a big exchange a -> b on a slow link; meanwhile x is routed (count), its rows go to segment_dot
    // (a host read of the counts) and a long elementwise op follows on other data
    const v = (n: number, segCounts: Record<string, number> = {}, dtype: "f32" | "i32" = "f32") =>
      ({ type: { dims: [{ name: "d0", size: n }], dtype, placements: ["R" as const] }, boxes: [], shapes: [[n], [n]], segCounts });
    const values = [v(1 << 20), v(1 << 20), v(4), v(2, {}, "i32"), v(4, { d0: 3 }), v(4), v(1 << 22), v(1 << 22)];
    const op = (o: string, inputs: number[], outputs: number[]) => ({ kind: "op", op: o, inputs, outputs });
    const instrs = [op("input", [], [0]), { kind: "comm", input: 0, output: 1 }, op("input", [], [2]), op("count", [2], [3]), op("rows", [2, 3], [4]), op("segment_dot", [4, 3], [5]), op("input", [], [6]), op("exp", [6], [7])];
    const cost = costFromEnv("linkBandwidth=1e9,memBandwidth=1e10");
    const t = simulate(values, instrs, cost);
    expect(t.hostReads).toBe(1);
    // the read and the compute after it overlap the exchange: the step is the longer stream plus the read, not their sum
    expect(t.step).toBeLessThanOrEqual(Math.max(t.computeOnly, t.commOnly) + cost.hostRead + 1e-9);
    expect(t.step).toBeLessThan(0.75 * (t.computeOnly + t.commOnly));
  });

  it("leaves a plan without communication as it is", () => {
    const { plan } = build({ T: 16, D: 8, F: 8, E: 4, K: 2 }); // the MoE layer bench's one-device forward
    const fp = fuse(plan);
    expect(schedule(fp)).toBe(fp);
    expect(simulate(fp.values, fp.instrs).commOnly).toBe(0);
  });

  it("verifyOrder refuses an order that reads before it writes, or drops an instruction", () => {
    const { fp } = step("ep", { ep: 2 }, 1, false);
    const swapped = [...fp.instrs];
    const c = swapped.findIndex((x) => x.kind === "comm");
    [swapped[c - 1], swapped[c]] = [swapped[c]!, swapped[c - 1]!];
    expect(() => verifyOrder(fp.values, fp.instrs, swapped)).toThrow(CompileError);
    expect(() => verifyOrder(fp.values, fp.instrs, swapped)).toThrow(/must stay topological/);
    expect(() => verifyOrder(fp.values, fp.instrs, fp.instrs.slice(1))).toThrow(/not add or drop/);
  });

  it("SHARDTS_SCHEDULE_COST overrides named constants and refuses unknown ones", () => {
    expect(costFromEnv("linkBandwidth=5e10").linkBandwidth).toBe(5e10);
    expect(() => costFromEnv("bogus=1")).toThrow(/key one of matmulBf16/);
  });

  afterAll(() => console.log(["schedule:", ...report].join("\n  ")));
});
