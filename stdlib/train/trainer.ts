// The training loop's engine: one traced, compiled step (forward, autodiff, AdamW) run with the
// parameters, optimizer state and routing biases kept as per-rank pieces between steps.
import type { DType } from "../../compiler/ir/types.ts";
import { Mesh } from "../mesh.ts";
import type { AnyDTensor } from "../dtensor.ts";
import { grad } from "../autodiff.ts";
import { input, piecesOf, Program, zeroPieces, type Pieces } from "../program.ts";
import { ParamStore } from "../nn/params.ts";
import type { Layout } from "../nn/layout.ts";
import { lm, microBatchesOf, moeLayers, type LmConfig } from "../nn/transformer.ts";
import { adamw, adamwScalars, momentNames, SCALARS, type AdamWConfig } from "../optim/adamw.ts";
import { lrAt, type Schedule } from "../optim/schedule.ts";
import type { GlobalValue } from "../value.ts";
import type { Backend } from "../run.ts";
import type { MeshSpec, TensorType } from "../../compiler/ir/types.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { UsageError } from "../../compiler/errors.ts";
import { coordsOf } from "../../compiler/ir/placement.ts";
import { boxOf } from "../../compiler/passes/partition.ts";
import { rankLoads } from "../nn/moe-replicas.ts";
import { expertRanks, replicaInputs, Replicas } from "./replicas.ts";

/**
 * A trainer's full state as tensors on its mesh: every parameter (f32), its AdamW moments `name.m`
 * and `name.v` (bf16), all in the parameter's storage placements, and the routing biases
 * `bias.l<layer>` (f32, replicated); with redundant experts each MoE layer's replica map
 * `replicas.l<layer>` and the load observed since its plan `replicas.l<layer>.observed` (i32,
 * replicated); plus the step counter. (The shape `shardts/checkpoint` saves.)
 */
export interface TrainerState {
  mesh: MeshSpec;
  step: number;
  tensors: Record<string, { type: TensorType; pieces: Pieces }>;
}

export interface TrainConfig {
  model: LmConfig;
  layout: Layout;
  /** Sequences per step (global batch). */
  batch: number;
  opt: AdamWConfig;
  schedule: Schedule;
  seed: number;
  /** Step size of the auxiliary-loss-free bias update (DeepSeek-V3's gamma); 0 turns it off. */
  biasRate: number;
  /** Where the step runs (default: the CPU reference). */
  backend?: Backend;
  /**
   * The ranks whose parameters this process makes and feeds (one process per rank under `shardts
   * launch` on GPUs: its own; the other ranks' pieces are holes). Default: every rank.
   */
  ranks?: readonly number[];
}

export interface StepMetrics {
  step: number;
  loss: number;
  ce: number;
  gradNorm: number;
  lr: number;
  /** Per MoE layer: tokens per expert this step. */
  loads: Float32Array[];
  /** max/mean tokens per expert, averaged over MoE layers (1 = perfectly even). */
  imbalance: number;
  /** Per MoE layer: tokens per physical expert slot this step (= `loads` without redundant experts). */
  slotLoads: Float32Array[];
  /** max/mean tokens per slot, averaged over MoE layers. */
  slotImbalance: number;
  /** max/mean tokens per expert-axis rank (the slots each holds), averaged over MoE layers. */
  rankImbalance: number;
  /** Whether the replica maps were re-planned after this step (the next step uses the new ones). */
  replanned: boolean;
}

export const maxOverMean = (load: ArrayLike<number>): number => {
  let m = 0, s = 0;
  for (let i = 0; i < load.length; i++) (m = Math.max(m, load[i]!)), (s += load[i]!);
  return s > 0 ? m / (s / load.length) : 1;
};

/** Traces the LM on a mesh of the layout's shape; returns its store and outputs. */
export function traceLm(layout: Layout, cfg: LmConfig, batch: number) {
  const mesh = Mesh.of(layout.mesh);
  const ps = new ParamStore(mesh, layout);
  const act = ps.placementsObject(layout.activation(["batch", "seq"])) as never;
  const M = microBatchesOf(cfg, batch);
  const data = dataInputs(M).map(([i, t]) => ({
    ids: input(mesh, i, { batch: batch / M, seq: cfg.seq }, "i32", act) as AnyDTensor,
    targets: input(mesh, t, { batch: batch / M, seq: cfg.seq }, "i32", act) as AnyDTensor,
  }));
  const biases = moeLayers(cfg).map((l) => input(mesh, `bias.l${l}`, { experts: cfg.moe!.experts }, "f32") as AnyDTensor);
  const replicas = replicaInputs(mesh, cfg);
  const out = lm(ps, data, cfg, biases, replicas);
  return { mesh, ps, data, biases, replicas, out };
}

/** The program inputs of the token ids and targets per micro-batch: micro-batch m holds rows [m·B/M, (m+1)·B/M) of the batch. */
export const dataInputs = (M: number): [string, string][] =>
  M === 1 ? [["data.ids", "data.targets"]] : Array.from({ length: M }, (_, m) => [`data.ids.${m}`, `data.targets.${m}`]);

export class Trainer {
  readonly ps: ParamStore;
  readonly program: Program;
  private readonly mesh: Mesh<string>;
  /** The parameters and moments fed to the first step (and after importState); later steps' live in the program. */
  private state: Record<string, Pieces> = {};
  /** The step whose updated state the program carries (undefined: `state` is current). */
  private carriedStep?: number;
  /** Host copies of carried state read back after step `step` (a CUDA run keeps it on the device). */
  private readBack = { step: -1, pieces: new Map<string, Pieces>() };
  /** The parameters' and moments' names (each carried from a step's output to the next step's input of that name). */
  private readonly stateNames: string[];
  private readonly carry: Record<string, string>;
  /** The current pieces of a parameter or moment (read back once per step when the program carries them). */
  private stateOf(name: string): Pieces {
    if (this.carriedStep === undefined) return this.state[name]!;
    if (this.readBack.step !== this.carriedStep) this.readBack = { step: this.carriedStep, pieces: new Map() };
    let p = this.readBack.pieces.get(name);
    if (!p) this.readBack.pieces.set(name, (p = this.program.carried(name)!));
    return p;
  }
  /** Host copies of the routing biases, per MoE layer. */
  readonly biases: Float32Array[];
  step = 0;
  /** The global values of the last step's metrics, and of its updated parameters when `readParams`. */
  last: Record<string, GlobalValue> = {};
  /** Read updated parameters back each step (tests compare layouts with it; training needs only metrics). */
  readParams = false;
  /** Tokens per expert in the last step, per MoE layer. */
  lastLoads: Float32Array[] = [];
  /** Redundant experts: the replica maps fed each step and their re-planning. */
  readonly replicas: Replicas;
  private get readEachStep(): string[] {
    const slots = this.replicas.enabled ? this.biases.map((_, i) => `slotLoad.${i}`) : [];
    const metrics = ["loss", "ce", "gradNorm", ...this.biases.map((_, i) => `load.${i}`), ...slots];
    return this.readParams ? [...metrics, ...this.stateNames] : metrics;
  }

  constructor(readonly cfg: TrainConfig) {
    const t = traceLm(cfg.layout, cfg.model, cfg.batch);
    this.mesh = t.mesh;
    this.ps = t.ps;
    const grads = grad(t.out.loss, Object.fromEntries(t.ps.stored));
    const { updates, gradNorm } = adamw(t.ps, grads, cfg.opt);
    this.replicas = new Replicas(cfg.model, expertRanks(cfg.layout));
    const loads = Object.fromEntries(t.out.loads.map((l, i) => [`load.${i}`, l]));
    const slotLoads = t.replicas ? Object.fromEntries(t.out.slotLoads.map((l, i) => [`slotLoad.${i}`, l])) : {};
    this.program = new Program(t.mesh, { loss: t.out.loss, ce: t.out.ce, gradNorm, ...loads, ...slotLoads, ...updates }, { backend: cfg.backend });
    this.stateNames = t.ps.specs.flatMap((s) => [s.name, ...momentNames(s.name)]);
    this.carry = Object.fromEntries(this.stateNames.map((n) => [n, n]));
    this.state = t.ps.initialise(cfg.seed, cfg.ranks);
    const held = cfg.ranks && new Set(cfg.ranks);
    for (const s of t.ps.specs)
      for (const n of momentNames(s.name)) {
        const z = zeroPieces(t.mesh.spec, { dims: Object.entries(s.dims).map(([name, size]) => ({ name, size })), dtype: "bf16", placements: s.storage });
        if (held) z.forEach((_, r) => !held.has(r) && delete z[r]); // holes, as in the parameters
        this.state[n] = z;
      }
    this.biases = t.biases.map(() => new Float32Array(cfg.model.moe!.experts));
  }

  private scalar(v: number, dtype: DType = "f32"): Pieces {
    return piecesOf(this.mesh.spec, { dims: [], dtype, placements: this.mesh.spec.axes.map(() => "R") }, [v]);
  }

  /** The feeds of one step's [batch, seq] ids and targets, split into the micro-batches' inputs. */
  private batchFeeds(ids: Int32Array, targets: Int32Array): Record<string, Pieces> {
    const M = microBatchesOf(this.cfg.model, this.cfg.batch), rows = this.cfg.batch / M, n = rows * this.cfg.model.seq;
    const type = { dims: [{ name: "batch", size: rows }, { name: "seq", size: this.cfg.model.seq }], dtype: "i32" as const, placements: this.cfg.layout.activation(["batch", "seq"]) };
    const part = (d: Int32Array, m: number) => piecesOf(this.mesh.spec, type, d.subarray(m * n, (m + 1) * n));
    return Object.fromEntries(dataInputs(M).flatMap(([i, t], m) => [[i, part(ids, m)], [t, part(targets, m)]]));
  }

  /** The step program's inputs for the next step on these token ids and targets (bench/host/host-overhead.ts runs them itself). */
  feeds(ids: Int32Array, targets: Int32Array): { feeds: Record<string, Pieces>; lr: number; read: string[] } {
    const lr = lrAt(this.cfg.schedule, this.step);
    const scalars = adamwScalars(this.cfg.opt, lr, this.step + 1);
    // after the first step the parameters and moments are carried by the program (on CUDA: they stay on the device)
    const feeds: Record<string, Pieces> = { ...(this.carriedStep === undefined ? this.state : {}), ...this.replicas.feeds(this.mesh.spec), ...this.batchFeeds(ids, targets) };
    for (const n of SCALARS) feeds[n] = this.scalar(scalars[n]);
    moeLayers(this.cfg.model).forEach((l, i) => (feeds[`bias.l${l}`] = piecesOf(this.mesh.spec, { dims: [{ name: "experts", size: this.biases[i]!.length }], dtype: "f32", placements: this.mesh.spec.axes.map(() => "R") }, this.biases[i]!)));
    return { feeds, lr, read: this.readEachStep };
  }

  /** One optimisation step on [batch, seq] token ids and targets. */
  run(ids: Int32Array, targets: Int32Array): StepMetrics {
    const { feeds, lr, read } = this.feeds(ids, targets);
    const { values } = this.program.runGlobal(feeds, read, { carry: this.carry });
    this.last = values as Record<string, GlobalValue>;
    this.carriedStep = this.step + 1;
    this.state = {}; // the program holds the state now (the first step's host copies would only take memory)
    const loads = this.biases.map((_, i) => Float32Array.from((values as Record<string, GlobalValue>)[`load.${i}`]!.data));
    this.lastLoads = loads;
    const slotLoads = this.replicas.enabled ? this.biases.map((_, i) => Float32Array.from((values as Record<string, GlobalValue>)[`slotLoad.${i}`]!.data)) : loads;
    const replanned = this.replicas.observe(this.step + 1, loads);
    // auxiliary-loss-free balancing: raise the bias of under-loaded experts, lower the over-loaded
    if (this.cfg.biasRate > 0)
      loads.forEach((load, i) => {
        const mean = load.reduce((a, b) => a + b, 0) / load.length;
        for (let e = 0; e < load.length; e++) this.biases[i]![e]! += this.cfg.biasRate * Math.sign(mean - load[e]!);
      });
    this.step++;
    const v = values as Record<string, GlobalValue>;
    const avg = (f: (l: Float32Array) => number) => (loads.length ? slotLoads.reduce((a, l) => a + f(l), 0) / loads.length : 1);
    return {
      step: this.step, lr, loss: v.loss!.data[0]!, ce: v.ce!.data[0]!, gradNorm: v.gradNorm!.data[0]!, loads,
      imbalance: loads.length ? loads.reduce((a, l) => a + maxOverMean(l), 0) / loads.length : 1,
      slotLoads, slotImbalance: avg(maxOverMean), rankImbalance: avg((l) => maxOverMean(rankLoads(l, this.replicas.ranks))), replanned,
    };
  }

  /** The types of `exportState()`'s tensors on this trainer's mesh and layout (a checkpoint load template). */
  stateTypes(): Record<string, TensorType> {
    const out: Record<string, TensorType> = {};
    for (const s of this.ps.specs) {
      const dims = Object.entries(s.dims).map(([name, size]) => ({ name, size }));
      out[s.name] = { dims, dtype: "f32", placements: [...s.storage] };
      for (const n of momentNames(s.name)) out[n] = { dims, dtype: "bf16", placements: [...s.storage] };
    }
    moeLayers(this.cfg.model).forEach((l, i) => (out[`bias.l${l}`] = { dims: [{ name: "experts", size: this.biases[i]!.length }], dtype: "f32", placements: this.mesh.spec.axes.map(() => "R") }));
    return { ...out, ...this.replicas.stateTypes(this.mesh.spec) };
  }

  /** Everything needed to continue training exactly (the live pieces, not copies: a checkpoint save copies them). */
  exportState(): TrainerState {
    const types = this.stateTypes();
    const tensors: TrainerState["tensors"] = {};
    for (const [name, type] of Object.entries(types)) {
      const host = name.startsWith("bias.l") ? this.biases[moeLayers(this.cfg.model).indexOf(Number(name.slice(6)))]! : this.replicas.hostArray(name);
      tensors[name] = { type, pieces: host ? piecesOf(this.mesh.spec, type, host) : this.stateOf(name) };
    }
    return { mesh: { axes: [...this.mesh.spec.axes], sizes: [...this.mesh.spec.sizes] }, step: this.step, tensors };
  }

  /**
   * Continues from a state exported by a trainer of the same model (on any mesh and layout, once its
   * pieces are laid out for this one, e.g. by a checkpoint load with `stateTypes()` as the template).
   * `ranks`: the ranks whose pieces this process holds (one process per rank: its own; default all).
   */
  importState(s: { step: number; tensors: Record<string, readonly (LocalTensor | undefined)[]> }, opts: { ranks?: readonly number[] } = {}): void {
    if (!Number.isSafeInteger(s.step) || s.step < 0) throw new UsageError(`importState(): step ${s.step} is not a non-negative integer`);
    const types = this.stateTypes(), next: Record<string, Pieces> = {};
    const world = this.mesh.spec.sizes.reduce((a, b) => a * b, 1);
    const held = new Set(opts.ranks ?? Array.from({ length: world }, (_, r) => r));
    if (held.size === 0 || [...held].some((r) => !Number.isSafeInteger(r) || r < 0 || r >= world)) throw new UsageError(`importState(): ranks [${[...held]}] are not ranks of a mesh of ${world}`);
    for (const [name, type] of Object.entries(types)) {
      const pieces = s.tensors[name];
      if (!pieces) throw new UsageError(`importState(): the state has no '${name}'`);
      // a process of a rank-local job holds (and feeds) only its own ranks' pieces: the others are
      // holes, as in the pieces a rank-local step returns
      const arr: Pieces = new Array(world);
      for (const r of held) {
        const p = pieces[r], want = boxOf(type, this.mesh.spec, coordsOf(this.mesh.spec, r)).shape;
        if (!p || p.dtype !== type.dtype || p.shape.length !== want.length || p.shape.some((d, i) => d !== want[i]))
          throw new UsageError(`importState(): '${name}' on rank ${r} is ${p ? `${p.dtype}[${p.shape}]` : "missing"}; this layout holds ${type.dtype}[${want}]`);
        arr[r] = p;
      }
      next[name] = arr;
    }
    for (const n of this.stateNames) this.state[n] = next[n]!;
    this.program.dropCarried();
    this.carriedStep = undefined;
    const first = Math.min(...held);
    moeLayers(this.cfg.model).forEach((l, i) => this.biases[i]!.set(next[`bias.l${l}`]![first]!.data));
    this.replicas.import((name) => next[name]![first]!.data);
    this.step = s.step;
  }

  /** The current parameters' pieces (for evaluation programs and checkpoints). */
  get params(): Record<string, Pieces> {
    return Object.fromEntries(this.ps.specs.map((s) => [s.name, this.stateOf(s.name)]));
  }
}
