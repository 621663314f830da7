// The fused plan: the partitioned Plan with chains of elementwise ops and row reductions replaced by
// kernel instructions. A KernelSpec is rank-independent: it names no sizes, only iteration axes,
// and every rank launches the same kernel with its own sizes and strides (geometry.ts).
import type { DType } from "../ir/types.ts";
import type { Instr, Plan } from "../plan.ts";

/**
 * How a tensor walks one iteration axis: it lacks the axis (broadcast, stride 0), the axis is its
 * innermost (stride 1), or it has the axis elsewhere in its layout (stride passed at launch).
 */
export type AxisUse = "none" | "unit" | "stride";

export interface TensorSpec {
  dtype: DType;
  /** One entry per iteration axis. */
  axes: AxisUse[];
}

/**
 * One value of the fused expression DAG. Every node but `reduce`/`pick` is evaluated per element
 * of the iteration space; in a row kernel, nodes with `col: false` do not vary along the column
 * axis and are evaluated once per row. `dtype` is what the value is rounded to after it is computed
 * (as the unfused op would store it); decomposition temporaries are "f32" (no rounding in f32 math).
 * `ir` and `of` are the IR node the value comes from and its op (for comments and dumps).
 */
export type ExprNode = (
  | { k: "load"; operand: number }
  | { k: "const"; value: number }
  /** An elementwise registry op ("cast" included: its target is `dtype`). */
  | { k: "op"; op: string; args: number[] }
  /** Sum or max of `arg` over the column axis (f32 accumulator). */
  | { k: "reduce"; fn: "sum" | "max"; arg: number }
  /** `arg` (a column value) at column `index` (a per-row i32 value); -1 gives 0 (gather's padding rows). */
  | { k: "pick"; arg: number; index: number }
) & { dtype: DType; col: boolean; ir: number; of: string };

export interface KernelSpec {
  /** map: one iteration space, every result covers it; row: outer axes × one column axis (the last). */
  kind: "map" | "row";
  /** Iteration axes, outermost first. */
  axes: number;
  operands: TensorSpec[];
  results: (TensorSpec & { node: number })[];
  /** Topological order. */
  nodes: ExprNode[];
  /** The IR ops fused, in plan order (for names and comments). */
  ops: string[];
  /**
   * A fused quantize epilogue (map kernels): node `node` (the value quantize reads) is quantized in
   * 1x128 tiles along the innermost axis (which is the tiled dim alone) into result `q` (e4m3, whose
   * `node` is `node` too) and result `scales` (f32, one per tile: its innermost axis counts tiles).
   */
  quant?: { node: number; q: number; scales: number };
  /**
   * Row kernels over few, long rows (split.ts): each row is cut into parts of `chunk` columns (the
   * last shorter), each reduced as a row of its own. Axis `axes - 2` counts the parts: the tensors
   * along the row do not walk it (a part starts at its index x chunk), the reductions' partials
   * (results, one per part) do.
   */
  split?: { chunk: number };
  /** Largest over ranks: elements of any tensor or of the iteration space, and the column length (row kernels; split: the part's). */
  bounds: { elems: number; row: number };
}

/** Which dims make up an iteration axis (outermost first) and where each dim's local size is read. */
export interface AxisInfo {
  dims: string[];
  /** Per dim: a slot whose type has the dim, and the dim's index in that type. */
  from: { slot: number; dim: number }[];
}

export interface KernelInstr {
  kind: "kernel";
  /** Position among the plan's kernel instructions. */
  id: number;
  spec: KernelSpec;
  /** One slot per spec operand, one per spec result. */
  inputs: number[];
  outputs: number[];
  axes: AxisInfo[];
  /** The IR nodes fused, in plan order. */
  fuses: { node: number; op: string; site?: string }[];
}

export type FusedInstr = Instr | KernelInstr;

export interface FusedPlan extends Omit<Plan, "instrs"> {
  instrs: FusedInstr[];
  /** Slots computed inside a kernel and never written to memory (no instruction produces them). */
  internal: number[];
}
