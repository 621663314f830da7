// The one way stdlib ops reach the tracer: validate that arguments are tensors of one mesh, turn
// numbers into replicated scalars, and add the node.
import type { Attrs, DType } from "../../compiler/ir/types.ts";
import { UsageError } from "../../compiler/errors.ts";
import { DTensor, type AnyDTensor } from "../dtensor.ts";
import type { Mesh } from "../mesh.ts";

export function meshOf(op: string, args: unknown[]): Mesh<any> {
  const t = args.find((a): a is AnyDTensor => a instanceof DTensor);
  if (!t) throw new UsageError(`${op}() needs at least one DTensor argument`);
  for (const a of args) if (a instanceof DTensor && a.mesh !== t.mesh) throw new UsageError(`${op}() got tensors of two different meshes (${t.mesh} and ${a.mesh}); a program uses one mesh`);
  return t.mesh;
}

export function asTensor(op: string, mesh: Mesh<any>, x: unknown, dtype: DType, arg: string): AnyDTensor {
  if (x instanceof DTensor) return x;
  if (typeof x === "number") {
    const refs = mesh.builder.add("full", [], { dims: [], dtype, placements: mesh.spec.axes.map(() => "R"), value: x });
    return new DTensor(mesh, refs[0]!);
  }
  throw new UsageError(`${op}(): ${arg} must be a DTensor${dtype ? " or a number" : ""}, got ${x === null ? "null" : typeof x}`);
}

export function trace(op: string, inputs: AnyDTensor[], attrs: Attrs = {}): AnyDTensor[] {
  const mesh = meshOf(op, inputs);
  return mesh.builder.add(op, inputs.map((t) => t.ref), attrs).map((r) => new DTensor(mesh, r));
}

export const dimList = (op: string, d: unknown): string[] => {
  const list = typeof d === "string" ? [d] : d;
  if (!Array.isArray(list) || list.length === 0 || !list.every((x) => typeof x === "string")) throw new UsageError(`${op}(): expected a dim name or a list of dim names, got ${JSON.stringify(d)}`);
  return list;
};
