// The plan: what a backend executes. SPMD: one instruction list; every value slot records, for each
// rank, the local shape and where that piece sits in the global tensor. Backends read these; they
// never re-derive placements.
import type { Attrs, MeshSpec, TensorType } from "./ir/types.ts";
import type { Box } from "./ir/local.ts";
import type { PlannedStep } from "./passes/redistribute-plan.ts";

export interface PlanValue {
  type: TensorType;
  /** Per rank. */
  boxes: Box[];
  shapes: number[][];
  /** Slot of the counts tensor for each segmented dim (by dim name). */
  segCounts: Record<string, number>;
}

export type Instr =
  | { kind: "op"; node: number; op: string; attrs: Attrs; inputs: number[]; outputs: number[]; payload?: unknown; site?: string }
  | { kind: "comm"; node: number; step: PlannedStep; input: number; output: number; site?: string };

export interface Plan {
  mesh: MeshSpec;
  world: number;
  values: PlanValue[];
  instrs: Instr[];
  outputs: number[];
  /** For each slot, the index of the last instruction that reads it (for freeing). */
  lastUse: number[];
}
