// Which kernel the CUDA executor's sort_by_key launches (runtime/cuda/device-ops.ts), over the fake
// native layer, by name: up to MOE_MAX_GROUPS groups the block-a-row stable sort that moe_dispatch's
// permute uses (its numerics: test/codegen/moe-kernels-emulation.test.ts); more groups the
// one-thread-a-row counting sort.
import { describe, expect, it } from "vitest";
import { namingLaunches } from "../fakes/kernel-names.ts";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { compile } from "../../compiler/pipeline.ts";
import { Mesh, fromGlobal, type AnyDTensor } from "../../stdlib/index.ts";
import { sortByKey } from "../../stdlib/ops/routing.ts";
import { MOE_MAX_GROUPS } from "../../runtime/cuda/kernels/moe-sources.ts";
import { fakeAddon } from "../fakes/native-addon.ts";
import { useTempKernelCache } from "../fakes/kernel-cache.ts";

function launched(groups: number): string[] {
  const m = Mesh.of({ d: 1 });
  const keys = fromGlobal(m, { b: 2, s: 40 }, "i32", Array.from({ length: 80 }, (_, i) => (i * 7) % groups)) as AnyDTensor;
  const { perm, counts } = sortByKey(keys, "s", { rows: "rows", groups: "e", numGroups: groups }) as { perm: AnyDTensor; counts: AnyDTensor };
  const plan = compile(m.builder.graph, [perm.ref, counts.ref]);
  const { addon, order } = namingLaunches(fakeAddon().addon);
  new CudaExecutor(addon, 0).run(plan, undefined, undefined, { download: false });
  return order;
}

describe("sort_by_key on CUDA: which kernel runs (fake native layer)", () => {
  useTempKernelCache();
  it("sorts each row with a block (the MoE permute's kernel) up to MOE_MAX_GROUPS groups, one thread a row past that", () => {
    expect(launched(64)).toEqual(["shardts_moe_route"]);
    expect(launched(MOE_MAX_GROUPS)).toEqual(["shardts_moe_route"]);
    expect(launched(MOE_MAX_GROUPS + 1)).toEqual(["shardts_sort_by_key"]);
  });
});
