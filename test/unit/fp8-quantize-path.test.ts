// Which kernels the CUDA executor's quantize and dequantize launch (runtime/cuda/fp8.ts), over the
// fake native layer, by kernel name: a 128x128 quantize whose two tiled dims are the innermost pair
// is one launch of the register-tile kernel in either order of `dims` (a block is the same block; the
// scales keep x's dim order), with no transposing copies of the weight, its codes or its scales; a
// dequantize whose rows are whole 16-byte chunks is one launch of the 16-codes-a-thread kernel, and
// the scalar kernel takes the rest. The kernels' numerics: test/codegen/fp8-kernels-emulation.test.ts.
import { namingLaunches } from "../fakes/kernel-names.ts";
import { describe, expect, it } from "vitest";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { compile } from "../../compiler/pipeline.ts";
import { Mesh, fromGlobal, type AnyDTensor } from "../../stdlib/index.ts";
import { dequantize, quantize } from "../../stdlib/ops/quantize.ts";
import { fakeAddon } from "../fakes/native-addon.ts";
import { useTempKernelCache } from "../fakes/kernel-cache.ts";

/** The names of the kernels a plan's run launches, in order. */
function launched(make: (m: Mesh<"d">) => AnyDTensor[]): string[] {
  const m = Mesh.of({ d: 1 });
  const plan = compile(m.builder.graph, make(m).map((t) => t.ref));
  const { addon, order } = namingLaunches(fakeAddon().addon);
  new CudaExecutor(addon, 0).run(plan, undefined, undefined, { download: false });
  return order;
}
const T = (m: Mesh<"d">, dims: Record<string, number>) => fromGlobal(m, dims, "bf16", Array.from({ length: Object.values(dims).reduce((a, b) => a * b, 1) }, (_, i) => (i % 5) - 2)) as AnyDTensor;

describe("quantize and dequantize on CUDA: which kernels run (fake native layer)", () => {
  useTempKernelCache();
  it("quantizes a 128x128 weight in place whichever order its tiled dims are named in", () => {
    for (const dims of [["ffn", "model"], ["model", "ffn"]]) {
      const got = launched((m) => {
        const q = quantize(T(m, { experts: 2, model: 256, ffn: 128 }) as never, "128x128", dims as never) as { q: AnyDTensor; scales: AnyDTensor };
        return [q.q, q.scales];
      });
      expect(got, dims.join(", ")).toEqual(["shardts_quant_tiles_block_bf16"]);
    }
  });
  it("dequantizes 16 codes a thread where rows are whole 16-byte chunks, else one a thread", () => {
    for (const [K, kernel] of [[256, "shardts_dequant_v16_f32"], [200, "shardts_dequant_f32"]] as const) {
      const got = launched((m) => {
        const q = quantize(T(m, { t: 8, k: K }) as never, "1x128", "k") as { q: AnyDTensor; scales: AnyDTensor };
        return [dequantize(q.q, q.scales, { out: "f32" }) as AnyDTensor];
      });
      expect(got.filter((n) => n.startsWith("shardts_dequant")), `K ${K}`).toEqual([kernel]);
    }
  });
});
