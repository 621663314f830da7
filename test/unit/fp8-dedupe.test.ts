// The tracer's one node per (quantize-family op, inputs, attrs) (compiler/trace/builder.ts): the EP
// MoE layer's FP8 program (bench/gpu/lib/moe-layer-build.ts) quantizes its bf16 tokens once for the
// dispatch and every shared expert, dequantizes and requantizes them once for all the shared experts'
// Wgrads, and dequantizes the dispatched rows once for both routed Wgrads; no two quantize-family
// nodes are the same computation. A quantize of an f32 value with two consumers stays two nodes (its
// consumers' bf16 gradients are cast to f32 before they are summed). The layer's values stay the
// one-device run's: test/unit/moe-layer-bench-build.test.ts.
import { describe, expect, it } from "vitest";
import { buildLayer } from "../../bench/gpu/lib/moe-layer-build.ts";
import { Mesh, fromGlobal, type AnyDTensor } from "../../stdlib/index.ts";
import { quantize } from "../../stdlib/ops/quantize.ts";

describe("quantize-family nodes are traced once per computation", () => {
  it("the EP layer's FP8 program: tokens quantized once, their Wgrad requantization once, no duplicates", () => {
    const layer = buildLayer({ T: 256, D: 256, F: 128, E: 4, K: 2, shared: 2 }, 2, { fp8: true });
    const instrs = layer.plan.instrs.flatMap((i) => (i.kind === "op" && (i.op === "quantize" || i.op === "dequantize") ? [i] : []));
    const keys = instrs.map((i) => `${i.op} ${i.inputs.join(",")} ${JSON.stringify(i.attrs)}`);
    expect(new Set(keys).size).toBe(keys.length);
    const x = layer.plan.instrs.flatMap((i) => (i.kind === "op" && i.op === "input" && i.attrs.name === "x" ? [i.outputs[0]!] : []))[0];
    expect(instrs.filter((i) => i.inputs[0] === x && i.attrs.tiling === "1x128").length, "the tokens, 1x128").toBe(1);
    // dequantized: the tokens (shared Wgrads) and h of each shared expert (the routed Wgrads take their rows' codes)
    expect(instrs.filter((i) => i.op === "dequantize").length).toBe(3);
    // 38 before: the tokens 5 times (dispatch, each shared w1 and w3), requantized 128x1 once per shared Wgrad of w1 / w3 (4
    // times), and y's gradient (the same into both shared experts' w2) 1x128 and 128x1 once per shared expert
    expect(instrs.filter((i) => i.op === "quantize").length).toBe(38 - 4 - 3 - 2);
  });
  it("keeps two quantizes of an f32 value apart, merges two of a bf16 one", () => {
    for (const [dtype, nodes] of [["f32", 2], ["bf16", 1]] as const) {
      const m = Mesh.of({ d: 1 });
      const x = fromGlobal(m, { t: 4, k: 128 }, dtype, Array.from({ length: 512 }, (_, i) => i % 9)) as AnyDTensor;
      const a = quantize(x as never, "1x128", "k") as { q: AnyDTensor }, b = quantize(x as never, "1x128", "k") as { q: AnyDTensor };
      expect(m.builder.graph.nodes.filter((n) => n.op === "quantize").length, dtype).toBe(nodes);
      expect(a.q.ref.node === b.q.ref.node, dtype).toBe(nodes === 1);
    }
  });
});
