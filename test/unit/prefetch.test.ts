// The prefetch pass (compiler/passes/prefetch.ts) on a real FSDP training step: the next layer's
// parameter all-gathers are issued before the current layer's compute, the order stays a valid
// schedule, the step computes bit-identical results, and the window bounds how far data is fetched.
import { afterAll, describe, expect, it } from "vitest";
import { fuse } from "../../compiler/codegen/fuse.ts";
import type { FusedInstr, FusedPlan } from "../../compiler/codegen/types.ts";
import { readsOf, writesOf, type PlanValue } from "../../compiler/plan.ts";
import { prefetchComms, type Prefetchable, type PrefetchReport } from "../../compiler/passes/prefetch.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { Trainer } from "../../stdlib/train/trainer.ts";
import { layoutByName } from "../../stdlib/nn/layout.ts";
import { ADAMW_DEFAULTS } from "../../stdlib/optim/adamw.ts";
import type { LmConfig } from "../../stdlib/nn/transformer.ts";
import { runFusedCpu } from "../codegen/run-fused.ts";

const model: LmConfig = {
  vocab: 40, model: 16, heads: 2, layers: 3, seq: 8, ffn: 24,
  moe: { experts: 4, topK: 2, ffn: 12, shared: 1, score: "softmax", auxLoss: 0, moeFrom: 1 },
};
const B = 4;
const ids = Int32Array.from({ length: B * model.seq }, (_, i) => (i * 7 + 3) % model.vocab);
const targets = Int32Array.from({ length: B * model.seq }, (_, i) => (i * 11 + 5) % model.vocab);

/** One traced training step under `layout`: its fused plan and the feeds of its first run. */
function step(layout: string, sizes: Record<string, number>) {
  const tr = new Trainer({ model, layout: layoutByName(layout, sizes), batch: B, opt: ADAMW_DEFAULTS, schedule: { peak: 1e-2, warmup: 1, total: 10, minRatio: 0.1 }, seed: 3, biasRate: 0 });
  let feeds: Record<string, LocalTensor[]> = {};
  const run = tr.program.runGlobal.bind(tr.program);
  tr.program.runGlobal = (f, read) => ((feeds = f), run(f, read));
  tr.run(ids, targets);
  return { fp: fuse(tr.program.plan), feeds: new Map(Object.entries(feeds)) };
}

/** The parameter a comm step gathers (its input is that parameter's `input` placeholder), if any. */
function gathered(fp: FusedPlan): Map<FusedInstr, string> {
  const producer = new Map<number, FusedInstr>();
  for (const x of fp.instrs) for (const s of writesOf(x)) producer.set(s, x);
  const out = new Map<FusedInstr, string>();
  for (const x of fp.instrs) {
    if (x.kind !== "comm" || x.step.kind !== "all_gather") continue;
    const p = producer.get(x.input);
    if (p?.kind === "op" && p.op === "input") out.set(x, String(p.attrs.name));
  }
  return out;
}

function expectValidOrder(fp: FusedPlan): void {
  const written = new Set<number>();
  const produced = new Set(fp.instrs.flatMap((x) => writesOf(x)));
  fp.instrs.forEach((x, i) => {
    for (const s of readsOf(x)) if (produced.has(s)) expect(written.has(s), `instruction ${i} (${x.kind}) reads slot ${s} before it is written`).toBe(true);
    for (const s of writesOf(x)) written.add(s);
  });
}

const report: string[] = [];

describe("prefetching comm steps", () => {
  const { fp, feeds } = step("fsdp", { dp: 2 });
  const moved: PrefetchReport = { moved: [] };
  const pf = prefetchComms(fp, undefined, moved);

  it("issues the next layer's parameter all-gathers before the current layer's compute", () => {
    const names = gathered(fp);
    expect(names.size).toBeGreaterThan(20);
    const at = (plan: FusedPlan, param: string) => plan.instrs.findIndex((x) => names.get(x) === param);
    // the first instruction that reads a gathered parameter is where that layer's compute starts
    const firstUse = (plan: FusedPlan, param: string) => {
      const ag = plan.instrs[at(plan, param)]!;
      return plan.instrs.findIndex((x) => x.kind !== "comm" && readsOf(x).includes((ag as { output: number }).output));
    };
    // before: layer 1's gather comes after layer 0's attention has run; after: before it
    expect(at(fp, "l1.attn.wq")).toBeGreaterThan(firstUse(fp, "l0.attn.wq"));
    expect(at(pf, "l1.attn.wq")).toBeLessThan(firstUse(pf, "l0.attn.wq"));
    // within a layer: the next projection's gather no longer waits behind the previous projection
    expect(at(fp, "l0.attn.wk")).toBeGreaterThan(firstUse(fp, "l0.attn.wq"));
    expect(at(pf, "l0.attn.wk")).toBeLessThan(firstUse(pf, "l0.attn.wq"));
    expect(at(pf, "l2.moe.w1")).toBeLessThan(firstUse(pf, "l0.attn.wq"));
    // each gather's parameter upload moved with it, just before it
    for (const [x, name] of names) {
      const i = pf.instrs.indexOf(x), src = pf.instrs[i - 1]!;
      expect(src.kind === "op" && src.op === "input" && src.attrs.name === name, `${name}'s input just before its gather`).toBe(true);
    }
    const computeBefore = (plan: FusedPlan) => plan.instrs.slice(0, at(plan, "l2.attn.wq")).filter((x) => x.kind === "kernel" || (x.kind === "op" && x.op === "dot")).length;
    report.push(`fsdp dp=2, ${model.layers} layers: ${moved.moved.length} of ${fp.instrs.filter((x) => x.kind === "comm").length} comm steps issued earlier; the last layer's attention gather had ${computeBefore(fp)} compute instructions before it, now ${computeBefore(pf)}; ${moved.barriers!.length} host reads of routing counts`);
  });

  it("moves no step above a host read of counts that come off the comm stream; compute-written counts are no barrier", () => {
    // the FSDP MoE layers' counts come from each rank's own routing (compute): read after that alone (runtime/cuda/moe-counts.ts)
    expect(moved.barriers!.length).toBe(0);
    // small plans: x -> counts; rows (segmented by counts or by their exchanged copy) -> segment_dot -> h; p gathered for h . p
    const v = (dims: number[], segCounts: Record<string, number> = {}, dtype: "f32" | "i32" = "f32"): PlanValue =>
      ({ type: { dims: dims.map((size, i) => ({ name: `d${i}`, size })), dtype, placements: ["R"] }, boxes: [], shapes: [dims, dims], segCounts });
    const op = (o: string, inputs: number[], outputs: number[], name?: string) => ({ kind: "op", op: o, inputs, outputs, attrs: name ? { name } : {} });
    const comm = (input: number, output: number) => ({ kind: "comm", input, output });
    // counts written by compute: the gather of p goes to the top with its input
    const values = [v([4]), v([2], {}, "i32"), v([4], { d0: 1 }), v([4]), v([2]), v([4]), v([4])];
    const instrs = [
      op("input", [], [0], "x"), op("count", [0], [1]), op("rows", [0, 1], [2]), op("segment_dot", [2, 1], [3]),
      op("input", [], [4], "p"), comm(4, 5), op("dot", [3, 5], [6]),
    ];
    const small: Prefetchable<(typeof instrs)[number]> = { values, instrs, outputs: [6], lastUse: [] };
    const order = <T,>(p: { instrs: T[] }, all: T[]) => p.instrs.map((x) => all.indexOf(x));
    expect(order(prefetchComms(small), instrs)).toEqual([4, 5, 0, 1, 2, 3, 6]);
    // counts exchanged by a comm step (slot 7) before segment_dot reads them: not above that read (at 4)
    const viaComm = [...values, v([2], {}, "i32")];
    viaComm[2] = v([4], { d0: 7 });
    const instrs2 = [
      op("input", [], [0], "x"), op("count", [0], [1]), comm(1, 7), op("rows", [0, 7], [2]), op("segment_dot", [2, 7], [3]),
      op("input", [], [4], "p"), comm(4, 5), op("dot", [3, 5], [6]),
    ];
    const r: PrefetchReport = { moved: [] };
    expect(order(prefetchComms({ values: viaComm, instrs: instrs2, outputs: [6], lastUse: [] }, undefined, r), instrs2)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(r.barriers).toEqual([4]);
    // a MoE dispatch reads the counts its own exchange writes: a barrier too
    const moe = [v([4]), v([4], { d0: 2 }), v([2], {}, "i32"), v([4]), v([2]), v([2]), v([4])];
    const instrs3 = [op("input", [], [0], "x"), op("moe_dispatch", [0], [1, 3, 2]), op("input", [], [4], "p"), comm(4, 5), op("dot", [1, 5], [6])];
    const r3: PrefetchReport = { moved: [] };
    expect(order(prefetchComms({ values: moe, instrs: instrs3, outputs: [6], lastUse: [] }, undefined, r3), instrs3)).toEqual([0, 1, 2, 3, 4]);
    expect(r3.barriers).toEqual([1]);
  });

  it("keeps a valid order and the same instructions, with lastUse recomputed", () => {
    expectValidOrder(fp);
    expectValidOrder(pf);
    expect(new Set(pf.instrs)).toEqual(new Set(fp.instrs));
    expect(pf.instrs.length).toBe(fp.instrs.length);
    pf.instrs.forEach((x, i) => {
      for (const s of readsOf(x)) expect(pf.lastUse[s]!).toBeGreaterThanOrEqual(i);
    });
  });

  it("computes bit-identical results", () => {
    const a = runFusedCpu(fp, feeds), b = runFusedCpu(pf, feeds);
    a.outputs.forEach((x, i) => expect(Array.from(b.outputs[i]!.data), `output ${i}`).toEqual(Array.from(x.data)));
  });

  it("window 0 leaves the order alone; a one-piece window lets no step pass another comm step", () => {
    expect(prefetchComms(fp, 0)).toBe(fp);
    const biggest = Math.max(...fp.instrs.filter((x) => x.kind === "comm").map((x) => {
      const v = fp.values[(x as { output: number }).output]!;
      return 4 * Math.max(...v.shapes.map((s) => s.reduce((p, q) => p * q, 1)));
    }));
    const r: PrefetchReport = { moved: [] };
    const small = prefetchComms(fp, biggest, r);
    expect(r.moved.length).toBeGreaterThan(0);
    expectValidOrder(small);
    const comms: FusedInstr[] = fp.instrs.filter((x) => x.kind === "comm");
    const pos = new Map(small.instrs.map((x, i) => [x, i]));
    comms.forEach((c, k) => k > 0 && expect(pos.get(c)!).toBeGreaterThan(pos.get(comms[k - 1]!)!));
    // and moved only past compute: what lies between a moved step's new and old neighbours is no comm
    for (const m of r.moved) {
      const c = fp.instrs[m.from]!, prevComm = comms[comms.indexOf(c) - 1];
      if (prevComm) expect(pos.get(prevComm)!).toBeLessThan(m.to);
    }
    report.push(`window of one piece (${biggest} B): ${r.moved.length} steps moved, none past another comm step`);
  });

  it("an expert-parallel step keeps its all-to-all after the routing that feeds it", () => {
    const ep = step("fsdp-ep", { dp: 2, ep: 2 }).fp;
    const r: PrefetchReport = { moved: [] };
    const p = prefetchComms(ep, undefined, r);
    expectValidOrder(p);
    const a2a = p.instrs.filter((x) => x.kind === "comm" && x.step.kind === "all_to_all");
    expect(a2a.length).toBeGreaterThan(0);
    report.push(`fsdp-ep dp=2 x ep=2: ${r.moved.length} comm steps issued earlier, ${a2a.length} all-to-all steps (stay behind their producers)`);
  });

  afterAll(() => console.log(["prefetch:", ...report].join("\n  ")));
});
