// Which plans a CUDA graph can capture (runtime/cuda/graph.ts): a pure check, so it runs without a
// GPU; capturing and replaying is tested on the GPU machine (bench/gpu/graph-step.ts).
import { describe, expect, it } from "vitest";
import { notCapturable } from "../../runtime/cuda/graph.ts";
import { compile } from "../../compiler/pipeline.ts";
import { Mesh, randn, sum, redistribute, Shard, Replicate, type AnyDTensor } from "../../stdlib/index.ts";
import { buildOn } from "../../stdlib/model.ts";
import moeLayer from "../../examples/moe-layer.ts";

describe("notCapturable", () => {
  it("accepts a plan on a mesh of one, collectives or not", () => {
    const mesh = Mesh.of({ d: 1 });
    const x = randn(mesh, { t: 8, m: 4 }, "f32", { d: Shard("t") }) as AnyDTensor;
    expect(notCapturable(compile(mesh.builder.graph, [redistribute(sum(x, "m") as AnyDTensor, { d: Replicate }).ref]))).toBeUndefined();
  });
  it("refuses a simulated mesh's collectives, saying why", () => {
    const mesh = Mesh.of({ d: 2 });
    const x = randn(mesh, { t: 8, m: 4 }, "f32", { d: Shard("t") }) as AnyDTensor;
    expect(notCapturable(compile(mesh.builder.graph, [redistribute(x, { d: Replicate }).ref]))).toMatch(/its mesh has 2 ranks and collectives/);
  });
  it("refuses segment contractions (host-read counts), naming the op", () => {
    const { mesh, outputs } = buildOn(moeLayer, { dp: 1, ep: 1 });
    const plan = compile(mesh.builder.graph, Object.values(outputs).map((o) => (o as AnyDTensor).ref));
    expect(notCapturable(plan)).toMatch(/segment_dot, whose per-group row counts are read on the host/);
  });
});
