// Quantize epilogues (compiler/codegen/spec.ts): a 1x128 quantize along the innermost dim joins the
// map kernel that produces its input, so one kernel writes the e4m3 bytes and the f32 scales and
// the bf16 value stays in registers unless something else reads it. The fused plan, run through the
// KernelSpec interpreter, must give the CPU reference's bytes and scales bit for bit.
import { describe, expect, it } from "vitest";
import { Mesh, Shard, randn, add, mul, silu, rmsnorm, softmax, type AnyDTensor } from "../../stdlib/index.ts";
import { quantize } from "../../stdlib/ops/quantize.ts";
import { compile } from "../../compiler/pipeline.ts";
import { fuse } from "../../compiler/codegen/fuse.ts";
import { emitCuda } from "../../compiler/codegen/cuda/emit.ts";
import type { FusedPlan, KernelInstr } from "../../compiler/codegen/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import { runPlanCpu } from "../../runtime/cpu/index.ts";
import { runFusedCpu } from "../codegen/run-fused.ts";

const kernels = (fp: FusedPlan) => fp.instrs.filter((i): i is KernelInstr => i.kind === "kernel");
const chains = (fp: FusedPlan) => kernels(fp).map((k) => k.spec.ops.join(" "));
const opsLeft = (fp: FusedPlan) => fp.instrs.flatMap((i) => (i.kind === "op" ? [i.op] : []));

function build(outs: AnyDTensor[]): { plan: Plan; fp: FusedPlan } {
  const plan = compile(outs[0]!.mesh.builder.graph, outs.map((t) => t.ref));
  return { plan, fp: fuse(plan) };
}

/** Every output of the fused plan equals the CPU backend's bit for bit (NaN where it has NaN). */
function expectBitExact(plan: Plan, fp: FusedPlan): void {
  const a = runPlanCpu(plan).outputs, b = runFusedCpu(fp).outputs;
  a.forEach((x, i) => {
    const y = b[i]!;
    expect(y.shape).toEqual(x!.shape);
    for (let j = 0; j < x!.data.length; j++) {
      const p = x!.data[j]!, q = y.data[j]!;
      if (!(Object.is(p, q) || (Number.isNaN(p) && Number.isNaN(q)))) expect(q, `output ${i} element ${j}`).toBe(p);
    }
  });
}

const slotOf = (plan: Plan, op: string, out = 0) => {
  const ins = plan.instrs.find((i) => i.kind === "op" && i.op === op)!;
  return ins.kind === "op" ? ins.outputs[out]! : -1;
};

describe("quantize epilogues", () => {
  it("swiglu → quantize is one map kernel; the bf16 product is never written", () => {
    const mesh = Mesh.of({ dp: 2 });
    const g = randn(mesh, { tokens: 6, ffn: 256 }, "bf16", { dp: Shard("tokens") });
    const u = randn(mesh, { tokens: 6, ffn: 256 }, "bf16", { dp: Shard("tokens") });
    const { q, scales } = quantize(mul(silu(g), u), "1x128", "ffn");
    const { plan, fp } = build([q, scales]);
    expect(chains(fp)).toEqual(["silu mul quantize"]);
    expect(opsLeft(fp)).not.toContain("quantize");
    const k = kernels(fp)[0]!;
    expect(k.spec.kind).toBe("map");
    expect(k.spec.quant).toBeDefined();
    expect(k.spec.results.map((r) => r.dtype)).toEqual(["fp8e4m3", "f32"]);
    expect(fp.internal).toContain(slotOf(plan, "mul"));
    expectBitExact(plan, fp);
    const src = emitCuda(fp).kernels[0]!.source;
    expect(src).toContain("amax = sh_group_amax<G>(amax);");
    expect(src).toContain("constexpr int VEC = 8, P = 1, W = VEC * P, G = 16, U = 2;");
  });

  it("the value quantized is also used elsewhere: it is written too", () => {
    const mesh = Mesh.of({ dp: 1 });
    const g = randn(mesh, { tokens: 4, ffn: 384 }, "bf16"), u = randn(mesh, { tokens: 4, ffn: 384 }, "bf16");
    const h = mul(silu(g), u);
    const { q, scales } = quantize(h, "1x128", "ffn");
    const { plan, fp } = build([q, scales, h]);
    expect(chains(fp)).toEqual(["silu mul quantize"]);
    expect(kernels(fp)[0]!.spec.results.map((r) => r.dtype)).toEqual(["bf16", "fp8e4m3", "f32"]);
    expect(fp.internal).not.toContain(slotOf(plan, "mul"));
    expectBitExact(plan, fp);
  });

  it("odd widths: a short last tile, zero and Inf tiles, an f32 input", () => {
    const mesh = Mesh.of({ dp: 1 });
    const a = randn(mesh, { tokens: 3, k: 300 }, "f32", {}, { std: 3 }), b = randn(mesh, { tokens: 3, k: 300 }, "f32");
    const { q, scales } = quantize(add(a, b), "1x128", "k");
    const { plan, fp } = build([q, scales]);
    expect(chains(fp)).toEqual(["add quantize"]);
    expect(plan.values[slotOf(plan, "quantize", 1)]!.type.dims.map((d) => d.size)).toEqual([3, 3]);
    expectBitExact(plan, fp);
  });

  it("residual add → rmsnorm → quantize is one row kernel; the sum is written, the normed value is not", () => {
    const mesh = Mesh.of({ dp: 2 });
    const x = randn(mesh, { tokens: 6, model: 384 }, "bf16", { dp: Shard("tokens") }), d = randn(mesh, { tokens: 6, model: 384 }, "bf16", { dp: Shard("tokens") });
    const w = randn(mesh, { model: 384 }, "bf16");
    const r = add(x, d);
    const { q, scales } = quantize(rmsnorm(r, w, "model"), "1x128", "model");
    const { plan, fp } = build([q, scales, r]);
    expect(chains(fp)).toEqual(["add rmsnorm quantize"]);
    const k = kernels(fp)[0]!;
    expect(k.spec.kind).toBe("row");
    expect(k.spec.results.map((x) => x.dtype)).toEqual(["bf16", "fp8e4m3", "f32"]);
    expect(fp.internal).toContain(slotOf(plan, "rmsnorm"));
    expectBitExact(plan, fp);
    const src = emitCuda(fp).kernels[0]!.source;
    expect(src).toContain("sh_group_sum<G>");
    expect(src).toContain("amax = sh_group_amax<G>(amax);");
  });

  // (bf16 inputs here: an f32 row sum may differ from the CPU op's in the last bit, as in any row kernel)
  it("rmsnorm → quantize of an odd width (a short last tile)", () => {
    const mesh = Mesh.of({ dp: 1 });
    const x = randn(mesh, { tokens: 5, model: 300 }, "bf16"), w = randn(mesh, { model: 300 }, "bf16");
    const { q, scales } = quantize(rmsnorm(x, w, "model"), "1x128", "model");
    const { plan, fp } = build([q, scales]);
    expect(chains(fp)).toEqual(["rmsnorm quantize"]);
    expectBitExact(plan, fp);
  });

  it("softmax → quantize (a reduction of a reduction) is not fused", () => {
    const mesh = Mesh.of({ dp: 1 });
    const x = randn(mesh, { tokens: 4, vocab: 256 }, "bf16");
    const { q, scales } = quantize(softmax(x, "vocab"), "1x128", "vocab");
    const { plan, fp } = build([q, scales]);
    expect(chains(fp)).toEqual(["softmax"]);
    expect(opsLeft(fp)).toContain("quantize");
    expectBitExact(plan, fp);
  });

  it("quantize of a tensor whose tiled dim is not innermost, or 128x128, is not fused", () => {
    const mesh = Mesh.of({ dp: 1 });
    const a = randn(mesh, { k: 256, tokens: 4 }, "bf16"), b = randn(mesh, { k: 256, tokens: 4 }, "bf16");
    const s = add(a, b);
    const one = quantize(s, "1x128", "k"), two = quantize(s, "128x128", ["k", "tokens"]);
    const { plan, fp } = build([one.q, one.scales, two.q, two.scales]);
    expect(chains(fp)).toEqual(["add"]);
    expect(opsLeft(fp).filter((o) => o === "quantize")).toHaveLength(2);
    expectBitExact(plan, fp);
  });
});
