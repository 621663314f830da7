// The schedule's cost model for MoE layers (compiler/passes/schedule-cost.ts). A segment_wgrad's FLOPs are
// its rows' (each row meets its own expert's slice), not every row against every expert. Over NVLink (`moeOnDevice`):
// dispatch and redispatch are their exchange on the comm stream (compute only issues them), no MoE op
// reads counts on the host, and a dispatch's permutation is ready when its route kernel is. On the EP
// layer of multi-GPU stage 10 this lets the backward's redispatch, whose inputs exist in the forward,
// go out early beside compute instead of just before its reader; the NCCL path's order is unchanged.
import { describe, expect, it } from "vitest";
import { fuse } from "../../compiler/codegen/fuse.ts";
import { costFromEnv, schedule, type ScheduleReport } from "../../compiler/passes/schedule.ts";
import { countsReadOnHost, DEFAULT_COST, instrCost } from "../../compiler/passes/schedule-cost.ts";
import { readsOf } from "../../compiler/plan.ts";
import { buildLayer, V2_LITE } from "../../bench/gpu/lib/moe-layer-build.ts";
import { scheduleCost } from "../../runtime/cuda/moe-nvlink.ts";

const ON = { ...DEFAULT_COST, moeOnDevice: 1 };

describe("the schedule over NVLink (moeOnDevice)", () => {
  it("is the executor's default over the NVLink transport, and SHARDTS_SCHEDULE_COST still overrides it", () => {
    expect(scheduleCost({ SHARDTS_MOE_TRANSPORT: "nvlink" }).moeOnDevice).toBe(1);
    for (const env of [{}, { SHARDTS_MOE_TRANSPORT: "nccl" }, { SHARDTS_MOE_TRANSPORT: "nvlink", SHARDTS_SCHEDULE_COST: "moeOnDevice=0" }]) expect(scheduleCost(env).moeOnDevice, JSON.stringify(env)).toBe(0);
    expect(scheduleCost({ SHARDTS_MOE_TRANSPORT: "nccl", SHARDTS_SCHEDULE_COST: "moeOnDevice=1" }).moeOnDevice).toBe(1);
    // other keys keep their defaults, or take the override
    const over = scheduleCost({ SHARDTS_MOE_TRANSPORT: "nvlink", SHARDTS_SCHEDULE_COST: "linkBandwidth=2e11" });
    expect([over.moeOnDevice, over.linkBandwidth, over.launch]).toEqual([1, 2e11, DEFAULT_COST.launch]);
    expect(() => scheduleCost({ SHARDTS_MOE_TRANSPORT: "ib" })).toThrow(/SHARDTS_MOE_TRANSPORT/);
  });

  // the bench's size (V2-Lite, ep=2): the costs the model compares are the real ones (nothing runs here)
  const fp = fuse(buildLayer(V2_LITE, 2).plan);
  const at = (instrs: typeof fp.instrs, op: string) => instrs.findIndex((x) => x.kind === "op" && x.op === op);

  it("prices dispatch/redispatch as comm alone and reads no counts on the host; combine as before", () => {
    for (const op of ["moe_dispatch", "moe_redispatch"]) {
      const x = fp.instrs[at(fp.instrs, op)]!;
      expect(instrCost(fp.values, x, ON)).toMatchObject({ compute: ON.launch, commFirst: false });
      expect(instrCost(fp.values, x, DEFAULT_COST).compute).toBeGreaterThan(ON.launch);
      expect(countsReadOnHost(fp.values, x, true)).toEqual([]);
    }
    expect(countsReadOnHost(fp.values, fp.instrs[at(fp.instrs, "moe_dispatch")]!, false).length).toBeGreaterThan(0);
    const c = fp.instrs[at(fp.instrs, "moe_combine")]!;
    expect(instrCost(fp.values, c, ON)).toEqual(instrCost(fp.values, c, DEFAULT_COST));
  });

  it("issues the redispatch ahead of the expert contractions of the forward, and predicts a shorter step", () => {
    const off = {} as ScheduleReport, on = {} as ScheduleReport;
    const a = schedule(fp, DEFAULT_COST, off), b = schedule(fp, ON, on);
    const firstSegment = (instrs: typeof fp.instrs) => instrs.findIndex((x) => x.kind === "op" && /segment/.test(x.op));
    // on the NCCL model the redispatch waits for the forward's contractions; over NVLink it goes before them
    expect(at(a.instrs, "moe_redispatch")).toBeGreaterThan(firstSegment(a.instrs));
    expect(at(b.instrs, "moe_redispatch")).toBeLessThan(firstSegment(b.instrs));
    // issued as soon as what it reads is written (the dispatch's perm among it: its route kernel's, not the exchange's)
    const r = at(b.instrs, "moe_redispatch"), writer = (s: number) => b.instrs.findIndex((x) => (x.kind === "comm" ? [x.output] : x.outputs).includes(s));
    expect(readsOf(b.instrs[r]!)).toContain((b.instrs[at(b.instrs, "moe_dispatch")]! as { outputs: number[] }).outputs[1]);
    const lastInput = Math.max(...readsOf(b.instrs[r]!).map(writer));
    expect(b.instrs.slice(lastInput + 1, r).every((x) => x.kind === "op" && x.op === "input")).toBe(true);
    expect(on.after.step).toBeLessThan(off.after.step);
  });

  it("is opt-in through SHARDTS_SCHEDULE_COST", () => {
    expect(DEFAULT_COST.moeOnDevice).toBe(0);
    expect(costFromEnv("moeOnDevice=1").moeOnDevice).toBe(1);
  });
});

describe("a segment_wgrad's cost", () => {
  it("counts each row against its own expert only: 2 x rows x d x ffn (bf16 and FP8)", () => {
    for (const fp8 of [false, true]) {
      const fp = fuse(buildLayer(V2_LITE, 2, { fp8 }).plan);
      const x = fp.instrs.find((i) => i.kind === "op" && /segment_wgrad$/.test(i.op))!;
      const rows = 2 * V2_LITE.T * V2_LITE.K; // the routing bound of a rank at ep=2 (b 2 x rows): what the kernels size for
      const flops = 2 * rows * V2_LITE.D * V2_LITE.F, rate = fp8 ? DEFAULT_COST.matmulFp8 : DEFAULT_COST.matmulBf16;
      expect(instrCost(fp.values, x, DEFAULT_COST).compute).toBeCloseTo(DEFAULT_COST.launch + flops / rate, 6);
    }
  });
});

