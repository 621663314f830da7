// The op registry: one entry per op, grouped by family files. An entry holds the op's shape and
// dtype rule, its sharding rule (written for one mesh axis; `inferTypes` extends it to N axes), its
// CPU reference, and the slots that later issues fill (gradient, CUDA emitter).
import type { Attrs, Dim, DType, MeshSpec, Placement, TensorType } from "../ir/types.ts";
import type { Box, LocalTensor } from "../ir/local.ts";
import { CompileError } from "../errors.ts";
import type { GradRule } from "../autodiff/types.ts";

export type Family =
  | "elementwise" | "reduce" | "contraction" | "routing" | "movement" | "factory" | "collective" | "quantize";

export interface OutSpec {
  dims: Dim[];
  dtype: DType;
}

export interface ShardCtx {
  op: string;
  axis: string;
  axisIndex: number;
  mesh: MeshSpec;
  inputs: TensorType[];
  outputs: OutSpec[];
  attrs: Attrs;
}

export interface CpuCtx {
  inTypes: TensorType[];
  outTypes: TensorType[];
  inBoxes: Box[];
  outBoxes: Box[];
  outShapes: number[][];
  /** This rank's mesh coordinates and its flat rank. */
  coords: number[];
  rank: number;
  /** Per-rank constant payloads (factories) are looked up through this. */
  payload?: unknown;
  /** Values fed to `input` placeholders, by name, one piece per rank. */
  feeds?: ReadonlyMap<string, LocalTensor[]>;
}

export interface OpDef {
  name: string;
  family: Family;
  /** Names of the inputs, as the user-facing function calls them (used in messages). */
  args: readonly string[] | "variadic";
  /** Shape and dtype rule over global types (placements ignored). Throws ShapeError / DTypeError. */
  shape(inputs: TensorType[], attrs: Attrs): OutSpec[];
  /** Sharding rule for ONE mesh axis: a placement per input → a placement per output. Throws ShardingError. */
  shard(p: Placement[], ctx: ShardCtx): Placement[];
  /** Reference semantics on one rank's local pieces. */
  cpu(inputs: LocalTensor[], attrs: Attrs, ctx: CpuCtx): LocalTensor[];
  /**
   * For ops whose pieces depend on other ranks' pieces (MoE dispatch/combine move rows over a mesh
   * axis): the reference on whole global tensors. The CPU backend assembles the inputs, calls it
   * and cuts the outputs into each rank's piece; `cpu` is then never called.
   */
  global?(inputs: LocalTensor[], attrs: Attrs, inTypes: TensorType[], outTypes: TensorType[]): LocalTensor[];
  /** Reverse-mode rule (absent: the op passes no gradient, e.g. integer outputs or factories). */
  grad?: GradRule;
  /** Filled by the CUDA issue. */
  cuda?: unknown;
}

const registry = new Map<string, OpDef>();

export function defineOps(defs: OpDef[]): void {
  for (const d of defs) {
    if (registry.has(d.name)) throw new CompileError(`op '${d.name}' registered twice`);
    registry.set(d.name, d);
  }
}

export function getOp(name: string): OpDef {
  const d = registry.get(name);
  if (!d) throw new CompileError(`unknown op '${name}'; registered ops: ${[...registry.keys()].sort().join(", ")}`);
  return d;
}

export const allOps = (): OpDef[] => [...registry.values()].sort((a, b) => a.name.localeCompare(b.name));

/** Shape rule, then the one-axis sharding rule applied on every mesh axis independently. */
export function inferTypes(op: OpDef, inputs: TensorType[], attrs: Attrs, mesh: MeshSpec): TensorType[] {
  const outs = op.shape(inputs, attrs);
  const placements: Placement[][] = outs.map(() => []);
  mesh.axes.forEach((axis, axisIndex) => {
    const ps = op.shard(inputs.map((t) => t.placements[axisIndex]!), { op: op.name, axis, axisIndex, mesh, inputs, outputs: outs, attrs });
    ps.forEach((p, i) => placements[i]!.push(p));
  });
  return outs.map((o, i) => ({ dims: o.dims, dtype: o.dtype, placements: placements[i]! }));
}
