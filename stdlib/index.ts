// shardts: what users import.
export { Mesh } from "./mesh.ts";
export { DTensor, type AnyDTensor } from "./dtensor.ts";
export { Replicate, Shard, Partial } from "./placements.ts";
export * from "./ops/elementwise.ts";
export * from "./ops/reduce.ts";
export * from "./ops/contraction.ts";
export * from "./ops/routing.ts";
export * from "./ops/movement.ts";
export { randn, rand, zeros, ones, full, iota, fromGlobal, fromLocal } from "./ops/factories.ts";
export { redistribute } from "./ops/redistribute.ts";
export { evaluate, read, type Backend, type EvaluateOptions } from "./run.ts";
export { GlobalValue, maxRelDiff } from "./value.ts";
export { defineModel, defineMain, type ModelDef, type MainDef, type MainContext } from "./model.ts";
export { grad, valueAndGrad } from "./autodiff.ts";
export { input, Program, type Pieces } from "./program.ts";
export type { Dims, DType, Placement, PlacementMap } from "./types/core.ts";
export { ShardingError, ShapeError, DTypeError, CompileError, UsageError } from "../compiler/errors.ts";
export * from "./ops/quantize.ts";
