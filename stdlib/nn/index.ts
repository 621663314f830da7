// shardts/nn: layers, the MoE block, the transformer LM and parallel layouts.
export { Layout, LAYOUTS, layoutByName, AXIS_ROLES, type AxisRole, type ShardHints } from "./layout.ts";
export { ParamStore, nameSeed, type ParamSpec, type Init } from "./params.ts";
export { linear, rmsnorm, embedding, swiglu, attention, crossEntropy, toActivation } from "./layers.ts";
export { moe, type MoeConfig, type MoeOut, type ReplicaMap } from "./moe.ts";
export { planReplicas, replicaCounts, replicaTables, rankLoads, slotsPerRank, expectedSlotLoad } from "./moe-replicas.ts";
export { lm, moeLayers, type LmConfig, type LmOut } from "./transformer.ts";
