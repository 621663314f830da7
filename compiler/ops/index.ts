// Loads every op family into the registry (each file registers its table on import).
import "./elementwise.ts";
import "./reduce.ts";
import "./contraction.ts";
import "./routing.ts";
import "./movement.ts";
import "./factory.ts";
import "./collective.ts";
import "./quantize.ts";
import "./scaled-dot.ts";
import "./scaled-dot-wgrad.ts";
import "./scaled-segment.ts";
import "./dispatch.ts";
export { getOp, allOps, inferTypes, type OpDef, type CpuCtx, type ShardCtx, type Family } from "./registry.ts";
