// The compiler pipeline, top to bottom as named stages. Each stage is a pure function; `dump`
// receives every intermediate (`--dump=stage`).
import type { Graph, ValueRef } from "./ir/types.ts";
import type { Plan } from "./plan.ts";
import { verify } from "./passes/verify.ts";
import { printGraph } from "./passes/print.ts";
import { partition } from "./passes/partition.ts";
import { printPlan } from "./passes/print-plan.ts";
import type { FusedPlan } from "./codegen/types.ts";
import { fuse } from "./codegen/fuse.ts";
import { printFusedPlan } from "./codegen/print.ts";
import { schedule, type ScheduleReport } from "./passes/schedule.ts";
import type { CostModel } from "./passes/schedule-cost.ts";
import { DEFAULT_PREFETCH_BYTES, prefetchComms } from "./passes/prefetch.ts";

export const STAGES = ["trace", "partition"] as const;
export type Stage = (typeof STAGES)[number];

export interface CompileOptions {
  /** Verify the graph between passes (always on in tests; cheap). */
  verify?: boolean;
  dump?: (stage: Stage, text: string) => void;
}

export function compile(g: Graph, outputs: ValueRef[], opts: CompileOptions = {}): Plan {
  if (opts.verify !== false) verify(g, "trace");
  opts.dump?.("trace", printGraph(g));
  const plan = partition(g, outputs);
  opts.dump?.("partition", printPlan(plan));
  return plan;
}

/**
 * The plan with fusion applied: kernel instructions for the CUDA backend. Opt-in; the CPU backend
 * runs `compile`'s plan as is.
 */
export function compileFused(g: Graph, outputs: ValueRef[], opts: CompileOptions & { dumpFused?: (text: string) => void } = {}): FusedPlan {
  const fused = fuse(compile(g, outputs, opts));
  opts.dumpFused?.(printFusedPlan(fused));
  return fused;
}

/** The predicted gain below which the schedule pass keeps the fused order (see schedule.ts: memory). */
export const MIN_SCHEDULE_GAIN = 0.02;

export interface OrderOptions {
  /** Run the schedule pass (default true). */
  schedule?: boolean;
  /** Keep the scheduled order only for a predicted step at least this fraction shorter (default MIN_SCHEDULE_GAIN). */
  minGain?: number;
  cost?: CostModel;
  /** The prefetch window in bytes (undefined: the default; 0: no prefetch). */
  prefetchBytes?: number;
  report?: ScheduleReport;
}

/**
 * The issue order for rank-local execution (one process per GPU, comm on its own stream): schedule
 * (streams, micro-batch overlap) first, then prefetch (see compiler/passes/schedule.ts for why in
 * that order). A mesh simulated on one GPU keeps the fused order.
 */
export function orderForStreams(fused: FusedPlan, opts: OrderOptions = {}): FusedPlan {
  const s = opts.schedule === false ? fused : schedule(fused, opts.cost, opts.report, { minGain: opts.minGain ?? MIN_SCHEDULE_GAIN, windowBytes: opts.prefetchBytes ?? DEFAULT_PREFETCH_BYTES });
  return prefetchComms(s, opts.prefetchBytes);
}
