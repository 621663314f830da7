// A compiled program: traced once with `input` placeholders, run many times. Values that live across
// runs (parameters, optimizer state) stay as per-rank pieces and are fed straight back.
import type { LocalTensor } from "../compiler/ir/local.ts";
import type { Plan } from "../compiler/plan.ts";
import type { DType } from "../compiler/ir/types.ts";
import { compile } from "../compiler/pipeline.ts";
import { UsageError } from "../compiler/errors.ts";
import { cudaExecutor, resolveBackend, runPlan, type Backend } from "./run.ts";
import { CarriedValues } from "../runtime/cuda/carried.ts";
import type { TraceEvent } from "../runtime/cuda/trace.ts";
import { DTensor, type AnyDTensor } from "./dtensor.ts";
import type { Mesh } from "./mesh.ts";
import type { Dims, Fail, Full } from "./types/core.ts";
import { resolvePlacements, type PlacementErrors } from "./ops/factories.ts";
import { GlobalValue } from "./value.ts";
import type { MeshSpec, Placement, TensorType } from "../compiler/ir/types.ts";
import { numel } from "../compiler/ir/types.ts";
import { allocLocal } from "../compiler/ir/local.ts";
import { coordsOf, worldSize } from "../compiler/ir/placement.ts";
import { boxOf } from "../compiler/passes/partition.ts";
import { sliceBox } from "../compiler/ops/factory.ts";
import { roundData } from "../compiler/ops/cpu-util.ts";

/** One piece per rank, in rank order. */
export type Pieces = LocalTensor[];

/** A placeholder whose value is fed at run time under `name`. */
export function input<A extends string, const D extends Dims, const T extends DType, const Q extends { readonly [axis: string]: Placement } = {}>(
  mesh: Mesh<A>, name: string, dims: D, dtype: T, placements?: Q & Fail<PlacementErrors<A, D, Q>>,
): DTensor<D, T, Full<A, Q>> {
  if (typeof name !== "string" || name === "") throw new UsageError("input(): needs a non-empty name");
  if (mesh.builder.graph.nodes.some((n) => n.op === "input" && n.attrs.name === name)) throw new UsageError(`input(): the name '${name}' is taken`);
  const pl = resolvePlacements(mesh, dims, placements as never);
  const [ref] = mesh.builder.add("input", [], { dims: Object.entries(dims), dtype, placements: pl, name });
  return new DTensor(mesh, ref!) as never;
}

/**
 * Splits a global array (row-major in the type's dim order) into the pieces each rank holds under
 * the type's placements. Partial placements are not a layout of a global value and are refused.
 */
export function piecesOf(mesh: MeshSpec, type: TensorType, data: ArrayLike<number>): Pieces {
  if (type.placements.some((p) => p.startsWith("P("))) throw new UsageError(`piecesOf(): ${type.placements.join(", ")} has a Partial; give a Shard or Replicate layout`);
  const global = type.dims.map((d) => d.size);
  const src = type.dtype === "i32" ? Int32Array.from(data) : Float32Array.from(data);
  if (src.length !== numel(global)) throw new UsageError(`piecesOf(): [${global.join(", ")}] holds ${numel(global)} values, got ${src.length}`);
  return Array.from({ length: worldSize(mesh) }, (_, r) => {
    const { box, shape } = boxOf(type, mesh, coordsOf(mesh, r));
    const out = allocLocal(type.dtype, shape);
    sliceBox(src, global, box, shape, out.data);
    roundData(type.dtype, out.data);
    return out;
  });
}

/** Zeros in every rank's piece of the type. */
export function zeroPieces(mesh: MeshSpec, type: TensorType): Pieces {
  return Array.from({ length: worldSize(mesh) }, (_, r) => allocLocal(type.dtype, boxOf(type, mesh, coordsOf(mesh, r)).shape));
}

export class Program<O extends string = string> {
  readonly plan: Plan;
  readonly inputs: string[];
  /** Output names, in the order of plan.outputs. */
  readonly outputNames: O[];

  /** Which backend runs it (default the CPU reference; `auto` is CUDA when a GPU is usable). */
  readonly backend: "cpu" | "cuda";

  constructor(readonly mesh: Mesh<any>, outputs: Record<O, AnyDTensor>, opts: { backend?: Backend } = {}) {
    this.backend = resolveBackend(opts.backend ?? "cpu");
    this.outputNames = Object.keys(outputs) as O[];
    this.plan = compile(mesh.builder.graph, this.outputNames.map((n) => outputs[n].ref));
    this.inputs = this.plan.instrs.flatMap((i) => (i.kind === "op" && i.op === "input" ? [String(i.attrs.name)] : []));
    this.types = Object.fromEntries(this.outputNames.map((n) => [n, outputs[n].type])) as never;
  }
  private readonly types: Record<O, AnyDTensor["type"]>;
  /** CUDA backend: while set, each run appends its timeline (runtime/cuda/trace.ts) to it. */
  trace?: TraceEvent[];

  /** Runs once. Every input must be fed (or carried); returns each output's pieces. */
  run(feeds: Record<string, Pieces>): Record<O, Pieces> {
    return this.runGlobal(feeds, []).pieces;
  }

  /** CPU backend: the pieces carried from the last run, by input name (CUDA keeps them on the device). */
  private readonly carriedHost = new Map<string, Pieces>();
  /** Whether input `name` was carried from the last run (and not dropped since). */
  private isCarried(name: string): boolean {
    return this.backend === "cpu" ? this.carriedHost.has(name) : cudaExecutor().carried.get(this.plan, name) !== undefined;
  }

  /**
   * Runs once; returns every output's pieces and reads back the outputs named in `read` (default: all).
   * `carry` (output name -> input name): those outputs become that input of the next run, which then
   * need not feed it (a training step's parameters and moments). On CUDA they stay on the device and
   * their `pieces` come back as holes unless `read` names them; `carried(name)` reads them.
   */
  runGlobal(feeds: Record<string, Pieces>, read: readonly O[] = this.outputNames, opts: { carry?: Partial<Record<O, string>> } = {}): { pieces: Record<O, Pieces>; values: Record<O, GlobalValue> } {
    const carry = new Map<number, string>();
    for (const [o, name] of Object.entries(opts.carry ?? {}) as [O, string][]) {
      const i = this.outputNames.indexOf(o);
      if (i < 0) throw new UsageError(`Program.run(): carry names '${o}', which is not an output (outputs: ${this.outputNames.join(", ")})`);
      carry.set(i, name);
    }
    if (carry.size) CarriedValues.check(this.plan, carry);
    for (const n of this.inputs) if (!feeds[n] && !this.isCarried(n)) throw new UsageError(`Program.run(): input '${n}' was not fed`);
    const all = new Map(Object.entries(feeds));
    if (this.backend === "cpu") for (const [n, p] of this.carriedHost) if (!all.has(n)) all.set(n, p);
    const res = runPlan(this.plan, this.backend, all, read.map((n) => this.outputNames.indexOf(n)), this.trace, carry.size ? carry : undefined);
    if (this.backend === "cpu") for (const [i, name] of carry) this.carriedHost.set(name, res.locals[i]!);
    const pieces = Object.fromEntries(this.outputNames.map((n, i) => [n, res.locals[i]!])) as Record<O, Pieces>;
    const values = Object.fromEntries(
      read.map((n) => {
        const g = res.outputs[this.outputNames.indexOf(n)]!;
        return [n, new GlobalValue(this.types[n].dims.map((d) => d.name), g.shape, g.dtype, g.data)];
      }),
    ) as Record<O, GlobalValue>;
    return { pieces, values };
  }

  /** The pieces last carried into input `name` (CUDA: read back from the device), or undefined. */
  carried(name: string): Pieces | undefined {
    return this.backend === "cpu" ? this.carriedHost.get(name) : cudaExecutor().carried.read(this.plan, name);
  }

  /** Forgets (and on CUDA frees) the carried inputs: the next run must feed them again. */
  dropCarried(): void {
    if (this.backend === "cuda") cudaExecutor().carried.drop(this.plan);
    this.carriedHost.clear();
  }
}
