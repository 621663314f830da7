// On a GPU machine: a whole training step (forward + backward of an 8-block residual MLP with
// RMSNorm and SwiGLU, bf16 activations, f32 weights) captured once as a CUDA graph and replayed,
// against the same plan run op by op by the CUDA executor. The weights are inputs kept resident on
// the device (setResident) in both, and each step feeds a new batch x, so both do the same work. Shows: the replay equals the eager run
// bit for bit (also after feeding a new batch), the graph's node count, and the step time of both
// (median wall time of 30 steps, each ending with the loss read back), at two sizes: a small one
// where launch overhead dominates and a larger one where the GEMMs do.
//   (bundled by npm run gpu:pack; run there: bash bench/gpu/run.sh graph-step)
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { compile } from "../../compiler/pipeline.ts";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { native } from "../../runtime/cuda/native.ts";
import { Mesh, randn, dot, add, mul, rmsnorm, sum, cast, Shard, Replicate, redistribute, type AnyDTensor } from "../../stdlib/index.ts";
import { silu } from "../../stdlib/nn/ops-internal.ts";
import { grad } from "../../stdlib/autodiff.ts";
import { input, piecesOf } from "../../stdlib/program.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { median } from "./lib/median.ts";

const outDir = process.argv.includes("--out") ? process.argv[process.argv.indexOf("--out") + 1]! : ".";
const gpu = new CudaExecutor(native());
const device = gpu.addon.deviceProperties(0).name;
const STEPS = 30, LAYERS = 8;
const lines: string[] = [`device ${device}; ${LAYERS}-block residual MLP, forward + backward, one GPU; median of ${STEPS} steps`];
const results: Record<string, unknown>[] = [];
let failed = 0;

function build(tokens: number, model: number, ffn: number) {
  const mesh = Mesh.of({ d: 1 });
  const x0 = input(mesh, "x", { tokens, model }, "bf16") as AnyDTensor;
  const ws: Record<string, AnyDTensor> = {};
  let h = x0;
  for (let l = 0; l < LAYERS; l++) {
    const w = (name: string, dims: Record<string, number>) => (ws[name] = input(mesh, name, dims, "f32") as AnyDTensor);
    const g = w(`norm${l}`, { model }), w1 = w(`w1_${l}`, { model, ffn }), w3 = w(`w3_${l}`, { model, ffn }), w2 = w(`w2_${l}`, { ffn, model });
    const n = cast(rmsnorm(h, cast(g, "bf16"), "model") as AnyDTensor, "bf16") as AnyDTensor;
    const a = mul(silu(dot(n, cast(w1, "bf16") as AnyDTensor, "model") as AnyDTensor), dot(n, cast(w3, "bf16") as AnyDTensor, "model") as AnyDTensor);
    h = add(h, dot(a, cast(w2, "bf16") as AnyDTensor, "ffn") as AnyDTensor);
  }
  const loss = sum(sum(cast(mul(h, h), "f32") as AnyDTensor, "model") as AnyDTensor, "tokens") as AnyDTensor;
  const gs = grad(loss, ws);
  // one scalar of every gradient, so nothing is dead code and the read-back stays small
  let gsq: AnyDTensor | undefined;
  for (const g of Object.values(gs)) {
    const dims = g.type.dims.map((d) => d.name);
    let s = mul(g, g) as AnyDTensor;
    for (const d of dims) s = sum(s, d) as AnyDTensor;
    gsq = gsq ? add(gsq, s) : s;
  }
  const plan = compile(mesh.builder.graph, [loss.ref, gsq!.ref]);
  const uniform = (n: number, seed: number, scale: number, shift = 0) => {
    let s = seed;
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = (((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 2 - 1) * scale + shift;
    return data;
  };
  const feed = (seed: number): Map<string, LocalTensor[]> => new Map([["x", piecesOf(mesh.spec, x0.type, uniform(tokens * model, seed, 1))]]);
  let k = 100;
  const weights = Object.entries(ws).map(([name, t]) => [name, piecesOf(mesh.spec, t.type, name.startsWith("norm") ? uniform(model, k++, 0.1, 1) : uniform(t.type.dims.reduce((a, d) => a * d.size, 1), k++, Math.sqrt(3 / (name.startsWith("w2") ? ffn : model))))] as const);
  return { plan, feed, weights };
}

for (const [tokens, model, ffn] of [[256, 256, 512], [4096, 1024, 2816]] as const) {
  const label = `tokens ${tokens}, model ${model}, ffn ${ffn}`;
  try {
    const { plan, feed, weights } = build(tokens, model, ffn);
    for (const [name, pieces] of weights) gpu.setResident(name, pieces);
    const f1 = feed(1), f2 = feed(2);
    const eager1 = gpu.run(plan, f1).outputs.map((o) => Array.from(o!.data));
    const eager2 = gpu.run(plan, f2).outputs.map((o) => Array.from(o!.data));
    const t0 = performance.now();
    const step = gpu.capture(plan, f1);
    const captureMs = performance.now() - t0;
    step.replay();
    const same = (got: (ReturnType<typeof step.read>), want: number[][]) => got.every((o, i) => o!.data.every((v, k) => Object.is(v, want[i]![k])));
    const ok1 = same(step.read(), eager1);
    step.replay(f2);
    const ok2 = same(step.read(), eager2);
    const eagerMs: number[] = [], graphMs: number[] = [];
    for (let i = 0; i < STEPS; i++) {
      let t = performance.now();
      gpu.run(plan, f1, [0]);
      eagerMs.push(performance.now() - t);
      t = performance.now();
      step.replay();
      step.read([0]);
      graphMs.push(performance.now() - t);
    }
    const r = { device, case: label, instrs: plan.instrs.length, graphNodes: step.nodes, captureMs, eagerMs: median(eagerMs), graphMs: median(graphMs), speedup: median(eagerMs) / median(graphMs), bitExact: ok1, bitExactNewFeed: ok2, loss: eager1[0]![0] };
    results.push(r);
    console.log(JSON.stringify(r));
    lines.push(`${label}: ${plan.instrs.length} plan instructions -> ${step.nodes} graph nodes; step ${r.eagerMs.toFixed(2)} ms eager, ${r.graphMs.toFixed(2)} ms replayed (${r.speedup.toFixed(2)}x); replay == eager bit for bit: ${ok1 && ok2 ? "yes" : "NO"} (capture ${captureMs.toFixed(0)} ms)`);
    if (!(ok1 && ok2)) failed++;
    step.destroy();
    for (const [name] of weights) gpu.setResident(name, undefined);
  } catch (e) {
    failed++;
    console.log(`${label}: FAILED ${(e as Error).stack}`);
    lines.push(`${label}: FAILED ${(e as Error).message.split("\n")[0]}`);
  }
}
// a plan that cannot be captured says why
try {
  const mesh = Mesh.of({ d: 2 });
  const x = randn(mesh, { t: 8, m: 4 }, "f32", { d: Shard("t") }) as AnyDTensor;
  gpu.capture(compile(mesh.builder.graph, [redistribute(x, { d: Replicate }).ref]));
  lines.push("refusal: a simulated 2-rank plan was captured (unexpected)");
  failed++;
} catch (e) {
  lines.push(`refusal: ${(e as Error).message}`);
}
writeFileSync(join(outDir, "graph-step.jsonl"), results.map((r) => JSON.stringify(r)).join("\n") + "\n");
writeFileSync(join(outDir, "graph-step.txt"), lines.join("\n") + "\n");
console.log("\n" + lines.join("\n"));
process.exit(failed ? 1 : 0);
