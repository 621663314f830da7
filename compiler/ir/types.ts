// The IR's data model: one node type, values addressed by (node, output index), tensor types in the
// global view with one placement per mesh axis.

export type DType = "f32" | "bf16" | "fp8e4m3" | "fp8e5m2" | "i32";
export const DTYPES: readonly DType[] = ["f32", "bf16", "fp8e4m3", "fp8e5m2", "i32"];
export const isFloat = (t: DType) => t !== "i32";
/** Bytes an element of each dtype takes. */
export const DTYPE_BYTES: Readonly<Record<DType, number>> = { f32: 4, bf16: 2, i32: 4, fp8e4m3: 1, fp8e5m2: 1 };
export const isFp8 = (t: DType) => t === "fp8e4m3" || t === "fp8e5m2";

/** Compact placement notation, used as-is in types, IR, messages and dumps. */
export type Placement = "R" | `S(${string})` | "P(sum)" | "P(max)";
export type ReduceOp = "sum" | "max";

/**
 * A dim whose extent is split into contiguous segments by a data-dependent count tensor (MoE rows
 * grouped by expert). `size` stays the static upper bound; `counts` is the value holding
 * [...batch, groups] i32 segment lengths, `groups` the name of the dim it counts over.
 */
export interface Segmented {
  counts: ValueRef;
  groups: string;
  numGroups: number;
}

export interface Dim {
  name: string;
  size: number;
  segmented?: Segmented;
}

/**
 * A block-scaled quantized tensor carries the value holding its scales and the tile shape they
 * apply to (DeepSeek-V3: 1x128 activations, 128x128 weights).
 */
export interface ScaleTag {
  scales: ValueRef;
  tile: Record<string, number>;
}

export interface TensorType {
  dims: Dim[];
  dtype: DType;
  /** One entry per mesh axis, in mesh-axis order (major first). */
  placements: Placement[];
  scale?: ScaleTag;
}

export interface ValueRef {
  node: number;
  out: number;
}

export type AttrValue = number | string | boolean | null | AttrValue[] | { [k: string]: AttrValue };
export type Attrs = Record<string, AttrValue>;

export interface Node {
  id: number;
  op: string;
  inputs: ValueRef[];
  attrs: Attrs;
  outputs: TensorType[];
  /** Where user code created it, for error messages. */
  site?: string;
}

export interface MeshSpec {
  axes: string[];
  sizes: number[];
}

export interface Graph {
  mesh: MeshSpec;
  nodes: Node[];
}

export const refKey = (v: ValueRef) => `${v.node}:${v.out}`;
export const typeOf = (g: Graph, v: ValueRef): TensorType => g.nodes[v.node]!.outputs[v.out]!;
export const dimNames = (t: TensorType) => t.dims.map((d) => d.name);
export const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
