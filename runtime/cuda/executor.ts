// The CUDA backend: runs a partitioned plan on one GPU. Chains of elementwise ops and row
// reductions run as the kernels the fusion pass and CUDA emitter generate (NVRTC, disk-cached);
// contractions go to cuBLASLt; routing and layout moves are the hand-written kernels of
// kernels/sources.ts; factories produce each piece exactly as the CPU reference does and upload it.
// A mesh of several ranks is simulated on the one GPU (each rank's pieces are its own buffers) and
// its collective steps (and the exchanges inside MoE dispatch/combine, runtime/cuda/moe.ts) go
// through the CPU reference's exact simulation. With `rankLocal` set (one process per GPU,
// nccl/collectives.ts), it runs only its own rank: other ranks' pieces are never made, comm steps
// go to NCCL, and counts and read-back values are all-gathered across the world.
import type { DType, TensorType } from "../../compiler/ir/types.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { stridesOf } from "../../compiler/ir/local.ts";
import type { Plan } from "../../compiler/plan.ts";
import type { PlannedStep } from "../../compiler/passes/redistribute-plan.ts";
import { readsOf } from "../../compiler/plan.ts";
import { numel } from "../../compiler/ir/types.ts";
import { coordsOf } from "../../compiler/ir/placement.ts";
import { CompileError, ShapeError, ShardtsError, UsageError } from "../../compiler/errors.ts";
import { getOp } from "../../compiler/ops/index.ts";
import { fuse } from "../../compiler/codegen/fuse.ts";
import { orderForStreams } from "../../compiler/pipeline.ts";
import { costFromEnv } from "../../compiler/passes/schedule.ts";
import { emitCuda } from "../../compiler/codegen/cuda/emit.ts";
import { DEFAULT_TUNING, type EmitTuning } from "../../compiler/codegen/cuda/tuning.ts";
import { launchOf, residentBlocks } from "../../compiler/codegen/cuda/launch.ts";
import { cpuCtx } from "../cpu/executor.ts";
import { MOE_OPS, runMoe } from "./moe.ts";
import { waitsAtOnce } from "./moe-exchange.ts";
import { runStep } from "../cpu/collectives.ts";
import { assemble, type GlobalTensor } from "../cpu/assemble.ts";
import type { KernelFunction, NativeAddon, Stream } from "./native-types.ts";
import { native, packArgs, type KernelArg } from "./native.ts";
import { archFor, compileCuda } from "./compile.ts";
import { CachingAllocator, download, empty, upload, type DeviceTensor } from "./memory.ts";
import * as K from "./kernels/sources.ts";
import { concatSplit, dot, gather, scatterAdd, segmentContract } from "./ops.ts";
import { CapturedStep, notCapturable, type DeferredCheck } from "./graph.ts";
import { CaptureMode } from "./native-types.ts";
import { TraceRecorder, type TraceEvent } from "./trace.ts";
import type { RankLocal, StepSpan } from "./nccl/collectives.ts";
import type { Counts } from "./nccl/transfers.ts";
import { FP8_OPS, runFp8 } from "./fp8.ts";
import { scaledSegmentDotCuda, scaledSegmentWgradCuda } from "./fp8-segment.ts";

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
}

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
  private fns = new Map<string, KernelFunction>();
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

  /** Compiles (or finds in the disk cache) and loads a kernel. */
  fn(name: string, source: string): KernelFunction {
    const key = `${name}\n${source}`;
    let f = this.fns.get(key);
    if (f) return f;
    const c = compileCuda(this.addon, name, source, this.arch);
    if (c.cached) this.compileStats.cacheHits++;
    else this.compileStats.compiled++;
    this.compileStats.compileMs += c.ms;
    f = this.addon.moduleGetFunction(this.addon.moduleLoadData(c.cubin), name);
    this.fns.set(key, f);
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
    const grid = Math.min(Math.ceil(n / BLOCK), this.smCount * 8);
    this.addon.launchKernel(this.fn(k.name, k.source), [grid, 1, 1], [BLOCK, 1, 1], 0, stream, packArgs(...args));
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
    const geo = new DataView(new ArrayBuffer(8 + 8 + 4 * K.MAX_DIMS + 8 * K.MAX_DIMS * 2 + 4));
    // struct Geo { int nd; long long n; int shape[8]; long long istride[8]; long long ostride[8]; }
    geo.setInt32(0, shape.length, true);
    geo.setBigInt64(8, BigInt(numel(shape)), true);
    shape.forEach((s, i) => geo.setInt32(16 + 4 * i, s, true));
    const so = 16 + 4 * K.MAX_DIMS;
    istride.forEach((s, i) => geo.setBigInt64(so + 8 * i, BigInt(s), true));
    ostride.forEach((s, i) => geo.setBigInt64(so + 8 * K.MAX_DIMS + 8 * i, BigInt(s), true));
    const bytes = new Uint8Array(geo.buffer, 0, so + 16 * K.MAX_DIMS);
    this.launch1D(K.stridedCopy(dtype), numel(shape), [["ptr", dst], ["ptr", src], ["bytes", bytes, 8]], stream);
  }

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
    const host = runStep(plan, step, inS, outS, pieces.map((d) => download(this.addon, d, this.stream)), counts).map((t) => upload(this.addon, this.mem, t, this.stream));
    if (release) pieces.forEach((d) => this.release(d));
    return host;
  }

  /** Inputs kept on the device between runs (setResident), by input name; never released by a run. */
  private resident = new Map<string, DeviceTensor[]>();
  private pinned = new Set<DeviceTensor>();

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

  private loweredPlans = new WeakMap<Plan, { fused: ReturnType<typeof fuse>; prog: ReturnType<typeof emitCuda>; tuning: EmitTuning }>();
  /** The fused plan and its kernels, made once per plan (a training step runs the same plan every step). */
  private lowered(plan: Plan) {
    let l = this.loweredPlans.get(plan);
    if (!l || l.tuning !== this.tuning) {
      // rank-local runs order instructions for the two streams (compiler/passes/schedule.ts, then
      // prefetch.ts) to overlap comm with compute; a mesh simulated on one GPU runs comm on the host
      // SHARDTS_SCHEDULE=0 keeps the fused order (the bench's unscheduled baseline); SHARDTS_SCHEDULE_COST overrides the cost model
      const fused = l?.fused ?? (this.rankLocal ? orderForStreams(fuse(plan), { schedule: process.env.SHARDTS_SCHEDULE !== "0", cost: costFromEnv(process.env.SHARDTS_SCHEDULE_COST), prefetchBytes: prefetchBytes() }) : fuse(plan));
      l = { fused, prog: emitCuda(fused, this.arch, this.tuning), tuning: this.tuning };
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

  run(plan: Plan, feeds?: ReadonlyMap<string, LocalTensor[]>, read?: readonly number[], opts: RunOptions = {}): CudaRunResult {
    const t0 = performance.now();
    const tracer = opts.trace ? new TraceRecorder(this.addon) : undefined;
    const { slots, counts, kernels, timings, dist } = this.exec(plan, feeds, opts, tracer);
    dist?.flush();
    if (tracer) {
      this.addon.streamSynchronize(this.stream);
      opts.trace!.push(...tracer.collect());
    }
    if (opts.download === false) {
      this.addon.streamSynchronize(this.stream);
      dist?.drained();
      for (const s of new Set(plan.outputs)) slots[s]?.forEach((d) => this.release(d));
      return { outputs: [], locals: [], stats: { kernels, ...this.compileStats, peakBytes: this.mem.peak, ms: performance.now() - t0 }, timings };
    }
    const locals = plan.outputs.map((s) => slots[s]!.map((d) => download(this.addon, d, this.stream)));
    const wanted = new Set(read ?? plan.outputs.map((_, i) => i));
    // rank-local: a value read back needs every rank's piece (a world all-gather; none for replicated values)
    const hostSlots = new Map(plan.outputs.map((s, i) => [s, dist && wanted.has(i) ? dist.allPieces(plan, s, slots[s]![dist.rank]!) : locals[i]!]));
    const outputs = plan.outputs.map((s, i) => (wanted.has(i) ? assemble(plan, s, hostSlots.get(s)!, counts) : undefined));
    dist?.drained();
    for (const s of new Set(plan.outputs)) slots[s]?.forEach((d) => this.release(d));
    return { outputs, locals, stats: { kernels, ...this.compileStats, peakBytes: this.mem.peak, ms: performance.now() - t0 }, timings };
  }

  /**
   * Captures one run of `plan` as a CUDA graph (see graph.ts): a plain run first compiles every
   * kernel and fills a private memory pool, then the same run is recorded; replays reuse the
   * pool's buffers, so a replay costs one launch. Host-made values (inputs, constants, random and
   * from_local factories) are staged in device buffers outside the graph: replay() uploads new
   * inputs into them; the others keep the values of the capture.
   */
  capture(plan: Plan, feeds?: ReadonlyMap<string, LocalTensor[]>): CapturedStep {
    const why = notCapturable(plan);
    if (why) throw new CompileError(`cannot capture this plan as a CUDA graph: ${why}`);
    const saved = this.mem;
    const pool = new CachingAllocator(this.addon), staging = new CachingAllocator(this.addon);
    const staged = new Map<object, DeviceTensor[]>();
    const { fused } = this.lowered(plan);
    const W = plan.world;
    for (const ins of fused.instrs) {
      if (ins.kind !== "op" || !FACTORIES_ON_HOST.has(ins.op)) continue;
      const kept = ins.op === "input" ? this.resident.get(String(ins.attrs.name)) : undefined;
      if (kept) {
        staged.set(ins, kept);
        continue;
      }
      staged.set(ins, Array.from({ length: W }, (_, r) => {
        const host = getOp(ins.op).cpu([], ins.attrs, cpuCtx(plan, ins, r, coordsOf(plan.mesh, r), feeds));
        return upload(this.addon, staging, host[0]!, this.stream);
      }));
    }
    this.mem = pool;
    this.cap = { staged, pinned: new Set([...staged.values()].flat()), deferred: [] };
    try {
      // warm-up: compiles, plans cuBLASLt calls, and fills the pool with every block the run asks for
      const warm = this.exec(plan, feeds, {});
      for (const s of new Set(plan.outputs)) warm.slots[s]?.forEach((d) => this.release(d));
      const warmChecks = this.cap.deferred;
      this.cap = { ...this.cap, deferred: [] };
      for (const d of warmChecks) this.flagCheck(d);
      this.addon.streamSynchronize(this.stream);
      this.addon.streamBeginCapture(this.stream, CaptureMode.relaxed);
      let rec: ReturnType<CudaExecutor["exec"]>;
      try {
        rec = this.exec(plan, feeds, {});
      } catch (e) {
        try { this.addon.graphDestroy(this.addon.streamEndCapture(this.stream)); } catch { /* the capture is already broken */ }
        throw e;
      }
      const graph = this.addon.streamEndCapture(this.stream);
      const outputs = plan.outputs.map((s) => rec.slots[s]!);
      return new CapturedStep(this, plan, graph, outputs, staged, this.cap.deferred, [pool, staging]);
    } finally {
      this.mem = saved;
      this.cap = undefined;
    }
  }

  /** While capturing: host factories' staged buffers, which are never released, and index checks left for after a replay. */
  private cap?: { staged: Map<object, DeviceTensor[]>; pinned: Set<DeviceTensor>; deferred: DeferredCheck[] };

  /** Runs every instruction of the plan; the outputs stay on the device (the caller releases them). */
  private exec(plan: Plan, feeds: ReadonlyMap<string, LocalTensor[]> | undefined, opts: RunOptions, tracer?: TraceRecorder) {
    const timings: KernelTiming[] = [];
    const { fused, prog } = this.lowered(plan);
    const W = plan.world;
    const dist = W > 1 ? this.rankLocal : undefined;
    const ranks = dist ? [dist.rank] : Array.from({ length: W }, (_, r) => r);
    const coords = Array.from({ length: W }, (_, r) => coordsOf(plan.mesh, r));
    const slots: (DeviceTensor[] | undefined)[] = new Array(plan.values.length);
    const hostCounts = new Map<number, GlobalTensor>();
    const counts = (s: number): GlobalTensor => {
      let g = hostCounts.get(s);
      if (!g) {
        g = assemble(plan, s, dist ? dist.allPieces(plan, s, slots[s]![dist.rank]!) : slots[s]!.map((d) => download(this.addon, d, this.stream)), counts);
        hostCounts.set(s, g);
      }
      return g;
    };
    const lastUse = fused.lastUse;
    let kernels = 0;

    fused.instrs.forEach((ins, i) => {
      dist?.beforeReads(readsOf(ins));
      // a rank-local comm step is traced on the communication stream, around its own work (below)
      if (tracer && !(ins.kind === "comm" && dist)) {
        const what = ins.kind === "kernel" ? prog.kernels[prog.kernelOf[ins.id]!]!.name : ins.kind === "comm" ? `${ins.step.kind}[${plan.mesh.axes[ins.step.axis] ?? ins.step.axis}]` : ins.op;
        const cat = ins.kind === "kernel" ? "kernel" : ins.kind === "comm" ? "comm" : ["dot", "segment_dot", "segment_wgrad", "scaled_dot", "scaled_segment_dot", "scaled_segment_wgrad"].includes(ins.op) ? "gemm" : "op";
        tracer.begin(what, cat, dist ? `rank ${dist.rank}` : "stream", this.stream, ins.kind === "kernel" ? { fuses: ins.fuses.map((f) => f.op).join("+") } : undefined);
      }
      try {
        if (ins.kind === "kernel") {
          const kernel = prog.kernels[prog.kernelOf[ins.id]!]!;
          const fn = this.fn(kernel.name, kernel.source);
          const outs = ins.outputs.map((s) => {
            const per = new Array<DeviceTensor>(W);
            for (const r of ranks) per[r] = empty(this.mem, plan.values[s]!.type.dtype, plan.values[s]!.shapes[r]!);
            return per;
          });
          for (const r of ranks) {
            const l = launchOf(kernel, ins, plan, r, { smCount: this.smCount, aligned: true, blocksPerSM: this.blocksPerSM(fn, kernel.launch.block) });
            if (l.grid === 0) continue;
            const ptrOf = (slot: number) => {
              const o = ins.outputs.indexOf(slot);
              return o >= 0 ? outs[o]![r]!.ptr : slots[slot]![r]!.ptr;
            };
            const idx = kernel.launch.index === "u32" ? "u32" : "u64";
            const args: KernelArg[] = kernel.launch.params.map((p, j) => {
              const a = l.args[j]!;
              if (p.k === "ptr") return ["ptr", ptrOf((a as { slot: number }).slot)];
              const v = (a as { value: number }).value;
              if (p.k === "vec" || (p.k === "size" && p.name === "ncol")) return ["i32", v];
              return idx === "u32" ? ["u32", v] : ["u64", v];
            });
            const params = packArgs(...args);
            this.addon.launchKernel(fn, [l.grid, 1, 1], [l.block, 1, 1], 0, this.stream, params);
            kernels++;
            if (opts.profile && r === ranks[0]) {
              const bytes = [...ins.inputs, ...ins.outputs].reduce((b, s) => b + numel(plan.values[s]!.shapes[0]!) * K.elemBytes(plan.values[s]!.type.dtype), 0);
              const ms = this.timeLaunch(() => this.addon.launchKernel(fn, [l.grid, 1, 1], [l.block, 1, 1], 0, this.stream, params), opts.profile);
              timings.push({ name: kernel.name, ops: ins.fuses.map((f) => f.op), ms, bytes });
            }
          }
          ins.outputs.forEach((s, o) => (slots[s] = outs[o]));
        } else if (ins.kind === "comm") {
          const last = lastUse[ins.input] === i;
          const span = tracer && dist && {
            begin: (cs: Stream) => tracer.begin(`${ins.step.kind}[${plan.mesh.axes[ins.step.axis] ?? ins.step.axis}]`, "comm", `rank ${dist.rank} comm`, cs),
            end: (cs: Stream) => tracer.end(cs),
          };
          slots[ins.output] = this.commStep(dist, plan, ins.step, ins.input, ins.output, slots[ins.input]!, counts, last, span || undefined);
          if (last) slots[ins.input] = undefined; // handed over (rank-local: released once compute has waited for the step)
        } else if (MOE_OPS.has(ins.op)) {
          // MoE dispatch/combine: local kernels, and the exchange as plan comm steps (NCCL or simulated)
          runMoe(this, plan, ins, ranks, slots, (p, step, inS, outS, pieces, release) => {
            const out = this.commStep(dist, p, step, inS, outS, pieces, counts, release);
            // the op's own kernels read an inner value next: compute waits now (the plan-level waits
            // know only the plan's slots); a plan slot is waited for by its reader (moe-exchange.ts)
            if (waitsAtOnce(plan, outS)) dist?.beforeReads([outS]);
            return out;
          });
        } else {
          const outs = ins.outputs.map(() => new Array<DeviceTensor>(W));
          for (const r of ranks) {
            const got = this.op(plan, ins, r, coords[r]!, slots, feeds, counts);
            got.forEach((d, o) => (outs[o]![r] = d));
            kernels++;
          }
          ins.outputs.forEach((s, o) => (slots[s] = outs[o]));
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
      // (rank-local: a buffer an in-flight comm step still reads goes back once compute waited for that step)
      for (const s of readsOf(ins)) if (lastUse[s] === i && slots[s]) (slots[s]!.forEach((d) => (dist ? dist.release(d) : this.release(d))), (slots[s] = undefined));
    });
    return { slots, counts, kernels, timings, dist };
  }

  /** One non-fused op on rank r. */
  private op(plan: Plan, ins: Extract<Plan["instrs"][number], { kind: "op" }>, r: number, coords: number[], slots: (DeviceTensor[] | undefined)[], feeds: ReadonlyMap<string, LocalTensor[]> | undefined, counts: (s: number) => GlobalTensor): DeviceTensor[] {
    const tIn = ins.inputs.map((s) => plan.values[s]!.type), tOut = ins.outputs.map((s) => plan.values[s]!.type);
    const names = (t: TensorType) => t.dims.map((d) => d.name);
    const x = ins.inputs.map((s) => slots[s]![r]!);
    const outShape = (o: number) => plan.values[ins.outputs[o]!]!.shapes[r]!;
    const a = ins.attrs;
    if (FACTORIES_ON_HOST.has(ins.op)) {
      if (this.cap) return [this.cap.staged.get(ins)![r]!];
      const kept = ins.op === "input" ? this.resident.get(String(a.name))?.[r] : undefined;
      if (kept) {
        const want = outShape(0);
        if (kept.dtype !== tOut[0]!.dtype || kept.shape.length !== want.length || kept.shape.some((n, k) => n !== want[k]))
          throw new ShapeError(`resident input '${String(a.name)}' on rank ${r} is ${kept.dtype}[${kept.shape.join(", ")}]; this plan reads ${tOut[0]!.dtype}[${want.join(", ")}]`);
        return [kept];
      }
      const host = getOp(ins.op).cpu([], a, cpuCtx(plan, ins, r, coords, feeds));
      return host.map((t) => upload(this.addon, this.mem, t, this.stream));
    }
    switch (ins.op) {
      case "full":
      case "iota": {
        const out = empty(this.mem, tOut[0]!.dtype, outShape(0));
        const holds = tOut[0]!.placements.every((p, ax) => p !== "P(sum)" || coords[ax] === 0);
        const di = ins.op === "iota" ? tOut[0]!.dims.findIndex((d) => d.name === a.dim) : -1;
        const st = stridesOf(out.shape);
        const off = di >= 0 ? plan.values[ins.outputs[0]!]!.boxes[r]!.offset[di]! : 0;
        this.launch1D(K.fill(out.dtype), numel(out.shape), [["ptr", out.ptr], ["i64", numel(out.shape)], ["f32", holds ? Number(a.value ?? 0) : 0], ["i32", di >= 0 && holds ? 1 : 0], ["i64", di >= 0 ? st[di]! : 1], ["i64", di >= 0 ? Math.max(1, out.shape[di]!) : 1], ["i64", off]]);
        return [out];
      }
      case "dot":
        return [dot(this, x[0]!, x[1]!, tIn[0]!, tIn[1]!, tOut[0]!, outShape(0), a)];
      case "segment_dot":
      case "segment_wgrad":
        return [segmentContract(this, ins.op, plan, ins, r, x, tIn, tOut[0]!, outShape(0), counts)];
      case "scaled_segment_dot":
        return [scaledSegmentDotCuda(this, plan, ins, r, x, tIn, tOut[0]!, outShape(0))];
      case "scaled_segment_wgrad":
        return [scaledSegmentWgradCuda(this, plan, ins, r, x, tIn, tOut[0]!, outShape(0))];
      case "gather":
        return [gather(this, plan, ins, r, x, tIn, tOut[0]!, outShape(0))];
      case "scatter_add":
        return [scatterAdd(this, x, tIn, tOut[0]!, outShape(0), a)];
      case "topk": {
        const dim = String(a.dim), k = Number(a.k), rest = names(tIn[0]!).filter((n) => n !== dim);
        const X = this.reorder(x[0]!, names(tIn[0]!), [...rest, dim]);
        const n = X.shape[X.shape.length - 1]!, rows = n ? numel(X.shape) / n : 0;
        const vals = empty(this.mem, X.dtype, [...X.shape.slice(0, -1), k]), inds = empty(this.mem, "i32", vals.shape);
        this.launch1D(K.topk(X.dtype), rows, [["ptr", vals.ptr], ["ptr", inds.ptr], ["ptr", X.ptr], ["i64", rows], ["i32", n], ["i32", k]]);
        if (X !== x[0]) this.release(X);
        const kd = String(a.kDim), order = [...rest, kd];
        return [this.reorderOwned(vals, order, names(tOut[0]!)), this.reorderOwned(inds, order, names(tOut[1]!))];
      }
      case "sort_by_key": {
        const dim = String(a.dim), G = Number(a.numGroups), batch = names(tIn[0]!).filter((nm) => nm !== dim);
        const Kt = this.reorder(x[0]!, names(tIn[0]!), [...batch, dim]);
        const n = Kt.shape[Kt.shape.length - 1]!, B = n ? numel(Kt.shape) / n : numel(Kt.shape.slice(0, -1));
        const perm = empty(this.mem, "i32", outShape(0)), cnt = empty(this.mem, "i32", outShape(1)), start = empty(this.mem, "i32", [B, G]);
        this.launch1D(K.sortByKey(), B, [["ptr", perm.ptr], ["ptr", cnt.ptr], ["ptr", start.ptr], ["ptr", Kt.ptr], ["i64", B], ["i32", n], ["i32", G]]);
        this.release(start);
        if (Kt !== x[0]) this.release(Kt);
        return [perm, cnt];
      }
      case "rename":
      case "unflatten": {
        const out = empty(this.mem, x[0]!.dtype, outShape(0));
        if (out.bytes && numel(out.shape)) this.addon.memcpyDtoDAsync(out.ptr, x[0]!.ptr, numel(out.shape) * K.elemBytes(out.dtype), this.stream);
        return [out];
      }
      case "flatten": {
        const dims = a.dims as string[];
        const order = names(tIn[0]!).flatMap((nm) => (nm === dims[0] ? dims : dims.includes(nm) ? [] : [nm]));
        const X = this.reorder(x[0]!, names(tIn[0]!), order);
        const out = empty(this.mem, X.dtype, outShape(0));
        if (numel(out.shape)) this.addon.memcpyDtoDAsync(out.ptr, X.ptr, numel(out.shape) * K.elemBytes(out.dtype), this.stream);
        if (X !== x[0]) this.release(X);
        return [out];
      }
      case "permute": {
        const X = this.reorder(x[0]!, names(tIn[0]!), a.order as string[]);
        return [X === x[0] ? this.clone(X) : X];
      }
      case "expand": {
        const shape = outShape(0), out = empty(this.mem, x[0]!.dtype, shape);
        const ist = [...stridesOf(x[0]!.shape), ...shape.slice(x[0]!.shape.length).map(() => 0)];
        this.copy(out, x[0]!, shape, ist, stridesOf(shape), 0);
        return [out];
      }
      case "concat":
      case "split":
        return concatSplit(this, ins.op, x, tIn, tOut, ins.outputs.map((_, o) => outShape(o)), String(a.dim));
      default:
        if (FP8_OPS.has(ins.op)) return runFp8(this, ins.op, x, tIn, tOut, outShape(0), a);
        throw new CompileError(`the CUDA backend has no kernel for op '${ins.op}' here (the fusion pass leaves it unfused); this is a shardts bug — run with --backend cpu`);
    }
  }

  private clone(t: DeviceTensor): DeviceTensor {
    const out = empty(this.mem, t.dtype, t.shape);
    if (numel(t.shape)) this.addon.memcpyDtoDAsync(out.ptr, t.ptr, numel(t.shape) * K.elemBytes(t.dtype), this.stream);
    return out;
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
    const out = empty(this.mem, dtype, acc.shape);
    this.launch1D(K.castFromF32(dtype), numel(acc.shape), [["ptr", out.ptr], ["ptr", acc.ptr], ["i64", numel(acc.shape)]]);
    this.release(acc);
    return out;
  }

  /** Throws if a gather/scatter kernel flagged an index out of range (while capturing: after the replay). */
  checkIndices(bad: DeviceTensor, op: string, dim: string, size: number): void {
    if (this.cap) return void this.cap.deferred.push({ bad, op, dim, size });
    this.flagCheck({ bad, op, dim, size });
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


