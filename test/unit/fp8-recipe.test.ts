// The FP8 recipe of a Linear (stdlib/nn/fp8.ts): forward and both gradients against the same
// computation without quantization (float64 reference of the unquantized f32 math is the f32 dot,
// accurate to 1e-6, far below FP8's ~2^-4), checked as relative Frobenius errors within the FP8
// error model; the autodiff graph really is FP8 (scaled_dots with bf16 outputs, three per Linear);
// and training the LM with `fp8: true` tracks the unquantized run.
import { describe, expect, it } from "vitest";
import { Mesh, fromGlobal, evaluate, dot, mul, sum, grad, Shard, type GlobalValue } from "../../stdlib/index.ts";
import { fp8Dot } from "../../stdlib/nn/fp8.ts";
import { Trainer } from "../../stdlib/train/trainer.ts";
import { BatchLoader } from "../../stdlib/train/data.ts";
import { layoutByName } from "../../stdlib/nn/layout.ts";
import { ADAMW_DEFAULTS } from "../../stdlib/optim/adamw.ts";
import type { LmConfig } from "../../stdlib/nn/transformer.ts";
import type { AnyDTensor } from "../../stdlib/dtensor.ts";
import { mulberry32 } from "../helpers/prng.ts";

const SEED = process.env.SHARDTS_TEST_SEED !== undefined ? Number(process.env.SHARDTS_TEST_SEED) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
const NOTE = `(replay with SHARDTS_TEST_SEED=${SEED})`;
const gauss = (r: () => number) => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
const randn = (n: number, seed: number, std = 1) => {
  const r = mulberry32(SEED ^ seed);
  return Float32Array.from({ length: n }, () => gauss(r) * std);
};
const relFrob = (a: GlobalValue, b: GlobalValue) => {
  let num = 0, den = 0;
  for (let i = 0; i < a.data.length; i++) {
    num += (a.data[i]! - b.data[i]!) ** 2;
    den += b.data[i]! ** 2;
  }
  return Math.sqrt(num / den);
};

async function linearBoth(mesh: Mesh<any>, dims: { tokens: number; model: number; ffn: number }, placeX: Record<string, unknown> = {}) {
  const { tokens, model, ffn } = dims;
  const xs = randn(tokens * model, 1), ws = randn(model * ffn, 2, 1 / Math.sqrt(model)), rs = randn(tokens * ffn, 3);
  const run = async (fp8: boolean) => {
    const before = mesh.builder.graph.nodes.length;
    const x = fromGlobal(mesh, { tokens, model }, "f32", xs, placeX as never) as AnyDTensor;
    const w = fromGlobal(mesh, { model, ffn }, "f32", ws) as AnyDTensor;
    const r = fromGlobal(mesh, { tokens, ffn }, "f32", rs, placeX as never) as AnyDTensor;
    const y = fp8 ? fp8Dot(x, w, "model", "ffn") : (dot(x as never, w as never, "model") as AnyDTensor);
    const loss = sum(mul(y as never, r as never) as never, ["tokens", "ffn"]) as AnyDTensor;
    const g = grad(loss, { x, w });
    const ops = mesh.builder.graph.nodes.slice(before).map((n) => n.op);
    return { vals: await evaluate([y, g.x, g.w]), ops };
  };
  return { f32: await run(false), fp8: await run(true) };
}

describe("FP8 Linear: forward, Dgrad and Wgrad against the unquantized computation", () => {
  it("relative errors within the FP8 model (each operand rounded to e4m3: ~2^-4/sqrt(3) per element)", async () => {
    const { f32, fp8 } = await linearBoth(Mesh.of({ d: 1 }), { tokens: 200, model: 256, ffn: 136 });
    const names = ["y (Fprop)", "dx (Dgrad)", "dw (Wgrad)"];
    const errs = fp8.vals.map((v, i) => relFrob(v, f32.vals[i]!));
    console.log(`FP8 Linear relative Frobenius error vs f32: ${names.map((n, i) => `${n} ${errs[i]!.toExponential(2)}`).join(", ")}`);
    errs.forEach((e, i) => {
      expect(e, `${names[i]} ${NOTE}`).toBeLessThan(0.06);
      expect(e, `${names[i]} is quantized at all`).toBeGreaterThan(1e-3);
    });
    // the backward is FP8: scaled_dot forward and Dgrad, scaled_dot_wgrad (x and dY requantized 128x1 inside it); the quantizes of x, w, dY
    const count = (op: string) => fp8.ops.filter((o) => o === op).length;
    expect(count("scaled_dot")).toBe(2);
    expect(count("scaled_dot_wgrad")).toBe(1);
    expect(count("quantize")).toBe(3);
    expect(count("dot")).toBe(0);
  });

  // Wgrad's 128x1 tiles run along the tokens, so each rank needs a whole number of 128 tokens
  it("sharded over the tokens on dp=2 it equals the one-device result up to the all-reduce's f32 order", async () => {
    const dims = { tokens: 256, model: 128, ffn: 128 };
    const one = await linearBoth(Mesh.of({ d: 1 }), dims);
    const two = await linearBoth(Mesh.of({ dp: 2 }), dims, { dp: Shard("tokens") });
    for (let i = 0; i < 3; i++) expect(relFrob(two.fp8.vals[i]!, one.fp8.vals[i]!)).toBeLessThan(1e-2);
    expect(relFrob(two.fp8.vals[0]!, one.fp8.vals[0]!)).toBe(0); // the forward has no cross-rank sum
  });
});

describe("training with the FP8 recipe tracks the unquantized run", () => {
  const MODEL: LmConfig = {
    vocab: 40, model: 16, heads: 2, layers: 2, seq: 8, ffn: 24,
    moe: { experts: 4, topK: 2, ffn: 12, shared: 1, score: "softmax", auxLoss: 0.01, moeFrom: 1 },
  };
  const TOKENS = Int32Array.from({ length: 5000 }, (_, i) => (Math.imul(i + 17, 2654435761) >>> 9) % MODEL.vocab);
  const STEPS = 12;
  const curve = (fp8: boolean) => {
    const tr = new Trainer({
      model: { ...MODEL, fp8 }, layout: layoutByName("dp-ep"), batch: 4, seed: 11, biasRate: 0.01,
      opt: { ...ADAMW_DEFAULTS, lr: 1e-2 }, schedule: { peak: 1e-2, warmup: 3, total: STEPS, minRatio: 0.1 },
    });
    const loader = new BatchLoader(TOKENS, { batch: 4, seq: MODEL.seq, seed: 5 });
    return Array.from({ length: STEPS }, () => {
      const b = loader.next();
      return tr.run(b.inputs, b.targets).ce;
    });
  };
  it(`${STEPS} steps of the small MoE LM (dense MLP, shared and routed experts in FP8): per-step loss within 2%, and it falls`, () => {
    const ref = curve(false), q = curve(true);
    const rel = q.map((v, i) => Math.abs(v - ref[i]!) / ref[i]!);
    console.log(`loss bf16/f32: ${ref.map((v) => v.toFixed(4)).join(" ")}\nloss fp8:      ${q.map((v) => v.toFixed(4)).join(" ")}\nmax relative difference ${Math.max(...rel).toExponential(2)}`);
    expect(Math.max(...rel)).toBeLessThan(0.02);
    expect(q[STEPS - 1]!).toBeLessThan(q[0]!);
    expect(Math.max(...rel)).toBeGreaterThan(0); // the recipe changed something
  }, 120_000);
});
