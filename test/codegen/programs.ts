// Representative programs for the code generator: every elementwise op in f32 and bf16 (i32 where
// it applies), broadcasts, where and casts, each row reduction in f32 and bf16 on short, long and
// very long rows (few, long ones split in two kernels), the fused patterns of a transformer, and a
// whole training step. Each builds a fused plan; test/codegen compiles every kernel of it, and a GPU
// test can run the same programs.
import {
  Mesh, Shard, randn, rand, iota, full, add, sub, mul, div, exp, log, neg, silu, gelu, sigmoid, rsqrt, abs, relu, sqrt,
  maximum, minimum, where, cast, sum, mean, max, softmax, logSoftmax, rmsnorm, gather, type AnyDTensor,
} from "../../stdlib/index.ts";
import { quantize } from "../../stdlib/ops/quantize.ts";
import { compile } from "../../compiler/pipeline.ts";
import { fuse } from "../../compiler/codegen/fuse.ts";
import type { FusedPlan } from "../../compiler/codegen/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { Trainer } from "../../stdlib/train/trainer.ts";
import { layoutByName } from "../../stdlib/nn/layout.ts";
import { ADAMW_DEFAULTS } from "../../stdlib/optim/adamw.ts";

export interface Built {
  plan: Plan;
  fp: FusedPlan;
  /** Values for the plan's `input` placeholders, where it has any (computed on demand). */
  feeds?: () => Map<string, LocalTensor[]>;
}

function build(outs: Record<string, AnyDTensor>): Built {
  const ts = Object.values(outs);
  const plan = compile(ts[0]!.mesh.builder.graph, ts.map((t) => t.ref));
  return { plan, fp: fuse(plan) };
}

type Un = (x: AnyDTensor) => AnyDTensor;
type Bin = (a: AnyDTensor, b: AnyDTensor) => AnyDTensor;
const UNARY = { abs, exp, gelu, log, neg, relu, rsqrt, sigmoid, silu, sqrt } as Record<string, Un>;
const BINARY = { add, sub, mul, div, maximum, minimum } as Record<string, Bin>;

function elementwise(dtype: "f32" | "bf16"): Built {
  const mesh = Mesh.of({ dp: 2 });
  const x = randn(mesh, { tokens: 8, model: 64 }, dtype, { dp: Shard("tokens") });
  const y = randn(mesh, { model: 64 }, dtype);
  const outs: Record<string, AnyDTensor> = {};
  for (const [n, f] of Object.entries(UNARY)) outs[n] = f(x);
  for (const [n, f] of Object.entries(BINARY)) outs[n] = f(x, y); // y broadcast over tokens
  const xi = cast(x, "i32"), yi = cast(y, "i32");
  for (const n of ["abs", "neg", "relu"]) outs[`${n}_i32`] = UNARY[n]!(xi);
  for (const [n, f] of Object.entries(BINARY)) outs[`${n}_i32`] = f(xi, yi);
  return build(outs);
}

function broadcasts(): Built {
  const mesh = Mesh.of({ dp: 2 });
  const x = randn(mesh, { b: 2, t: 6, m: 40 }, "f32", { dp: Shard("t") });
  const y = randn(mesh, { m: 40, t: 6 }, "f32", { dp: Shard("t") }); // transposed
  const s = randn(mesh, { t: 6 }, "f32", { dp: Shard("t") });
  const col = cast(iota(mesh, { m: 40 }, "i32", "m"), "f32");
  const cond = maximum(sub(x, y), mul(s, col));
  const h = cast(x, "bf16");
  return build({
    w: where(cond, cast(h, "f32"), div(y, add(abs(s), 1))),
    i: cast(relu(sub(cast(x, "i32"), 1)), "f32"),
    e4: cast(cast(x, "fp8e4m3"), "bf16"),
    e5: cast(cast(h, "fp8e5m2"), "f32"),
    wi: where(cast(x, "i32"), cast(y, "i32"), 7),
    flat: mul(exp(h), cast(y, "bf16")),
  });
}

/** Each row reduction on rows of `n` (over the innermost dim), plus a softmax over a strided dim. */
function rows(dtype: "f32" | "bf16", n: number, tokens: number): Built {
  const mesh = Mesh.of({ dp: 2 });
  const x = randn(mesh, { tokens, model: n }, dtype, { dp: Shard("tokens") });
  const w = randn(mesh, { model: n }, dtype);
  return build({
    softmax: softmax(x, "model"),
    logSoftmax: logSoftmax(x, "model"),
    rmsnorm: rmsnorm(x, w, "model"),
    sum: sum(x, "model"),
    mean: mean(x, "model"),
    max: max(x, "model"),
    strided: softmax(randn(mesh, { tokens, model: n }, dtype), "tokens"),
  });
}

function fusedPatterns(dtype: "f32" | "bf16"): Built {
  const mesh = Mesh.of({ dp: 3 }); // uneven: 10 tokens over 3 ranks
  const x = randn(mesh, { tokens: 10, model: 256 }, dtype, { dp: Shard("tokens") });
  const d = randn(mesh, { tokens: 10, model: 256 }, dtype, { dp: Shard("tokens") });
  const w = randn(mesh, { model: 256 }, dtype), g = randn(mesh, { tokens: 10, model: 256 }, dtype, { dp: Shard("tokens") });
  const r = add(x, d);
  const logits = randn(mesh, { tokens: 10, vocab: 1000 }, dtype, { dp: Shard("tokens") });
  const targets = cast(mul(rand(mesh, { tokens: 10 }, "f32", { dp: Shard("tokens") }), 999.9), "i32");
  const z = sub(logits, max(logits, "vocab"));
  return build({
    swish: silu(mul(rmsnorm(x, w, "model"), g)),
    residual: r,
    normed: rmsnorm(r, w, "model"),
    logProbs: log(softmax(x, "model")),
    lse: log(sum(exp(x), "model")),
    ce: mean(sub(log(sum(exp(z), "vocab")), gather(z, targets, "vocab")), "tokens"),
    nll: neg(gather(logSoftmax(logits, "vocab"), targets, "vocab")),
    colSum: sum(mul(x, g), "tokens"),
  });
}

/** Degenerate shapes: a reduction over a literal, a kernel with no axes, rows with no outer axes. */
function edges(): Built {
  const mesh = Mesh.of({ dp: 1 });
  const x = randn(mesh, { t: 3 }, "f32");
  return build({
    y: add(x, sum(full(mesh, { t: 3, m: 5 }, "f32", 2), "m")),
    z: exp(full(mesh, {}, "f32", 1)),
    all: max(mul(randn(mesh, { a: 3, b: 70 }, "bf16"), 3), ["a", "b"]),
  });
}

/**
 * Quantize epilogues (1x128 along the innermost dim): swiglu → quantize alone and with the bf16
 * value also written, an f32 sum with a short last tile, a broadcast bias and a transposed operand;
 * rmsnorm → quantize row kernels (bf16 with the residual sum written, f32 with a short last tile).
 */
function quantEpilogues(): Built {
  const mesh = Mesh.of({ dp: 2 });
  const g = randn(mesh, { tokens: 8, ffn: 384 }, "bf16", { dp: Shard("tokens") }), u = randn(mesh, { tokens: 8, ffn: 384 }, "bf16", { dp: Shard("tokens") });
  const a = quantize(mul(silu(g), u), "1x128", "ffn");
  const h = mul(sigmoid(g), u);
  const b = quantize(h, "1x128", "ffn");
  const x = randn(mesh, { tokens: 4, k: 300 }, "f32"), bias = randn(mesh, { k: 300 }, "f32"), xt = randn(mesh, { k: 300, tokens: 4 }, "f32");
  const c = quantize(add(mul(x, xt), bias), "1x128", "k");
  // rmsnorm(x + residual) → quantize: a row kernel with the epilogue, the sum also written
  const r = add(g, u), d = quantize(rmsnorm(r, randn(mesh, { ffn: 384 }, "bf16"), "ffn") as AnyDTensor, "1x128", "ffn");
  const e = quantize(rmsnorm(x, bias, "k") as AnyDTensor, "1x128", "k");
  return build({ aq: a.q, as: a.scales, bq: b.q, bs: b.scales, h, cq: c.q, cs: c.scales, dq: d.q, ds: d.scales, r, eq: e.q, es: e.scales });
}

/**
 * Few, long rows (compiler/codegen/split.ts), each reduction a kernel of partials and one that
 * reduces them: add -> mul -> sum over a whole f32 tensor with the add written, and bf16 rows
 * sharded along the columns (sum, mean and max of partial pieces).
 */
function fewLongRows(): Built {
  const mesh = Mesh.of({ dp: 2 });
  const dims = { e: 8, m: 128, f: 176 };
  const h = add(randn(mesh, dims, "f32"), randn(mesh, dims, "f32"));
  const x = randn(mesh, { r: 6, c: 2 ** 18 }, "bf16", { dp: Shard("c") });
  return build({ h, norm: sum(mul(h, h), ["e", "m", "f"]), sum: sum(x, "c"), mean: mean(x, "c"), max: max(x, "c") });
}

function trainingStep(): Built {
  const tr = new Trainer({
    model: { vocab: 40, model: 16, heads: 2, layers: 2, seq: 8, ffn: 24, moe: { experts: 4, topK: 2, ffn: 12, shared: 1, score: "softmax", auxLoss: 0.01, moeFrom: 1 } },
    layout: layoutByName("single"), batch: 6, opt: ADAMW_DEFAULTS, schedule: { peak: 1e-2, warmup: 1, total: 10, minRatio: 0.1 }, seed: 7, biasRate: 0,
  });
  const feeds = () => {
    let fed: Record<string, LocalTensor[]> = {};
    const run = tr.program.runGlobal.bind(tr.program);
    tr.program.runGlobal = (f, read) => ((fed = f), run(f, read));
    const tokens = Int32Array.from({ length: 6 * 8 }, (_, i) => (i * 7 + 3) % 40);
    tr.run(tokens, tokens.map((t) => (t * 11 + 5) % 40));
    return new Map(Object.entries(fed));
  };
  return { plan: tr.program.plan, fp: fuse(tr.program.plan), feeds };
}

export const PROGRAMS: { name: string; build: () => Built }[] = [
  { name: "elementwise-f32", build: () => elementwise("f32") },
  { name: "elementwise-bf16", build: () => elementwise("bf16") },
  { name: "broadcast-where-cast", build: broadcasts },
  { name: "rows-f32-64", build: () => rows("f32", 64, 16) },
  { name: "rows-bf16-1000", build: () => rows("bf16", 1000, 16) },
  { name: "rows-f32-4096", build: () => rows("f32", 4096, 4) },
  { name: "rows-bf16-32768", build: () => rows("bf16", 32768, 2) },
  { name: "rows-f32-131072", build: () => rows("f32", 131072, 2) },
  { name: "fused-f32", build: () => fusedPatterns("f32") },
  { name: "fused-bf16", build: () => fusedPatterns("bf16") },
  { name: "edge-cases", build: edges },
  { name: "quant-epilogues", build: quantEpilogues },
  { name: "few-long-rows", build: fewLongRows },
  { name: "training-step", build: trainingStep },
];
