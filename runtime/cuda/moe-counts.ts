// Host reads of MoE routing counts under rank-local execution (one process per GPU), waiting only
// for the work that produces the counts. A MoE dispatch sizes its token exchange by counts read back
// to the host (every rank's piece: a world all-gather), and a segment contraction sizes its GEMMs by
// its own piece. Read on the compute stream after compute had waited for every comm step in flight
// (RankLocal.allPieces), such a read made the host wait for all compute issued so far and all comm in
// flight: one micro-batch's exchange could not run while the other's experts ran, and the GPU's queue
// drained at every read. Here the executor marks each counts piece with an event right after the
// instruction that writes it, on the stream that writes it (compute, or the comm stream for an
// exchange); a read waits for that event alone on a small stream of its own, gathers and copies there
// into pinned host memory, and the host synchronizes on that stream's event. Compute and the comm
// stream are neither waited on nor made to wait.
//
// The read's device buffers are its own (not the caching allocator's): a block the allocator hands
// out may still be in use by compute issued after the counts' producer, which this stream does not
// wait for. Everything the stream does is done when a read returns, so the buffers are free again then.
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { COUNT_SIZED_OPS, type Plan } from "../../compiler/plan.ts";
import { numel } from "../../compiler/ir/types.ts";
import type { Event, NativeAddon, Stream } from "./native-types.ts";
import type { DeviceTensor } from "./memory.ts";
import type { RankLocal } from "./nccl/collectives.ts";

const EVENT_DISABLE_TIMING = 2;

/**
 * The slots read on the host as counts: the counts of some segmented value (the exchanges size their
 * rows by them), and the counts operand (i32) of the segment contractions, which size their GEMMs by it.
 */
export function countSlots(plan: { values: Plan["values"]; instrs: readonly { kind: string; op?: string; inputs?: number[] }[] }): Set<number> {
  const s = new Set(plan.values.flatMap((v) => Object.values(v.segCounts)));
  for (const x of plan.instrs) if (x.kind === "op" && COUNT_SIZED_OPS.has(x.op!)) for (const i of x.inputs!) if (plan.values[i]!.type.dtype === "i32") s.add(i);
  return s;
}

export class CountReads {
  private readonly addon: NativeAddon;
  private own?: Stream;
  /** Counts pieces marked ready in this run, by buffer: the event recorded right after their writer. */
  private readonly ready = new Map<DeviceTensor, Event>();
  private readonly pool: Event[] = [];
  private done?: Event;
  private dev?: { send: bigint; recv: bigint; bytes: number };
  private host?: ArrayBuffer;
  /** Reads made (for tests and reports). */
  reads = 0;

  constructor(addon: NativeAddon) {
    this.addon = addon;
  }

  /** The counts stream (created on first use). */
  stream(): Stream {
    return (this.own ??= this.addon.streamCreate(1));
  }

  /** A new run: the events of the last one go back to the pool (a later record does not disturb a wait already enqueued). */
  newRun(): void {
    for (const e of this.ready.values()) this.pool.push(e);
    this.ready.clear();
  }

  /** `d` is complete once the work issued so far on `stream` is: records that, unless it was marked already (a value is written once). */
  mark(d: DeviceTensor, stream: Stream): void {
    if (this.ready.has(d)) return;
    const e = this.pool.pop() ?? this.addon.eventCreate(EVENT_DISABLE_TIMING);
    this.addon.eventRecord(e, stream);
    this.ready.set(d, e);
  }

  marked(d: DeviceTensor): boolean {
    return this.ready.has(d);
  }

  /** Every rank's piece of counts slot `slot` (this rank's is `mine`, marked), each on the host. */
  allPieces(dist: RankLocal, plan: Plan, slot: number, mine: DeviceTensor): LocalTensor[] {
    const v = plan.values[slot]!, cs = this.begin(mine);
    if (v.type.placements.every((p) => p === "R")) {
      const t = this.finish([mine.shape], (buf) => this.addon.memcpyDtoHAsync(buf, mine.ptr, buf.byteLength, cs), numel(mine.shape) * 4)[0]!;
      return Array.from({ length: plan.world }, () => t);
    }
    const max = Math.max(...v.shapes.map((s) => numel(s) * 4));
    if (max === 0) return this.finish(v.shapes, () => {}, 0);
    const { send, recv } = this.buffers(max * plan.world);
    const a = this.addon;
    if (numel(mine.shape)) a.memcpyDtoDAsync(send, mine.ptr, numel(mine.shape) * 4, cs);
    dist.worldAllGather(send, recv, max, `all_gather[world](counts, a host read)`, cs);
    return this.finish(v.shapes, (buf) => a.memcpyDtoHAsync(buf, recv, buf.byteLength, cs), max * plan.world, max);
  }

  /** This rank's piece `d` (marked), on the host. */
  piece(d: DeviceTensor): LocalTensor {
    const cs = this.begin(d);
    return this.finish([d.shape], (buf) => this.addon.memcpyDtoHAsync(buf, d.ptr, buf.byteLength, cs), numel(d.shape) * 4)[0]!;
  }

  /** The counts stream waits for `d`'s writer (only). */
  private begin(d: DeviceTensor): Stream {
    if (d.dtype !== "i32") throw new Error(`shardts internal error: a host read of counts got a ${d.dtype} piece; counts are i32`);
    const e = this.ready.get(d);
    if (!e) throw new Error("shardts internal error: a host read of counts whose piece was not marked ready (CountReads.mark)");
    const cs = this.stream();
    this.addon.streamWaitEvent(cs, e);
    this.reads++;
    return cs;
  }

  /**
   * Copies `bytes` into the pinned staging (by `copy`, on the counts stream), waits for the counts
   * stream's event, and cuts the pieces of `shapes` out of it, the r-th at r × `stride` bytes.
   */
  private finish(shapes: number[][], copy: (dst: Int32Array) => void, bytes: number, stride = 0): LocalTensor[] {
    const a = this.addon;
    if (bytes > 0) {
      const stage = new Int32Array(this.staging(bytes), 0, bytes / 4);
      copy(stage);
      a.eventRecord((this.done ??= a.eventCreate(EVENT_DISABLE_TIMING)), this.stream());
      a.eventSynchronize(this.done);
    }
    return shapes.map((shape, r) => {
      const n = numel(shape);
      const data = n ? new Int32Array(this.host!.slice(r * stride, r * stride + n * 4)) : new Int32Array(0);
      return { dtype: "i32", shape: shape.slice(), data } as LocalTensor;
    });
  }

  private staging(bytes: number): ArrayBuffer {
    if (!this.host || this.host.byteLength < bytes) {
      if (this.host) this.addon.hostFree(this.host);
      this.host = this.addon.hostAlloc(Math.max(bytes, 2 * (this.host?.byteLength ?? 0), 4096));
    }
    return this.host;
  }

  private buffers(bytes: number): { send: bigint; recv: bigint } {
    if (!this.dev || this.dev.bytes < bytes) {
      // (the counts stream is idle between reads: the old buffers are free)
      if (this.dev) (this.addon.memFree(this.dev.send), this.addon.memFree(this.dev.recv));
      const n = Math.max(bytes, 2 * (this.dev?.bytes ?? 0), 4096);
      this.dev = { send: this.addon.memAlloc(n), recv: this.addon.memAlloc(n), bytes: n };
    }
    return this.dev;
  }
}

/** A host piece laid out in dims `from`, in dims order `order` (counts are small: a host transpose, no kernel). */
export function reorderHost(t: LocalTensor, from: string[], order: string[]): LocalTensor {
  if (order.every((n, i) => from[i] === n)) return t;
  const shape = order.map((n) => t.shape[from.indexOf(n)]!);
  const st = from.map((_, d) => t.shape.slice(d + 1).reduce((a, b) => a * b, 1));
  const src = order.map((n) => st[from.indexOf(n)]!);
  const data = new (t.data.constructor as Int32ArrayConstructor)(t.data.length);
  const idx = new Array<number>(shape.length).fill(0);
  for (let i = 0; i < data.length; i++) {
    let at = 0;
    for (let d = 0; d < shape.length; d++) at += idx[d]! * src[d]!;
    data[i] = t.data[at]!;
    for (let d = shape.length - 1; d >= 0 && ++idx[d]! === shape[d]!; d--) idx[d] = 0;
  }
  return { dtype: t.dtype, shape, data } as LocalTensor;
}

