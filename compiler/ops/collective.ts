// Collective family in the global view: `redistribute` is the one way to change placements. The
// partition pass replaces it with the steps of the redistribute planner; backends run those steps.
import type { Placement } from "../ir/types.ts";
import { CompileError, ShardingError } from "../errors.ts";
import { isPartial, isPlacement, shardDim } from "../ir/placement.ts";
import { msgShardNoDim } from "../messages.ts";
import { defineOps } from "./registry.ts";

defineOps([
  {
    name: "redistribute",
    family: "collective",
    args: ["x"],
    shape: ([x]) => [{ dims: x!.dims, dtype: x!.dtype }],
    shard: (_p, ctx) => {
      const to = (ctx.attrs.to as Placement[])[ctx.axisIndex];
      if (!isPlacement(to)) throw new ShardingError(`mesh axis '${ctx.axis}': ${JSON.stringify(to)} is not a placement; use Replicate, Shard("dim"), Partial("sum") or Partial("max")`);
      const d = shardDim(to);
      if (d !== undefined && !ctx.inputs[0]!.dims.some((x) => x.name === d)) throw new ShardingError(msgShardNoDim(ctx.axis, d));
      return [to];
    },
    cpu: () => {
      throw new CompileError("redistribute reached a backend unpartitioned; run the partition pass first");
    },
    // the global value is unchanged: the gradient moves back to the input's layout (a Partial
    // input's pieces each receive the whole gradient, so its gradient is replicated there)
    grad: ({ b, gy, inTypes }) => [b.fit(gy[0]!, inTypes[0]!.placements.map((p) => (isPartial(p) ? "R" : p)))],
  },
]);
