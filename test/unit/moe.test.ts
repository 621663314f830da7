// The MoE block's routing options: node-limited routing keeps each token's experts within
// maxGroups groups; sigmoid scores; the auxiliary loss reaches the router through autodiff; the
// selection bias steers tokens without changing the gate weights; the block's output and gradients
// are the same on an expert-parallel mesh as on one device.
import { describe, expect, it } from "vitest";
import { Mesh } from "../../stdlib/mesh.ts";
import { ParamStore } from "../../stdlib/nn/params.ts";
import { Layout } from "../../stdlib/nn/layout.ts";
import { moe, type MoeConfig } from "../../stdlib/nn/moe.ts";
import { input, piecesOf, Program } from "../../stdlib/program.ts";
import { grad } from "../../stdlib/autodiff.ts";
import { randn } from "../../stdlib/ops/factories.ts";
import type { AnyDTensor } from "../../stdlib/dtensor.ts";
import { maxRelDiff } from "../../stdlib/value.ts";
import { sum } from "../../stdlib/ops/reduce.ts";
import { add } from "../../stdlib/nn/ops-internal.ts";
import { toActivation } from "../../stdlib/nn/layers.ts";

const B = 4, S = 6, D = 8, E = 8;

function build(layout: Layout, cfg: MoeConfig, bias: Float32Array) {
  const mesh = Mesh.of(layout.mesh);
  const ps = new ParamStore(mesh, layout);
  const x = randn(mesh, { batch: B, seq: S, model: D }, "f32", ps.placementsObject(layout.activation(["batch", "seq", "model"])) as never, { seed: 3 }) as AnyDTensor;
  const b = input(mesh, "bias", { experts: E }, "f32") as AnyDTensor;
  const out = moe(ps, "m", x, cfg, b);
  const loss = out.aux;
  // a scalar that depends on y and on the aux loss
  const g = grad(add(toActivation(ps, sum(out.y, ["batch", "seq", "model"]) as AnyDTensor), loss), Object.fromEntries(ps.stored));
  const prog = new Program(mesh, { y: out.y, aux: out.aux, load: out.load, indices: out.indices, router: g["m.router"]!, w1: g["m.w1"]! });
  const feeds = { ...ps.initialise(5), bias: piecesOf(mesh.spec, { dims: [{ name: "experts", size: E }], dtype: "f32", placements: mesh.spec.axes.map(() => "R") }, bias) };
  return prog.runGlobal(feeds).values;
}

const base: MoeConfig = { experts: E, topK: 2, ffn: 6, shared: 0, score: "softmax", auxLoss: 0.1 };
const single = () => new Layout("one", { d: 1 }, { d: "data" });

describe("MoE block", () => {
  it("node-limited routing keeps each token's experts within maxGroups groups", () => {
    const v = build(single(), { ...base, topK: 3, nodeLimit: { groups: 2, maxGroups: 1 } }, new Float32Array(E));
    const idx = v.indices.data, per = E / 2;
    for (let t = 0; t < B * S; t++) {
      const groups = new Set([0, 1, 2].map((j) => Math.floor(idx[t * 3 + j]! / per)));
      expect(groups.size).toBe(1);
    }
    const free = build(single(), { ...base, topK: 3 }, new Float32Array(E));
    let spans = 0;
    for (let t = 0; t < B * S; t++) spans += new Set([0, 1, 2].map((j) => Math.floor(free.indices.data[t * 3 + j]! / per))).size > 1 ? 1 : 0;
    expect(spans).toBeGreaterThan(0); // without the limit some tokens do span groups
    expect(() => build(single(), { ...base, topK: 3, nodeLimit: { groups: 4, maxGroups: 1 } }, new Float32Array(E))).toThrow(/top-3 cannot fit in 1 group\(s\) of 2 experts/);
  });

  it("sigmoid scores route and train; the auxiliary loss reaches the router", () => {
    const v = build(single(), { ...base, score: "sigmoid" }, new Float32Array(E));
    expect(v.aux.data[0]!).toBeGreaterThan(0);
    expect(Array.from(v.router.data).some((g) => g !== 0)).toBe(true);
    expect(Array.from(v.load.data).reduce((a, b) => a + b, 0)).toBe(B * S * 2);
  });

  it("the selection bias steers every token to an expert", () => {
    const bias = new Float32Array(E);
    bias[5] = 10; // every token picks expert 5
    const v = build(single(), base, bias);
    expect(v.load.data[5]).toBe(B * S);
  });

  it("gives the same output, aux loss and gradients on an expert-parallel mesh", () => {
    const ref = build(single(), base, new Float32Array(E));
    for (const layout of [new Layout("ep", { ep: 4 }, { ep: "expert" }), new Layout("dp-ep", { dp: 2, ep: 3 }, { dp: "data", ep: "expert" })]) {
      const v = build(layout, base, new Float32Array(E));
      for (const k of ["y", "aux", "load", "router", "w1"] as const) expect(maxRelDiff(v[k], ref[k]), `${layout} ${k}`).toBeLessThan(1e-5);
    }
  });
});
