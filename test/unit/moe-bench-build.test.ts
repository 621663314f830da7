// The bf16 MoE layer the GPU benchmark times (bench/gpu/lib/moe-build.ts) builds and runs on the CPU
// reference at a small size: every token's output is the gate-weighted sum of its top-k experts'
// SwiGLU, recomputed here directly in float64 from the same feeds.
import { describe, expect, it } from "vitest";
import { build, buildTrain } from "../../bench/gpu/lib/moe-build.ts";
import { runPlanCpu } from "../../runtime/cpu/executor.ts";
import { roundToBf16 } from "../../compiler/numeric/bf16.ts";

describe("the MoE benchmark's layer", () => {
  it("equals a direct float64 MoE on the CPU", () => {
    const z = { T: 24, D: 16, F: 8, E: 6, K: 2 };
    const { plan, feeds } = build(z);
    const [y, counts] = runPlanCpu(plan, feeds).outputs;
    const f = (n: string) => feeds.get(n)![0]!.data;
    const x = f("x"), router = f("router"), w1 = f("w1"), w3 = f("w3"), w2 = f("w2");
    const want = new Float64Array(z.T * z.D);
    const load = new Array(z.E).fill(0);
    for (let t = 0; t < z.T; t++) {
      // the router's logits are bf16 (a bf16 GEMM's output), as in the layer: top-k picks among them
      const logit = Array.from({ length: z.E }, (_, e) => { let s = 0; for (let d = 0; d < z.D; d++) s += x[t * z.D + d]! * router[d * z.E + e]!; return roundToBf16(s); });
      const m = Math.max(...logit), ex = logit.map((v) => Math.exp(v - m)), se = ex.reduce((a, b) => a + b, 0);
      const p = ex.map((v) => v / se);
      const top = p.map((v, e) => [v, e] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, z.K);
      const gs = top.reduce((a, b) => a + b[0], 0);
      for (const [pv, e] of top) {
        load[e]++;
        const h = Array.from({ length: z.F }, (_, j) => {
          let a = 0, b = 0;
          for (let d = 0; d < z.D; d++) (a += x[t * z.D + d]! * w1[(e * z.D + d) * z.F + j]!), (b += x[t * z.D + d]! * w3[(e * z.D + d) * z.F + j]!);
          return (a / (1 + Math.exp(-a))) * b;
        });
        for (let d = 0; d < z.D; d++) {
          let o = 0;
          for (let j = 0; j < z.F; j++) o += h[j]! * w2[(e * z.F + j) * z.D + d]!;
          want[t * z.D + d] += (pv / gs) * o;
        }
      }
    }
    let num = 0, den = 0;
    y!.data.forEach((v, i) => ((num = Math.max(num, Math.abs(v - want[i]!))), (den = Math.max(den, Math.abs(want[i]!)))));
    expect(num / den).toBeLessThan(3e-2); // bf16 activations and GEMM outputs along the way
    expect(Array.from(counts!.data)).toEqual(load);
  });
  it("trains: the step's y equals the forward's, and dW2 equals a direct float64 sum over the routed tokens", () => {
    const z = { T: 24, D: 16, F: 8, E: 6, K: 2 };
    const fwd = build(z), step = buildTrain(z);
    const feeds = new Map([...step.weights, ...step.batch(7)]);
    feeds.set("x", fwd.feeds.get("x")!);
    const out = runPlanCpu(step.plan, feeds).outputs;
    const at = (n: string) => out[step.outNames.indexOf(n)]!;
    const [y0, c0] = runPlanCpu(fwd.plan, fwd.feeds).outputs;
    expect(Array.from(at("counts").data)).toEqual(Array.from(c0!.data));
    expect(Array.from(at("y").data)).toEqual(Array.from(y0!.data)); // the same routing, gates and experts
    const f = (n: string) => feeds.get(n)![0]!.data;
    const x = f("x"), router = f("router"), w1 = f("w1"), w3 = f("w3"), dy = f("dy");
    const want = new Float64Array(z.E * z.F * z.D);
    for (let t = 0; t < z.T; t++) {
      const logit = Array.from({ length: z.E }, (_, e) => { let s = 0; for (let d = 0; d < z.D; d++) s += x[t * z.D + d]! * router[d * z.E + e]!; return roundToBf16(s); });
      const m = Math.max(...logit), ex = logit.map((v) => Math.exp(v - m)), se = ex.reduce((a, b) => a + b, 0);
      const top = ex.map((v, e) => [v / se, e] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, z.K);
      const gs = top.reduce((a, b) => a + b[0], 0);
      for (const [pv, e] of top)
        for (let j = 0; j < z.F; j++) {
          let a = 0, b = 0;
          for (let d = 0; d < z.D; d++) (a += x[t * z.D + d]! * w1[(e * z.D + d) * z.F + j]!), (b += x[t * z.D + d]! * w3[(e * z.D + d) * z.F + j]!);
          const h = (a / (1 + Math.exp(-a))) * b;
          for (let d = 0; d < z.D; d++) want[(e * z.F + j) * z.D + d] += h * (pv / gs) * dy[t * z.D + d]!;
        }
    }
    const got = at("dw2").data;
    let num = 0, den = 0;
    want.forEach((v, i) => ((num = Math.max(num, Math.abs(got[i]! - v))), (den = Math.max(den, Math.abs(v)))));
    expect(den).toBeGreaterThan(0);
    expect(num / den).toBeLessThan(3e-2);
  });
  it("trains with FP8 experts: three scaled_segment_dot and three scaled_segment_wgrad, y and dW2 near the bf16 step's", () => {
    const z = { T: 24, D: 16, F: 8, E: 6, K: 2 };
    const bf = buildTrain(z), f8 = buildTrain(z, { fp8: true });
    const ops = (p: typeof f8.plan, op: string) => p.instrs.filter((i) => i.kind === "op" && i.op === op).length;
    // the forward's three contractions, and the backward's three Dgrads (scaled_segment_dot on dY) and three Wgrads
    expect(ops(f8.plan, "scaled_segment_dot")).toBe(6);
    expect(ops(f8.plan, "scaled_segment_wgrad")).toBe(3);
    expect(ops(f8.plan, "segment_dot") + ops(bf.plan, "scaled_segment_dot")).toBe(0);
    const feeds = new Map([...bf.weights, ...bf.batch(7)]);
    const a = runPlanCpu(bf.plan, feeds).outputs, b = runPlanCpu(f8.plan, feeds).outputs;
    const at = (o: typeof a, n: string) => o[bf.outNames.indexOf(n)]!.data;
    expect(Array.from(at(b, "counts"))).toEqual(Array.from(at(a, "counts")));
    for (const n of ["y", "dw2"]) {
      let num = 0, den = 0;
      at(a, n).forEach((v, i) => ((num = Math.max(num, Math.abs(at(b, n)[i]! - v))), (den = Math.max(den, Math.abs(v)))));
      expect(den, n).toBeGreaterThan(0);
      expect(num / den, n).toBeGreaterThan(0); // quantized: not the bf16 values
      expect(num / den, n).toBeLessThan(0.15); // e4m3 keeps 3 mantissa bits: a few % an operand
    }
  });
});
