// Redundant experts in training (host side): per MoE layer the replica map the step program reads,
// the logical load observed since the last plan, and the re-plan every `every` steps. Both are part
// of the trainer's exported state (i32 tensors, replicated), so a resumed run feeds the same map and
// re-plans from the same observed load: its losses equal the uninterrupted run's.
import { UsageError } from "../../compiler/errors.ts";
import type { MeshSpec, TensorType } from "../../compiler/ir/types.ts";
import type { Mesh } from "../mesh.ts";
import type { AnyDTensor } from "../dtensor.ts";
import { input, piecesOf, type Pieces } from "../program.ts";
import type { Layout } from "../nn/layout.ts";
import type { ReplicaMap } from "../nn/moe.ts";
import { moeLayers, type LmConfig } from "../nn/transformer.ts";
import { planReplicas, replicaTables } from "../nn/moe-replicas.ts";

const names = (l: number) => ({ slots: `replicas.l${l}`, count: `replicas.l${l}.count`, table: `replicas.l${l}.table`, observed: `replicas.l${l}.observed` });
const vecType = (spec: MeshSpec, dim: string, size: number): TensorType => ({ dims: [{ name: dim, size }], dtype: "i32", placements: spec.axes.map(() => "R") });

/** The extra slots per MoE layer (0: no redundant experts), after checking the config. */
export function redundantSlots(cfg: LmConfig): number {
  const r = cfg.moe?.redundant;
  if (!r || r.slots === 0) return 0;
  if (!Number.isSafeInteger(r.slots) || r.slots < 0) throw new UsageError(`redundant.slots must be a non-negative integer, got ${r.slots}`);
  if (!Number.isSafeInteger(r.every) || r.every < 1) throw new UsageError(`redundant.every (steps between re-plans) must be a positive integer, got ${r.every}`);
  return r.slots;
}

/** The replica map inputs of every MoE layer (undefined without redundant slots). */
export function replicaInputs(mesh: Mesh<string>, cfg: LmConfig): ReplicaMap[] | undefined {
  const extra = redundantSlots(cfg), E = cfg.moe?.experts ?? 0;
  if (extra === 0) return undefined;
  return moeLayers(cfg).map((l) => {
    const n = names(l);
    return {
      slotExpert: input(mesh, n.slots, { eslots: E + extra }, "i32") as AnyDTensor,
      count: input(mesh, n.count, { experts: E }, "i32") as AnyDTensor,
      table: input(mesh, n.table, { erep: E * (extra + 1) }, "i32") as AnyDTensor,
    };
  });
}

/** The expert-axis size: the ranks the planner packs slots over. */
export const expertRanks = (layout: Layout): number => (layout.expertAxis ? layout.mesh[layout.expertAxis]! : 1);

export class Replicas {
  readonly experts: number;
  readonly extra: number;
  readonly every: number;
  readonly layers: number[];
  /** Per MoE layer: the logical expert of each physical slot. */
  readonly maps: Int32Array[];
  /** Per MoE layer: tokens per logical expert since the last plan (integers: exact in i32). */
  readonly observed: Int32Array[];

  constructor(cfg: LmConfig, readonly ranks: number) {
    this.extra = redundantSlots(cfg);
    this.experts = cfg.moe?.experts ?? 0;
    this.every = cfg.moe?.redundant?.every ?? 0;
    this.layers = this.extra > 0 ? moeLayers(cfg) : [];
    // the first plan has no load to go on: all-zero load gives experts 0..R-1 one replica each
    // (round-robin when R >= E), packed over the ranks
    const first = planReplicas(new Float64Array(this.experts), this.extra, ranks);
    this.maps = this.layers.map(() => first.slice());
    this.observed = this.layers.map(() => new Int32Array(this.experts));
  }

  get enabled(): boolean {
    return this.layers.length > 0;
  }

  /** The step program's replica inputs. */
  feeds(spec: MeshSpec): Record<string, Pieces> {
    const out: Record<string, Pieces> = {};
    this.layers.forEach((l, i) => {
      const n = names(l), t = replicaTables(this.maps[i]!, this.experts);
      out[n.slots] = piecesOf(spec, vecType(spec, "eslots", this.maps[i]!.length), this.maps[i]!);
      out[n.count] = piecesOf(spec, vecType(spec, "experts", this.experts), t.count);
      out[n.table] = piecesOf(spec, vecType(spec, "erep", t.table.length), t.table);
    });
    return out;
  }

  /**
   * Adds a step's logical loads; after every `every`-th step (`step` counts completed steps)
   * re-plans each layer from the load observed since the last plan. Returns whether it re-planned.
   */
  observe(step: number, loads: Float32Array[]): boolean {
    if (!this.enabled) return false;
    this.layers.forEach((_, i) => loads[i]!.forEach((v, e) => (this.observed[i]![e]! += Math.round(v))));
    if (step % this.every !== 0) return false;
    this.layers.forEach((_, i) => {
      this.maps[i]!.set(planReplicas(this.observed[i]!, this.extra, this.ranks));
      this.observed[i]!.fill(0);
    });
    return true;
  }

  /** The state tensors' types (replicated i32): each layer's map and its observed load. */
  stateTypes(spec: MeshSpec): Record<string, TensorType> {
    const out: Record<string, TensorType> = {};
    for (const l of this.layers) {
      out[names(l).slots] = vecType(spec, "eslots", this.experts + this.extra);
      out[names(l).observed] = vecType(spec, "experts", this.experts);
    }
    return out;
  }

  /** The host array behind a state tensor's name, or undefined when the name is not one of ours. */
  hostArray(name: string): Int32Array | undefined {
    for (const [i, l] of this.layers.entries()) {
      if (name === names(l).slots) return this.maps[i];
      if (name === names(l).observed) return this.observed[i];
    }
    return undefined;
  }

  /** Restores the state tensors (replicated: any held rank's piece is the whole value). */
  import(values: (name: string) => ArrayLike<number>): void {
    this.layers.forEach((l, i) => {
      const map = Int32Array.from(values(names(l).slots));
      replicaTables(map, this.experts); // refuses a map that leaves an expert without a slot
      this.maps[i]!.set(map);
      this.observed[i]!.set(values(names(l).observed));
    });
  }
}
