// The exchanges inside MoE dispatch/combine (runtime/cuda/moe.ts), as plan geometry: a value in the
// tokens' layout (rows grouped by expert, still on the rank that holds the tokens) is added to the
// plan beside the op's own value, and the redistribute planner's steps between the two are run like
// any comm step. Pure and generic over what a piece is (device buffers on a GPU, host tensors in the
// unit tests, which run the steps with the CPU simulation).
import type { Placement, TensorType } from "../../compiler/ir/types.ts";
import type { Plan, PlanValue } from "../../compiler/plan.ts";
import { coordsOf, shardDim } from "../../compiler/ir/placement.ts";
import { boxOf } from "../../compiler/passes/partition.ts";
import { planRedistribute, type PlannedStep } from "../../compiler/passes/redistribute-plan.ts";

/**
 * Runs one planned step of `plan` from slot `inSlot` to `outSlot` on pieces per rank (only the ranks
 * run here); `release`: the input pieces are the step's to release once it no longer needs them.
 */
export type RunStep<P> = (plan: Plan, step: PlannedStep, inSlot: number, outSlot: number, pieces: P[], release: boolean) => P[];

/** The plan with extra values appended (intermediates of the exchanges); their slots follow the plan's. */
export class Extra {
  readonly values: PlanValue[] = [];
  constructor(private readonly plan: Plan) {}
  add(type: TensorType, segCounts: Record<string, number>): number {
    const per = Array.from({ length: this.plan.world }, (_, r) => boxOf(type, this.plan.mesh, coordsOf(this.plan.mesh, r)));
    this.values.push({ type, boxes: per.map((p) => p.box), shapes: per.map((p) => p.shape), segCounts });
    return this.plan.values.length + this.values.length - 1;
  }
  private value(slot: number): PlanValue {
    return slot < this.plan.values.length ? this.plan.values[slot]! : this.values[slot - this.plan.values.length]!;
  }
  shapeOf(slot: number, r: number): number[] {
    return this.value(slot).shapes[r]!;
  }
  typeOf(slot: number): TensorType {
    return this.value(slot).type;
  }
  get full(): Plan {
    return { ...this.plan, values: [...this.plan.values, ...this.values] };
  }
}

/**
 * Whether compute must wait for an exchange into `slot` as soon as it is issued: only for the op's
 * inner values (its own kernels read them next: combine's rows on the way back). An exchange into one
 * of the plan's own values (dispatch's rows and counts, redispatch's rows) stays in flight on the
 * communication stream, and the instruction that reads it waits (RankLocal.beforeReads), so the
 * compute issued in between (the other micro-batch's) overlaps it.
 */
export const waitsAtOnce = (plan: Plan, slot: number): boolean => slot >= plan.values.length;

/** Placements of a value whose axes that split `dims` (rows, experts) take the tokens' placement instead. */
export const tokenSide = (ps: Placement[], token: Placement[], dims: string[]): Placement[] => ps.map((p, a) => (dims.includes(shardDim(p) ?? "") ? token[a]! : p));

/**
 * Moves pieces of `type` from slot `fromSlot` (placements `from`) to slot `toSlot` (placements `to`)
 * through the planner's steps, adding an extra value per intermediate. Pieces the move made are
 * handed to the next step to release; the first step's are the caller's. Returns `toSlot`'s pieces.
 */
export function move<P>(ex: Extra, run: RunStep<P>, type: TensorType, fromSlot: number, from: Placement[], toSlot: number, to: Placement[], pieces: P[], segCounts: Record<string, number>, ownFirst: boolean): P[] {
  const steps = planRedistribute(type, from, to, ex.full.mesh);
  const slots = steps.map((s, i) => (i === steps.length - 1 ? toSlot : ex.add({ ...type, placements: s.after as Placement[] }, segCounts)));
  const plan = ex.full;
  let cur = fromSlot;
  steps.forEach((s, i) => {
    pieces = run(plan, s, cur, slots[i]!, pieces, i > 0 || ownFirst);
    cur = slots[i]!;
  });
  return pieces;
}
