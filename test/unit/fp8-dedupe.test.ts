// The tracer's one node per (quantize-family op, inputs, attrs) (compiler/trace/builder.ts): the EP
// MoE layer's FP8 program (bench/gpu/lib/moe-layer-build.ts) quantizes its bf16 tokens once for the
// dispatch and every shared expert (the shared experts' Wgrads, scaled_dot_wgrad, take those codes; the
// routed Wgrads take the dispatched rows' codes); no two quantize-family nodes are the same computation. A quantize of an f32 value with two consumers stays two nodes (its
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
    // nothing is dequantized or requantized 128x1: the shared experts' Wgrads are scaled_dot_wgrads, which take the
    // codes (their tokens' for w1 / w3 of both experts, four of them on the same codes), the routed ones take their rows' codes
    expect(instrs.filter((i) => i.op === "dequantize").length).toBe(0);
    expect(instrs.filter((i) => i.attrs.tiling === "128x1").length).toBe(0);
    const wgrads = layer.plan.instrs.flatMap((i) => (i.kind === "op" && i.op === "scaled_dot_wgrad" ? [i] : []));
    expect(wgrads.length).toBe(6);
    const xCodes = instrs.find((i) => i.inputs[0] === x && i.attrs.tiling === "1x128")!.outputs[0];
    expect(wgrads.filter((i) => i.inputs[0] === xCodes).length, "the tokens' codes, w1 and w3 of two experts").toBe(4);
    // 38 once: the tokens 5 times (dispatch, each shared w1 and w3), requantized 128x1 once per shared Wgrad of w1 / w3 (4
    // times), and y's gradient (the same into both shared experts' w2) 1x128 and 128x1 once per shared expert; 29 with the
    // tracer's merging (the tokens' 128x1 once, h's 128x1 once per expert); 21 with the 8 128x1 requantizations inside scaled_dot_wgrad
    expect(instrs.filter((i) => i.op === "quantize").length).toBe(21);
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
