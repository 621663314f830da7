// A weight's FP8 codes in both layouts from one quantize (runtime/cuda/fp8.ts transposedCodesWanted,
// shared-operands.ts keepCodesT / codesIn): where a scaled_segment_dot or scaled_dot reads the codes of a
// 128x128 quantize as B with their last two dims swapped, the quantize kernel writes the transposed codes
// too (shardts_quant_tiles_block_t_*) and the consumer takes them: no copy kernel moves the codes. Where
// the consumer reads them as they are, or nothing reads them, the plain kernel runs. Over the fake native
// layer (test/fakes/segment-run.ts); the kernel's bytes are checked on the CPU emulation
// (test/codegen/fp8-kernels-emulation.test.ts) and the consumers on the GPU (bench/gpu/cuda-ops-check.ts).
import { describe, expect, it } from "vitest";
import { transposedCodesWanted } from "../../runtime/cuda/fp8.ts";
import { compile } from "../../compiler/pipeline.ts";
import type { Plan } from "../../compiler/plan.ts";
import { DTensor, Mesh, fromGlobal, type AnyDTensor } from "../../stdlib/index.ts";
import { quantize } from "../../stdlib/ops/quantize.ts";
import { runOnFakeGpu } from "../fakes/segment-run.ts";
import { useTempKernelCache } from "../fakes/kernel-cache.ts";

useTempKernelCache();
const raw = (name: string, ins: AnyDTensor[], attrs: Record<string, unknown>) => ins[0]!.mesh.builder.add(name, ins.map((t) => t.ref), attrs as never).map((r) => new DTensor(ins[0]!.mesh, r) as AnyDTensor);
const T = (m: Mesh<"d">, dims: Record<string, number>, dtype: "bf16" | "i32") =>
  fromGlobal(m, dims, dtype, Array.from({ length: Object.values(dims).reduce((a, b) => a * b, 1) }, (_, i) => (dtype === "i32" ? (i * 7) % 4 : ((i % 7) - 3) / 4))) as AnyDTensor;

/** The routed experts' Fprop: x [rows, k] (1x128) against w (128x128) stored [e, k, n] (`kn`) or [e, n, k]. */
function segmentPlan(kn: boolean): Plan {
  const m = Mesh.of({ d: 1 }), K = 256, N = 384;
  const [perm, counts] = raw("sort_by_key", [T(m, { g: 2, s: 64 }, "i32")], { dim: "s", rows: "rows", groups: "e", numGroups: 4 });
  const x = raw("gather", [T(m, { g: 2, s: 64, k: K }, "bf16"), perm!], { dim: "s" })[0]!;
  const qx = quantize(x as never, "1x128", "k") as { q: AnyDTensor; scales: AnyDTensor };
  const w = T(m, kn ? { e: 4, k: K, n: N } : { e: 4, n: N, k: K }, "bf16");
  const qw = quantize(w as never, "128x128", ["n", "k"]) as { q: AnyDTensor; scales: AnyDTensor };
  const y = raw("scaled_segment_dot", [qx.q, qx.scales, qw.q, qw.scales, counts!], { contract: "k", out: "bf16" })[0]!;
  return compile(m.builder.graph, [y.ref]);
}

/** An FP8 Linear's Fprop: x [t, k] against w stored [k, n] (`kn`) or [n, k]. */
function densePlan(kn: boolean): Plan {
  const m = Mesh.of({ d: 1 }), K = 256, N = 384;
  const qx = quantize(T(m, { t: 128, k: K }, "bf16") as never, "1x128", "k") as { q: AnyDTensor; scales: AnyDTensor };
  const qw = quantize(T(m, kn ? { k: K, n: N } : { n: N, k: K }, "bf16") as never, "128x128", ["n", "k"]) as { q: AnyDTensor; scales: AnyDTensor };
  const y = raw("scaled_dot", [qx.q, qx.scales, qw.q, qw.scales], { contract: ["k"], out: "bf16" })[0]!;
  return compile(m.builder.graph, [y.ref]);
}

const quantizeOf = (p: Plan) => p.instrs.filter((i) => i.kind === "op" && i.op === "quantize") as Extract<Plan["instrs"][number], { kind: "op" }>[];
const codeCopies = (events: string[]) => events.filter((e) => /copy|strided|transpose/.test(e) && !/f32|bf16|i32/.test(e));

describe("a weight's codes in both layouts from one quantize", () => {
  for (const [what, make, device] of [["scaled_segment_dot (device counts)", segmentPlan, true], ["scaled_segment_dot (host counts)", segmentPlan, false], ["scaled_dot", densePlan, true]] as const) {
    it(`${what}: w stored [.., k, n] -> the quantize writes the transposed codes and nothing copies them`, () => {
      const swapped = make(true), plain = make(false);
      expect(quantizeOf(swapped).map((q) => transposedCodesWanted(swapped, q))).toEqual([false, true]); // x's 1x128 quantize: no
      expect(quantizeOf(plain).map((q) => transposedCodesWanted(plain, q))).toEqual([false, false]);
      const a = runOnFakeGpu(swapped, { counts: [32], device, steps: 2 }), b = runOnFakeGpu(plain, { counts: [32], device, steps: 2 });
      expect(a.events.filter((e) => e.startsWith("shardts_quant_tiles_block_t_bf16"))).toHaveLength(2); // once a step
      expect(b.events.some((e) => e.startsWith("shardts_quant_tiles_block_t_"))).toBe(false);
      // no copy of the codes (1-byte elements) on either; the f32 copies left move scales (B's blocks swap too)
      expect(codeCopies(a.events)).toEqual([]);
      expect(codeCopies(b.events)).toEqual([]);
      expect(a.events.some((e) => /fp8_gemm/.test(e))).toBe(true);
    });
  }

  it("the codes a consumer reads as they are are not transposed (the Dgrad's side of a weight)", () => {
    const m = Mesh.of({ d: 1 });
    const qx = quantize(T(m, { t: 128, n: 384 }, "bf16") as never, "1x128", "n") as { q: AnyDTensor; scales: AnyDTensor };
    const qw = quantize(T(m, { k: 256, n: 384 }, "bf16") as never, "128x128", ["n", "k"]) as { q: AnyDTensor; scales: AnyDTensor };
    // contract n: B read [k][n], as stored
    const y = raw("scaled_dot", [qx.q, qx.scales, qw.q, qw.scales], { contract: ["n"], out: "bf16" })[0]!;
    const p = compile(m.builder.graph, [y.ref]);
    expect(quantizeOf(p).map((q) => transposedCodesWanted(p, q))).toEqual([false, false]);
  });
});
