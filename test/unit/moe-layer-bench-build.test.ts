// The EP MoE layer the multi-GPU benchmark times (bench/gpu/lib/moe-layer-build.ts), small, on the
// CPU-simulated mesh: ep=2 (rows exchanged, experts split, the replicated weights' gradients Partial
// over the ranks) must give the one-device run's forward, expert counts and every gradient.
import { describe, expect, it } from "vitest";
import { buildLayer, globalFeeds, rankFeeds, type LayerSize } from "../../bench/gpu/lib/moe-layer-build.ts";
import { runPlanCpu } from "../../runtime/cpu/executor.ts";
import { relError } from "../../bench/gpu/lib/compare.ts";


function compare(z: LayerSize, fp8: boolean) {
  const one = buildLayer(z, 1, { fp8, batch: 2 }), two = buildLayer(z, 2, { fp8 });
  const want = runPlanCpu(one.plan, globalFeeds(one, z)).outputs, got = runPlanCpu(two.plan, globalFeeds(two, z)).outputs;
  expect(two.outNames).toEqual(one.outNames);
  expect(one.outNames).toEqual(["y", "counts", "dx", "drouter", "dw1", "dw3", "dw2", ...(z.shared ? ["ds0.w1", "ds0.w3", "ds0.w2"] : []), ...(z.shared > 1 ? ["ds1.w1", "ds1.w3", "ds1.w2"] : [])]);
  one.outNames.forEach((name, i) => {
    const a = got[i]!.data, b = want[i]!.data;
    expect(a.length, name).toBe(b.length);
    expect(b.some((v) => v !== 0), `${name} is not all zeros`).toBe(true);
    if (name === "counts") expect(Array.from(a), name).toEqual(Array.from(b));
    // bf16 outputs; the replicated weights' gradients are summed over the ranks in another order
    else expect(relError(a, b), name).toBeLessThan(1e-2);
  });
}

describe("the EP MoE layer benchmark's program", () => {
  it("ep=2 equals the one-device run: forward, counts, gradients of x and every weight (bf16)", () => {
    compare({ T: 64, D: 32, F: 16, E: 8, K: 2, shared: 2 }, false);
  });
  it("the same with the FP8 recipe (fp8Dispatch, fp8SegmentDot, fp8Dot)", () => {
    compare({ T: 16, D: 128, F: 128, E: 4, K: 2, shared: 1 }, true);
  });
  it("FP8 routed experts with bf16 shared ones (sharedFp8: false): the shared Linears are plain dots, and ep=2 still equals one device", () => {
    const z: LayerSize = { T: 16, D: 128, F: 128, E: 4, K: 2, shared: 1 };
    const ops = (o: { fp8?: boolean; sharedFp8?: boolean }) => buildLayer(z, 2, o).plan.instrs.filter((i) => i.kind === "op").map((i) => (i as { op: string }).op);
    const count = (xs: string[], op: string) => xs.filter((x) => x === op).length;
    const all = ops({ fp8: true }), routed = ops({ fp8: true, sharedFp8: false });
    // the shared expert's three Linears, forward and backward: 6 scaled_dot and 3 scaled_dot_wgrad with fp8Dot, none without
    expect([count(all, "scaled_dot"), count(routed, "scaled_dot"), count(all, "scaled_dot_wgrad"), count(routed, "scaled_dot_wgrad")]).toEqual([6, 0, 3, 0]);
    expect(count(routed, "scaled_segment_dot")).toBe(count(all, "scaled_segment_dot"));
    expect(count(routed, "scaled_segment_dot")).toBeGreaterThan(0);
    const one = buildLayer(z, 1, { fp8: true, sharedFp8: false, batch: 2 }), two = buildLayer(z, 2, { fp8: true, sharedFp8: false });
    const want = runPlanCpu(one.plan, globalFeeds(one, z)).outputs, got = runPlanCpu(two.plan, globalFeeds(two, z)).outputs;
    one.outNames.forEach((name, i) => expect(relError(got[i]!.data, want[i]!.data), name).toBeLessThan(1e-2));
  });
  it("rank feeds (the full-size timing's): each rank's piece has its box's shape; replicated inputs agree over ranks, sharded ones differ", () => {
    const z = { T: 8, D: 16, F: 8, E: 4, K: 2, shared: 1 };
    const layer = buildLayer(z, 2), cut = globalFeeds(layer, z);
    const r0 = rankFeeds(layer, z, 0), r1 = rankFeeds(layer, z, 1);
    for (const [name, type] of layer.inputs) {
      const a = r0.get(name)![0]!, b = r1.get(name)![1]!;
      expect([a.shape, b.shape], name).toEqual([cut.get(name)![0]!.shape, cut.get(name)![1]!.shape]);
      expect(r0.get(name)![1], `${name}: rank 0 holds only its own piece`).toBeUndefined();
      const same = a.data.every((v, i) => v === b.data[i]);
      expect(same, name).toBe(type.placements.every((p) => p === "R"));
    }
  });
});
