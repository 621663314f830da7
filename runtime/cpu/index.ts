export { runPlanCpu, type CpuRunResult } from "./executor.ts";
export { assemble, type GlobalTensor } from "./assemble.ts";
