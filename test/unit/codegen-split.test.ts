// Few, long rows (compiler/codegen/split.ts): which row kernels are cut into a kernel of partials
// and one that reduces them, what each computes and writes, the launch grids, and the numbers (the
// KernelSpec interpreter against the unfused plan on the CPU, on an uneven mesh too). Also the plan
// that showed the problem: the MoE LM step with two micro-batches, whose global gradient norm summed
// 11.5M-element gradients in one block each.
import { describe, expect, it } from "vitest";
import { Mesh, Shard, randn, add, mul, exp, sum, mean, max, softmax, type AnyDTensor } from "../../stdlib/index.ts";
import { compile } from "../../compiler/pipeline.ts";
import { fuse } from "../../compiler/codegen/fuse.ts";
import { emitCuda } from "../../compiler/codegen/cuda/emit.ts";
import { launchOf } from "../../compiler/codegen/cuda/launch.ts";
import { geometry } from "../../compiler/codegen/geometry.ts";
import { CHUNK, MAX_ROWS, MIN_COLS } from "../../compiler/codegen/split.ts";
import type { FusedPlan, KernelInstr } from "../../compiler/codegen/types.ts";
import type { Instr, Plan } from "../../compiler/plan.ts";
import { runPlanCpu } from "../../runtime/cpu/index.ts";
import { runFusedCpu } from "../codegen/run-fused.ts";
import { traceLm } from "../../stdlib/train/trainer.ts";
import { grad } from "../../stdlib/autodiff.ts";
import { adamw, ADAMW_DEFAULTS } from "../../stdlib/optim/adamw.ts";
import { Program } from "../../stdlib/program.ts";
import { layoutByName } from "../../stdlib/nn/layout.ts";
import type { LmConfig } from "../../stdlib/nn/transformer.ts";
import { numel } from "../../compiler/ir/types.ts";

const kernels = (fp: FusedPlan) => fp.instrs.filter((i): i is KernelInstr => i.kind === "kernel");
const chains = (fp: FusedPlan) => kernels(fp).map((k) => `${k.spec.ops.join(" ")}${k.spec.split ? " (parts)" : ""}`);
const H200 = { smCount: 132, aligned: true, blocksPerSM: 2 };

function build(outs: AnyDTensor[]): { plan: Plan; fp: FusedPlan } {
  const plan = compile(outs[0]!.mesh.builder.graph, outs.map((t) => t.ref));
  return { plan, fp: fuse(plan) };
}

/** Largest error of the interpreted fused plan against the unfused plan on the CPU, relative to each output's largest value. */
function errorVsCpu(plan: Plan, fp: FusedPlan): number {
  const a = runPlanCpu(plan).outputs, b = runFusedCpu(fp).outputs;
  let worst = 0;
  a.forEach((x, i) => {
    expect(b[i]!.shape).toEqual(x!.shape);
    const scale = Math.max(...x!.data.map(Math.abs));
    x!.data.forEach((p, j) => (worst = Math.max(worst, Math.abs(p - b[i]!.data[j]!) / scale)));
  });
  return worst;
}

/** Per kernel and rank: rows and the columns one row of its blocks reduces (a split kernel's: a part). */
function rowShapes(fp: FusedPlan): { k: KernelInstr; rank: number; rows: number; cols: number }[] {
  return kernels(fp).filter((k) => k.spec.kind === "row").flatMap((k) =>
    Array.from({ length: fp.world }, (_, rank) => {
      const s = geometry(k, fp, rank).sizes, ncol = s[s.length - 1]!;
      return { k, rank, rows: numel(s.slice(0, -1)), cols: Math.min(ncol, k.spec.split?.chunk ?? ncol) };
    }));
}

describe("row reductions over few, long rows", () => {
  it("one row: add -> mul -> sum is a kernel of partials (the add written too) and a sum of them", () => {
    const mesh = Mesh.of({ d: 1 });
    const dims = { e: 8, m: 1024, f: 1408 }, n = 8 * 1024 * 1408;
    const h = add(randn(mesh, dims, "f32"), randn(mesh, dims, "f32"));
    const s = sum(mul(h, h), ["e", "m", "f"]) as AnyDTensor;
    const { plan, fp } = build([h, s]);
    expect(chains(fp)).toEqual(["add mul sum (parts)", "sum"]);
    const [k1, k2] = kernels(fp) as [KernelInstr, KernelInstr];
    const parts = Math.ceil(n / CHUNK);
    // stage 1 writes h and the partials; stage 2 reads the partials and writes the sum
    expect(k1.outputs[0]).toBe(plan.outputs[0]);
    expect(fp.values[k1.outputs[1]!]!.shapes).toEqual([[parts]]);
    expect(k2.inputs).toEqual([k1.outputs[1]]);
    expect(k2.outputs).toEqual([plan.outputs[1]]);
    expect(fp.values.length).toBe(plan.values.length + 1);
    expect(k1.fuses.map((f) => f.op)).toEqual(["add", "mul", "sum"]);
    expect(k2.fuses.map((f) => f.op)).toEqual(["sum"]);
    // one block reduced the whole tensor; now a wave of blocks takes its parts, and one block the partials
    const prog = emitCuda(fp);
    const [l1, l2] = [k1, k2].map((k) => launchOf(prog.kernels[prog.kernelOf[k.id]!]!, k, fp, 0, H200));
    expect([l1!.grid, l1!.block, l2!.grid]).toEqual([264, 512, 1]);
    expect(prog.kernels[prog.kernelOf[k1.id]!]!.source).toContain(`constexpr int CHUNK = ${CHUNK};`);
    expect(parts).toBe(2816);
  });

  it("a few rows: mean and max finish in the second kernel (the mean's division there); the sums equal the CPU's", () => {
    const mesh = Mesh.of({ d: 1 });
    const x = randn(mesh, { r: 8, c: MIN_COLS + 300 }, "f32");
    const { plan, fp } = build([mean(x, "c") as AnyDTensor, max(exp(x), "c") as AnyDTensor]);
    expect(chains(fp)).toEqual(["mean (parts)", "mean", "exp max (parts)", "max"]);
    const finish = kernels(fp)[1]!;
    expect(finish.spec.nodes.map((n) => n.k)).toEqual(["load", "reduce", "const", "op"]);
    expect(errorVsCpu(plan, fp)).toBeLessThan(1e-5);
  });

  it("an uneven mesh: each rank cuts its own columns; a tail with a per-row operand runs in the second kernel", () => {
    const mesh = Mesh.of({ d: 3 });
    // the columns sharded: 2^17 + 34, + 33, + 33 a rank, partials of a Partial<sum>
    const x = randn(mesh, { r: 4, c: 3 * MIN_COLS + 100 }, "f32", { d: Shard("c") });
    const cols = build([mul(sum(mul(x, x), "c") as AnyDTensor, 0.5)]);
    expect(chains(cols.fp)).toEqual(["mul sum (parts)", "sum mul"]);
    const partial = cols.fp.values[kernels(cols.fp)[0]!.outputs[0]!]!;
    expect(partial.shapes).toEqual([MIN_COLS + 34, MIN_COLS + 33, MIN_COLS + 33].map((c) => [4, Math.ceil(c / CHUNK)]));
    expect(partial.type.placements).toEqual(["P(sum)"]);
    expect(errorVsCpu(cols.plan, cols.fp)).toBeLessThan(1e-5);
    // the rows sharded (4, 3, 3 a rank), each row's sum plus its own b
    const y = randn(mesh, { r: 10, c: MIN_COLS }, "f32", { d: Shard("r") }), b = randn(mesh, { r: 10 }, "f32", { d: Shard("r") });
    const rows = build([add(sum(y, "c") as AnyDTensor, b)]);
    expect(chains(rows.fp)).toEqual(["sum (parts)", "sum add"]);
    expect(rows.fp.values[kernels(rows.fp)[0]!.outputs[0]!]!.shapes).toEqual([4, 3, 3].map((r) => [r, MIN_COLS / CHUNK]));
    const tail = rows.plan.instrs.find((i) => i.kind === "op" && i.op === "add") as Extract<Instr, { kind: "op" }>;
    expect(kernels(rows.fp)[1]!.inputs[0]).toBe(tail.inputs[1]); // b
    expect(errorVsCpu(rows.plan, rows.fp)).toBeLessThan(1e-5);
  });

  it("keeps one kernel for many rows, short rows, and rows a reduction reads again (softmax)", () => {
    const mesh = Mesh.of({ d: 1 });
    const many = randn(mesh, { r: MAX_ROWS, c: MIN_COLS }, "f32");
    const short = randn(mesh, { r: 2, c: MIN_COLS - 8 }, "f32");
    const long = randn(mesh, { r: 2, c: MIN_COLS }, "f32");
    const { fp } = build([sum(many, "c") as AnyDTensor, sum(short, "c") as AnyDTensor, softmax(long, "c") as AnyDTensor]);
    expect(chains(fp)).toEqual(["sum", "sum", "softmax"]);
  });
});

describe("the MoE LM step with two micro-batches (train-moe-lm, ep 2)", () => {
  it("has no row kernel that reduces 2^20 columns or more in fewer than 64 rows", () => {
    const model: LmConfig = {
      vocab: 256, model: 1024, heads: 8, layers: 4, seq: 512, ffn: 2816,
      moe: { experts: 16, topK: 4, ffn: 1408, shared: 1, score: "softmax", auxLoss: 0, fusedDispatch: false }, fp8: false, microBatches: 2,
    };
    // the Trainer's step program (stdlib/train/trainer.ts), without its parameters' initial values
    const t = traceLm(layoutByName("ep", { ep: 2 }), model, 16);
    const { updates, gradNorm } = adamw(t.ps, grad(t.out.loss, Object.fromEntries(t.ps.stored)), ADAMW_DEFAULTS);
    const loads = Object.fromEntries(t.out.loads.map((l, i) => [`load.${i}`, l]));
    const fp = fuse(new Program(t.mesh, { loss: t.out.loss, ce: t.out.ce, gradNorm, ...loads, ...updates }, { backend: "cpu" }).plan);
    const shapes = rowShapes(fp);
    expect(shapes.filter((s) => s.cols >= 2 ** 20 && s.rows < MAX_ROWS).map((s) => `${s.k.spec.ops.join(" ")}: ${s.rows} x ${s.cols}`)).toEqual([]);
    // the expert gradients' sums of squares (two micro-batches added first): 8 x 1024 x 1408 in 2816 parts
    const big = shapes.filter((s) => s.k.spec.split && s.k.spec.ops.join(" ") === "add mul sum" && s.rows === 2816);
    expect(big.length).toBeGreaterThanOrEqual(12);
    const prog = emitCuda(fp);
    expect(new Set(big.map((s) => launchOf(prog.kernels[prog.kernelOf[s.k.id]!]!, s.k, fp, s.rank, H200).grid))).toEqual(new Set([264]));
  }, 60_000);
});
