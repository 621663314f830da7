// Redundant experts. The planner (stdlib/nn/moe-replicas.ts): replica counts and balanced packing on
// hand-computed loads, ties, R = 0, R >= E, all-zero load. The MoE block with a replica map: output,
// aux loss, load and every parameter gradient equal the block without replicas (same routing, same
// seed) on meshes with an expert axis, for random and skewed routings, composed and fused dispatch
// (with the FP8 recipe: the same forward, weight gradients within FP8 rounding);
// a replicated expert's rows really reach more than one slot (so the summed replica gradients are
// what makes the gradients equal).
import { describe, expect, it } from "vitest";
import { Mesh } from "../../stdlib/mesh.ts";
import { ParamStore } from "../../stdlib/nn/params.ts";
import { Layout } from "../../stdlib/nn/layout.ts";
import { moe, type MoeConfig } from "../../stdlib/nn/moe.ts";
import { expectedSlotLoad, planReplicas, rankLoads, replicaCounts, replicaTables } from "../../stdlib/nn/moe-replicas.ts";
import { maxOverMean } from "../../stdlib/train/trainer.ts";
import { input, piecesOf, Program } from "../../stdlib/program.ts";
import { grad } from "../../stdlib/autodiff.ts";
import { randn } from "../../stdlib/ops/factories.ts";
import type { AnyDTensor } from "../../stdlib/dtensor.ts";
import type { GlobalValue } from "../../stdlib/value.ts";
import { maxRelDiff } from "../../stdlib/value.ts";
import { sum } from "../../stdlib/ops/reduce.ts";
import { add, mul } from "../../stdlib/nn/ops-internal.ts";
import { toActivation } from "../../stdlib/nn/layers.ts";

describe("replica planner", () => {
  // loads [60, 20, 10, 10], 2 extra slots, 2 ranks: expert 0 (60 per replica) takes the first extra
  // slot (30 each), then still the highest, the second (20 each): counts [3, 1, 1, 1]; six replicas of
  // 20, 20, 20, 20, 10, 10 packed heaviest first onto the less-loaded rank, avoiding a second copy
  // of expert 0 on a rank while possible: ranks {0, 0, 2} and {0, 1, 3}, 50 tokens each
  const load = [60, 20, 10, 10];
  it("gives the hottest expert the extra slots and packs the ranks evenly", () => {
    expect(Array.from(replicaCounts(load, 2))).toEqual([3, 1, 1, 1]);
    const map = planReplicas(load, 2, 2);
    expect(Array.from(map)).toEqual([0, 0, 2, 0, 1, 3]);
    const slot = expectedSlotLoad(load, map);
    expect(Array.from(slot)).toEqual([20, 20, 10, 20, 20, 10]);
    // per slot: max/mean 60/25 = 2.4 without replicas, 20/(100/6) = 1.2 with them
    expect(maxOverMean(load)).toBeCloseTo(2.4, 12);
    expect(maxOverMean(slot)).toBeCloseTo(1.2, 12);
    // per rank: experts {0,1} | {2,3} give 80/20 (max/mean 1.6); the plan gives 50/50 (1.0)
    expect(maxOverMean(rankLoads(load, 2))).toBeCloseTo(1.6, 12);
    expect(rankLoads(slot, 2)).toEqual([50, 50]);
  });

  it("breaks ties by fewer replicas, then lower index; R = 0 and all-zero loads", () => {
    expect(Array.from(replicaCounts([5, 5, 5], 1))).toEqual([2, 1, 1]);
    expect(Array.from(replicaCounts([0, 0, 0, 0], 3))).toEqual([2, 2, 2, 1]);
    expect(Array.from(planReplicas([0, 0, 0, 0], 2, 2))).toEqual([0, 1, 2, 0, 1, 3]);
    expect(Array.from(planReplicas(load, 0, 2))).toEqual([0, 3, 1, 2]); // 60+10 | 20+10
    expect(Array.from(planReplicas(load, 0, 1))).toEqual([0, 1, 2, 3]);
  });

  it("handles R >= E, uneven slots over ranks, and tables padded to the static bound", () => {
    expect(Array.from(replicaCounts([1, 3], 5))).toEqual([2, 5]); // 3/4 < 1 then 1/2 < 3/4 …
    const map = planReplicas([1, 3], 5, 3); // 7 slots over 3 ranks: 3, 2, 2
    expect(map.length).toBe(7);
    const { table, count, maxReplicas } = replicaTables(map, 2);
    expect(maxReplicas).toBe(6);
    expect(Array.from(count)).toEqual([2, 5]);
    for (let e = 0; e < 2; e++) for (let j = 0; j < maxReplicas; j++) expect(map[table[e * maxReplicas + j]!]).toBe(e);
    expect(() => replicaTables([0, 0, 1], 3)).toThrow(/expert 2 has no slot/);
    expect(() => planReplicas([1, -1], 1, 1)).toThrow(/load of expert 1 is -1/);
    expect(() => replicaCounts([1], 1.5)).toThrow(/non-negative integer/);
  });
});

const B = 4, S = 6, D = 8, E = 8;
const base: MoeConfig = { experts: E, topK: 2, ffn: 6, shared: 0, score: "softmax", auxLoss: 0.1 };
const R = (mesh: Mesh<string>) => mesh.spec.axes.map(() => "R" as const);

/** The block's outputs and every parameter gradient; with `map`, through that replica map. */
function build(layout: Layout, cfg: MoeConfig, bias: Float32Array, map?: Int32Array) {
  const mesh = Mesh.of(layout.mesh);
  const ps = new ParamStore(mesh, layout);
  const x = randn(mesh, { batch: B, seq: S, model: D }, "f32", ps.placementsObject(layout.activation(["batch", "seq", "model"])) as never, { seed: 3 }) as AnyDTensor;
  const b = input(mesh, "bias", { experts: E }, "f32") as AnyDTensor;
  const extra = map ? map.length - E : 0;
  const rep = map && {
    slotExpert: input(mesh, "slotExpert", { eslots: map.length }, "i32") as AnyDTensor,
    count: input(mesh, "count", { experts: E }, "i32") as AnyDTensor,
    table: input(mesh, "table", { erep: E * (extra + 1) }, "i32") as AnyDTensor,
  };
  const out = moe(ps, "m", x, map ? { ...cfg, redundant: { slots: extra, every: 1 } } : cfg, b, rep);
  // a scalar that depends on y non-trivially and on the aux loss
  const y2 = toActivation(ps, sum(mul(out.y, out.y), ["batch", "seq", "model"]) as AnyDTensor);
  const g = grad(add(y2, out.aux), Object.fromEntries(ps.stored));
  const grads = Object.fromEntries(Object.entries(g).map(([n, v]) => [`grad.${n}`, v!]));
  const prog = new Program(mesh, { y: out.y, aux: out.aux, load: out.load, slotLoad: out.slotLoad, ...grads });
  const vec = (dim: string, data: ArrayLike<number>, dtype: "f32" | "i32") => piecesOf(mesh.spec, { dims: [{ name: dim, size: data.length }], dtype, placements: R(mesh) }, data);
  const feeds = { ...ps.initialise(5), bias: vec("experts", bias, "f32") };
  if (map) {
    const t = replicaTables(map, E);
    Object.assign(feeds, { slotExpert: vec("eslots", map, "i32"), count: vec("experts", t.count, "i32"), table: vec("erep", t.table, "i32") });
  }
  return prog.runGlobal(feeds).values as Record<string, GlobalValue>;
}

const skewed = Float32Array.from({ length: E }, (_, e) => (e === 2 ? 0.4 : e === 5 ? 0.3 : 0)); // most tokens pick 2 and 5
const meshes = [
  new Layout("dp1-ep2", { dp: 1, ep: 2 }, { dp: "data", ep: "expert" }),
  new Layout("dp2-ep2", { dp: 2, ep: 2 }, { dp: "data", ep: "expert" }),
  new Layout("fsdp2-ep3", { dp: 2, ep: 3 }, { dp: "fsdp", ep: "expert" }), // 11 slots over 3 ranks: 4, 4, 3
];

describe("MoE block with redundant experts", () => {
  // FP8: the forward is per row (1x128 activation tiles, 128x128 blocks of each slot's copy of its
  // expert's weights), so it is unchanged; the Wgrad quantizes activations in 128x1 tiles within each
  // slot's segment of rows, and a replicated expert's rows are split over several segments, so its
  // weight gradient differs at FP8 rounding level (not a summation bug: every other gradient is exact)
  it.each([false, true])("with the FP8 recipe (fused dispatch, so FP8 rows travel: %s): the same forward, gradients within FP8 rounding", (fused) => {
    const cfg = { ...base, fp8: true, fusedDispatch: fused };
    const ref = build(new Layout("one", { d: 1 }, { d: "data" }), cfg, skewed);
    const map = planReplicas(ref.load!.data, 3, 2);
    const v = build(meshes[1]!, cfg, skewed, map);
    for (const k of ["y", "aux", "load", "grad.m.router"]) expect(maxRelDiff(v[k]!, ref[k]!), k).toBeLessThan(1e-5);
    const normRel = (a: GlobalValue, b: GlobalValue) => {
      let d = 0, n = 0;
      b.data.forEach((y, i) => ((d += (a.data[i]! - y) ** 2), (n += y * y)));
      return Math.sqrt(d / n);
    };
    for (const k of ["grad.m.w1", "grad.m.w2", "grad.m.w3"]) expect(normRel(v[k]!, ref[k]!), k).toBeLessThan(0.03);
  });

  for (const [routing, bias] of [["random", new Float32Array(E)], ["skewed", skewed]] as const) {
    for (const fused of [false, true]) {
      it(`equals the block without replicas: ${routing} routing, ${fused ? "fused" : "composed"} dispatch`, () => {
        const cfg = { ...base, fusedDispatch: fused };
        const ref = build(new Layout("one", { d: 1 }, { d: "data" }), cfg, bias);
        // replicas of the experts this routing loads most, planned from the reference's own load
        const map = planReplicas(ref.load!.data, 3, 2);
        for (const layout of meshes) {
          const v = build(layout, cfg, bias, map);
          for (const k of Object.keys(ref)) if (k !== "slotLoad") expect(maxRelDiff(v[k]!, ref[k]!), `${layout} ${k}`).toBeLessThan(1e-5);
          // a replicated expert's tokens went to more than one of its slots
          const { count } = replicaTables(map, E);
          const hot = Array.from(count).findIndex((c) => c > 1);
          const used = Array.from(map).flatMap((e, s) => (e === hot && v.slotLoad!.data[s]! > 0 ? [s] : []));
          expect(used.length, `${layout} expert ${hot}'s slots`).toBeGreaterThan(1);
          expect(Array.from(v.slotLoad!.data).reduce((a, b) => a + b, 0)).toBe(B * S * base.topK);
        }
      }, 60_000);
    }
  }
});
