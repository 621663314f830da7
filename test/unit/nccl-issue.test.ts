// One native call per collective (ncclIssue, runtime/cuda/nccl/collectives.ts): on the fake native
// layer, which makes ncclIssue's records, waits and NCCL calls one by one as native/src/nccl.cc does,
// the work a step enqueues (event records, stream waits, NCCL calls and their arguments, the polls
// of a non-blocking communicator) is the same through ncclIssue as through the separate calls; a
// failing NCCL call throws the same error; steps with a zero fill, copy or trace span keep the
// separate calls. Without a GPU, the built addon's ncclIssue checks its arguments (what the packing
// writes passes them) before it loads any library.
import { describe, it, expect } from "vitest";
import { RankLocal, type StepSpan } from "../../runtime/cuda/nccl/collectives.ts";
import { lowerStep, packIssue, type Lowered } from "../../runtime/cuda/nccl/lower.ts";
import { Communicators } from "../../runtime/cuda/nccl/communicators.ts";
import { empty } from "../../runtime/cuda/memory.ts";
import { NcclIssueOp, NcclRedOp } from "../../runtime/cuda/native-types.ts";
import type { DType, MeshSpec, Placement, TensorType } from "../../compiler/ir/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import type { PlannedStep } from "../../compiler/passes/redistribute-plan.ts";
import { coordsOf, worldSize } from "../../compiler/ir/placement.ts";
import { boxOf } from "../../compiler/passes/partition.ts";
import { planRedistribute } from "../../compiler/passes/redistribute-plan.ts";
import { fakeAddon, fakeExecutor, type FakeOptions } from "../fakes/native-addon.ts";
import { collectiveCases } from "../../bench/host/nccl-step-overhead.ts";
import { cudaAvailable, tryNative } from "../../runtime/cuda/native.ts";

const noCounts = () => {
  throw new Error("no segmented dims here");
};

/** Work enqueued on streams, and the NCCL calls (polls included), with their arguments. */
const isWork = (m: string) => m === "eventRecord" || m === "streamWaitEvent" || m === "memsetD8" || m === "memcpyDtoDAsync" || m === "launchKernel" || (m.startsWith("nccl") && m !== "ncclIssue");

function rankLocal(fuse: boolean, opts: FakeOptions = {}, W = 2) {
  const work: [string, unknown[]][] = [];
  const f = fakeAddon({ ...opts, spy: (m, a) => void (isWork(m) && work.push([m, [...a]])) });
  const rl = new RankLocal({ rank: 0, localRank: 0, worldSize: W, comms: new Communicators(f.addon, 0, W, new Uint8Array(128), 1000), timeoutMs: 60_000 });
  rl.fuseIssue = fuse;
  const ex = fakeExecutor(f.addon);
  rl.exec = ex;
  return { f, rl, ex, work };
}

type Case = { name: string; plan: Plan; step: PlannedStep };

/** A few steps of `c` as a training loop runs them: cold, prefetched (two in flight), flushed, reading one; the enqueued work and the counts. */
function drive(fuse: boolean, c: Case, W: number, opts: FakeOptions = {}) {
  const { f, rl, ex, work } = rankLocal(fuse, opts, W);
  const plan = { ...c.plan, values: [...c.plan.values, c.plan.values[0]!, c.plan.values[1]!] };
  const dtype = plan.values[0]!.type.dtype;
  const input = empty(ex.mem, dtype, plan.values[0]!.shapes[0]!);
  const outs = [rl.step(plan, c.step, 0, 1, input, noCounts, false)];
  rl.flush();
  outs.push(rl.step(plan, c.step, 0, 1, input, noCounts, false), rl.step(plan, c.step, 2, 3, input, noCounts, false));
  rl.beforeReads([1]);
  outs.push(rl.step(plan, c.step, 0, 1, input, noCounts, false));
  rl.flush();
  for (const o of outs) ex.release(o);
  return { work, calls: f.calls, issued: rl.issued, pending: rl.pending, live: f.liveEvents.size };
}

const withDtype = (c: Case, dtype: DType): Case => ({ ...c, plan: { ...c.plan, values: c.plan.values.map((v) => ({ ...v, type: { ...v.type, dtype } })) } });

const cases: [string, Case, number][] = [
  ...collectiveCases(2, 1024).map((c): [string, Case, number] => [`${c.name} f32 W=2`, c, 2]),
  ...collectiveCases(4, 96).map((c): [string, Case, number] => [`${c.name} bf16 W=4`, withDtype(c, "bf16"), 4]),
];

describe("ncclIssue: one native call per collective", () => {
  for (const [name, c, W] of cases)
    it(`${name}: the same enqueued work as the separate calls, in one native call per step`, () => {
      const old = drive(false, c, W), fused = drive(true, c, W);
      expect(fused.work.length).toBeGreaterThan(0);
      expect(fused.work).toEqual(old.work);
      expect([fused.issued, fused.pending, fused.live]).toEqual([old.issued, old.pending, old.live]);
      // 4 steps, each one native call; the separate path made a record, a wait, the NCCL call(s) and a record
      expect(fused.calls.get("ncclIssue")).toBe(4);
      expect(fused.calls.get("eventRecord") ?? 0).toBe(0);
      expect(fused.calls.get("streamWaitEvent")).toBe(old.calls.get("streamWaitEvent")! - 4); // compute's waits stay
      for (const m of ["ncclAllGather", "ncclReduceScatter", "ncclAllReduce", "ncclSend", "ncclRecv", "ncclGroupStart", "ncclGroupEnd"]) expect(fused.calls.get(m) ?? 0, m).toBe(0);
    });

  it("the send/recv group of an all-to-all: group start, every send, every recv (this rank's own piece included), group end", () => {
    const c = collectiveCases(4, 96).find((k) => k.name === "all_to_all")!;
    const { work } = drive(true, c, 4);
    const first = work.slice(0, work.findIndex((w) => w[0] === "ncclGroupEnd") + 2).map(([m, a]) => (m === "ncclSend" || m === "ncclRecv" ? `${m}(${String(a[3])})` : m));
    expect(first.filter((m) => !/^ncclComm/.test(m))).toEqual([ // (the communicators' setup: init, split, polls)
      "eventRecord", "streamWaitEvent", "ncclGroupStart",
      "ncclSend(1)", "ncclSend(2)", "ncclSend(3)", "ncclSend(0)", "ncclRecv(1)", "ncclRecv(2)", "ncclRecv(3)", "ncclRecv(0)",
      "ncclGroupEnd", "eventRecord",
    ]);
  });

  it("a non-blocking communicator (ncclInProgress): polled where the separate calls polled, the rest issued after", () => {
    // every NCCL call but the group start answers in progress (the communicator then reads ready):
    // the separate path polls after a collective or group end, not after a send or recv
    const opts: FakeOptions = { ncclStatus: (m) => (m === "ncclGroupStart" ? 0 : 7) };
    for (const c of collectiveCases(2, 1024)) {
      const old = drive(false, c, 2, opts), fused = drive(true, c, 2, opts);
      expect(fused.work, c.name).toEqual(old.work);
      expect(fused.work.some(([m]) => m === "ncclCommGetAsyncError"), c.name).toBe(true);
      expect(fused.issued, c.name).toBe(old.issued);
      expect(fused.calls.get("ncclIssue")!, c.name).toBeGreaterThan(4); // resumed after each answer in progress
    }
  });

  it("a failing NCCL call throws the error the separate call throws, and leaves nothing in flight", () => {
    const fail = (method: string, peer?: number): FakeOptions => ({ ncclStatus: (m, a) => (m === method && (peer === undefined || a[3] === peer) ? 5 : 0) });
    const [ag, rs, ar, a2a] = collectiveCases(2, 1024);
    for (const [c, opts] of [[ag!, fail("ncclAllGather")], [rs!, fail("ncclReduceScatter")], [ar!, fail("ncclAllReduce")], [a2a!, fail("ncclRecv", 1)], [a2a!, fail("ncclSend", 0)], [a2a!, fail("ncclGroupEnd")]] as const) {
      const thrown = (fuse: boolean) => {
        const { rl, ex } = rankLocal(fuse, opts);
        const input = empty(ex.mem, "f32", c.plan.values[0]!.shapes[0]!);
        try {
          rl.step(c.plan, c.step, 0, 1, input, noCounts, false);
        } catch (e) {
          expect(rl.pending).toBe(0);
          const { message, library, call, code, codeName } = e as Error & Record<string, unknown>;
          return { message, library, call, code, codeName };
        }
        throw new Error(`${c.name}: no error`);
      };
      const old = thrown(false);
      expect(old.message).toMatch(/failed: ncclInvalidUsage \(5\)/);
      expect(thrown(true), c.name).toEqual(old);
    }
  });

  it("an FP8 reduction is refused with the same error before anything is issued", () => {
    const ar = withDtype(collectiveCases(2, 1024).find((k) => k.name === "all_reduce")!, "fp8e4m3");
    const msg = (fuse: boolean) => {
      const { rl, ex } = rankLocal(fuse);
      expect(() => rl.step(ar.plan, ar.step, 0, 1, empty(ex.mem, "fp8e4m3", ar.plan.values[0]!.shapes[0]!), noCounts, false)).toThrow(/sum reduction of fp8e4m3/);
      try {
        rl.step(ar.plan, ar.step, 0, 1, empty(ex.mem, "fp8e4m3", ar.plan.values[0]!.shapes[0]!), noCounts, false);
      } catch (e) {
        return (e as Error).message;
      }
    };
    expect(msg(true)).toBe(msg(false));
  });

  it("steps with a copy or zero fill, and steps under a trace span, keep the separate calls", () => {
    // an uneven split (7 rows on 2 ranks): the all-gather stages through padded buffers and copies
    const mesh: MeshSpec = { axes: ["x"], sizes: [2] };
    const t: TensorType = { dims: [{ name: "a", size: 7 }, { name: "b", size: 4 }], dtype: "f32", placements: [] };
    const value = (pl: Placement[]) => {
      const tt = { ...t, placements: pl }, per = Array.from({ length: worldSize(mesh) }, (_, r) => boxOf(tt, mesh, coordsOf(mesh, r)));
      return { type: tt, boxes: per.map((p) => p.box), shapes: per.map((p) => p.shape), segCounts: {} };
    };
    const plan: Plan = { mesh, world: 2, values: [value(["S(a)"]), value(["R"])], instrs: [], outputs: [], lastUse: [] };
    const [step] = planRedistribute(t, ["S(a)"], ["R"], mesh);
    const low = lowerStep(plan, step!, 0, 1, 1, noCounts);
    expect(low.calls.some((k) => k.op === "copy")).toBe(true);
    expect(packIssue(low, () => 0)).toBeNull();
    const uneven = { name: "uneven all_gather", plan, step: step! };
    const old = drive(false, uneven, 2), fused = drive(true, uneven, 2);
    expect(fused.work).toEqual(old.work);
    expect(fused.calls.get("ncclIssue") ?? 0).toBe(0);
    expect(fused.calls.get("ncclAllGather")).toBe(4);
    // a zero fill (a segmented dim's padding) is refused by the packing too
    const zero: Lowered = { axis: 0, group: [0, 1], me: 0, outElems: 8, what: "t", calls: [{ op: "zero", buf: "out", elems: 8 }, { op: "all_reduce", send: { buf: "in", at: 0 }, recv: { buf: "out", at: 0 }, count: 8, reduce: "sum" }] };
    expect(packIssue(zero, () => 0)).toBeNull();
    // a trace span brackets the NCCL work with its own events: separate calls
    const [ag] = collectiveCases(2, 1024);
    const { f, rl, ex } = rankLocal(true);
    const marks: string[] = [];
    const span: StepSpan = { begin: () => void marks.push("begin"), end: () => void marks.push("end") };
    ex.release(rl.step(ag!.plan, ag!.step, 0, 1, empty(ex.mem, "f32", ag!.plan.values[0]!.shapes[0]!), noCounts, false, span));
    rl.flush();
    expect(marks).toEqual(["begin", "end"]);
    expect(f.calls.get("ncclIssue") ?? 0).toBe(0);
    expect(f.calls.get("ncclAllGather")).toBe(1);
  });

  it("packs ops, buffers, offsets, counts, peers and reduce ops as native/src/nccl.cc reads them", () => {
    const low: Lowered = {
      axis: 0, group: [0, 1], me: 0, outElems: 64, what: "t",
      calls: [
        { op: "alloc", buf: "t0", elems: 32 },
        { op: "reduce_scatter", send: { buf: "in", at: 0 }, recv: { buf: "t0", at: 0 }, count: 32, reduce: "max" },
        { op: "group_start" },
        { op: "send", peer: 1, span: { buf: "t0", at: 16 }, count: 16 },
        { op: "recv", peer: 1, span: { buf: "out", at: 48 }, count: 16 },
        { op: "group_end" },
      ],
    };
    const k = packIssue(low, (r) => (r === "sum" ? NcclRedOp.sum : NcclRedOp.max))!;
    expect([...k.ops]).toEqual([
      NcclIssueOp.reduce_scatter, 0, 2, NcclRedOp.max,
      NcclIssueOp.group_start, 0, 0, 0,
      NcclIssueOp.send, 2, 0, 1,
      NcclIssueOp.recv, 1, 0, 1,
      NcclIssueOp.group_end, 0, 0, 0,
    ]);
    expect([...k.counts]).toEqual([32, 0, 0, 0, 0, 0, 16, 16, 0, 16, 48, 0, 0, 0, 0]);
    expect(k.ptrs.length).toBe(3);
    expect(k.allocs).toEqual([[2, 32]]);
    expect(k.counted).toEqual([0, 4]);
    expect(() => packIssue({ ...low, calls: [{ op: "group_end" }] }, () => 0)).toThrow(/group_end without group_start/);
  });
});

describe.skipIf(cudaAvailable().ok)("the built addon's ncclIssue without a GPU", () => {
  const loaded = tryNative();
  const addon = loaded.ok ? loaded.addon : undefined;
  const args = (ops: number[], ptrs: bigint[], counts: number[], dtype = 7, first = 0) =>
    [1n, 2n, 3n, 4n, 5n, Int32Array.from(ops), BigUint64Array.from(ptrs), Float64Array.from(counts), dtype, first] as const;

  it("refuses bad arguments by name before loading a library", () => {
    const issue = (a: ReturnType<typeof args>) => () => addon!.ncclIssue(...a);
    const ag = [NcclIssueOp.all_gather, 0, 1, 0];
    expect(issue(args(ag, [0x1000n, 0x2000n], [8, 0]))).toThrow(/ops must hold 4N entries and counts 3N/);
    expect(issue(args([9, 0, 1, 0], [0x1000n, 0x2000n], [8, 0, 0]))).toThrow(/call 0: unknown op 9/);
    expect(issue(args([NcclIssueOp.all_gather, 0, 2, 0], [0x1000n, 0x2000n], [8, 0, 0]))).toThrow(/call 0: a buffer index outside ptrs \(2 buffers\)/);
    expect(issue(args(ag, [0x1000n, 0n], [8, 0, 0]))).toThrow(/call 0: a null buffer pointer/);
    expect(issue(args(ag, [0x1000n, 0x2000n], [8.5, 0, 0]))).toThrow(/non-negative integers/);
    expect(issue(args(ag, [0x1000n, 0x2000n], [8, 0, 0], 99))).toThrow(/unknown ncclDataType_t 99/);
    expect(issue(args(ag, [0x1000n, 0x2000n], [8, 0, 0], 7, 2))).toThrow(/first must be an integer in \[0, 1\]/);
    expect(() => (addon!.ncclIssue as (...a: unknown[]) => number)(1n, 2n)).toThrow(/takes 10 arguments, got 2/);
    const [, p] = args(ag, [1n], [1]);
    expect(() => addon!.ncclIssue(1n, 2n, 3n, 4n, 5n, new Int32Array(4), p as never, new Float64Array(3), 7, 0)).toThrow(/ptrs must be a BigUint64Array/);
  });

  it("takes what the packing writes for every collective (then finds no driver)", () => {
    for (const W of [2, 4])
      for (const c of collectiveCases(W, 96)) {
        const low = lowerStep(c.plan, c.step, 0, 1, 0, noCounts);
        const k = packIssue(low, () => NcclRedOp.sum)!;
        k.ptrs.fill(0x7f0000000000n);
        let err: Error | undefined;
        try {
          addon!.ncclIssue(1n, 2n, 3n, 4n, 5n, k.ops, k.ptrs, k.counts, 7, 0);
        } catch (e) {
          err = e as Error;
        }
        expect(err, c.name).toBeDefined();
        expect(err!.name, `${c.name}: ${err!.message}`).not.toBe("RangeError");
        expect(err!.name, `${c.name}: ${err!.message}`).not.toBe("TypeError");
      }
  });
});
