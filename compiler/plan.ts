// The plan: what a backend executes. SPMD: one instruction list; every value slot records, for each
// rank, the local shape and where that piece sits in the global tensor. Backends read these; they
// never re-derive placements.
import { DTYPE_BYTES, type Attrs, type MeshSpec, type TensorType } from "./ir/types.ts";
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

/** The slots an instruction reads and writes (an op's inputs/outputs, a comm step's input/output). */
/** The largest piece of a value over the ranks, in bytes. */
export const pieceBytes = (v: PlanValue): number => DTYPE_BYTES[v.type.dtype] * Math.max(0, ...v.shapes.map((s) => s.reduce((a, b) => a * b, 1)));

/**
 * The segment contractions: ops whose work is sized by a segmented dim's per-group counts. The CUDA
 * backend reads those counts on the host for its per-group GEMMs and padded FP8 layouts, except where the
 * bf16 ones plan their GEMMs on the device (runtime/cuda/segment-device.ts); a host read holds the host
 * until the counts' writer is done (runtime/cuda/moe-counts.ts), which the prefetch and schedule passes
 * (which assume the read) and graph capture (which asks whether it can be avoided) must know.
 */
export const COUNT_SIZED_OPS: ReadonlySet<string> = new Set(["segment_dot", "segment_wgrad", "scaled_segment_dot", "scaled_segment_wgrad"]);

export const readsOf = (ins: { kind: string; inputs?: number[]; input?: number }): number[] => ins.inputs ?? [ins.input!];
export const writesOf = (ins: { kind: string; outputs?: number[]; output?: number }): number[] => ins.outputs ?? [ins.output!];

/**
 * For each slot, the index of the last instruction that needs it (outputs: past the end). A
 * segmented value needs its counts wherever it is read, written, moved or assembled.
 */
export function lastUses(values: PlanValue[], instrs: readonly Parameters<typeof readsOf>[0][], outputs: readonly number[]): number[] {
  const last = values.map(() => -1);
  const counts = (s: number) => Object.values(values[s]!.segCounts);
  instrs.forEach((ins, i) => {
    const r = readsOf(ins), w = writesOf(ins as Parameters<typeof writesOf>[0]);
    for (const s of r) last[s] = i;
    for (const s of [...r, ...w]) for (const c of counts(s)) last[c] = Math.max(last[c]!, i);
  });
  for (const s of outputs) {
    last[s] = instrs.length;
    for (const c of counts(s)) last[c] = instrs.length;
  }
  return last;
}
