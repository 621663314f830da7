// The compiler's public surface: IR types, the registry, the tracer, passes and plans.
export * from "./ir/types.ts";
export * from "./ir/placement.ts";
export type { LocalTensor, Box } from "./ir/local.ts";
export * from "./errors.ts";
export { getOp, allOps, inferTypes } from "./ops/index.ts";
export { GraphBuilder, type TracedGraph } from "./trace/builder.ts";
export { verify } from "./passes/verify.ts";
export { printGraph } from "./passes/print.ts";
export { printPlan } from "./passes/print-plan.ts";
export { partition, boxOf } from "./passes/partition.ts";
export { planRedistribute, fmtStep, type RedistStep, type PlannedStep } from "./passes/redistribute-plan.ts";
export { compile, STAGES, type Stage, type CompileOptions } from "./pipeline.ts";
export type { Plan, PlanValue, Instr } from "./plan.ts";
