// What a gradient rule sees. Rules live beside their ops in the family files and build the
// backward computation in the global view through `b`, whose ops are checked like any other.
import type { Attrs, DType, Placement, TensorType, ValueRef } from "../ir/types.ts";

export interface GradOps {
  op(name: string, inputs: ValueRef[], attrs?: Attrs): ValueRef;
  ops(name: string, inputs: ValueRef[], attrs?: Attrs): ValueRef[];
  type(v: ValueRef): TensorType;
  scalar(value: number, dtype: DType): ValueRef;
  add(a: ValueRef, b: ValueRef): ValueRef;
  sub(a: ValueRef, b: ValueRef): ValueRef;
  mul(a: ValueRef, b: ValueRef): ValueRef;
  div(a: ValueRef, b: ValueRef): ValueRef;
  /** Sums g over the dims `like` lacks (the transpose of broadcasting). */
  sumTo(g: ValueRef, like: TensorType): ValueRef;
  /** Broadcasts g over the dims of `like` it lacks (the transpose of a sum). */
  expandTo(g: ValueRef, like: TensorType): ValueRef;
  /** Redistributes v to the given placements when they differ. */
  fit(v: ValueRef, placements: readonly Placement[]): ValueRef;
}

export interface GradCtx {
  b: GradOps;
  x: ValueRef[];
  y: ValueRef[];
  /** Gradients of the outputs; null where none flows. */
  gy: (ValueRef | null)[];
  attrs: Attrs;
  inTypes: TensorType[];
  outTypes: TensorType[];
}

/** One gradient per input; null for inputs that get none (integer inputs, indices). */
export type GradRule = (c: GradCtx) => (ValueRef | null)[];
