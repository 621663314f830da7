// Which plans a CUDA graph can capture (runtime/cuda/graph.ts): a pure check, so it runs without a
// GPU; capturing and replaying is tested on the GPU machine (bench/gpu/graph-step.ts).
import { describe, expect, it } from "vitest";
import { notCapturable } from "../../runtime/cuda/graph.ts";
import { compile } from "../../compiler/pipeline.ts";
import { Mesh, randn, sum, redistribute, Shard, Replicate, type AnyDTensor } from "../../stdlib/index.ts";
import { buildOn } from "../../stdlib/model.ts";
import moeLayer from "../../examples/moe-layer.ts";
import { buildTrain } from "../../bench/gpu/lib/moe-build.ts";

describe("notCapturable", () => {
  it("accepts a plan on a mesh of one, collectives or not", () => {
    const mesh = Mesh.of({ d: 1 });
    const x = randn(mesh, { t: 8, m: 4 }, "f32", { d: Shard("t") }) as AnyDTensor;
    expect(notCapturable(compile(mesh.builder.graph, [redistribute(sum(x, "m") as AnyDTensor, { d: Replicate }).ref]), "sm_90a")).toBeUndefined();
  });
  it("refuses a simulated mesh's collectives, saying why", () => {
    const mesh = Mesh.of({ d: 2 });
    const x = randn(mesh, { t: 8, m: 4 }, "f32", { d: Shard("t") }) as AnyDTensor;
    expect(notCapturable(compile(mesh.builder.graph, [redistribute(x, { d: Replicate }).ref]), "sm_90a")).toMatch(/its mesh has 2 ranks and collectives/);
  });
  it("refuses segment contractions that would read their counts on the host, naming the op and why", () => {
    const { mesh, outputs } = buildOn(moeLayer, { dp: 1, ep: 1 });
    const plan = compile(mesh.builder.graph, Object.values(outputs).map((o) => (o as AnyDTensor).ref));
    expect(notCapturable(plan, "sm_90a")).toMatch(/segment_dot, whose per-group row counts would be read on the host.*f32, f32 -> f32/);
  });
  it("accepts a bf16 MoE training step on Hopper (device-side counts), not on another GPU", () => {
    const { plan } = buildTrain({ T: 64, D: 32, F: 16, E: 4, K: 2 });
    expect(plan.instrs.some((i) => i.kind === "op" && i.op === "segment_wgrad")).toBe(true);
    expect(notCapturable(plan, "sm_90a")).toBeUndefined();
    expect(notCapturable(plan, "sm_80")).toMatch(/segment_(dot|wgrad).*sm_80 \(the generated kernels need Hopper/);
  });
});
