// Rank-local execution's communication: runs a lowered comm step (lower.ts) on this rank's GPU with
// NCCL on a communication stream. The step waits (by an event) for the compute work issued before
// it; compute waits only when an instruction reads a step's output, and then only for that step (and,
// the comm stream being in order, the steps before it): a prefetched step issued earlier keeps
// running while compute proceeds. Buffers a step reads or stages are released only once compute has
// waited for it (the caching allocator is not stream-aware). Per call the host does a cached lowering
// lookup, two event records from a pool, the NCCL calls and a few shared-memory stores for the
// watchdog (bench/host/nccl-step-overhead.ts times it); a step over a group of one rank whose input
// is handed over is the identity and costs none of it (`isIdentity`). A step of only allocs and NCCL
// calls (no zero fill, copy or trace span) makes all of that one native call, ncclIssue, from arrays
// packed once (lower.ts `packIssue`); the separate calls (two records, a wait, the NCCL call) took
// 15–23 µs of host time on 2×H200 (SHARDTS_NCCL_ISSUE=0 keeps them, for comparison). Also: a world
// all-gather of pieces, for the counts of segmented dims and for reading values back.
import type { Plan } from "../../../compiler/plan.ts";
import type { DType, ReduceOp } from "../../../compiler/ir/types.ts";
import type { LocalTensor } from "../../../compiler/ir/local.ts";
import { numel } from "../../../compiler/ir/types.ts";
import type { PlannedStep } from "../../../compiler/passes/redistribute-plan.ts";
import { CompileError } from "../../../compiler/errors.ts";
import type { Event, NativeAddon, NcclComm, Stream } from "../native-types.ts";
import { NcclDataType, NcclRedOp } from "../native-types.ts";
import { download, downloadAll, empty, type DeviceTensor } from "../memory.ts";
import * as K from "../kernels/sources.ts";
import type { CudaExecutor } from "../executor.ts";
import { lowerStep, packIssue, type Lowered, type Packed, type View } from "./lower.ts";
import { isContiguous, type Counts } from "./transfers.ts";
import { Communicators, waitComm } from "./communicators.ts";
import { WatchdogThread } from "./watchdog-thread.ts";

// FP8 values only move (the rules refuse a Partial FP8 value, so no reduction meets one): their bytes
// travel as u8, which every NCCL version and GPU takes (ncclFloat8e4m3 is recent and meant for reductions)
const NCCL_TYPE: Record<DType, number> = { f32: NcclDataType.f32, bf16: NcclDataType.bf16, i32: NcclDataType.i32, fp8e4m3: NcclDataType.u8, fp8e5m2: NcclDataType.u8 };

export interface DistSetup {
  rank: number;
  localRank: number;
  worldSize: number;
  comms: Communicators;
  watchdog?: WatchdogThread;
  timeoutMs: number;
}

/** A plan step lowered for this rank, with what each call of it needs (cached per plan, step and slots). */
interface Prepared {
  low: Lowered;
  comm: NcclComm;
  axis: string;
  /** The watchdog's id for its description. */
  desc: number;
  /** Over a group of one rank, one call moving the whole input piece into the output: the output is the input (see `identity`). */
  identity: boolean;
  /** Its ncclIssue arguments; null where it has a zero fill or copy (packed on first issue). */
  packed?: Packed | null;
}

/**
 * Whether a lowered step is the identity: a group of this rank alone (a mesh axis of size 1, as dp
 * in dp=1 × ep=2) and one call that moves the whole input piece, unchanged, into an output piece of
 * the same size. A step with anything else (a zero fill of a segmented dim's padding, staging) is not.
 */
export function isIdentity(low: Lowered, inShape: readonly number[], outShape: readonly number[]): boolean {
  if (low.group.length !== 1 || low.calls.length !== 1 || inShape.length !== outShape.length || inShape.some((n, d) => n !== outShape[d])) return false;
  const inElems = numel(inShape as number[]);
  const c = low.calls[0]!;
  if (c.op === "copy") return c.src.buf === "in" && c.src.at === 0 && c.dst.buf === "out" && c.dst.at === 0 && numel(c.src.shape) === inElems && isContiguous(c.src) && isContiguous(c.dst);
  if (c.op === "all_reduce" || c.op === "all_gather" || c.op === "reduce_scatter") return c.send.buf === "in" && c.send.at === 0 && c.recv.buf === "out" && c.recv.at === 0 && c.count === inElems;
  return false;
}

/** An issued comm step compute has not yet waited for: its completion event and what it frees then. */
export interface InFlight {
  /** Its output slots, and the slots of identity steps that handed an output on (`step`). */
  slots: number[];
  outs: DeviceTensor[];
  done: Event;
  /** The buffers the step reads (released only once compute waited for it). */
  inputs: DeviceTensor[];
  release: DeviceTensor[];
}

/** Hooks around a step's work on the communication stream (the executor's trace spans). */
export interface StepSpan {
  begin(stream: Stream): void;
  end(stream: Stream): void;
}

const EVENT_DISABLE_TIMING = 2;

export class RankLocal {
  readonly rank: number;
  readonly localRank: number;
  readonly worldSize: number;
  readonly comms: Communicators;
  private commStream?: Stream;
  /** Issued steps compute has not waited for, in issue order. */
  private inFlight: InFlight[] = [];
  /** Completion events no stream waits on any more, for reuse (creating and destroying one per call costs). */
  private eventPool: Event[] = [];
  private startEvent?: Event;
  private seq = new Map<string, number>();
  /** Collectives issued, for reports. */
  issued = 0;
  /** Steps lowered (lowering-cache misses), for tests and reports. */
  lowered = 0;
  /** Steps run as the identity (a group of one rank, the input handed over), for tests and reports. */
  identities = 0;
  /** Whether steps that fit go through one ncclIssue call (else: a native call per record, wait and NCCL call). */
  fuseIssue = process.env.SHARDTS_NCCL_ISSUE !== "0";

  constructor(private readonly s: DistSetup) {
    this.rank = s.rank;
    this.localRank = s.localRank;
    this.worldSize = s.worldSize;
    this.comms = s.comms;
  }

  private get addon(): NativeAddon {
    return this.exec!.addon;
  }
  exec?: CudaExecutor;

  /** The communication stream (created on first use). */
  stream(): Stream {
    return (this.commStream ??= this.addon.streamCreate(1));
  }

  private event(): Event {
    return this.eventPool.pop() ?? this.addon.eventCreate(EVENT_DISABLE_TIMING);
  }

  private call(comm: NcclComm, axis: string, desc: number, what: string, rc: number): void {
    const n = (this.seq.get(axis) ?? 0) + 1;
    this.seq.set(axis, n);
    this.issued++;
    this.s.watchdog?.issuedId(desc, n);
    if (rc === 7) waitComm(this.addon, comm, what, Date.now() + this.s.timeoutMs, () => this.s.watchdog?.check());
  }

  /** Before an instruction: compute waits for the latest in-flight comm step whose output it reads (and so for those before it). */
  beforeReads(slots: readonly number[]): void {
    this.s.watchdog?.beat();
    for (let i = this.inFlight.length - 1; i >= 0; i--) for (const s of this.inFlight[i]!.slots) if (slots.includes(s)) return this.waitThrough(i);
  }

  /** Compute waits for every comm step issued; staged buffers go back to the allocator. */
  flush(): void {
    this.waitThrough(this.inFlight.length - 1);
  }

  /** Compute waits for in-flight step i (the comm stream is in order: every step before it is done then too). */
  private waitThrough(i: number): void {
    if (i < 0) return;
    const a = this.addon, done = this.inFlight.splice(0, i + 1);
    a.streamWaitEvent(this.exec!.stream, done[i]!.done);
    for (const f of done) {
      this.eventPool.push(f.done); // a later record does not disturb the wait already enqueued
      for (const t of f.release) this.exec!.release(t);
    }
  }

  /**
   * Compute is done with `t`: back to the allocator now, or, while an in-flight comm step still reads
   * it (a prefetched step issued before compute's last use), once compute has waited for that step.
   */
  release(t: DeviceTensor): void {
    for (let i = this.inFlight.length - 1; i >= 0; i--) if (this.inFlight[i]!.inputs.includes(t)) return void this.inFlight[i]!.release.push(t);
    this.exec!.release(t);
  }

  /** Comm steps issued that compute has not waited for yet (prefetched work in flight). */
  get pending(): number {
    return this.inFlight.length;
  }

  /** Whether plan slot `slot` is written by a comm step compute has not waited for yet. */
  inFlightWrites(slot: number): boolean {
    return this.inFlight.some((f) => f.slots.includes(slot));
  }

  /**
   * Work of this rank's own on the communication stream (the NVLink MoE kernels, runtime/cuda/moe-nvlink.ts),
   * ordered like a comm step: it starts after the compute issued so far (an event), `issue(cs)` enqueues it,
   * and compute waits for it only where an instruction reads one of `slots` (beforeReads) or by `waitFor`.
   * `inputs`: buffers it reads (a release of one is deferred until compute waited for it); `release`: buffers
   * freed then. `span` brackets it on the communication stream (the executor's trace).
   */
  onComm(slots: number[], outs: DeviceTensor[], inputs: DeviceTensor[], release: DeviceTensor[], issue: (cs: Stream) => void, span?: StepSpan): InFlight {
    const a = this.addon, cs = this.stream(), start = (this.startEvent ??= a.eventCreate(EVENT_DISABLE_TIMING));
    a.eventRecord(start, this.exec!.stream);
    a.streamWaitEvent(cs, start);
    span?.begin(cs);
    issue(cs);
    span?.end(cs);
    const done = this.event();
    a.eventRecord(done, cs);
    const f: InFlight = { slots, outs, done, inputs, release };
    this.inFlight.push(f);
    return f;
  }

  /** Compute waits for `f` (issued by onComm), and so for every comm step before it; nothing if it already did. */
  waitFor(f: InFlight): void {
    this.waitThrough(this.inFlight.indexOf(f));
  }

  /**
   * A captured step's replay was enqueued (the NCCL calls it holds run inside the graph): the watchdog
   * times it as one collective of the whole world named `what`, until `drained`.
   */
  graphLaunched(what: string): void {
    const desc = this.s.watchdog?.describe({ axis: "graph", what, group: Array.from({ length: this.worldSize }, (_, r) => r) }) ?? -1;
    this.call(this.comms.world, "graph", desc, what, 0);
  }

  /** The run ended and its results were read: everything issued has completed. */
  drained(): void {
    this.s.watchdog?.drained();
    this.s.watchdog?.check();
  }

  /** Lowerings that read no counts (no segmented dim), per plan and step: a training loop reuses them. */
  private lowerings = new WeakMap<Plan, Map<PlannedStep, Map<number, Prepared>>>();
  private prepare(plan: Plan, step: PlannedStep, inSlot: number, outSlot: number, counts: Counts): Prepared {
    let byStep = this.lowerings.get(plan);
    if (!byStep) this.lowerings.set(plan, (byStep = new Map()));
    let bySlots = byStep.get(step);
    if (!bySlots) byStep.set(step, (bySlots = new Map()));
    const key = inSlot * plan.values.length + outSlot;
    const hit = bySlots.get(key);
    if (hit) return hit;
    let readCounts = false;
    const low = lowerStep(plan, step, inSlot, outSlot, this.rank, (s) => ((readCounts = true), counts(s)));
    this.lowered++;
    const axis = plan.mesh.axes[low.axis]!;
    const identity = isIdentity(low, plan.values[inSlot]!.shapes[this.rank]!, plan.values[outSlot]!.shapes[this.rank]!);
    const p: Prepared = { low, comm: this.comms.axes(plan.mesh)[low.axis]!, axis, desc: this.s.watchdog?.describe({ axis, what: low.what, group: low.group }) ?? -1, identity };
    if (!readCounts) bySlots.set(key, p);
    return p;
  }

  /**
   * Runs plan comm step `step` on this rank; `input` is handed over (released once safe). `span`
   * brackets the step's work on the communication stream (after its wait for compute).
   */
  step(plan: Plan, step: PlannedStep, inSlot: number, outSlot: number, input: DeviceTensor, counts: Counts, releaseInput: boolean, span?: StepSpan): DeviceTensor {
    const ex = this.exec!, a = this.addon;
    const p = this.prepare(plan, step, inSlot, outSlot, counts), { low, comm, axis, desc, identity } = p;
    if (identity && releaseInput && input.dtype === plan.values[outSlot]!.type.dtype) {
      // the input is handed over and the step moves nothing between GPUs: it is the output, with no
      // work and no native call (NCCL would copy it); compute reading it waits for whatever writes it
      for (const f of this.inFlight) if (f.outs.includes(input)) f.slots.push(outSlot);
      this.identities++;
      return input;
    }
    const cs = this.stream();
    const dtype = plan.values[inSlot]!.type.dtype, eb = K.elemBytes(dtype), nt = NCCL_TYPE[dtype];
    const red = (r: ReduceOp) => {
      if (nt === NcclDataType.u8) throw new CompileError(`${low.what}: a ${r} reduction of ${dtype} values (a shardts bug: FP8 values only move); redistribute the f32/bf16 value before quantize`);
      return r === "sum" ? NcclRedOp.sum : NcclRedOp.max;
    };
    const packed = span || !this.fuseIssue ? null : p.packed !== undefined ? p.packed : (p.packed = packIssue(low, red));
    const out = empty(ex.mem, dtype, plan.values[outSlot]!.shapes[this.rank]!);
    const release: DeviceTensor[] = [];
    if (packed) return this.issue(p, packed, nt, input, out, (this.startEvent ??= a.eventCreate(EVENT_DISABLE_TIMING)), release, releaseInput, outSlot);
    const bufs = new Map<string, bigint>([["in", input.ptr], ["out", out.ptr]]);
    const ptr = (b: string, at: number) => bufs.get(b)! + BigInt(at * eb);
    if (releaseInput) release.push(input);
    // (on the comm stream `cs`, after the compute issued so far: onComm)
    this.onComm([outSlot], [out], [input], release, () => {
      let grouped = false;
      for (const c of low.calls) {
        switch (c.op) {
          case "alloc": {
            const t = empty(ex.mem, dtype, [c.elems]);
            release.push(t);
            bufs.set(c.buf, t.ptr);
            break;
          }
          case "zero":
            if (c.elems) a.memsetD8(bufs.get(c.buf)!, 0, c.elems * eb, cs);
            break;
          case "copy":
            this.copy(dtype, c.src, c.dst, bufs, cs);
            break;
          case "all_gather":
            this.call(comm, axis, desc, low.what, a.ncclAllGather(ptr(c.send.buf, c.send.at), ptr(c.recv.buf, c.recv.at), c.count, nt, comm, cs));
            break;
          case "reduce_scatter":
            this.call(comm, axis, desc, low.what, a.ncclReduceScatter(ptr(c.send.buf, c.send.at), ptr(c.recv.buf, c.recv.at), c.count, nt, red(c.reduce), comm, cs));
            break;
          case "all_reduce":
            this.call(comm, axis, desc, low.what, a.ncclAllReduce(ptr(c.send.buf, c.send.at), ptr(c.recv.buf, c.recv.at), c.count, nt, red(c.reduce), comm, cs));
            break;
          case "group_start":
            a.ncclGroupStart();
            grouped = true;
            break;
          case "send":
            a.ncclSend(ptr(c.span.buf, c.span.at), c.count, nt, c.peer, comm, cs);
            break;
          case "recv":
            a.ncclRecv(ptr(c.span.buf, c.span.at), c.count, nt, c.peer, comm, cs);
            break;
          case "group_end":
            if (!grouped) throw new CompileError("group_end without group_start in a lowered comm step (a shardts bug)");
            grouped = false;
            this.call(comm, axis, desc, low.what, a.ncclGroupEnd());
            break;
        }
      }
    }, span);
    this.s.watchdog?.check();
    return out;
  }

  /** `step` through one ncclIssue call (the same native work in the same order; see Packed). */
  private issue(p: Prepared, k: Packed, nt: number, input: DeviceTensor, out: DeviceTensor, start: Event, release: DeviceTensor[], releaseInput: boolean, outSlot: number): DeviceTensor {
    const ex = this.exec!, a = this.addon, { comm, axis, desc, low } = p, { ops, ptrs, counts, counted } = k;
    ptrs[0] = input.ptr;
    ptrs[1] = out.ptr;
    for (const [b, elems] of k.allocs) {
      const t = empty(ex.mem, out.dtype, [elems]);
      release.push(t);
      ptrs[b] = t.ptr;
    }
    const done = this.event(), n = ops.length >> 2;
    // a call answering ncclInProgress (a non-blocking communicator) stops the issue there; the rest
    // is issued after `call` polled it where `step` polls (after a collective or a group end)
    for (let first = 0, c = 0; first <= n; ) {
      let r: number;
      try {
        r = a.ncclIssue(comm, ex.stream, this.stream(), start, done, ops, ptrs, counts, nt, first);
      } catch (e) {
        this.eventPool.push(done);
        throw e;
      }
      for (; c < counted.length && counted[c]! <= Math.min(r, n - 1); c++) this.call(comm, axis, desc, low.what, counted[c] === r ? 7 : 0);
      first = r + 1;
    }
    if (releaseInput) release.push(input);
    this.inFlight.push({ slots: [outSlot], outs: [out], done, inputs: [input], release });
    this.s.watchdog?.check();
    return out;
  }

  private copy(dtype: DType, src: View, dst: View, bufs: Map<string, bigint>, stream: Stream): void {
    const n = numel(src.shape);
    if (n === 0) return;
    const eb = K.elemBytes(dtype), to = bufs.get(dst.buf)! + BigInt(dst.at * eb), from = bufs.get(src.buf)! + BigInt(src.at * eb);
    // both sides one contiguous run: the copy engine's memcpy; else the executor's strided-copy kernel
    if (isContiguous(src) && isContiguous(dst)) return this.addon.memcpyDtoDAsync(to, from, n * eb, stream);
    this.exec!.copyStrided(dtype, to, from, src.shape, src.strides, dst.strides, stream);
  }

  /**
   * A world all-gather of `bytes` bytes per rank on `stream`, named for the watchdog: the host reads
   * of MoE routing counts (runtime/cuda/moe-counts.ts), on their own stream after only the work that
   * produced the counts, with buffers of their own.
   */
  worldAllGather(send: bigint, recv: bigint, bytes: number, what: string, stream: Stream): void {
    const w = this.comms.world;
    const desc = this.s.watchdog?.describe({ axis: "world", what, group: Array.from({ length: this.worldSize }, (_, r) => r) }) ?? -1;
    this.call(w, "world", desc, what, this.addon.ncclAllGather(send, recv, bytes, NcclDataType.u8, w, stream));
  }

  /**
   * Every rank's piece of a value, read back on every rank (world all-gather, padded to the largest
   * piece). A value replicated on every axis needs no communication: each piece is this one.
   */
  allPieces(plan: Plan, slot: number, mine: DeviceTensor): LocalTensor[] {
    const ex = this.exec!, a = this.addon, v = plan.values[slot]!;
    this.flush();
    if (v.type.placements.every((p) => p === "R")) {
      const t = download(a, mine, ex.stream);
      return Array.from({ length: plan.world }, () => t);
    }
    const eb = K.elemBytes(v.type.dtype);
    const max = Math.max(...v.shapes.map((s) => numel(s) * eb));
    if (max === 0) return v.shapes.map((s) => download(a, { ...mine, shape: s }, ex.stream));
    const send = empty(ex.mem, "i32", [Math.ceil(max / 4)]), recv = empty(ex.mem, "i32", [Math.ceil(max / 4) * plan.world]);
    const padded = Math.ceil(max / 4) * 4;
    if (numel(mine.shape)) a.memcpyDtoDAsync(send.ptr, mine.ptr, numel(mine.shape) * eb, ex.stream);
    const w = this.comms.world, what = `all_gather[world](pieces of a ${v.type.dtype} value)`;
    const desc = this.s.watchdog?.describe({ axis: "world", what, group: Array.from({ length: plan.world }, (_, r) => r) }) ?? -1;
    this.call(w, "world", desc, what, a.ncclAllGather(send.ptr, recv.ptr, padded, NcclDataType.u8, w, ex.stream));
    const out = downloadAll(a, v.shapes.map((s, r) => ({ dtype: v.type.dtype, shape: s, ptr: recv.ptr + BigInt(r * padded), bytes: 0 })), ex.stream);
    ex.release(send);
    ex.release(recv);
    return out;
  }
}
