// The CUDA backend: runs a partitioned plan on one GPU. Chains of elementwise ops and row
// reductions run as the kernels the fusion pass and CUDA emitter generate (NVRTC, disk-cached);
// contractions go to cuBLASLt; routing and layout moves are the hand-written kernels of
// kernels/sources.ts; factories produce each piece exactly as the CPU reference does and upload it.
// A mesh of several ranks is simulated on the one GPU (each rank's pieces are its own buffers) and
// its collective steps (and the exchanges inside MoE dispatch/combine, runtime/cuda/moe.ts) go
// through the CPU reference's exact simulation. With `rankLocal` set (one process per GPU,
// nccl/collectives.ts), it runs only its own rank: other ranks' pieces are never made, comm steps
// go to NCCL, and counts and read-back values are all-gathered across the world.
import type { DType } from "../../compiler/ir/types.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { allocLocal, stridesOf } from "../../compiler/ir/local.ts";
import type { Plan } from "../../compiler/plan.ts";
import type { PlannedStep } from "../../compiler/passes/redistribute-plan.ts";
import { readsOf } from "../../compiler/plan.ts";
import { numel } from "../../compiler/ir/types.ts";
import { coordsOf } from "../../compiler/ir/placement.ts";
import { CompileError, ShapeError, ShardtsError, UsageError } from "../../compiler/errors.ts";
import { getOp } from "../../compiler/ops/index.ts";
import { fuse } from "../../compiler/codegen/fuse.ts";
import { orderForStreams } from "../../compiler/pipeline.ts";
import { emitCuda } from "../../compiler/codegen/cuda/emit.ts";
import { DEFAULT_TUNING, type EmitTuning } from "../../compiler/codegen/cuda/tuning.ts";
import { residentBlocks } from "../../compiler/codegen/cuda/launch.ts";
import { fillPointers, packedLaunch, type LaunchCache } from "./launches.ts";
import { cpuCtx } from "../cpu/executor.ts";
import { combineExchange, runMoe } from "./moe.ts";
import { moeTransport, pushCombineEarly, runMoeNvlink, scheduleCost, type NvlCombinePushed } from "./moe-nvlink.ts";
import { MOE_OPS } from "../../compiler/ops/dispatch.ts";
import { waitsAtOnce } from "./moe-exchange.ts";
import { CountReads, countSlots, reorderHost } from "./moe-counts.ts";
import { sliceBox } from "../../compiler/ops/factory.ts";
import { runStep } from "../cpu/collectives.ts";
import { assemble, type GlobalTensor } from "../cpu/assemble.ts";
import type { Event, KernelFunction, NativeAddon, Stream } from "./native-types.ts";
import { native, packArgs, type KernelArg } from "./native.ts";
import { archFor, compileCuda } from "./compile.ts";
import { CachingAllocator, download, downloadAll, empty, upload, type DeviceTensor } from "./memory.ts";
import * as K from "./kernels/sources.ts";
import { runCopy, transposeCopy, transposeWide } from "./kernels/move-sources.ts";
import { moveGeoBytes, planCopy, RUN_CHUNK } from "./copy-plan.ts";
import { deviceOp } from "./device-ops.ts";
import { segmentCountsFromEnv } from "./segment-device.ts";
import { CapturedStep, notCapturable, type DeferredCheck } from "./graph.ts";
import { CaptureMode } from "./native-types.ts";
import { TraceRecorder, type TraceEvent } from "./trace.ts";
import { CarriedValues } from "./carried.ts";
import type { RankLocal, StepSpan } from "./nccl/collectives.ts";
import type { Counts } from "./nccl/transfers.ts";

const FACTORIES_ON_HOST = new Set(["constant", "from_local", "random", "input"]);

/** SHARDTS_PREFETCH_BYTES: the prefetch window (compiler/passes/prefetch.ts); 0 turns prefetching off. */
function prefetchBytes(env: NodeJS.ProcessEnv = process.env): number | undefined {
  const v = env.SHARDTS_PREFETCH_BYTES;
  if (v === undefined || v === "") return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new UsageError(`SHARDTS_PREFETCH_BYTES=${JSON.stringify(v)} must be a non-negative number of bytes (0: no prefetch)`);
  return n;
}
const BLOCK = 256;

export interface KernelTiming {
  name: string;
  ops: string[];
  /** Median of the timed re-launches, rank 0. */
  ms: number;
  /** Bytes its operands and results occupy on rank 0 (each read or written once). */
  bytes: number;
}

export interface CudaRunResult {
  outputs: (GlobalTensor | undefined)[];
  locals: LocalTensor[][];
  stats: { kernels: number; compiled: number; cacheHits: number; compileMs: number; peakBytes: number; ms: number };
  /** With `profile`: each fused kernel of rank 0 re-launched and timed with events. */
  timings: KernelTiming[];
}

export interface RunOptions {
  /** false: leave the outputs unread (their buffers are released; `outputs` and `locals` come back empty). For timing. */
  download?: boolean;
  /** Filled with one event per instruction and rank, timed by CUDA events (runtime/cuda/trace.ts). */
  trace?: TraceEvent[];
  /** Re-launch every fused kernel this many times after it ran, timing each launch (0: no profiling). */
  profile?: number;
  /** Host time per instruction, added up by its trace name and category (bench/host/host-overhead.ts). */
  hostTimes?: HostTimes;
  /**
   * Output index -> input name of this plan: those outputs stay on the device as the plan's next
   * run's inputs (runtime/cuda/carried.ts) and are read back only when `read` names them.
   */
  carry?: ReadonlyMap<number, string>;
}

/** Host milliseconds spent issuing instructions, by what ran ("kernel", "gemm", "comm", "op"... and name). */
export type HostTimes = Map<string, { cat: string; name: string; n: number; ms: number }>;

const GEMM_OPS = new Set(["dot", "segment_dot", "segment_wgrad", "scaled_dot", "scaled_dot_wgrad", "scaled_segment_dot", "scaled_segment_wgrad"]);

export class CudaExecutor {
  readonly addon: NativeAddon;
  readonly stream: Stream;
  readonly arch: string;
  readonly smCount: number;
  private readonly sm: Parameters<typeof residentBlocks>[3];
  private residency = new Map<KernelFunction, number>();
  /** Where buffers come from (while capturing: the graph's own pool). */
  mem: CachingAllocator;
  /** How the emitters write kernels (compiler/codegen/cuda/tuning.ts); plans are re-lowered when it changes. */
  tuning: EmitTuning = DEFAULT_TUNING;
  private fns = new Map<string, { source: string; fn: KernelFunction }[]>();
  /** bf16 segment_dot / segment_wgrad plan their GEMMs from device-side counts, no host read (capturable; segment-device.ts): SHARDTS_SEGMENT_COUNTS, default device (host: read back). */
  segmentCountsOnDevice = segmentCountsFromEnv(process.env.SHARDTS_SEGMENT_COUNTS);
  /** Rank-local execution over NCCL (one process per GPU); unset: every rank simulated on this GPU. */
  rankLocal?: RankLocal;
  private compileStats = { compiled: 0, cacheHits: 0, compileMs: 0 };

  constructor(addon: NativeAddon = native(), device = 0) {
    this.addon = addon;
    addon.init();
    addon.setDevice(device);
    const p = addon.deviceProperties(device);
    this.arch = archFor(p.computeCapability[0], p.computeCapability[1]);
    this.smCount = p.smCount;
    this.sm = { regsPerSM: p.registersPerBlock, threadsPerSM: p.maxThreadsPerSM, smemPerSM: p.sharedMemPerSM, maxBlocksPerSM: p.maxBlocksPerSM || 32 };
    this.stream = addon.streamCreate(0);
    this.mem = new CachingAllocator(addon);
  }

  /**
   * Compiles (or finds in the disk cache) and loads a kernel. Called on every launch: looked up by
   * name, then by source (the same string object on a hit, so compared by identity: a key joining
   * name and source was hashed anew, character by character, on every launch).
   */
  fn(name: string, source: string): KernelFunction {
    const known = this.fns.get(name);
    if (known) for (const k of known) if (k.source === source) return k.fn;
    const c = compileCuda(this.addon, name, source, this.arch);
    if (c.cached) this.compileStats.cacheHits++;
    else this.compileStats.compiled++;
    this.compileStats.compileMs += c.ms;
    const f = this.addon.moduleGetFunction(this.addon.moduleLoadData(c.cubin), name);
    if (known) known.push({ source, fn: f });
    else this.fns.set(name, [{ source, fn: f }]);
    return f;
  }

  /** How many blocks of `fn` fit on an SM at once (its registers and shared memory, read once from the driver). */
  private blocksPerSM(fn: KernelFunction, block: number): number {
    let n = this.residency.get(fn);
    if (n === undefined) {
      const at = this.addon.funcGetAttributes(fn);
      n = residentBlocks(block, at.numRegs, at.sharedSizeBytes, this.sm);
      this.residency.set(fn, n);
    }
    return n;
  }

  launch1D(k: { name: string; source: string }, n: number, args: KernelArg[], stream: Stream = this.stream): void {
    if (n <= 0) return;
    this.launchGrid(k, Math.min(Math.ceil(n / BLOCK), this.smCount * 8), BLOCK, args, stream);
  }

  /** Launches kernel `k` (compiled once, looked up by name and source) on `grid` blocks of `block` threads, no dynamic shared memory. */
  launchGrid(k: { name: string; source: string }, grid: number, block: number, args: KernelArg[] | Uint8Array, stream: Stream = this.stream): void {
    this.addon.launchKernel(this.fn(k.name, k.source), [grid, 1, 1], [block, 1, 1], 0, stream, args instanceof Uint8Array ? args : packArgs(...args));
  }

  /** Copies `src` (laid out as `from` dims) into a new tensor laid out in `order`. */
  reorder(src: DeviceTensor, from: string[], order: string[]): DeviceTensor {
    if (order.every((n, i) => from[i] === n)) return src;
    const shape = order.map((n) => src.shape[from.indexOf(n)]!);
    const st = stridesOf(src.shape);
    const out = empty(this.mem, src.dtype, shape);
    this.copy(out, src, shape, order.map((n) => st[from.indexOf(n)]!), stridesOf(shape), 0);
    return out;
  }

  /** out[ooff + sum i*ostride] = in[sum i*istride] over `shape`. */
  copy(out: DeviceTensor, src: DeviceTensor, shape: number[], istride: number[], ostride: number[], outOffset: number): void {
    this.copyStrided(src.dtype, out.ptr + BigInt(outOffset * K.elemBytes(src.dtype)), src.ptr, shape, istride, ostride);
  }

  /** dst[sum i*ostride] = src[sum i*istride] over `shape` (elements of `dtype`), on `stream`. */
  copyStrided(dtype: DType, dst: bigint, src: bigint, shape: number[], istride: number[], ostride: number[], stream: Stream = this.stream): void {
    if (shape.length > K.MAX_DIMS) throw new CompileError(`the CUDA copy kernel takes at most ${K.MAX_DIMS} dims, got ${shape.length}`);
    const n = numel(shape);
    if (n <= 0) return;
    const plan = planCopy(K.elemBytes(dtype), dst, src, shape, istride, ostride);
    if (plan.kind === "runs") {
      const warps = plan.runs * plan.chunks, grid = Math.min(Math.ceil((warps * 32) / BLOCK), this.smCount * 8), k = runCopy(plan.word);
      const args = packArgs(["ptr", dst], ["ptr", src], ["bytes", moveGeoBytes(plan.outer), 8], ["i64", plan.runs], ["i64", plan.run], ["i64", plan.chunks], ["i64", RUN_CHUNK]);
      this.launchGrid(k, grid, BLOCK, args, stream);
      return;
    }
    if (plan.kind === "transpose") {
      const T = plan.wide ? 128 / plan.elem : 32, k = plan.wide ? transposeWide(plan.elem as 1 | 2) : transposeCopy(plan.elem);
      const tiles = plan.batches * Math.ceil(plan.P / T) * Math.ceil(plan.L / T), grid = Math.min(tiles, this.smCount * 8);
      const args = packArgs(["ptr", dst], ["ptr", src], ["bytes", moveGeoBytes(plan.batch), 8], ["i64", plan.batches], ["i64", plan.P], ["i64", plan.L], ["i64", plan.lis], ["i64", plan.pos]);
      this.launchGrid(k, grid, 256, args, stream);
      return;
    }
    // the kernel's arguments (out, in, Geo) written straight into one reused block: the MoE
    // exchanges issue a copy per sequence and peer every step (cuLaunchKernel copies the block)
    const v = this.copyArgs, so = 16 + 16 + 4 * K.MAX_DIMS;
    this.copyBlock.fill(0);
    v.setBigUint64(0, dst, true);
    v.setBigUint64(8, src, true);
    // struct Geo { int nd; long long n; int shape[8]; long long istride[8]; long long ostride[8]; } at 16
    v.setInt32(16, shape.length, true);
    setI64(v, 24, n);
    for (let i = 0; i < shape.length; i++) {
      v.setInt32(32 + 4 * i, shape[i]!, true);
      setI64(v, so + 8 * i, istride[i]!);
      setI64(v, so + 8 * K.MAX_DIMS + 8 * i, ostride[i]!);
    }
    const k = K.stridedCopy(dtype), grid = Math.min(Math.ceil(n / BLOCK), this.smCount * 8);
    this.addon.launchKernel(this.fn(k.name, k.source), [grid, 1, 1], [BLOCK, 1, 1], 0, stream, this.copyBlock);
  }
  private readonly copyBlock = new Uint8Array(16 + 16 + 4 * K.MAX_DIMS + 16 * K.MAX_DIMS);
  private readonly copyArgs = new DataView(this.copyBlock.buffer);

  release(t: DeviceTensor | undefined): void {
    if (t && !this.pinned.has(t) && !this.cap?.pinned.has(t)) this.mem.release(t);
  }

  /**
   * One redistribute step over the pieces of slot `inS`: under rank-local execution this rank's piece
   * through NCCL, else the CPU reference's exact simulation of every rank (download, runStep, upload).
   * `release`: the pieces are handed over (rank-local: freed once compute has waited for the step).
   */
  private commStep(dist: RankLocal | undefined, plan: Plan, step: PlannedStep, inS: number, outS: number, pieces: DeviceTensor[], counts: Counts, release: boolean, span?: StepSpan): DeviceTensor[] {
    if (dist) {
      const out = new Array<DeviceTensor>(plan.world);
      out[dist.rank] = dist.step(plan, step, inS, outS, pieces[dist.rank]!, counts, release, span);
      return out;
    }
    const only = pieces[0], want = plan.values[outS]!;
    if (plan.world === 1 && only && only.dtype === want.type.dtype && only.shape.length === want.shapes[0]!.length && only.shape.every((n, d) => n === want.shapes[0]![d])) {
      // one rank: every axis has size 1, so a step that keeps the piece's shape moves nothing (the
      // simulation below would read it back to the host and upload it again)
      if (release) return [only];
      const c = empty(this.mem, only.dtype, only.shape);
      if (c.bytes) this.addon.memcpyDtoDAsync(c.ptr, only.ptr, Math.min(c.bytes, only.bytes), this.stream);
      return [c];
    }
    const host = runStep(plan, step, inS, outS, pieces.map((d) => download(this.addon, d, this.stream)), counts).map((t) => upload(this.addon, this.mem, t, this.stream));
    if (release) pieces.forEach((d) => this.release(d));
    return host;
  }

  /** Inputs kept on the device between runs (setResident), by input name; never released by a run. */
  private resident = new Map<string, DeviceTensor[]>();
  private pinned = new Set<DeviceTensor>();
  /** Outputs carried to the plan's next run (RunOptions.carry). */
  readonly carried = new CarriedValues({
    addon: () => this.addon,
    stream: () => this.stream,
    mem: () => this.mem,
    pinned: this.pinned,
    residentPtrs: () => new Set([...this.resident.values()].flat().filter((d) => d).map((d) => d.ptr)),
  });

  /**
   * Uploads `pieces` (one per rank) once; every later run's input `name` reads them where they are
   * instead of uploading a feed (weights that stay put between steps). `undefined` frees them.
   */
  setResident(name: string, pieces: LocalTensor[] | undefined): void {
    // rank-local executors hold only their own rank's piece: the others are holes
    for (const d of this.resident.get(name) ?? []) if (d) (this.pinned.delete(d), this.mem.release(d));
    this.resident.delete(name);
    if (!pieces) return;
    const ds = pieces.map((p) => upload(this.addon, this.mem, p, this.stream));
    ds.forEach((d) => this.pinned.add(d));
    this.resident.set(name, ds);
  }

  /** Input `name` where it already is on the device: resident (setResident), else carried from the plan's last run unless fed now. */
  private keptInput(plan: Plan, name: string, feeds: ReadonlyMap<string, LocalTensor[]> | undefined): DeviceTensor[] | undefined {
    return this.resident.get(name) ?? (feeds?.has(name) ? undefined : this.carried.get(plan, name));
  }

  private loweredPlans = new WeakMap<Plan, { fused: ReturnType<typeof fuse>; prog: ReturnType<typeof emitCuda>; tuning: EmitTuning; launches: LaunchCache; counts: Set<number>; combinesAfter: Map<number, number[]>; nvlCombinesAfter: Map<number, number[]> }>();
  /** The fused plan, its kernels and their launches, made once per plan (a training step runs the same plan every step). */
  private lowered(plan: Plan) {
    let l = this.loweredPlans.get(plan);
    if (!l || l.tuning !== this.tuning) {
      // rank-local runs order instructions for the two streams (compiler/passes/schedule.ts, then
      // prefetch.ts) to overlap comm with compute; a mesh simulated on one GPU runs comm on the host
      // SHARDTS_SCHEDULE=0 keeps the fused order (the bench's unscheduled baseline), =1 keeps the
      // scheduled one whatever its predicted gain; SHARDTS_SCHEDULE_COST overrides the cost model
      const sch = process.env.SHARDTS_SCHEDULE;
      const fused = l?.fused ?? (this.rankLocal ? orderForStreams(fuse(plan), { schedule: sch !== "0", minGain: sch === "1" ? 0 : undefined, cost: scheduleCost(), prefetchBytes: prefetchBytes() }) : fuse(plan));
      l = { fused, prog: emitCuda(fused, this.arch, this.tuning), tuning: this.tuning, launches: new Map(), counts: countSlots(fused), combinesAfter: combinesAfter(fused), nvlCombinesAfter: combinesAfter(fused, true) };
      this.loweredPlans.set(plan, l);
    }
    return l;
  }

  /** Times `launch` `reps` times with events (after two warm-up launches); the median in ms. */
  timeLaunch(launch: () => void, reps: number): number {
    const a = this.addon;
    for (let i = 0; i < 2; i++) launch();
    const ev = Array.from({ length: reps + 1 }, () => a.eventCreate());
    a.eventRecord(ev[0]!, this.stream);
    for (let i = 0; i < reps; i++) {
      launch();
      a.eventRecord(ev[i + 1]!, this.stream);
    }
    a.eventSynchronize(ev[reps]!);
    const ts = Array.from({ length: reps }, (_, i) => a.eventElapsedTime(ev[i]!, ev[i + 1]!)).sort((x, y) => x - y);
    for (const e of ev) a.eventDestroy(e);
    return ts[Math.floor(reps / 2)]!;
  }

  /** The current run's trace recorder (undefined when not tracing) and the row its instructions' parts go in. */
  private tracer?: TraceRecorder;
  private partsRow = "stream parts";

  /**
   * Runs `fn`, and when the run is traced records it as a part of the current instruction (its own row,
   * "<rank> parts", timed by events on the compute stream): how an op's time splits between its kernels
   * and the host work between them (a gap where the stream waited for the host).
   */
  part<T>(name: string, fn: () => T): T {
    const t = this.tracer;
    if (!t) return fn();
    t.begin(name, "part", this.partsRow, this.stream);
    try {
      return fn();
    } finally {
      t.end(this.stream);
    }
  }

  /** Trace hooks for an instruction's own work on the communication stream (its rank's "comm" row), when traced. */
  commSpan(name: string): StepSpan | undefined {
    const t = this.tracer, dist = this.rankLocal;
    if (!t || !dist) return undefined;
    return { begin: (cs) => t.begin(name, "comm", `rank ${dist.rank} comm`, cs), end: (cs) => t.end(cs) };
  }

  run(plan: Plan, feeds?: ReadonlyMap<string, LocalTensor[]>, read?: readonly number[], opts: RunOptions = {}): CudaRunResult {
    const t0 = performance.now();
    if (opts.carry) CarriedValues.check(plan, opts.carry);
    const tracer = opts.trace ? new TraceRecorder(this.addon) : undefined;
    this.tracer = tracer;
    this.hostPieces.clear(); // (a buffer of an earlier run may hold another value now)
    let ran: ReturnType<CudaExecutor["exec"]>;
    try {
      ran = this.exec(plan, feeds, opts, tracer);
    } catch (e) {
      // an index out of range flagged earlier is the cause of what failed after it
      this.drainChecks();
      throw e;
    } finally {
      this.tracer = undefined;
    }
    const { slots, counts, kernels, timings, dist } = ran;
    // carried outputs are kept for the next run (after the run's comm has drained) and not freed here
    let kept = new Set<bigint>();
    const keep = () => opts.carry && (kept = this.carried.keep(plan, opts.carry, plan.outputs.map((s) => slots[s])));
    const releaseOutputs = () => {
      for (const s of new Set(plan.outputs)) slots[s]?.forEach((d) => !kept.has(d.ptr) && this.release(d));
    };
    // the deferred index checks, before anything is carried: a flagged run's outputs are freed, not kept
    const checked = () => {
      try {
        this.drainChecks();
      } catch (e) {
        releaseOutputs();
        throw e;
      }
    };
    dist?.flush();
    if (tracer) {
      this.addon.streamSynchronize(this.stream);
      opts.trace!.push(...tracer.collect());
    }
    if (opts.download === false) {
      this.addon.streamSynchronize(this.stream);
      dist?.drained();
      checked();
      keep();
      releaseOutputs();
      return { outputs: [], locals: [], stats: { kernels, ...this.compileStats, peakBytes: this.mem.peak, ms: performance.now() - t0 }, timings };
    }
    // every output piece read back with one wait (rank-local: this rank's piece; the others are holes)
    // (carried outputs only when read: their `locals` are holes otherwise)
    const wanted = new Set(read ?? plan.outputs.map((_, i) => i));
    const flat: DeviceTensor[] = [], at: [number, number][] = [];
    plan.outputs.forEach((s, i) => (!opts.carry?.has(i) || wanted.has(i)) && slots[s]!.forEach((d, r) => (flat.push(d), at.push([i, r]))));
    const locals = plan.outputs.map((s) => new Array<LocalTensor>(slots[s]!.length));
    downloadAll(this.addon, flat, this.stream).forEach((t, k) => (locals[at[k]![0]]![at[k]![1]] = t));
    checked(); // (the stream has finished: the flags are final; before the outputs are assembled from counts)
    // rank-local: a value read back needs every rank's piece (a world all-gather; none for replicated values)
    const hostSlots = new Map(plan.outputs.map((s, i) => [s, dist && wanted.has(i) ? dist.allPieces(plan, s, slots[s]![dist.rank]!) : locals[i]!]));
    const outputs = plan.outputs.map((s, i) => (wanted.has(i) ? assemble(plan, s, hostSlots.get(s)!, counts) : undefined));
    dist?.drained();
    keep();
    releaseOutputs();
    return { outputs, locals, stats: { kernels, ...this.compileStats, peakBytes: this.mem.peak, ms: performance.now() - t0 }, timings };
  }

  /**
   * Captures one run of `plan` as a CUDA graph (see graph.ts): a plain run first compiles every
   * kernel and fills a private memory pool, then the same run is recorded; replays reuse the
   * pool's buffers, so a replay costs one launch. Host-made values (inputs, constants, random and
   * from_local factories) are staged in device buffers outside the graph: replay() uploads new
   * inputs into them; the others keep the values of the capture. Both runs take the segment
   * contractions' device-side counts (segmentCountsOnDevice), so a replay routes a new batch's tokens.
   */
  capture(plan: Plan, feeds?: ReadonlyMap<string, LocalTensor[]>): CapturedStep {
    const dist = plan.world > 1 ? this.rankLocal : undefined;
    const why = notCapturable(plan, this.arch, { rankLocal: dist !== undefined });
    if (why) throw new CompileError(`cannot capture this plan as a CUDA graph: ${why}`);
    const saved = this.mem, countsWere = this.segmentCountsOnDevice;
    this.segmentCountsOnDevice = true; // the segment contractions plan their GEMMs on the GPU (graph.ts)
    const pool = new CachingAllocator(this.addon), staging = new CachingAllocator(this.addon);
    const staged = new Map<object, DeviceTensor[]>(), borrowed = new Set<DeviceTensor>();
    const { fused } = this.lowered(plan);
    const W = plan.world;
    for (const ins of fused.instrs) {
      if (ins.kind !== "op" || !FACTORIES_ON_HOST.has(ins.op)) continue;
      const kept = ins.op === "input" ? this.resident.get(String(ins.attrs.name)) : undefined; // (not carried values: a later run may free them)
      if (kept) {
        staged.set(ins, kept);
        for (const d of kept) if (d) borrowed.add(d); // (the caller's: the graph reads them, destroy() leaves them)
        continue;
      }
      // (rank-local: this rank's piece only, the others are holes)
      const pieces = new Array<DeviceTensor>(W);
      for (const r of dist ? [dist.rank] : pieces.keys()) {
        const host = getOp(ins.op).cpu([], ins.attrs, cpuCtx(plan, ins, r, coordsOf(plan.mesh, r), feeds));
        pieces[r] = upload(this.addon, staging, host[0]!, this.stream);
      }
      staged.set(ins, pieces);
    }
    this.mem = pool;
    this.cap = { staged, pinned: new Set([...staged.values()].flat()), deferred: [] };
    try {
      // warm-up: compiles, plans cuBLASLt calls, and fills the pool with every block the run asks for
      // (rank-local: also makes the NVLink windows and tables, and joins the comm stream back)
      const warm = this.exec(plan, feeds, {});
      dist?.flush();
      for (const s of new Set(plan.outputs)) warm.slots[s]?.forEach((d) => this.release(d));
      const warmChecks = this.cap.deferred;
      this.cap = { ...this.cap, deferred: [] };
      for (const d of warmChecks) this.flagCheck(d);
      this.addon.streamSynchronize(this.stream);
      dist?.drained();
      this.addon.streamBeginCapture(this.stream, CaptureMode.relaxed);
      let rec: ReturnType<CudaExecutor["exec"]>;
      try {
        rec = this.exec(plan, feeds, {});
        // the comm stream's last steps join the capturing stream (every fork must, before the capture ends)
        dist?.flush();
      } catch (e) {
        try { this.addon.graphDestroy(this.addon.streamEndCapture(this.stream)); } catch { /* the capture is already broken */ }
        throw e;
      }
      const graph = this.addon.streamEndCapture(this.stream);
      dist?.drained(); // (the collectives recorded did not run: nothing is pending)
      const outputs = plan.outputs.map((s) => rec.slots[s]!);
      return new CapturedStep(this, plan, graph, outputs, staged, this.cap.deferred, [pool, staging], dist, borrowed);
    } finally {
      this.mem = saved;
      this.cap = undefined;
      this.segmentCountsOnDevice = countsWere;
    }
  }

  /** While capturing: host factories' staged buffers, which are never released, and index checks left for after a replay. */
  private cap?: { staged: Map<object, DeviceTensor[]>; pinned: Set<DeviceTensor>; deferred: DeferredCheck[] };

  /** Runs every instruction of the plan; the outputs stay on the device (the caller releases them). */
  private exec(plan: Plan, feeds: ReadonlyMap<string, LocalTensor[]> | undefined, opts: RunOptions, tracer?: TraceRecorder) {
    const timings: KernelTiming[] = [];
    const { fused, prog, launches, counts: countsSlots, combinesAfter, nvlCombinesAfter } = this.lowered(plan);
    const W = plan.world;
    const dist = W > 1 ? this.rankLocal : undefined;
    // rank-local: counts are read on their own stream after only their writer (moe-counts.ts)
    const reads = (this.reads = dist ? (this.countReads ??= new CountReads(this.addon)) : undefined);
    reads?.newRun();
    /** After slot s was written (on `stream`): a counts piece is marked ready there. */
    const markCounts = (s: number, stream: Stream) => {
      if (reads && countsSlots.has(s)) reads.mark(slots[s]![dist!.rank]!, stream);
    };
    const ranks = dist ? [dist.rank] : Array.from({ length: W }, (_, r) => r);
    const coords = Array.from({ length: W }, (_, r) => coordsOf(plan.mesh, r));
    const slots: (DeviceTensor[] | undefined)[] = new Array(fused.values.length);
    const hostCounts = new Map<number, GlobalTensor>();
    const counts = (s: number): GlobalTensor => {
      let g = hostCounts.get(s);
      if (!g) {
        this.noHostReadWhileCapturing(`the counts of a segmented dim (plan value ${s})`);
        g = assemble(plan, s, dist ? this.readCounts(dist, plan, s, slots[s]![dist.rank]!) : slots[s]!.map((d) => download(this.addon, d, this.stream)), counts);
        hostCounts.set(s, g);
      }
      return g;
    };
    const lastUse = fused.lastUse;
    // rank-local: a fused combine's exchange goes out right after its rows' writer (moe.ts combineExchange;
    // over NVLink, moe-nvlink.ts pushCombineEarly, where no other MoE op comes between)
    const nvlink = moeTransport() === "nvlink";
    const early = dist ? (nvlink ? nvlCombinesAfter : combinesAfter) : undefined;
    const exchanged = new Map<object, { moved: DeviceTensor[]; done: Event }>();
    const pushed = new Map<object, NvlCombinePushed>();
    let kernels = 0;
    const hostTimes = opts.hostTimes;
    let tIns = hostTimes ? performance.now() : 0;

    fused.instrs.forEach((ins, i) => {
      dist?.beforeReads(readsOf(ins));
      // a rank-local comm step is traced on the communication stream, around its own work (below)
      if (tracer && !(ins.kind === "comm" && dist)) {
        const { what, cat } = labelOf(plan, prog, ins);
        this.partsRow = `${dist ? `rank ${dist.rank}` : "stream"} parts`;
        tracer.begin(what, cat, dist ? `rank ${dist.rank}` : "stream", this.stream, ins.kind === "kernel" ? { fuses: ins.fuses.map((f) => f.op).join("+") } : undefined);
      }
      try {
        if (ins.kind === "kernel") {
          const kernel = prog.kernels[prog.kernelOf[ins.id]!]!;
          const fn = this.fn(kernel.name, kernel.source);
          const outs = ins.outputs.map((s) => {
            const per = new Array<DeviceTensor>(W);
            // (the fused plan's values: a split row kernel's partials are slots the plan does not have)
            for (const r of ranks) per[r] = empty(this.mem, fused.values[s]!.type.dtype, fused.values[s]!.shapes[r]!);
            return per;
          });
          for (const r of ranks) {
            const pl = packedLaunch(launches, kernel, ins, fused, r, { smCount: this.smCount, blocksPerSM: () => this.blocksPerSM(fn, kernel.launch.block) });
            if (!pl) continue;
            fillPointers(pl, r, outs, slots);
            this.addon.launchKernel(fn, pl.grid, pl.block, 0, this.stream, pl.params);
            kernels++;
            if (opts.profile && r === ranks[0]) {
              const bytes = [...ins.inputs, ...ins.outputs].reduce((b, s) => b + numel(fused.values[s]!.shapes[0]!) * K.elemBytes(fused.values[s]!.type.dtype), 0);
              const ms = this.timeLaunch(() => this.addon.launchKernel(fn, pl.grid, pl.block, 0, this.stream, pl.params), opts.profile);
              timings.push({ name: kernel.name, ops: ins.fuses.map((f) => f.op), ms, bytes });
            }
          }
          ins.outputs.forEach((s, o) => (slots[s] = outs[o]));
          for (const s of ins.outputs) markCounts(s, this.stream);
        } else if (ins.kind === "comm") {
          const last = lastUse[ins.input] === i;
          const span = tracer && dist && {
            begin: (cs: Stream) => tracer.begin(`${ins.step.kind}[${plan.mesh.axes[ins.step.axis] ?? ins.step.axis}]`, "comm", `rank ${dist.rank} comm`, cs),
            end: (cs: Stream) => tracer.end(cs),
          };
          const input = slots[ins.input]!;
          slots[ins.output] = this.commStep(dist, plan, ins.step, ins.input, ins.output, input, counts, last, span || undefined);
          // (a step that handed its input on as the output did no work: the input's mark holds)
          if (dist && slots[ins.output]![dist.rank] !== input[dist.rank]) markCounts(ins.output, dist.stream());
          if (dist && countsSlots.has(ins.output) && countsSlots.has(ins.input)) {
            // (a redistribute keeps the value: the host has the output once it has the input)
            hostCounts.set(ins.output, counts(ins.input));
            this.countsMoved(plan, ins.output, hostCounts.get(ins.output)!, slots[ins.output]![dist.rank]!);
          }
          if (last) slots[ins.input] = undefined; // handed over (rank-local: released once compute has waited for the step)
        } else if (MOE_OPS.has(ins.op)) {
          // MoE dispatch/combine: local kernels, and the exchange as plan comm steps (NCCL or simulated)
          const pre = exchanged.get(ins);
          if (pre) {
            // compute waits for this combine's own exchange, issued earlier (not for comm issued since)
            exchanged.delete(ins);
            this.addon.streamWaitEvent(this.stream, pre.done);
            this.combineEvents.push(pre.done);
          }
          const nvl = pushed.get(ins);
          pushed.delete(ins);
          if (nvl) runMoeNvlink(this, plan, ins, slots, nvl);
          else runMoe(this, plan, ins, ranks, slots, (p, step, inS, outS, pieces, release) => {
            const out = this.commStep(dist, p, step, inS, outS, pieces, counts, release);
            // dispatch's exchanged counts: ready once this exchange is (read next, to size the token exchange)
            if (dist && reads && countsSlots.has(outS) && out[dist.rank] !== pieces[dist.rank]) reads.mark(out[dist.rank]!, dist.stream());
            // the op's own kernels read an inner value next: compute waits now (the plan-level waits
            // know only the plan's slots); a plan slot is waited for by its reader (moe-exchange.ts)
            if (waitsAtOnce(plan, outS)) dist?.beforeReads([outS]);
            return out;
          }, pre?.moved);
          // (unless the exchange marked it; an output still in flight is written on the comm stream: NVLink dispatch)
          for (const s of ins.outputs) markCounts(s, dist?.inFlightWrites(s) ? dist.stream() : this.stream);
        } else {
          const outs = ins.outputs.map(() => new Array<DeviceTensor>(W));
          for (const r of ranks) {
            const got = this.op(plan, ins, r, coords[r]!, slots, feeds);
            got.forEach((d, o) => (outs[o]![r] = d));
            kernels++;
          }
          ins.outputs.forEach((s, o) => (slots[s] = outs[o]));
          for (const s of ins.outputs) markCounts(s, this.stream);
        }
      } catch (e) {
        const site = ins.kind === "kernel" ? ins.fuses.find((f) => f.site)?.site : ins.site;
        if (e instanceof ShardtsError && site && !e.site) {
          const E = e.constructor as new (m: string, s?: string) => ShardtsError;
          throw new E(e.message, site);
        }
        throw e;
      }
      if (!(ins.kind === "comm" && dist)) tracer?.end(this.stream);
      for (const j of early?.get(i) ?? []) {
        // the comm stream waits for the compute issued up to these rows' writer, and no more
        const c = fused.instrs[j] as Extract<Plan["instrs"][number], { kind: "op" }>;
        if (nvlink) {
          const nvl = pushCombineEarly(this, plan, c, slots);
          if (nvl) pushed.set(c, nvl);
          continue;
        }
        const moved = combineExchange(plan, c, ranks, slots, (p, step, inS, outS, pieces, release) => this.commStep(dist, p, step, inS, outS, pieces, counts, release));
        const done = this.combineEvents.pop() ?? this.addon.eventCreate(2 /* disable timing */);
        this.addon.eventRecord(done, dist!.stream());
        exchanged.set(c, { moved, done });
      }
      // (rank-local: a buffer an in-flight comm step still reads goes back once compute waited for that step)
      for (const s of readsOf(ins)) if (lastUse[s] === i && slots[s]) (slots[s]!.forEach((d) => (dist ? dist.release(d) : this.release(d))), (slots[s] = undefined));
      if (hostTimes) {
        const now = performance.now(), { what, cat } = labelOf(plan, prog, ins), key = `${cat} ${what}`;
        const e = hostTimes.get(key) ?? hostTimes.set(key, { cat, name: what, n: 0, ms: 0 }).get(key)!;
        e.n++;
        e.ms += now - tIns;
        tIns = now;
      }
    });
    return { slots, counts, kernels, timings, dist };
  }

  /** One non-fused op on rank r: host-made values here (they depend on resident inputs and capture), the rest in device-ops.ts. */
  private op(plan: Plan, ins: Extract<Plan["instrs"][number], { kind: "op" }>, r: number, coords: number[], slots: (DeviceTensor[] | undefined)[], feeds: ReadonlyMap<string, LocalTensor[]> | undefined): DeviceTensor[] {
    const tIn = ins.inputs.map((s) => plan.values[s]!.type), tOut = ins.outputs.map((s) => plan.values[s]!.type);
    const x = ins.inputs.map((s) => slots[s]![r]!);
    const outShape = (o: number) => plan.values[ins.outputs[o]!]!.shapes[r]!;
    const a = ins.attrs;
    if (FACTORIES_ON_HOST.has(ins.op)) {
      if (this.cap) return [this.cap.staged.get(ins)![r]!];
      const kept = ins.op === "input" ? this.keptInput(plan, String(a.name), feeds)?.[r] : undefined;
      if (kept) {
        const want = outShape(0);
        if (kept.dtype !== tOut[0]!.dtype || kept.shape.length !== want.length || kept.shape.some((n, k) => n !== want[k]))
          throw new ShapeError(`resident input '${String(a.name)}' on rank ${r} is ${kept.dtype}[${kept.shape.join(", ")}]; this plan reads ${tOut[0]!.dtype}[${want.join(", ")}]`);
        return [kept];
      }
      const host = getOp(ins.op).cpu([], a, cpuCtx(plan, ins, r, coords, feeds));
      return host.map((t) => upload(this.addon, this.mem, t, this.stream));
    }
    return deviceOp(this, plan, ins, r, coords, x, tIn, tOut, outShape);
  }

  /** Reorders a tensor this code owns, releasing the original when a copy was made. */
  reorderOwned(t: DeviceTensor, from: string[], order: string[]): DeviceTensor {
    const o = this.reorder(t, from, order);
    if (o !== t) this.release(t);
    return o;
  }

  /** An f32 result cast to `dtype` (f32: itself); the f32 buffer is released. */
  castOwned(acc: DeviceTensor, dtype: DType): DeviceTensor {
    if (dtype === "f32") return acc;
    const out = empty(this.mem, dtype, acc.shape), n = numel(acc.shape);
    if (dtype === "bf16" && n % 4 === 0 && acc.ptr % 16n === 0n && out.ptr % 8n === 0n) this.launch1D(K.castF32ToBf16x4(), n / 4, [["ptr", out.ptr], ["ptr", acc.ptr], ["i64", n / 4]]);
    else this.launch1D(K.castFromF32(dtype), n, [["ptr", out.ptr], ["ptr", acc.ptr], ["i64", n]]);
    this.release(acc);
    return out;
  }

  /**
   * Throws if a gather/scatter kernel flagged an index out of range: at the end of the run (reading
   * each flag at once synchronised the stream, dozens of times a training step), or while capturing
   * after the replay. The kernels never access out of range, so the run can go on until then.
   */
  checkIndices(bad: DeviceTensor, op: string, dim: string, size: number): void {
    (this.cap ? this.cap.deferred : this.runChecks).push({ bad, op, dim, size });
  }
  private runChecks: DeferredCheck[] = [];

  /**
   * A counts piece on the host in dims order `order` (reordered on the host), once per run: the MoE
   * layer's segment contractions all read the same counts piece, and dispatch's read of every rank's
   * counts already holds it. Rank-local, a read waits only for the piece's writer (moe-counts.ts);
   * else for the stream. Values never change once written, so the run's copy stays right.
   */
  hostPiece(d: DeviceTensor, from: string[], order: string[]): LocalTensor {
    const key = order.join("\u0000"), fromKey = from.join("\u0000");
    let byOrder = this.hostPieces.get(d);
    const hit = byOrder?.get(key);
    if (hit) return hit;
    let raw = byOrder?.get(fromKey);
    if (!raw) {
      this.noHostReadWhileCapturing("a segment contraction's per-group counts");
      const reads = this.reads;
      if (reads && !reads.marked(d)) reads.mark(d, this.stream); // (the reader's beforeReads made compute wait for its writer)
      raw = reads ? reads.piece(d) : download(this.addon, d, this.stream);
    }
    if (!byOrder) this.hostPieces.set(d, (byOrder = new Map()));
    byOrder.set(fromKey, raw);
    const h = reorderHost(raw, from, order);
    byOrder.set(key, h);
    return h;
  }
  private hostPieces = new Map<DeviceTensor, Map<string, LocalTensor>>();

  /** A host read mid-capture would break the capture inside CUDA (notCapturable should have refused the plan): said plainly instead. */
  private noHostReadWhileCapturing(what: string): void {
    if (this.cap && this.addon.streamIsCapturing(this.stream) !== 0)
      throw new CompileError(`cannot capture this plan as a CUDA graph: ${what} would be read on the host mid-step (e.g. a MoE exchange the NVLink transport refused here, see the warning above; or a collective of a segmented value); run it without capture`);
  }
  /**
   * Counts redistributed (the composed route's count exchange): the value is the same, so the host
   * has it (`g`) from the read of the step's input (which the token exchange needs anyway: read then
   * if not yet), and this rank's piece of the output is a box of it. The segment contractions then take
   * their piece without a read of the exchanged counts, which the in-order comm stream would give
   * only after every step issued before the count exchange.
   */
  private countsMoved(plan: Plan, to: number, g: GlobalTensor, mine: DeviceTensor): void {
    const v = plan.values[to]!, r = this.rankLocal!.rank;
    const ds = v.type.dims.map((d) => d.name).join("\u0000");
    if (v.type.placements.some((p) => p.startsWith("P")) || this.hostPieces.get(mine)?.has(ds)) return; // (a partial piece is not a box of the value)
    if (g.shape.length !== v.type.dims.length || v.type.dims.some((d, i) => d.size !== g.shape[i])) return;
    let byOrder = this.hostPieces.get(mine);
    if (!byOrder) this.hostPieces.set(mine, (byOrder = new Map()));
    const piece = allocLocal("i32", v.shapes[r]!);
    sliceBox(g.data, g.shape, v.boxes[r]!, v.shapes[r]!, piece.data);
    byOrder.set(ds, piece);
  }

  /** Events marking pre-issued combine exchanges done, for reuse. */
  private combineEvents: Event[] = [];
  /** Host reads of counts on their own stream (rank-local runs); `reads` is the current run's, if rank-local. */
  private countReads?: CountReads;
  private reads?: CountReads;

  /**
   * Every rank's piece of counts slot `s` (this rank's: `mine`), read waiting only for its writer;
   * this rank's piece is kept for the segment contractions' hostPiece.
   */
  private readCounts(dist: RankLocal, plan: Plan, s: number, mine: DeviceTensor): LocalTensor[] {
    const reads = this.reads!;
    if (!reads.marked(mine)) {
      // a writer that marked nothing (a value made before this run): compute waits for its comm step, if one is in flight
      dist.beforeReads([s]);
      reads.mark(mine, this.stream);
    }
    const pieces = reads.allPieces(dist, plan, s, mine);
    const from = plan.values[s]!.type.dims.map((d) => d.name).join("\u0000");
    let byOrder = this.hostPieces.get(mine);
    if (!byOrder) this.hostPieces.set(mine, (byOrder = new Map()));
    if (!byOrder.has(from)) byOrder.set(from, pieces[dist.rank]!);
    return pieces;
  }

  /** Reads every deferred index flag of the run with one wait, releases them, and throws the first that flagged. */
  private drainChecks(): void {
    const checks = this.runChecks;
    if (!checks.length) return;
    this.runChecks = [];
    const vals = downloadAll(this.addon, checks.map((c) => c.bad), this.stream).map((t) => t.data[0]!);
    for (const c of checks) this.release(c.bad);
    const i = vals.findIndex((v) => v !== BAD_NONE);
    if (i >= 0) throw new ShapeError(`${checks[i]!.op}(): index ${vals[i]} is out of range for '${checks[i]!.dim}' of size ${checks[i]!.size}`);
  }

  /** Reads an index-check flag (synchronising the stream) and releases it; throws what it says. */
  flagCheck({ bad, op, dim, size }: DeferredCheck, keep = false): void {
    const v = download(this.addon, bad, this.stream).data[0]!;
    if (!keep) this.release(bad);
    if (v !== BAD_NONE) throw new ShapeError(`${op}(): index ${v} is out of range for '${dim}' of size ${size}`);
  }

  badFlag(): DeviceTensor {
    const bad = empty(this.mem, "i32", [1]);
    this.addon.memsetD32(bad.ptr, BAD_NONE >>> 0, 1, this.stream);
    return bad;
  }
}

const BAD_NONE = -2147483648;

/** A little-endian int64 from a safe integer, without a BigInt (ToUint32 keeps the low 32 bits, two's complement). */
function setI64(v: DataView, at: number, x: number): void {
  v.setUint32(at, x >>> 0, true);
  v.setInt32(at + 4, Math.floor(x / 4294967296), true);
}

/**
 * Instruction index -> the fused moe_combine instructions whose rows (input 0) it writes: their
 * exchanges are issued right after it (rank-local), not where the combine stands in the order.
 * `alone`: only combines with no other MoE op between the writer and themselves (the NVLink path: the
 * next op's peers store into the window where an early combine's rows wait for the combine).
 */
export function combinesAfter(fp: { instrs: readonly ReturnType<typeof fuse>["instrs"][number][] }, alone = false): Map<number, number[]> {
  const writer = new Map<number, number>(), out = new Map<number, number[]>();
  let lastMoe = -1;
  fp.instrs.forEach((x, i) => {
    if (x.kind === "op" && x.op === "moe_combine" && writer.has(x.inputs[0]!)) {
      const w = writer.get(x.inputs[0]!)!;
      if (!alone || lastMoe <= w) out.set(w, [...(out.get(w) ?? []), i]);
    }
    if (x.kind === "op" && MOE_OPS.has(x.op)) lastMoe = i;
    const ws = x.kind === "comm" ? [x.output] : x.outputs;
    for (const s of ws) writer.set(s, i);
  });
  return out;
}

/** An instruction's name and category in traces and host timings. */
function labelOf(plan: Plan, prog: ReturnType<typeof emitCuda>, ins: ReturnType<typeof fuse>["instrs"][number]): { what: string; cat: string } {
  if (ins.kind === "kernel") return { what: prog.kernels[prog.kernelOf[ins.id]!]!.name, cat: "kernel" };
  if (ins.kind === "comm") return { what: `${ins.step.kind}[${plan.mesh.axes[ins.step.axis] ?? ins.step.axis}]`, cat: "comm" };
  return { what: ins.op, cat: GEMM_OPS.has(ins.op) ? "gemm" : MOE_OPS.has(ins.op) ? "moe" : "op" };
}
