// On a GPU machine: the FP8 recipe of a Linear (stdlib/nn/fp8.ts fp8Dot, whose backward is the
// gradient rule of scaled_dot) on the CUDA backend — Fprop y = x·w, Dgrad dx = dY·wᵀ and Wgrad
// dw = xᵀ·dY — against the same Linear computed in bf16 on the CUDA backend (the bf16 computation),
// and both against float64:
//   exact  float64 of the bf16 inputs (what an unquantized Linear computes, to rounding);
//   model  float64 of the operands as the recipe quantizes them (x 1×128 along the model dim, w in
//          128×128 blocks, dY 1×128 along ffn for Dgrad; x dequantized and requantized 128×1 along
//          the tokens and dY 128×1 for Wgrad: scaled_dot_wgrad), by the quantize op's own CPU reference (quantizeValues,
//          which the GPU's quantize kernels match bit for bit: bench/gpu/fp8-quant.ts).
// What must hold: GPU FP8 against the model within the FP8 GEMM's accumulation limit (5e-3: FP32
// promotion every 128 of K, bf16 output); GPU FP8 against exact equal to the model's own error
// against exact (the quantization error, predicted on the CPU) within 10% + 1e-3, and under the CPU
// recipe test's 0.06; GPU bf16 against exact under 1e-2. The float64 sums run over sampled rows; the
// smallest shape also runs the whole FP8 graph on the CPU backend and compares every element.
// Then the time of each Linear's training step (Fprop + Dgrad + Wgrad, and the FP8 graph's quantizes),
// FP8 against bf16 on the same GPU, inputs resident on the device, median of TIME_STEPS runs, and one
// traced run of each, and the step captured as a CUDA graph and replayed: where the FP8 step's time goes (the GEMMs, the operands' layout copies, the
// quantizes), including the EP MoE layer's shared-expert shapes (8192 tokens, d 2048, ffn 1408).
//   npm run gpu:pack; there: bash bench/gpu/run.sh fp8-linear   (writes <out>/fp8-linear.txt, .json)
//   npx tsx bench/gpu/fp8-linear.ts --cpu   the same checks on the CPU backend, smallest shape only (a dry run here)
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { compile } from "../../compiler/pipeline.ts";
import { runPlanCpu } from "../../runtime/cpu/index.ts";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { native } from "../../runtime/cuda/native.ts";
import { Mesh, fromGlobal, dot, mul, sum, grad, type AnyDTensor } from "../../stdlib/index.ts";
import { fp8Dot } from "../../stdlib/nn/fp8.ts";
import { roundArrayToBf16 } from "../../compiler/numeric/index.ts";
import { relFrobenius } from "../../compiler/numeric/fp8-gemm.ts";
import { dequantizeValues, quantizeValues } from "../../compiler/ops/quantize.ts";
import { relError } from "./lib/compare.ts";
import { tunedGemmConfig } from "../../runtime/cuda/gemm-tune.ts";
import { configName } from "../../compiler/codegen/cuda/gemm/config.ts";
import { input, piecesOf } from "../../stdlib/program.ts";
import { traceTotals, type TraceEvent } from "../../runtime/cuda/trace.ts";
import { median } from "./lib/median.ts";

const argv = process.argv;
const outDir = argv.includes("--out") ? argv[argv.indexOf("--out") + 1]! : ".";
const SAMPLES = 16;
/** tokens × model → ffn; the first is small enough for the CPU backend to run the whole FP8 graph. */
const SHAPES = [
  { tokens: 512, model: 512, ffn: 384, cpu: true },
  { tokens: 4096, model: 2048, ffn: 1408, cpu: false }, // a DeepSeek-V2-Lite routed expert's up projection
  { tokens: 4096, model: 7168, ffn: 2048, cpu: false }, // DeepSeek-V3's model width
];
/** Timed too (no f64 checks): the EP MoE layer's shared-expert Linears per GPU (bench/gpu/moe-layer.ts). */
const TIME_ONLY = [
  { tokens: 8192, model: 2048, ffn: 1408 }, // up / gate projection
  { tokens: 8192, model: 1408, ffn: 2048 }, // down projection
];
const TIME_STEPS = Number(process.env.FP8_LINEAR_STEPS ?? 50);
const LIMIT = { model: 5e-3, predicted: 0.1, predictedAbs: 1e-3, recipe: 0.06, bf16: 1e-2, cpuGraph: 1e-2 };

const lines: string[] = [];
const say = (s: string) => (console.log(s), lines.push(s));
const onCpu = argv.includes("--cpu");
let run: (plan: ReturnType<typeof compile>) => { outputs: { data: ArrayLike<number> }[] };
let device = "the CPU backend", deviceName = "";
if (onCpu) run = (plan) => runPlanCpu(plan) as never;
else {
  try {
    const gpu = new CudaExecutor(native());
    run = (plan) => gpu.run(plan) as never;
    deviceName = gpu.addon.deviceProperties(0).name;
    device = `${deviceName} (${gpu.arch})`;
  } catch (e) {
    console.error(`fp8-linear: no usable GPU (${(e as Error).message}); --cpu runs the checks on the CPU backend`);
    process.exit(2);
  }
}
say(`fp8-linear on ${device}; date ${new Date().toISOString()}`);
say(`limits: FP8 vs model ${LIMIT.model}; FP8 vs exact = model vs exact within ${LIMIT.predicted * 100}% + ${LIMIT.predictedAbs}, and < ${LIMIT.recipe}; bf16 vs exact < ${LIMIT.bf16}`);

let seed = 2026;
const uniform = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) + 0.5) / 2 ** 32;
const randn = (n: number, std: number) => {
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform()) * std;
  return roundArrayToBf16(v, v); // the bf16 inputs both paths see, and exact's operands
};
const transpose = (a: Float32Array, rows: number, cols: number) => {
  const t = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = a[r * cols + c]!;
  return t;
};
/** `v` [rows, cols] quantized with the tiled dims as the recipe tiles them (tiles of 128), and dequantized (f32). */
const fp8 = (v: Float32Array, rows: number, cols: number, tiled: [boolean, boolean]) => {
  const q = quantizeValues(v, [rows, cols], tiled);
  return dequantizeValues(q.q, [rows, cols], tiled, q.scales);
};
/** Rows `rows` of a [R, K] · b where b is [K, N] (bT false) or [N, K] (bT true), in float64. */
function rowsOf(a: Float32Array, K: number, b: Float32Array, N: number, bT: boolean, rows: number[]): Float64Array {
  const out = new Float64Array(rows.length * N);
  rows.forEach((r, i) => {
    for (let n = 0; n < N; n++) {
      let s = 0;
      if (bT) for (let k = 0; k < K; k++) s += a[r * K + k]! * b[n * K + k]!;
      else for (let k = 0; k < K; k++) s += a[r * K + k]! * b[k * N + n]!;
      out[i * N + n] = s;
    }
  });
  return out;
}
const pick = (data: ArrayLike<number>, N: number, rows: number[]) => {
  const out = new Float64Array(rows.length * N);
  rows.forEach((r, i) => { for (let n = 0; n < N; n++) out[i * N + n] = data[r * N + n]!; });
  return out;
};
const sampleRows = (R: number) => Array.from({ length: SAMPLES }, (_, i) => Math.min(R - 1, Math.floor((i + uniform()) * (R / SAMPLES))));

/** The Linear's training step y, dx, dw for loss = Σ y·r, compiled: FP8 (fp8Dot) or bf16 (dot). */
function linearStep(mesh: Mesh<"d">, xt: AnyDTensor, wt: AnyDTensor, rt: AnyDTensor, fp8: boolean) {
  const y = fp8 ? fp8Dot(xt, wt, "model", "ffn") : (dot(xt as never, wt as never, "model") as AnyDTensor);
  const g = grad(sum(mul(y as never, rt as never) as never, ["tokens", "ffn"]) as AnyDTensor, { x: xt, w: wt });
  const outs = [y, g.x, g.w] as AnyDTensor[];
  return { outs, plan: compile(mesh.builder.graph, outs.map((t) => t.ref)) };
}

/** The Linear's y, dx, dw for loss = Σ y·r on the CUDA backend (and the CPU backend when asked). */
function linear(fp8: boolean, x: Float32Array, w: Float32Array, r: Float32Array, dims: { tokens: number; model: number; ffn: number }, cpu: boolean) {
  const { tokens, model, ffn } = dims;
  const mesh = Mesh.of({ d: 1 });
  const xt = fromGlobal(mesh, { tokens, model }, "bf16", x) as AnyDTensor;
  const wt = fromGlobal(mesh, { model, ffn }, "bf16", w) as AnyDTensor;
  const rt = fromGlobal(mesh, { tokens, ffn }, "bf16", r) as AnyDTensor;
  const { outs, plan } = linearStep(mesh, xt, wt, rt, fp8);
  const ops = new Set(mesh.builder.graph.nodes.map((n) => n.op));
  const t0 = performance.now();
  const res = run(plan);
  const ms = performance.now() - t0;
  const order = outs.map((t) => t.type.dims.map((d) => d.name).join(","));
  return { outs: res.outputs.map((o) => o.data), order, ops, ms, cpuOuts: cpu && !onCpu ? runPlanCpu(plan).outputs.map((o) => o!.data as ArrayLike<number>) : undefined };
}

let failures = 0;
const json: Record<string, unknown>[] = [];
for (const dims of onCpu ? SHAPES.slice(0, 1) : SHAPES) {
  const { tokens: T, model: D, ffn: F } = dims;
  say(`\n== tokens ${T}, model ${D}, ffn ${F}: x [${T}, ${D}], w [${D}, ${F}], dY [${T}, ${F}]; f64 over ${SAMPLES} sampled rows of each output`);
  const x = randn(T * D, 1), w = randn(D * F, 1 / Math.sqrt(D)), r = randn(T * F, 1);
  const q = linear(true, x, w, r, dims, dims.cpu), b = linear(false, x, w, r, dims, false);
  const want = "tokens,ffn|tokens,model|model,ffn";
  if (q.order.join("|") !== want || b.order.join("|") !== want) throw new Error(`fp8-linear: outputs in dims ${q.order.join("|")}, expected ${want}`);
  const quantized = q.ops.has("scaled_dot") && q.ops.has("scaled_dot_wgrad") && !q.ops.has("dot") && !b.ops.has("scaled_dot");
  if (!quantized) failures++;
  say(`graphs: FP8 ${[...q.ops].filter((o) => o === "quantize" || o === "scaled_dot" || o === "scaled_dot_wgrad" || o === "dot").join(", ")}; bf16 ${[...b.ops].filter((o) => o === "scaled_dot" || o === "dot").join(", ")}${quantized ? "" : "  FAIL: the FP8 graph is not all scaled_dot / scaled_dot_wgrad"}`);
  say(`first run (compiles included): FP8 ${(q.ms / 1000).toFixed(2)} s, bf16 ${(b.ms / 1000).toFixed(2)} s`);
  if (!onCpu) {
    // which kernel the executor launched for Fprop and Dgrad: the tune cache's choice (shardts tune-gemm) or the default
    const choice = (M: number, N: number, K: number) => {
      const t = tunedGemmConfig(deviceName, { M, N, K }, false);
      return `${M}x${N}x${K} ${t ? `tuned: ${configName(t)}` : "default configuration (not in the tune cache)"}`;
    };
    say(`FP8 GEMMs: Fprop ${choice(T, F, D)}; Dgrad ${choice(T, D, F)}; Wgrad the row-scaled kernel`);
  }

  // the recipe's operands on the CPU
  const xq = fp8(x, T, D, [false, true]); // 1×128 along model
  const wq = fp8(w, D, F, [true, true]); // 128×128 blocks
  const gq = fp8(r, T, F, [false, true]); // dY 1×128 along ffn
  const xr = transpose(fp8(xq, T, D, [true, false]), T, D); // x dequantized, requantized 128×1 along tokens: [model, tokens]
  const gr = transpose(fp8(r, T, F, [true, false]), T, F); // dY 128×1 along tokens: [ffn, tokens]
  const xT = transpose(x, T, D), rT = transpose(r, T, F);
  const rowsT = sampleRows(T), rowsD = sampleRows(D);
  const outputs = [
    { name: "y  (Fprop)", N: F, rows: rowsT, exact: rowsOf(x, D, w, F, false, rowsT), model: rowsOf(xq, D, wq, F, false, rowsT) },
    { name: "dx (Dgrad)", N: D, rows: rowsT, exact: rowsOf(r, F, w, D, true, rowsT), model: rowsOf(gq, F, wq, D, true, rowsT) },
    { name: "dw (Wgrad)", N: F, rows: rowsD, exact: rowsOf(xT, T, rT, F, true, rowsD), model: rowsOf(xr, T, gr, F, true, rowsD) },
  ];
  say("output       FP8 vs model   FP8 vs exact   predicted (model vs exact)   bf16 vs exact   FP8 vs bf16 (all)" + (dims.cpu && !onCpu ? "   FP8 GPU vs CPU graph" : ""));
  outputs.forEach((o, i) => {
    const got = pick(q.outs[i]!, o.N, o.rows), gotB = pick(b.outs[i]!, o.N, o.rows);
    const vsModel = relFrobenius(got, o.model).rel, vsExact = relFrobenius(got, o.exact).rel;
    const predicted = relFrobenius(o.model, o.exact).rel, bf16 = relFrobenius(gotB, o.exact).rel;
    const vsBf16 = relFrobenius(q.outs[i]!, b.outs[i]!).rel;
    const cpuErr = q.cpuOuts ? relError(q.outs[i]!, q.cpuOuts[i]!) : undefined;
    const bad = [
      vsModel > LIMIT.model && `FP8 vs model ${vsModel.toExponential(2)} > ${LIMIT.model}`,
      Math.abs(vsExact - predicted) > LIMIT.predicted * predicted + LIMIT.predictedAbs && `FP8 vs exact ${vsExact.toExponential(2)} is not the predicted ${predicted.toExponential(2)}`,
      vsExact > LIMIT.recipe && `FP8 vs exact ${vsExact.toExponential(2)} > ${LIMIT.recipe}`,
      bf16 > LIMIT.bf16 && `bf16 vs exact ${bf16.toExponential(2)} > ${LIMIT.bf16}`,
      cpuErr !== undefined && !(cpuErr <= LIMIT.cpuGraph) && `FP8 GPU vs CPU graph ${cpuErr.toExponential(2)} > ${LIMIT.cpuGraph}`,
    ].filter((s): s is string => typeof s === "string");
    failures += bad.length;
    say(`${o.name}   ${vsModel.toExponential(2).padEnd(13)}  ${vsExact.toExponential(2).padEnd(13)}  ${predicted.toExponential(2).padEnd(27)}  ${bf16.toExponential(2).padEnd(14)}  ${vsBf16.toExponential(2).padEnd(17)}${cpuErr !== undefined ? `   ${cpuErr.toExponential(2)} (max-abs relative)` : ""}${bad.length ? `  FAIL: ${bad.join("; ")}` : "  ok"}`);
    json.push({ tokens: T, model: D, ffn: F, output: o.name.split(" ")[0], fp8VsModel: vsModel, fp8VsExact: vsExact, predicted, bf16VsExact: bf16, fp8VsBf16: vsBf16, fp8VsCpuGraph: cpuErr });
  });
}
/**
 * One Linear's training step (y, dx, dw for loss = Σ y·dY) with x, w and dY resident on the GPU: the
 * median wall time of `TIME_STEPS` runs (each ends with a stream synchronize; outputs stay on the device),
 * and the largest entries of one traced run.
 */
function timeLinear(ex: CudaExecutor, fp8: boolean, dims: { tokens: number; model: number; ffn: number }) {
  const { tokens, model, ffn } = dims;
  const mesh = Mesh.of({ d: 1 });
  const xt = input(mesh, "x", { tokens, model }, "bf16") as AnyDTensor;
  const wt = input(mesh, "w", { model, ffn }, "bf16") as AnyDTensor;
  const rt = input(mesh, "dy", { tokens, ffn }, "bf16") as AnyDTensor;
  const { plan } = linearStep(mesh, xt, wt, rt, fp8);
  ex.setResident("x", piecesOf(mesh.spec, xt.type, randn(tokens * model, 1)));
  ex.setResident("w", piecesOf(mesh.spec, wt.type, randn(model * ffn, 1 / Math.sqrt(model))));
  ex.setResident("dy", piecesOf(mesh.spec, rt.type, randn(tokens * ffn, 1)));
  const ms: number[] = [];
  // untimed runs first, enough for V8 to compile the executor's paths: the first shape timed after 3 came out 0.62 and
  // 0.83 ms in two calls where the larger one took 0.41-0.46, and its eager FP8 step 0.376-0.515 ms after 10 warm-up
  // runs against 0.235 ms over 400 runs (bench/results/2026-11-24-fp8-linear-400-steps-h200.txt)
  const WARM = 100;
  for (let i = 0; i < TIME_STEPS + WARM; i++) {
    const t0 = performance.now();
    ex.run(plan, undefined, [], { download: false });
    if (i >= WARM) ms.push(performance.now() - t0);
  }
  const events: TraceEvent[] = [];
  ex.run(plan, undefined, [], { download: false, trace: events });
  // captured: the same step as one CUDA graph, TIME_STEPS replays queued back to back (no host work between them), 3 rounds, the median
  const cap = ex.capture(plan);
  const rounds: number[] = [];
  try {
    for (let i = 0; i < WARM; i++) cap.launch();
    cap.sync();
    for (let round = 0; round < 3; round++) {
      const t0 = performance.now();
      for (let i = 0; i < TIME_STEPS; i++) cap.launch();
      cap.sync();
      rounds.push((performance.now() - t0) / TIME_STEPS);
    }
  } finally {
    cap.destroy();
  }
  for (const n of ["x", "w", "dy"]) ex.setResident(n, undefined);
  return { ms: median(ms), replayMs: median(rounds), top: traceTotals(events).slice(0, 12) };
}

if (!onCpu) {
  const ex = new CudaExecutor(native());
  say(`\n== time of a Linear's training step (Fprop + Dgrad + Wgrad; FP8 with its quantizes), inputs resident, median of ${TIME_STEPS} runs`);
  say("eager: each step run from the host and waited for; replayed: the step captured as one CUDA graph, replays queued back to back");
  say("tokens x model -> ffn     GFLOP   FP8 ms   bf16 ms   FP8/bf16 speed   replayed: FP8 ms   bf16 ms   FP8 TFLOP/s   bf16 TFLOP/s   FP8/bf16 speed");
  for (const dims of [...SHAPES.filter((d) => !d.cpu), ...TIME_ONLY]) {
    const gflop = (3 * 2 * dims.tokens * dims.model * dims.ffn) / 1e9;
    const q = timeLinear(ex, true, dims), b = timeLinear(ex, false, dims);
    const f = (v: number, w: number, d = 3) => v.toFixed(d).padStart(w);
    say(`${`${dims.tokens} x ${dims.model} -> ${dims.ffn}`.padEnd(25)} ${f(gflop, 6, 1)}  ${f(q.ms, 7)}  ${f(b.ms, 8)}  ${f(b.ms / q.ms, 15, 2)}   ${f(q.replayMs, 16)}  ${f(b.replayMs, 8)}  ${f(gflop / q.replayMs, 12, 0)}  ${f(gflop / b.replayMs, 13, 0)}  ${f(b.replayMs / q.replayMs, 15, 2)}`);
    for (const [label, r] of [["FP8", q], ["bf16", b]] as const) say(`  ${label} trace: ${r.top.map((t) => `${t.name} ${t.n}x ${(t.us / 1e3).toFixed(3)} ms`).join("; ")}`);
    json.push({ tokens: dims.tokens, model: dims.model, ffn: dims.ffn, fp8Ms: q.ms, bf16Ms: b.ms, fp8ReplayMs: q.replayMs, bf16ReplayMs: b.replayMs, fp8Trace: q.top, bf16Trace: b.top });
  }
}
say(failures ? `\n${failures} check(s) FAILED` : "\nALL PASS");
writeFileSync(join(outDir, "fp8-linear.txt"), lines.join("\n") + "\n");
writeFileSync(join(outDir, "fp8-linear.json"), JSON.stringify({ device, limits: LIMIT, results: json }, null, 2) + "\n");
process.exit(failures ? 1 : 0);
