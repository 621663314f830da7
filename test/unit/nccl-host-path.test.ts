// RankLocal's host path per collective, on the CPU over a native layer that only counts
// (test/fakes/native-addon.ts): lowerings are cached per plan step, events come from a pool, compute
// waits only for the steps whose outputs it reads (prefetched steps stay in flight), the watchdog
// still names a collective that never completes, the host work stays a few microseconds, and FP8
// values (MoE's FP8 dispatch) cross as their bytes.
import { describe, it, expect } from "vitest";
import { isIdentity, RankLocal } from "../../runtime/cuda/nccl/collectives.ts";
import type { Lowered } from "../../runtime/cuda/nccl/lower.ts";
import { Communicators } from "../../runtime/cuda/nccl/communicators.ts";
import { WatchdogThread } from "../../runtime/cuda/nccl/watchdog-thread.ts";
import { empty } from "../../runtime/cuda/memory.ts";
import { NcclDataType } from "../../runtime/cuda/native-types.ts";
import type { Plan } from "../../compiler/plan.ts";
import { firstTimeout, withWatchdog } from "./nccl/watchdog-harness.ts";
import { fakeAddon, fakeExecutor, type FakeOptions } from "../fakes/native-addon.ts";
import { collectiveCases, measure } from "../../bench/host/nccl-step-overhead.ts";
import type { MeshSpec, Placement, TensorType } from "../../compiler/ir/types.ts";
import { coordsOf, worldSize } from "../../compiler/ir/placement.ts";
import { boxOf } from "../../compiler/passes/partition.ts";
import { planRedistribute } from "../../compiler/passes/redistribute-plan.ts";

/** Values of one f32 tensor [a: 8] on the mesh (one=1, x=2) in each of `layouts`, and the single step between consecutive ones. */
function onOneRankAxis(...layouts: Placement[][]) {
  const mesh: MeshSpec = { axes: ["one", "x"], sizes: [1, 2] };
  const t: TensorType = { dims: [{ name: "a", size: 8 }], dtype: "f32", placements: [] };
  const values = layouts.map((pl) => {
    const tt = { ...t, placements: pl }, per = Array.from({ length: worldSize(mesh) }, (_, r) => boxOf(tt, mesh, coordsOf(mesh, r)));
    return { type: tt, boxes: per.map((p) => p.box), shapes: per.map((p) => p.shape), segCounts: {} };
  });
  const plan: Plan = { mesh, world: 2, values, instrs: [], outputs: [], lastUse: [] };
  const steps = layouts.slice(1).map((pl, i) => {
    const s = planRedistribute(t, layouts[i]!, pl, mesh);
    expect(s.length).toBe(1);
    return s[0]!;
  });
  return { plan, steps };
}

const noCounts = () => {
  throw new Error("no segmented dims here");
};

function setup(watchdog?: WatchdogThread, opts?: FakeOptions) {
  const f = fakeAddon(opts);
  const rl = new RankLocal({ rank: 0, localRank: 0, worldSize: 2, comms: new Communicators(f.addon, 0, 2, new Uint8Array(128), 1000), watchdog, timeoutMs: 60_000 });
  const ex = fakeExecutor(f.addon);
  rl.exec = ex;
  return { f, rl, ex };
}

describe("RankLocal host path", () => {
  it("lowers a plan step once and reuses it; another slot pair or plan is lowered anew", () => {
    const { rl, ex } = setup();
    const [ag, rs] = collectiveCases(2, 1024);
    const input = empty(ex.mem, "f32", ag!.plan.values[0]!.shapes[0]!);
    for (let i = 0; i < 50; i++) ex.release(rl.step(ag!.plan, ag!.step, 0, 1, input, noCounts, false));
    rl.flush();
    expect(rl.lowered).toBe(1);
    expect(rl.issued).toBe(50);
    // the same step read from other slots (the plan has no such values: a copy of it that does)
    const plan2 = { ...ag!.plan, values: [...ag!.plan.values, ag!.plan.values[0]!, ag!.plan.values[1]!] };
    ex.release(rl.step(plan2, ag!.step, 2, 3, input, noCounts, false));
    ex.release(rl.step(plan2, ag!.step, 2, 3, input, noCounts, false));
    expect(rl.lowered).toBe(2);
    ex.release(rl.step(rs!.plan, rs!.step, 0, 1, input, noCounts, false));
    rl.flush();
    expect(rl.lowered).toBe(3);
  });

  it("steady state: no event created or destroyed per collective; one ncclIssue and compute's wait (separately: one NCCL call, two records and two waits)", () => {
    for (const fuse of [true, false]) {
      const { f, rl, ex } = setup();
      rl.fuseIssue = fuse;
      for (const c of collectiveCases(2, 1024)) {
        const input = empty(ex.mem, "f32", c.plan.values[0]!.shapes[0]!);
        for (let i = 0; i < 3; i++) (ex.release(rl.step(c.plan, c.step, 0, 1, input, noCounts, false)), rl.flush());
        f.reset();
        for (let i = 0; i < 10; i++) (ex.release(rl.step(c.plan, c.step, 0, 1, input, noCounts, false)), rl.flush());
        const calls = f.calls;
        expect(calls.get("eventCreate") ?? 0, c.name).toBe(0);
        expect(calls.get("eventDestroy") ?? 0, c.name).toBe(0);
        expect(calls.get("eventRecord") ?? 0, c.name).toBe(fuse ? 0 : 20);
        expect(calls.get("streamWaitEvent"), c.name).toBe(fuse ? 10 : 20);
        const nccl = fuse ? "ncclIssue" : c.name === "all_to_all" ? "ncclGroupEnd" : { all_gather: "ncclAllGather", reduce_scatter: "ncclReduceScatter", all_reduce: "ncclAllReduce" }[c.name]!;
        expect(calls.get(nccl), c.name).toBe(10);
      }
      // the start event and one pooled completion event, however many steps ran
      expect(f.liveEvents.size).toBe(2);
    }
  });

  it("compute waits only for the step it reads (and those before it); a later step stays in flight", () => {
    const { f, rl, ex } = setup();
    const [ag] = collectiveCases(2, 1024);
    const plan = { ...ag!.plan, values: [...ag!.plan.values, ag!.plan.values[0]!, ag!.plan.values[1]!] };
    const input = empty(ex.mem, "f32", plan.values[0]!.shapes[0]!);
    const a = rl.step(plan, ag!.step, 0, 1, input, noCounts, false);
    const b = rl.step(plan, ag!.step, 2, 3, input, noCounts, false);
    expect(rl.pending).toBe(2);
    f.reset();
    rl.beforeReads([5, 6]); // reads neither output: no wait
    expect(f.calls.get("streamWaitEvent") ?? 0).toBe(0);
    rl.beforeReads([1]);
    expect(f.calls.get("streamWaitEvent")).toBe(1);
    expect(rl.pending).toBe(1); // b (the prefetched step) is still in flight
    rl.beforeReads([3]);
    expect(rl.pending).toBe(0);
    // a step behind a read one is waited for with it (one wait: the comm stream is in order)
    rl.step(plan, ag!.step, 0, 1, input, noCounts, false);
    rl.step(plan, ag!.step, 2, 3, input, noCounts, false);
    f.reset();
    rl.beforeReads([3]);
    expect(f.calls.get("streamWaitEvent")).toBe(1);
    expect(rl.pending).toBe(0);
    ex.release(a);
    ex.release(b);
  });

  it("releases a step's staged buffers only once compute waited for that step", () => {
    const { rl, ex } = setup();
    const [ag] = collectiveCases(2, 1024);
    const plan = { ...ag!.plan, values: [...ag!.plan.values, ag!.plan.values[0]!, ag!.plan.values[1]!] };
    const in1 = empty(ex.mem, "f32", plan.values[0]!.shapes[0]!), in2 = empty(ex.mem, "f32", plan.values[0]!.shapes[0]!);
    const live0 = ex.mem.live;
    rl.step(plan, ag!.step, 0, 1, in1, noCounts, true); // input handed over
    rl.step(plan, ag!.step, 2, 3, in2, noCounts, true);
    const outBytes = ex.mem.live - live0;
    rl.beforeReads([1]);
    expect(ex.mem.live - live0).toBe(outBytes - in1.bytes); // in1 back; in2 still held by the step in flight
    rl.flush();
    expect(ex.mem.live - live0).toBe(outBytes - in1.bytes - in2.bytes);
  });

  it("a buffer an in-flight step reads goes back to the allocator only after compute waited for that step", () => {
    const { rl, ex } = setup();
    const [ag] = collectiveCases(2, 1024);
    const x = empty(ex.mem, "f32", ag!.plan.values[0]!.shapes[0]!), other = empty(ex.mem, "f32", [16]);
    const out = rl.step(ag!.plan, ag!.step, 0, 1, x, noCounts, false); // x not handed over: compute reads it later
    const live = ex.mem.live;
    rl.release(x); // compute's last use of x, while the step still reads it
    expect(ex.mem.live).toBe(live);
    rl.release(other); // no step reads it: back at once
    expect(ex.mem.live).toBe(live - other.bytes);
    rl.beforeReads([1]);
    expect(ex.mem.live).toBe(live - other.bytes - x.bytes);
    ex.release(out);
  });

  it("the watchdog still names a collective issued through the cached path that never completes", async () => {
    await withWatchdog({ x: 6 }, async (w, peer) => {
      const { rl, ex } = setup(w);
      const [ag, rs] = collectiveCases(2, 1024);
      const input = empty(ex.mem, "f32", ag!.plan.values[0]!.shapes[0]!);
      for (let i = 0; i < 6; i++) (rl.step(ag!.plan, ag!.step, 0, 1, input, noCounts, false), rl.flush());
      rl.drained(); // the first six completed
      rl.step(rs!.plan, rs!.step, 0, 1, input, noCounts, false); // #7 on 'x': rank 1 never arrives
      const { error } = await firstTimeout(w);
      expect(error.name).toBe("CollectiveTimeoutError");
      expect(error.message).toMatch(/collective reduce_scatter\[x\]\(sum -> a\) \(#7 on mesh axis 'x', ranks \[0, 1\]\) has not completed within 0.6 s/);
      expect(error.message).toContain("rank(s) 1 had not arrived (their last collective on 'x': #6)");
      expect(JSON.parse(await peer.get("progress/0"))).toEqual({ x: 7 });
    });
  });

  it("costs a few microseconds of host work per collective (fake native layer)", async () => {
    const rows = await measure({ reps: 5000, watchdog: true });
    for (const r of rows) expect(r.usPerCall, `${r.name}: ${r.usPerCall.toFixed(2)} us`).toBeLessThan(20);
  });
  it("FP8 values cross as u8, one byte an element (all-to-all, all-gather); a reduction of one is refused", () => {
    const seen: { op: string; count: number; dtype: number }[] = [];
    // the spy sees the NCCL calls ncclIssue makes too
    const spy = (name: string, a: unknown[]) => void ((name === "ncclSend" || name === "ncclRecv" || name === "ncclAllGather") && seen.push({ op: name, count: Number(a[name === "ncclAllGather" ? 2 : 1]), dtype: a[name === "ncclAllGather" ? 3 : 2] as number }));
    const { rl, ex } = setup(undefined, { spy });
    const fp8 = (p: Plan): Plan => ({ ...p, values: p.values.map((v) => ({ ...v, type: { ...v.type, dtype: "fp8e4m3" } })) });
    const cases = collectiveCases(2, 96);
    for (const c of cases.filter((k) => k.name === "all_to_all" || k.name === "all_gather")) {
      seen.length = 0;
      const plan = fp8(c.plan);
      const input = empty(ex.mem, "fp8e4m3", plan.values[0]!.shapes[0]!);
      ex.release(rl.step(plan, c.step, 0, 1, input, noCounts, false));
      expect(seen.length, c.name).toBeGreaterThan(0);
      for (const call of seen) expect(call.dtype, `${c.name} ${call.op}`).toBe(NcclDataType.u8);
      // this rank's piece, 96 elements, leaves it (all-gather: whole; all-to-all: half to each rank, itself included)
      expect(seen.reduce((a, k) => a + (k.op === "ncclRecv" ? 0 : k.count), 0), `${c.name}: bytes sent`).toBe(96);
    }
    const ar = cases.find((k) => k.name === "all_reduce")!, plan = fp8(ar.plan);
    expect(() => rl.step(plan, ar.step, 0, 1, empty(ex.mem, "fp8e4m3", plan.values[0]!.shapes[0]!), noCounts, false)).toThrow(/sum reduction of fp8e4m3/);
    rl.flush();
  });

  it("a step over a one-rank axis with its input handed over is the identity: the input comes back, no native call", () => {
    const { f, rl, ex } = setup();
    const { plan, steps: [reduce] } = onOneRankAxis(["P(sum)", "R"], ["R", "R"]);
    const input = empty(ex.mem, "f32", plan.values[0]!.shapes[0]!);
    expect(rl.step(plan, reduce!, 0, 1, input, noCounts, true)).toBe(input); // (the first also splits the communicators)
    f.reset();
    expect(rl.step(plan, reduce!, 0, 1, input, noCounts, true)).toBe(input);
    expect(f.calls.size).toBe(0);
    expect(rl.identities).toBe(2);
    // not handed over (compute reads the input again): a buffer of its own, through NCCL
    const out = rl.step(plan, reduce!, 0, 1, input, noCounts, false);
    expect(out).not.toBe(input);
    expect(f.calls.get(rl.fuseIssue ? "ncclIssue" : "ncclAllReduce")).toBe(1);
    rl.flush();
    ex.release(out);
  });

  it("compute reading an identity step's output waits for the in-flight step that wrote its input", () => {
    const { f, rl, ex } = setup();
    const { plan, steps: [gather, reduce] } = onOneRankAxis(["P(sum)", "S(a)"], ["P(sum)", "R"], ["R", "R"]);
    const x = empty(ex.mem, "f32", plan.values[0]!.shapes[0]!);
    const gathered = rl.step(plan, gather!, 0, 1, x, noCounts, true); // in flight on the comm stream
    expect(rl.step(plan, reduce!, 1, 2, gathered, noCounts, true)).toBe(gathered);
    f.reset();
    rl.beforeReads([2]);
    expect(f.calls.get("streamWaitEvent")).toBe(1);
    expect(rl.pending).toBe(0);
    ex.release(gathered);
  });

  it("a lowering over a one-rank group that does more than move the whole piece is not the identity", () => {
    const low = (calls: Lowered["calls"]): Lowered => ({ axis: 0, group: [0], me: 0, outElems: 8, calls, what: "t" });
    const whole = { shape: [8], strides: [1] };
    expect(isIdentity(low([{ op: "copy", src: { buf: "in", at: 0, ...whole }, dst: { buf: "out", at: 0, ...whole } }]), [8], [8])).toBe(true);
    expect(isIdentity(low([{ op: "all_reduce", send: { buf: "in", at: 0 }, recv: { buf: "out", at: 0 }, count: 8, reduce: "sum" }]), [8], [8])).toBe(true);
    // a segmented dim's padding zeroed first; a strided copy; another shape; a group of two
    expect(isIdentity(low([{ op: "zero", buf: "out", elems: 8 }, { op: "copy", src: { buf: "in", at: 0, ...whole }, dst: { buf: "out", at: 0, ...whole } }]), [8], [8])).toBe(false);
    expect(isIdentity(low([{ op: "copy", src: { buf: "in", at: 0, shape: [4, 2], strides: [1, 4] }, dst: { buf: "out", at: 0, shape: [4, 2], strides: [2, 1] } }]), [4, 2], [4, 2])).toBe(false);
    expect(isIdentity(low([{ op: "copy", src: { buf: "in", at: 0, ...whole }, dst: { buf: "out", at: 0, ...whole } }]), [8], [2, 4])).toBe(false);
    expect(isIdentity({ ...low([{ op: "all_reduce", send: { buf: "in", at: 0 }, recv: { buf: "out", at: 0 }, count: 8, reduce: "sum" }]), group: [0, 1] }, [8], [8])).toBe(false);
  });
});
