// DTensor: a traced value of a mesh's graph, typed by named dims, dtype and one placement per mesh
// axis. Its type parameters exist only for tsc; at run time it holds the graph value it names.
import type { TensorType, ValueRef } from "../compiler/ir/types.ts";
import { fmtType } from "../compiler/ir/placement.ts";
import type { Dims, DType, PlacementMap } from "./types/core.ts";
import type { Mesh } from "./mesh.ts";

// Type parameters are unconstrained so computed result types need no proofs; factories constrain them.
export class DTensor<D = Dims, T = DType, P = PlacementMap> {
  declare readonly __dims: D;
  declare readonly __dtype: T;
  declare readonly __placements: P;

  constructor(readonly mesh: Mesh<any>, readonly ref: ValueRef) {}

  get type(): TensorType {
    return this.mesh.builder.type(this.ref);
  }
  /** Dim name → global size, in layout order. */
  get dims(): D {
    return Object.fromEntries(this.type.dims.map((d) => [d.name, d.size])) as unknown as D;
  }
  get dtype(): T {
    return this.type.dtype as T;
  }
  /** Mesh axis → placement, in the compact notation. */
  get placements(): P {
    return Object.fromEntries(this.mesh.spec.axes.map((a, i) => [a, this.type.placements[i]!])) as unknown as P;
  }
  toString(): string {
    return `DTensor ${fmtType(this.type)}`;
  }
}

export type AnyDTensor = DTensor<any, any, any>;

export const wrap = (mesh: Mesh<any>, refs: ValueRef[]) => refs.map((r) => new DTensor(mesh, r));
