// The fusion pass (compiler/codegen/fuse.ts) on plans traced from small programs: which ops become
// which kernels, what stays in registers, one kernel for every rank of an uneven mesh, stable CUDA
// text. Every fused plan is also run through the KernelSpec interpreter and compared with the
// unfused plan on the CPU backend, so the grouping, inlining and row-op decompositions are checked
// on numbers, not only on structure.
import { afterAll, describe, expect, it } from "vitest";
import {
  Mesh, Shard, Replicate, Partial, randn, rand, full, iota, add, sub, mul, div, exp, log, neg, silu, gelu, sigmoid, rsqrt, abs, relu, sqrt,
  maximum, minimum, where, cast, sum, mean, max, softmax, logSoftmax, rmsnorm, dot, gather, redistribute, rename, type AnyDTensor,
} from "../../stdlib/index.ts";
import { compile } from "../../compiler/pipeline.ts";
import { fuse } from "../../compiler/codegen/fuse.ts";
import { emitCuda } from "../../compiler/codegen/cuda/emit.ts";
import { launchOf } from "../../compiler/codegen/cuda/launch.ts";
import { printFusedPlan } from "../../compiler/codegen/print.ts";
import { CUDA_EXPR } from "../../compiler/codegen/cuda/ops.ts";
import type { FusedPlan, KernelInstr } from "../../compiler/codegen/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import { allOps, getOp } from "../../compiler/ops/index.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { Trainer } from "../../stdlib/train/trainer.ts";
import { Layout, layoutByName } from "../../stdlib/nn/layout.ts";
import { ADAMW_DEFAULTS } from "../../stdlib/optim/adamw.ts";
import type { LmConfig } from "../../stdlib/nn/transformer.ts";
import { buildOn } from "../../stdlib/model.ts";
import moeLayer from "../../examples/moe-layer.ts";
import tpMlp from "../../examples/tp-mlp.ts";
import { runPlanCpu } from "../../runtime/cpu/index.ts";
import { runFusedCpu } from "../codegen/run-fused.ts";

const report: string[] = [];
const kernels = (fp: FusedPlan) => fp.instrs.filter((i): i is KernelInstr => i.kind === "kernel");
const opsLeft = (fp: FusedPlan) => fp.instrs.flatMap((i) => (i.kind === "op" ? [i.op] : []));
const chains = (fp: FusedPlan) => kernels(fp).map((k) => k.spec.ops.join(" "));

function build(outs: Record<string, AnyDTensor>): { plan: Plan; fp: FusedPlan } {
  const ts = Object.values(outs);
  const plan = compile(ts[0]!.mesh.builder.graph, ts.map((t) => t.ref));
  return { plan, fp: fuse(plan) };
}

/** The fused plan, interpreted, equals the plan on the CPU backend (largest relative error, floor as DESIGN.md). */
function expectSameAsCpu(plan: Plan, fp: FusedPlan, tol: number): number {
  const a = runPlanCpu(plan).outputs, b = runFusedCpu(fp).outputs;
  let worst = 0;
  a.forEach((x, i) => {
    const y = b[i]!;
    expect(y.shape).toEqual(x!.shape);
    let scale = 0;
    for (const v of x!.data) if (Number.isFinite(v)) scale = Math.max(scale, Math.abs(v));
    for (let j = 0; j < x!.data.length; j++) {
      const p = x!.data[j]!, q = y.data[j]!;
      if (Number.isNaN(p) || Number.isNaN(q)) {
        expect(Number.isNaN(q), `output ${i} element ${j}: ${q} vs ${p}`).toBe(Number.isNaN(p));
        continue;
      }
      if (p === q) continue;
      const d = Math.abs(p - q) / Math.max(Math.abs(p), 1e-3 * scale, 1e-30);
      expect(d, `output ${i} element ${j}: ${q} vs ${p}`).toBeLessThanOrEqual(tol);
      worst = Math.max(worst, d);
    }
  });
  return worst;
}

describe("fusion groups", () => {
  it("a SwiGLU MLP block: norm, gate and residual are three kernels between the dots", () => {
    const mesh = Mesh.of({ dp: 2 });
    const x = randn(mesh, { tokens: 8, model: 32 }, "bf16", { dp: Shard("tokens") });
    const nw = randn(mesh, { model: 32 }, "bf16");
    const w1 = randn(mesh, { model: 32, ffn: 64 }, "bf16", {}, { std: 0.2 });
    const w3 = randn(mesh, { model: 32, ffn: 64 }, "bf16", {}, { std: 0.2 });
    const w2 = randn(mesh, { ffn: 64, model: 32 }, "bf16", {}, { std: 0.1 });
    const h = rmsnorm(x, nw, "model");
    const y = add(x, dot(mul(silu(dot(h, w1, "model")), dot(h, w3, "model")), w2, "ffn"));
    const { plan, fp } = build({ y });
    expect(chains(fp)).toEqual(["rmsnorm", "silu mul", "add"]);
    expect(opsLeft(fp).filter((o) => o === "dot")).toHaveLength(3);
    // silu's output never reaches memory
    const siluOut = plan.instrs.find((i) => i.kind === "op" && i.op === "silu")!;
    expect(fp.internal).toContain(siluOut.kind === "op" ? siluOut.outputs[0] : -1);
    expectSameAsCpu(plan, fp, 1e-2);
  });

  it("rmsnorm → mul → silu is one row kernel (the reduction starts the group)", () => {
    const mesh = Mesh.of({ dp: 1 });
    const x = randn(mesh, { tokens: 6, model: 48 }, "f32");
    const w = randn(mesh, { model: 48 }, "f32");
    const g = randn(mesh, { tokens: 6, model: 48 }, "f32");
    const { plan, fp } = build({ y: silu(mul(rmsnorm(x, w, "model"), g)) });
    expect(chains(fp)).toEqual(["rmsnorm mul silu"]);
    expect(kernels(fp)[0]!.spec.kind).toBe("row");
    expectSameAsCpu(plan, fp, 1e-5);
  });

  it("exp → sum ends a group with the reduction; softmax → log is one kernel", () => {
    const mesh = Mesh.of({ dp: 1 });
    const x = randn(mesh, { tokens: 5, vocab: 40 }, "f32");
    const { plan, fp } = build({ s: sum(exp(x), "vocab"), l: log(softmax(x, "vocab")) });
    expect(chains(fp)).toEqual(["exp sum", "softmax log"]);
    const k = kernels(fp)[0]!;
    expect(k.spec.results.map((r) => r.axes)).toEqual([["unit", "none"]]); // one value per row
    expectSameAsCpu(plan, fp, 1e-5);
  });

  it("a value used twice outside the group becomes a result; one used only inside stays in registers", () => {
    const mesh = Mesh.of({ dp: 1 });
    const x = randn(mesh, { tokens: 4, model: 16 }, "f32"), d = randn(mesh, { tokens: 4, model: 16 }, "f32");
    const w = randn(mesh, { model: 16 }, "f32"), proj = randn(mesh, { model: 16, out: 8 }, "f32");
    const r = add(x, d); // the residual stream: read by the norm (inside) and by the dot (outside)
    const t = exp(r); // read only by the mul, inside
    const n = mul(rmsnorm(r, w, "model"), t);
    const { plan, fp } = build({ y: dot(n, proj, "model"), r2: dot(r, proj, "model") });
    expect(chains(fp)).toEqual(["add exp rmsnorm mul"]);
    const k = kernels(fp)[0]!;
    const slotOf = (op: string) => plan.instrs.flatMap((i) => (i.kind === "op" && i.op === op ? i.outputs : []))[0]!;
    expect(k.outputs.sort()).toEqual([slotOf("add"), slotOf("mul")].sort());
    expect(fp.internal).toContain(slotOf("exp"));
    expectSameAsCpu(plan, fp, 1e-5);
  });

  it("a dot between two elementwise ops splits them, and no kernel waits on its own output", () => {
    const mesh = Mesh.of({ dp: 1 });
    const x = randn(mesh, { tokens: 4, model: 16 }, "f32"), w = randn(mesh, { model: 16, k: 16 }, "f32");
    const a = exp(x);
    const b = rename(dot(a, w, "model"), "k", "model"); // depends on a
    const { plan, fp } = build({ y: add(a, b) }); // add needs a (group of exp) and b (after the dot)
    expect(chains(fp)).toEqual(["exp", "add"]);
    const order = fp.instrs.map((i) => (i.kind === "kernel" ? i.spec.ops.join(" ") : i.kind === "op" ? i.op : "comm"));
    expect(order.indexOf("exp")).toBeLessThan(order.indexOf("dot"));
    expect(order.indexOf("dot")).toBeLessThan(order.indexOf("add"));
    expectSameAsCpu(plan, fp, 1e-5);
  });

  it("an uneven mesh gets one kernel per group, serving every rank with its own sizes", () => {
    const mesh = Mesh.of({ dp: 3 });
    const x = randn(mesh, { tokens: 10, model: 40 }, "bf16", { dp: Shard("tokens") });
    const b = randn(mesh, { model: 40 }, "bf16");
    const { plan, fp } = build({ y: softmax(add(x, b), "model"), z: mul(gelu(x), 0.5) });
    expect(plan.values[kernels(fp)[0]!.inputs[0]!]!.shapes).toEqual([[4, 40], [3, 40], [3, 40]]);
    const prog = emitCuda(fp);
    expect(prog.kernels).toHaveLength(2);
    const k = kernels(fp)[0]!;
    const rows = [0, 1, 2].map((r) => launchOf(prog.kernels[prog.kernelOf[k.id]!]!, k, plan, r, { smCount: 132, aligned: true }).args.find((a) => a.name === "n0"));
    expect(rows).toEqual([{ name: "n0", value: 4 }, { name: "n0", value: 3 }, { name: "n0", value: 3 }]);
    expectSameAsCpu(plan, fp, 1e-2);
  });

  it("broadcasts by dim name, where and cast fuse, with operands walking axes in their own layouts", () => {
    const mesh = Mesh.of({ dp: 2 });
    const x = randn(mesh, { b: 2, t: 6, m: 8 }, "f32", { dp: Shard("t") });
    const y = randn(mesh, { m: 8, t: 6 }, "f32", { dp: Shard("t") }); // transposed layout
    const s = randn(mesh, { t: 6 }, "f32", { dp: Shard("t") });
    const ids = cast(iota(mesh, { m: 8 }, "i32", "m"), "f32");
    const z = where(maximum(sub(x, y), mul(s, ids)), cast(cast(x, "bf16"), "f32"), div(y, add(abs(s), 1)));
    const q = cast(relu(sub(cast(x, "i32"), 1)), "f32");
    const { plan, fp } = build({ z, q: add(q, z) });
    // one kernel: the branches meet in `where`, and q joins z's kernel (z is also an output)
    expect(kernels(fp)).toHaveLength(1);
    const k = kernels(fp)[0]!;
    expect(k.axes.map((a) => a.dims)).toEqual([["b"], ["t"], ["m"]]);
    // x [b, t, m] strides its outer axes; y [m, t] walks t innermost and m with a stride; s [t]; the iota [m]
    expect(k.spec.operands.map((o) => o.axes.join(" ")).sort()).toEqual(["none none unit", "none unit none", "none unit stride", "stride stride unit"]);
    expect(opsLeft(fp)).not.toContain("full"); // literals are inlined
    expectSameAsCpu(plan, fp, 1e-5);
  });

  it("cross-entropy as log-sum-exp and pick fuses into one row kernel (gather becomes a pick)", () => {
    const mesh = Mesh.of({ dp: 2 });
    const logits = randn(mesh, { batch: 4, seq: 3, vocab: 50 }, "f32", { dp: Shard("batch") }, { std: 3 });
    const targets = cast(mul(rand(mesh, { batch: 4, seq: 3 }, "f32", { dp: Shard("batch") }), 49.99), "i32");
    const m = max(logits, "vocab");
    const z = sub(logits, m);
    const perToken = sub(log(sum(exp(z), "vocab")), gather(z, targets, "vocab"));
    const nll = neg(gather(logSoftmax(logits, "vocab"), targets, "vocab"));
    const { plan, fp } = build({ loss: mean(perToken, ["batch", "seq"]), nll });
    expect(opsLeft(fp)).not.toContain("gather");
    // both losses read the logits' rows once, in one kernel (with the targets' cast as per-row ops);
    // the mean over all tokens reduces other dims and is a kernel of its own
    expect(chains(fp)).toEqual(["mul cast max sub exp sum log gather sub log_softmax gather neg", "mean"]);
    expectSameAsCpu(plan, fp, 1e-5);
  });

  it("reductions over a sharded dim give local partials; a Partial<sum> full is not inlined", () => {
    const mesh = Mesh.of({ tp: 2 });
    const x = randn(mesh, { t: 4, h: 10 }, "f32", { tp: Shard("h") });
    const s = redistribute(sum(mul(x, x), "h"), { tp: Replicate });
    const p = full(mesh, { t: 4 }, "f32", 1, { tp: Partial("sum") });
    const { plan, fp } = build({ s: sqrt(s), m: mean(x, ["t", "h"]), q: add(redistribute(p, { tp: Replicate }), s) });
    expect(chains(fp)).toContain("mul sum");
    expect(opsLeft(fp)).toContain("full");
    expectSameAsCpu(plan, fp, 1e-5);
  });

  it("softmax over a dim that is not innermost walks its rows with a stride", () => {
    const mesh = Mesh.of({ dp: 1 });
    const x = randn(mesh, { k: 12, q: 5 }, "bf16");
    const { plan, fp } = build({ y: softmax(x, "k"), s: max(sigmoid(x), "k") });
    for (const k of kernels(fp)) expect(k.spec.operands[0]!.axes).toEqual(["unit", "stride"]);
    expectSameAsCpu(plan, fp, 1e-2);
  });

  it("every unary and binary op, f32 and bf16, i32 where it applies, through kernels equals the CPU", () => {
    for (const dtype of ["f32", "bf16"] as const) {
      const mesh = Mesh.of({ dp: 2 });
      const x = randn(mesh, { t: 6, m: 8 }, dtype, { dp: Shard("t") }, { std: 2 });
      const y = add(randn(mesh, { m: 8 }, dtype, {}, { std: 2 }), 0.25);
      const pos = add(abs(x), 0.5);
      const outs: Record<string, AnyDTensor> = {
        abs: abs(x), exp: exp(x), gelu: gelu(x), log: log(pos), neg: neg(x), relu: relu(x), rsqrt: rsqrt(pos), sigmoid: sigmoid(x),
        silu: silu(x), sqrt: sqrt(pos), add: add(x, y), sub: sub(x, y), mul: mul(x, y), div: div(x, y), maximum: maximum(x, y), minimum: minimum(x, y),
      };
      const xi = cast(mul(x, 100), "i32"), yi = cast(mul(y, 7), "i32");
      for (const [n, f] of Object.entries({ abs, neg, relu })) outs[`${n}.i32`] = (f as (a: AnyDTensor) => AnyDTensor)(xi);
      for (const [n, f] of Object.entries({ add, sub, mul, div, maximum, minimum })) outs[`${n}.i32`] = (f as (a: AnyDTensor, b: AnyDTensor) => AnyDTensor)(xi, yi);
      const { plan, fp } = build(outs);
      expect(opsLeft(fp).filter((o) => o !== "random" && o !== "full")).toEqual([]);
      expectSameAsCpu(plan, fp, dtype === "f32" ? 1e-5 : 1e-2);
    }
  });

  it("every elementwise op of the registry has a CUDA form", () => {
    const missing = allOps().filter((o) => o.family === "elementwise" && !(o.name in CUDA_EXPR)).map((o) => o.name);
    expect(missing).toEqual([]);
  });
});

describe("fused whole programs equal their unfused runs", () => {
  const model: LmConfig = {
    vocab: 40, model: 16, heads: 2, layers: 2, seq: 8, ffn: 24,
    moe: { experts: 4, topK: 2, ffn: 12, shared: 1, score: "softmax", auxLoss: 0.01, moeFrom: 1 },
  };
  const B = 6;
  const ids = Int32Array.from({ length: B * model.seq }, (_, i) => (i * 7 + 3) % model.vocab);
  const targets = Int32Array.from({ length: B * model.seq }, (_, i) => (i * 11 + 5) % model.vocab);
  for (const layout of [layoutByName("single"), layoutByName("tp"), new Layout("dp3-uneven", { dp: 3 }, { dp: "fsdp" })]) {
    it(`a training step of a MoE LM (autodiff, AdamW, BF16 moments) under ${layout}`, () => {
      const tr = new Trainer({ model, layout, batch: B, opt: ADAMW_DEFAULTS, schedule: { peak: 1e-2, warmup: 1, total: 10, minRatio: 0.1 }, seed: 7, biasRate: 0 });
      let feeds: Record<string, LocalTensor[]> = {};
      const run = tr.program.runGlobal.bind(tr.program);
      tr.program.runGlobal = (f, read) => ((feeds = f), run(f, read));
      tr.run(ids, targets);
      const plan = tr.program.plan, fp = fuse(plan);
      const a = runPlanCpu(plan, new Map(Object.entries(feeds))), b = runFusedCpu(fp, new Map(Object.entries(feeds)));
      const names = tr.program.outputNames;
      for (const n of ["loss", "ce", "gradNorm"]) expect(b.outputs[names.indexOf(n)]!.data[0], n).toBeCloseTo(a.outputs[names.indexOf(n)]!.data[0]!, 6);
      // updated parameters and moments: Adam's first step divides by |g|, so gradients at float32
      // noise level move visibly with summation order (as in the layout-equivalence test)
      let worst = 0;
      a.outputs.forEach((x, i) => {
        for (let j = 0; j < x!.data.length; j++) worst = Math.max(worst, Math.abs(x!.data[j]! - b.outputs[i]!.data[j]!) / Math.max(Math.abs(x!.data[j]!), 1e-3));
      });
      expect(worst).toBeLessThan(1e-3);
      const left = opsLeft(fp).filter((o) => getOp(o).family === "elementwise" || getOp(o).family === "reduce");
      expect(left, "every elementwise op and reduction is in a kernel").toEqual([]);
      report.push(`${String(layout).padEnd(24)} ${plan.instrs.length} instructions -> ${fp.instrs.length} (${kernels(fp).length} kernels, ${emitCuda(fp).kernels.length} distinct); max rel diff ${worst.toExponential(1)}`);
    });
  }
  it("the MoE layer and tensor-parallel MLP examples", () => {
    for (const [file, def] of [["moe-layer.ts", moeLayer], ["tp-mlp.ts", tpMlp]] as const) {
      const { mesh, outputs } = buildOn(def, def.mesh);
      const plan = compile(mesh.builder.graph, Object.values(outputs).map((t) => t.ref));
      const fp = fuse(plan);
      const worst = expectSameAsCpu(plan, fp, 1e-5);
      report.push(`${file.padEnd(24)} ${plan.instrs.length} instructions -> ${fp.instrs.length} (${kernels(fp).length} kernels); max rel diff ${worst.toExponential(1)}`);
    }
  });
  afterAll(() => console.log(["fused vs unfused:", ...report].join("\n")));
});

describe("generated CUDA", () => {
  const program = () => {
    const mesh = Mesh.of({ dp: 3 });
    const x = randn(mesh, { tokens: 10, model: 64 }, "bf16", { dp: Shard("tokens") });
    const w = randn(mesh, { model: 64 }, "bf16"), g = randn(mesh, { tokens: 10, model: 64 }, "bf16", { dp: Shard("tokens") });
    return build({ y: silu(mul(rmsnorm(x, w, "model"), g)), p: log(softmax(x, "model")), e: sum(exp(x), "model") });
  };

  it("is deterministic: the same program gives the same text and hashes", () => {
    const a = emitCuda(program().fp), b = emitCuda(program().fp);
    expect(a.kernels.map((k) => k.source)).toEqual(b.kernels.map((k) => k.source));
    expect(a.kernels.map((k) => k.hash)).toEqual(b.kernels.map((k) => k.hash));
    expect(new Set(a.kernels.map((k) => k.name)).size).toBe(a.kernels.length);
    expect(emitCuda(program().fp, "sm_100a").kernels[0]!.hash).not.toBe(a.kernels[0]!.hash);
  });

  it("is shared by identical groups (the layers of a model compile once) and names its ops and launch rule", () => {
    const mesh = Mesh.of({ dp: 1 });
    let x: AnyDTensor = randn(mesh, { tokens: 4, model: 32 }, "f32");
    for (let l = 0; l < 4; l++) {
      const h = silu(rmsnorm(x, randn(mesh, { model: 32 }, "f32"), "model"));
      x = add(x, rename(dot(h, randn(mesh, { model: 32, o: 32 }, "f32"), "model"), "o", "model"));
    }
    const { plan, fp } = build({ x });
    // the residual add of one layer and the norm of the next share a kernel (and the rows they read)
    expect(chains(fp)).toEqual(["rmsnorm silu", "add rmsnorm silu", "add rmsnorm silu", "add rmsnorm silu", "add"]);
    const prog = emitCuda(fp);
    expect(prog.kernels).toHaveLength(3);
    expect(prog.kernels[1]!.instances.map((i) => i.id)).toEqual([1, 2, 3]);
    const src = prog.kernels[1]!.source;
    expect(src).toContain("// fuses: add -> rmsnorm -> silu");
    expect(src).toMatch(/\/\/ launch: one row per \d+ lane\(s\), \d+ rows per 256-thread block/);
    expect(src).toContain('extern "C" __global__');
    expect(src).toContain("#include <cuda_bf16.h>");
    expectSameAsCpu(plan, fp, 1e-5);
  });

  it("prints the fused plan", () => {
    const text = printFusedPlan(program().fp);
    expect(text).toMatch(/kernel k0 row\[rmsnorm -> mul -> silu\] over \(tokens, model\)/);
    expect(text).toContain("kept in registers:");
  });
});
