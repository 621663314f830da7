// Which scaled_dot calls the CUDA backend sends to the generated Hopper FP8 GEMM (runtime/cuda/
// fp8-scaled-dot.ts) and which to the dequantize + cuBLASLt fallback: a pure decision, tested here;
// the kernels themselves against the CPU reference on the GPU machine (bench/gpu/cuda-ops-check.ts).
import { describe, expect, it } from "vitest";
import { formOf } from "../../runtime/cuda/fp8-scaled-dot.ts";
import { compile } from "../../compiler/pipeline.ts";
import { Mesh, fromGlobal, type AnyDTensor } from "../../stdlib/index.ts";
import { quantize, scaledDot } from "../../stdlib/ops/quantize.ts";

function typesOf(wDims: Record<string, number>, wTiling: "128x128" | "1x128", out: "bf16" | "f32") {
  const m = Mesh.of({ d: 1 });
  const T = (dims: Record<string, number>) => fromGlobal(m, dims, "bf16", new Array(Object.values(dims).reduce((a, b) => a * b, 1)).fill(1)) as AnyDTensor;
  const x = quantize(T({ t: 8, m: 256 }) as never, "1x128", "m") as { q: AnyDTensor; scales: AnyDTensor };
  const w = quantize(T(wDims) as never, wTiling, (wTiling === "128x128" ? Object.keys(wDims) : "m") as never) as { q: AnyDTensor; scales: AnyDTensor };
  const y = scaledDot(x, w as never, "m", { out }) as AnyDTensor;
  const plan = compile(m.builder.graph, [y.ref]);
  const ins = plan.instrs.find((i) => i.kind === "op" && i.op === "scaled_dot")!;
  if (ins.kind !== "op") throw new Error("no scaled_dot");
  return { tIn: ins.inputs.map((s) => plan.values[s]!.type), tOut: plan.values[ins.outputs[0]!]!.type, contract: ins.attrs.contract as string[] };
}

describe("scaled_dot on CUDA: the FP8 GEMM or the fallback", () => {
  it("takes 1x128 activations against a 128x128-blocked [N, K] weight with a bf16 result, either weight dim order", () => {
    for (const dims of [{ n: 64, m: 256 }, { m: 256, n: 64 }]) {
      const t = typesOf(dims, "128x128", "bf16");
      expect(formOf(t.tIn, t.tOut, t.contract)).toEqual({ K: "m", kRest: [], N: "n", rows: ["t"], bRows: false });
    }
  });
  it("takes a weight tiled 1x128 along K (the Wgrad form) to the row-scaled kernels", () => {
    for (const dims of [{ n: 64, m: 256 }, { m: 256, n: 64 }]) {
      const t = typesOf(dims, "1x128", "bf16");
      expect(formOf(t.tIn, t.tOut, t.contract)).toEqual({ K: "m", kRest: [], N: "n", rows: ["t"], bRows: true });
    }
  });
  it("leaves an f32 result (the kernel writes bf16) to the fallback, in either weight form", () => {
    for (const tiling of ["128x128", "1x128"] as const) {
      const f = typesOf({ n: 64, m: 256 }, tiling, "f32");
      expect(formOf(f.tIn, f.tOut, f.contract)).toBeUndefined();
    }
  });
});
