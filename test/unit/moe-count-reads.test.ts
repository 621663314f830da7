// Host reads of MoE routing counts under rank-local execution wait only for the counts' writer
// (runtime/cuda/moe-counts.ts). A two-micro-batch MoE training step (layout ep, ep=2, composed and
// fused dispatch, the scheduled order of multi-GPU stage 9) runs as rank 0 of 2 on the native layer
// that does no device work (test/fakes/native-addon.ts), and the synchronisation calls are recorded:
// no count read synchronizes the compute or the communication stream (the old read flushed every comm
// step in flight into compute, then synchronized the compute stream), comm steps stay in flight
// across the reads, and each read's all-gather and copy run on a stream of their own that waits for
// one event. A fused combine's exchange is issued right after the writer of its rows, before the
// work the schedule puts between them (the other micro-batch's), instead of inside the combine after
// all of it. Plus the counts piece arithmetic (staging cut per rank, host reorder) on its own.
import { describe, expect, it, vi } from "vitest";
import { layoutByName, type LmConfig } from "../../stdlib/nn/index.ts";
import { ADAMW_DEFAULTS, Trainer } from "../../stdlib/train/index.ts";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { RankLocal } from "../../runtime/cuda/nccl/collectives.ts";
import { Communicators } from "../../runtime/cuda/nccl/communicators.ts";
import { CountReads, reorderHost } from "../../runtime/cuda/moe-counts.ts";
import { empty } from "../../runtime/cuda/memory.ts";
import type { Plan } from "../../compiler/plan.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { fakeAddon } from "../fakes/native-addon.ts";
import { useTempKernelCache } from "../fakes/kernel-cache.ts";

/** MoE ops and pre-issued combine exchanges, in the order the executor issued them (moe.ts, wrapped). */
const moeLog: { what: "exchange" | "op"; ins: object; op: string; moved: boolean; at: number }[] = [];
let nativeCalls = 0;
vi.mock("../../runtime/cuda/moe.ts", async (importOriginal) => {
  const m = await importOriginal<typeof import("../../runtime/cuda/moe.ts")>();
  return {
    ...m,
    combineExchange: (...a: Parameters<typeof m.combineExchange>) => (moeLog.push({ what: "exchange", ins: a[1], op: a[1].op, moved: false, at: nativeCalls }), m.combineExchange(...a)),
    runMoe: (...a: Parameters<typeof m.runMoe>) => (moeLog.push({ what: "op", ins: a[2], op: a[2].op, moved: a[6] !== undefined, at: nativeCalls }), m.runMoe(...a)),
  };
});

const model = (fusedDispatch: boolean): LmConfig => ({
  vocab: 64, model: 32, heads: 2, layers: 2, seq: 16, ffn: 64, microBatches: 2,
  moe: { experts: 4, topK: 2, ffn: 32, shared: 1, score: "softmax", auxLoss: 0, fusedDispatch },
});

interface Call {
  m: string;
  args: unknown[];
  /** Comm steps in flight that compute has not waited for, when the call was made. */
  pending: number;
}

/** One traced step of rank 0 of 2: every native call in order, and the executor's two streams. */
function step(fusedDispatch: boolean) {
  const cfg = model(fusedDispatch), batch = 4;
  // tokens per expert per sequence, as a balanced router would give (seq · topK / experts)
  let rl: RankLocal | undefined;
  const calls: Call[] = [];
  const f = fakeAddon({
    read: (dst) => void (dst instanceof Int32Array && dst.fill((cfg.seq * cfg.moe!.topK) / cfg.moe!.experts)),
    spy: (m, args) => void (calls.push({ m, args: [...args], pending: rl?.pending ?? 0 }), nativeCalls++),
  });
  const trainer = new Trainer({
    model: cfg, layout: layoutByName("ep", { ep: 2 }), batch, seed: 1, backend: "cpu", biasRate: 0.01,
    opt: { ...ADAMW_DEFAULTS, lr: 1e-3 }, schedule: { peak: 1e-3, warmup: 1, total: 10, minRatio: 0.1 },
  });
  const ex = new CudaExecutor(f.addon, 0);
  // the segment contractions' counts pieces, as they got them, with the device piece's element count
  const pieces: { n: number; got: LocalTensor }[] = [];
  const hostPiece = ex.hostPiece.bind(ex);
  ex.hostPiece = (d, from, order) => {
    const got = hostPiece(d, from, order);
    pieces.push({ n: d.shape.reduce((a, b) => a * b, 1), got });
    return got;
  };
  rl = new RankLocal({ rank: 0, localRank: 0, worldSize: 2, comms: new Communicators(f.addon, 0, 2, new Uint8Array(128), 10_000), timeoutMs: 60_000 });
  (ex.rankLocal = rl).exec = ex;
  const ids = Int32Array.from({ length: batch * cfg.seq }, (_, i) => (i * 7 + 3) % cfg.vocab);
  const { feeds } = trainer.feeds(ids, ids);
  const plan = trainer.program.plan as Plan;
  const saved = process.env.SHARDTS_SCHEDULE;
  process.env.SHARDTS_SCHEDULE = "1"; // the scheduled order, as multi-GPU stage 9 runs it
  try {
    ex.run(plan, new Map(Object.entries(feeds)), undefined, { download: false });
  } finally {
    if (saved === undefined) delete process.env.SHARDTS_SCHEDULE;
    else process.env.SHARDTS_SCHEDULE = saved;
  }
  return { calls, compute: ex.stream, comm: rl.stream(), pieces, fill: (cfg.seq * cfg.moe!.topK) / cfg.moe!.experts };
}

describe("host reads of MoE counts (rank-local, fake native layer)", () => {
  useTempKernelCache();

  for (const fused of [false, true])
    it(`two micro-batches, ${fused ? "fused" : "composed"} dispatch: a count read waits for its counts alone, never for the compute or comm stream`, () => {
      const { calls, compute, comm, pieces, fill } = step(fused);
      const lastLaunch = calls.map((c) => c.m).lastIndexOf("launchKernel");
      // the counts' all-gathers (plan all-gather steps run on the comm stream): not on the compute stream either
      const gathers = calls.filter((c, i) => c.m === "ncclAllGather" && c.args[5] !== comm && i < lastLaunch);
      expect(gathers.length).toBeGreaterThanOrEqual(2); // at least one per micro-batch (4: one per MoE layer and micro-batch)
      const countStream = gathers[0]!.args[5];
      for (const g of gathers) expect(g.args[5]).toBe(countStream);
      expect([compute, comm]).not.toContain(countStream);
      // before the step's last kernel: no synchronize of the compute or the comm stream, nor of the device
      const midStep = calls.slice(0, lastLaunch);
      expect(midStep.filter((c) => c.m === "ctxSynchronize")).toEqual([]);
      expect(midStep.filter((c) => c.m === "streamSynchronize" && (c.args[0] === compute || c.args[0] === comm)).map((c) => c.m)).toEqual([]);
      // each read: the count stream waits for one event, then the host for the count stream's event
      const syncs = midStep.filter((c) => c.m === "eventSynchronize");
      // one read per counts value the token exchanges need; the segment contractions' pieces come from
      // those reads (fused: the same value; composed: the count exchange moves a value the host has)
      expect(syncs.length).toBe(gathers.length);
      // and those pieces are whole and hold what the device holds (every count is `fill` on this fake)
      expect(pieces.length).toBeGreaterThan(0);
      for (const p of pieces) {
        expect(p.got.data.length).toBe(p.n);
        expect(p.got.data.every((v) => v === fill)).toBe(true);
      }
      const waits = midStep.filter((c) => c.m === "streamWaitEvent" && c.args[0] === countStream);
      expect(waits.length).toBe(syncs.length);
      // what each waited event was last recorded on before the wait: the compute or the comm stream (the counts' writer)
      for (const w of waits) {
        const rec = calls.slice(0, calls.indexOf(w)).reverse().find((c) => c.m === "eventRecord" && c.args[0] === w.args[1]);
        expect([compute, comm]).toContain(rec?.args[1]);
      }
      // and the comm steps issued before a read stay in flight across it (the old read flushed them all into compute)
      expect(syncs.some((c) => c.pending > 0)).toBe(true);
      // compute never waits on the count stream
      const countEvents = new Set(calls.filter((c) => c.m === "eventRecord" && c.args[1] === countStream).map((c) => c.args[0]));
      expect(calls.filter((c) => c.m === "streamWaitEvent" && c.args[0] !== countStream && countEvents.has(c.args[1]))).toEqual([]);
    });

  it("two micro-batches, fused dispatch: each combine's exchange goes out before the work scheduled between its rows' writer and it", () => {
    moeLog.length = 0;
    nativeCalls = 0;
    const { calls, compute } = step(true);
    const combines = moeLog.filter((e) => e.what === "op" && e.op === "moe_combine");
    expect(combines.length).toBeGreaterThanOrEqual(4); // 2 MoE layers × 2 micro-batches forward, and the backward's
    let between = 0;
    for (const c of combines) {
      expect(c.moved, "the combine ran on rows moved earlier").toBe(true);
      const ex = moeLog.find((e) => e.what === "exchange" && e.ins === c.ins)!;
      expect(ex).toBeDefined();
      expect(moeLog.indexOf(ex)).toBeLessThan(moeLog.indexOf(c));
      // compute launched after the exchange went out and before its combine: work it no longer waits for
      between += calls.slice(ex.at, c.at).filter((x) => x.m === "launchKernel" && x.args[4] === compute).length;
    }
    expect(between).toBeGreaterThan(0);
  });

  it("cuts every rank's piece out of the gathered staging and reads one piece alone", () => {
    // the staging after the gather: rank r's counts at r × (largest piece), here 3 i32 each
    const f = fakeAddon({ read: (dst) => void (dst instanceof Int32Array && dst.forEach((_, i) => (dst[i] = 100 + i))) });
    const reads = new CountReads(f.addon);
    const mem = { alloc: () => ({ ptr: 0x10n, bytes: 512 }) } as never;
    const mine = empty(mem, "i32", [3]);
    const plan = {
      world: 2, mesh: { axes: ["ep"], sizes: [2] },
      values: [{ type: { dims: [{ name: "e", size: 5 }], dtype: "i32", placements: ["S(e)"] }, shapes: [[3], [2]], boxes: [], segCounts: {} }],
    } as unknown as Plan;
    const gathered: unknown[][] = [];
    const dist = { worldAllGather: (...a: unknown[]) => void gathered.push(a) } as unknown as RankLocal;
    reads.mark(mine, 1n as never);
    const pieces = reads.allPieces(dist, plan, 0, mine);
    expect(gathered.length).toBe(1);
    expect(gathered[0]![2]).toBe(12); // bytes per rank: the largest piece
    expect(pieces.map((p) => [...p.data])).toEqual([[100, 101, 102], [103, 104]]);
    expect(pieces.map((p) => p.shape)).toEqual([[3], [2]]);
    expect([...reads.piece(mine).data]).toEqual([100, 101, 102]);
    expect(reads.reads).toBe(2);
    expect(() => reads.piece(empty(mem, "i32", [2]))).toThrow(/not marked ready/);
  });

  it("reorders a piece on the host as the device's strided copy would", () => {
    const t = { dtype: "i32" as const, shape: [2, 3, 4], data: Int32Array.from({ length: 24 }, (_, i) => i) };
    const r = reorderHost(t, ["a", "b", "c"], ["c", "a", "b"]);
    expect(r.shape).toEqual([4, 2, 3]);
    for (let c = 0; c < 4; c++) for (let a = 0; a < 2; a++) for (let b = 0; b < 3; b++) expect(r.data[c * 6 + a * 3 + b]).toBe(a * 12 + b * 4 + c);
    expect(reorderHost(t, ["a", "b", "c"], ["a", "b", "c"])).toBe(t);
  });
});
