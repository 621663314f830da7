// The FP8 Linear's three contractions (stdlib/nn/fp8.ts fp8Dot: Fprop, Dgrad, and the Wgrad over the
// token dims ["b", "seq"], scaled_dot_wgrad) through the CUDA executor over the fake native layer: each
// is one launch of a generated FP8 GEMM (the Wgrad the row-scaled one, its two contracted dims
// flattened into K, x's codes and dY quantized 128x1 into its layout by one kernel each) and none
// dequantizes into cuBLASLt's f32 GEMM. The flattening is exact: the CPU reference of a
// contraction over ["b", "seq"] equals that of the same codes and scales contracted over one dim of
// b·seq (the kernel's K), bit for bit. Numerics on a GPU: bench/gpu/cuda-ops-check.ts (scaled_dot).
import { describe, expect, it } from "vitest";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { formOf } from "../../runtime/cuda/fp8-scaled-dot.ts";
import { dotWgradForm } from "../../runtime/cuda/fp8-dot-wgrad.ts";
import { dequantize, dequantizeVec, wgradColumns } from "../../runtime/cuda/kernels/fp8-sources.ts";
import { fp8GemmOf } from "../../runtime/cuda/fp8-gemm.ts";
import { defaultGemmConfig, defaultRowScaledConfig, smemBytes } from "../../compiler/codegen/cuda/gemm/config.ts";
import { compile } from "../../compiler/pipeline.ts";
import { runPlanCpu } from "../../runtime/cpu/executor.ts";
import { Mesh, fromGlobal, type AnyDTensor } from "../../stdlib/index.ts";
import { fp8Dot } from "../../stdlib/nn/fp8.ts";
import { quantize, scaledDot } from "../../stdlib/ops/quantize.ts";
import { sum } from "../../stdlib/ops/reduce.ts";
import { add, mul } from "../../stdlib/nn/ops-internal.ts";
import { grad } from "../../stdlib/autodiff.ts";
import { fakeAddon } from "../fakes/native-addon.ts";
import { traceTotals, type TraceEvent } from "../../runtime/cuda/trace.ts";
import { useTempKernelCache } from "../fakes/kernel-cache.ts";
import { mulberry32 as rng } from "../helpers/prng.ts";

const T = (m: Mesh<"d">, dims: Record<string, number>, r: () => number) =>
  fromGlobal(m, dims, "bf16", Array.from({ length: Object.values(dims).reduce((a, b) => a * b, 1) }, () => r() * 4 - 2)) as AnyDTensor;

/** fp8Dot(x, w) with x [b, seq, model] and its gradients wrt x and w, as the EP layer's shared experts. */
function linearPlan(wDims: Record<string, number>) {
  const m = Mesh.of({ d: 1 }), r = rng(7);
  const x = T(m, { b: 2, seq: 256, model: 256 }, r), w = T(m, wDims, r), dy = T(m, { b: 2, seq: 256, ffn: 128 }, r);
  const y = fp8Dot(x, w, "model", "ffn");
  const g = grad(sum(mul(y, dy), ["b", "seq", "ffn"]) as AnyDTensor, { x, w });
  return compile(m.builder.graph, [y.ref, g.x.ref, g.w.ref]);
}

describe("scaled_dot on CUDA: the FP8 Linear's Fprop, Dgrad and Wgrad on the generated FP8 GEMMs (fake native layer)", () => {
  useTempKernelCache();
  for (const wDims of [{ model: 256, ffn: 128 }, { ffn: 128, model: 256 }]) {
    it(`Fprop and Dgrad are scaled_dots of the kernels' form, the Wgrad a scaled_dot_wgrad over [b, seq] of the row-scaled form (weight [${Object.keys(wDims).join(", ")}])`, () => {
      const plan = linearPlan(wDims);
      const ops = plan.instrs.flatMap((i) => (i.kind === "op" && (i.op === "scaled_dot" || i.op === "scaled_dot_wgrad") ? [i] : []));
      expect(ops.map((i) => i.op).sort()).toEqual(["scaled_dot", "scaled_dot", "scaled_dot_wgrad"]);
      const types = (ins: (typeof ops)[number]) => [ins.inputs.map((v) => plan.values[v]!.type), plan.values[ins.outputs[0]!]!.type] as const;
      const forms = ops.filter((i) => i.op === "scaled_dot").map((ins) => formOf(...types(ins), ins.attrs.contract as string[]));
      expect(forms.map((f) => f && { K: f.K, kRest: f.kRest, bRows: f.bRows })).toEqual([
        { K: "model", kRest: [], bRows: false },
        { K: "ffn", kRest: [], bRows: false },
      ]);
      const w = ops.find((i) => i.op === "scaled_dot_wgrad")!;
      expect(dotWgradForm(...types(w), w.attrs)).toEqual({ kd: "model", contract: ["b", "seq"], gFree: ["ffn"] });
      // and nothing dequantizes or requantizes x on the way: the quantizes are x's, w's and dY's 1x128
      expect(plan.instrs.filter((i) => i.kind === "op" && i.op === "dequantize")).toEqual([]);
      expect(plan.instrs.filter((i) => i.kind === "op" && i.op === "quantize").map((i) => (i.kind === "op" ? i.attrs.tiling : ""))).toEqual(["1x128", "128x128", "1x128"]);
    });
    it(`runs three FP8 GEMM launches (one row-scaled) and no cuBLASLt GEMM (weight [${Object.keys(wDims).join(", ")}])`, () => {
      const launches: number[] = [];
      const f = fakeAddon({ spy: (method, args) => void (method === "launchKernel" && launches.push(args[3] as number)) });
      new CudaExecutor(f.addon, 0).run(linearPlan(wDims), undefined, undefined, { download: false });
      // this plan's GEMMs are far below a wave of 128 x 256 tiles: the 128 x 128 kernel runs them
      const dense = smemBytes(defaultGemmConfig(false, { M: 128, N: 128 })), rows = smemBytes(defaultRowScaledConfig());
      expect(dense).not.toBe(rows);
      expect([launches.filter((s) => s === dense).length, launches.filter((s) => s === rows).length]).toEqual([2, 1]);
      expect(f.calls.get("cublasLtMatmulRun") ?? 0).toBe(0);
    });
  }

  it("a step's GEMM launches are prepared once: later runs of the plan encode no tensor maps; a new buffer or SM count gets its own", () => {
    const f = fakeAddon();
    const ex = new CudaExecutor(f.addon, 0), plan = linearPlan({ model: 256, ffn: 128 });
    const encodes = () => f.calls.get("tensorMapEncodeTiled") ?? 0;
    const perRun: number[] = [];
    for (let i = 0; i < 8; i++) {
      const before = encodes();
      ex.run(plan, undefined, undefined, { download: false });
      perRun.push(encodes() - before);
    }
    expect(perRun[0]).toBeGreaterThan(0);
    // the allocator hands the same addresses back once the pool has settled (from the fourth run here)
    expect(perRun.slice(-3)).toEqual([0, 0, 0]);
    // the memo's key: the same launch is the same closure; another output buffer or grid is another
    const g = fp8GemmOf(ex), c = defaultGemmConfig(false, { M: 256, N: 256 }), s = { M: 256, N: 256, K: 256 };
    const bufs = { a: 0x1000n, b: 0x2000n, sa: 0x3000n, sb: 0x4000n, d: 0x5000n };
    const one = g.prepare(c, s, bufs);
    expect(g.prepare(c, s, { ...bufs })).toBe(one);
    expect(g.prepare(c, s, { ...bufs, d: 0x6000n })).not.toBe(one);
    g.reservedSms = 16;
    expect(g.prepare(c, s, bufs)).not.toBe(one);
    g.reservedSms = 0;
  });

  it("a traced run splits each scaled_dot into its operands' layout copies, the GEMM and the output copy (parts)", () => {
    const f = fakeAddon();
    const events: TraceEvent[] = [];
    new CudaExecutor(f.addon, 0).run(linearPlan({ model: 256, ffn: 128 }), undefined, undefined, { download: false, trace: events });
    const parts = traceTotals(events.filter((e) => e.cat === "part"));
    const n = (name: string) => parts.find((t) => t.name === name)?.n ?? 0;
    expect([n("dense FP8 GEMM"), n("dense FP8 GEMM (row-scaled B)")]).toEqual([2, 1]);
    // the two scaled_dots' copies and the Wgrad's (its gy layout and the two 128x1 quantizes into the GEMM's layout)
    const want: Record<string, number> = { "A layout": 3, "A scales layout": 3, "B layout": 2, "B scales layout": 2, "output layout": 3, "gy layout": 1, "A quantized 128x1": 1, "gy quantized 128x1": 1 };
    for (const [name, k] of Object.entries(want)) expect(n(name), name).toBe(k);
  });

  it("the Wgrad quantizes x's codes and dY 128x1 into the GEMM's layout (one kernel each, no dequantize), and a SwiGLU's gate and up Wgrads share x's", () => {
    const count = (build: (m: Mesh<"d">, x: AnyDTensor, r: () => number) => AnyDTensor[]) => {
      const m = Mesh.of({ d: 1 }), r = rng(5);
      const x = T(m, { b: 2, seq: 200, model: 256 }, r);
      const ws = build(m, x, r);
      const names: string[] = [];
      const f = fakeAddon({ spy: (method, args) => void (method === "launchKernel" && names.push(f.kernelName(args[0]) ?? "?")) });
      new CudaExecutor(f.addon, 0).run(compile(m.builder.graph, ws.map((t) => t.ref)), undefined, undefined, { download: false });
      return (k: string) => names.filter((nm) => nm === k).length;
    };
    const wgradOf = (m: Mesh<"d">, x: AnyDTensor, r: () => number, n: number) => {
      const outs = Array.from({ length: n }, () => {
        const w = T(m, { model: 256, ffn: 128 }, r), dy = T(m, { b: 2, seq: 200, ffn: 128 }, r);
        return { w, y: fp8Dot(x, w, "model", "ffn"), dy };
      });
      const loss = outs.map((o) => sum(mul(o.y, o.dy), ["b", "seq", "ffn"]) as AnyDTensor).reduce((a, b) => add(a, b) as AnyDTensor);
      const g = grad(loss, Object.fromEntries(outs.map((o, i) => [`w${i}`, o.w])));
      return outs.map((_, i) => g[`w${i}`]!);
    };
    for (const n of [1, 2]) {
      const k = count((m, x, r) => wgradOf(m, x, r, n));
      expect([k(wgradColumns("fp8").name), k(wgradColumns("bf16").name)], `${n} Wgrads`).toEqual([1, n]);
      expect(k(dequantizeVec("f32").name) + k(dequantize("f32").name), `${n} Wgrads`).toBe(0);
    }
  });

  it("contracting [b, seq] (seq tiled 128x1 in whole tiles) equals contracting the flattened b·seq, bit for bit (CPU reference)", () => {
    const r = rng(11);
    const vals = (n: number) => Array.from({ length: n }, () => r() * 4 - 2);
    const xs = vals(2 * 256 * 64), gs = vals(2 * 256 * 48);
    const run = (flat: boolean) => {
      const m = Mesh.of({ d: 1 });
      const dims = (w: Record<string, number>) => (flat ? { t: 512, ...w } : { b: 2, seq: 256, ...w });
      const x = fromGlobal(m, dims({ i: 64 }), "bf16", xs) as AnyDTensor, g = fromGlobal(m, dims({ o: 48 }), "bf16", gs) as AnyDTensor;
      const tok = flat ? "t" : "seq";
      const qx = quantize(x as never, "128x1", tok) as { q: AnyDTensor; scales: AnyDTensor };
      const qg = quantize(g as never, "128x1", tok) as { q: AnyDTensor; scales: AnyDTensor };
      const y = scaledDot(qx, qg as never, (flat ? ["t"] : ["b", "seq"]) as never, { out: "bf16" }) as AnyDTensor;
      return runPlanCpu(compile(m.builder.graph, [y.ref])).outputs[0]!.data;
    };
    const a = run(false), b = run(true);
    expect(a.some((v) => v !== 0)).toBe(true);
    expect(Array.from(a)).toEqual(Array.from(b));
  });
});
