// On a GPU machine: the MoE layer's training step (bench/gpu/lib/moe-build.ts buildTrain: router, top-k,
// sort by expert, gather, per-expert SwiGLU as segment contractions, gate-weighted scatter back, and the
// backward from dy) at DeepSeek-V2-Lite size on one GPU — 8192 tokens, d 2048, expert ffn 1408, 64
// experts, top-6, bf16, with the experts' contractions in bf16 and then in FP8 (stdlib/nn/fp8.ts
// fp8SegmentDot: runtime/cuda/fp8-segment-device.ts on device counts; MOE_GRAPH_VARIANTS=bf16,fp8) — each run three ways:
//   eager, counts read on the host (each segment contraction reads its per-expert counts back to size
//     its GEMMs: a stream synchronize);
//   eager, counts on the device (the segment contractions plan their GEMMs from the counts on the GPU:
//     runtime/cuda/segment-device.ts; buffers sized by the routing's upper bound);
//   captured once as a CUDA graph (CudaExecutor.capture, counts on the device) and replayed.
// Shows: at a small size, both eager modes against the CPU reference (every output; counts exact); at
// full size, the replay equal to the eager device-counts run bit for bit, and again after a new batch
// (a new routing: the counts differ) is fed into the captured step, which is what device-side counts
// are for; the graph's node count; the median step time of each mode (inputs and weights resident,
// outputs left on the device, each step ending with a stream synchronize); and the PyTorch peer
// (bench/peers/moe_layer.py --backward: torch._grouped_mm forward + backward) in the same run.
//   (bundled by npm run gpu:pack; run there: bash bench/gpu/run.sh moe-graph)
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { native } from "../../runtime/cuda/native.ts";
import { runPlanCpu } from "../../runtime/cpu/executor.ts";
import { buildTrain, type Size } from "./lib/moe-build.ts";
import { relError } from "./lib/compare.ts";
import { traceTotals, writeChromeTrace, type TraceEvent } from "../../runtime/cuda/trace.ts";
import { median } from "./lib/median.ts";

const outDir = process.argv.includes("--out") ? process.argv[process.argv.indexOf("--out") + 1]! : ".";
const STEPS = Number(process.env.MOE_GRAPH_STEPS ?? 20);
// one executor per variant (runVariant makes it): the variants' resident inputs and weights stay apart
let gpu: CudaExecutor;
const device = native().deviceProperties(0).name;
const lines: string[] = [`device ${device}; MoE layer training step (forward + backward), bf16 activations, experts in bf16 and in FP8 (fp8SegmentDot), one GPU; median of ${STEPS} steps`];
const results: Record<string, unknown>[] = [];
let failed = 0;
const say = (s: string) => (lines.push(s), console.log(`[${(performance.now() / 1e3).toFixed(1)} s] ${s}`));
const withCounts = <T>(onDevice: boolean, f: () => T): T => {
  const was = gpu.segmentCountsOnDevice;
  gpu.segmentCountsOnDevice = onDevice;
  try {
    return f();
  } finally {
    gpu.segmentCountsOnDevice = was;
  }
};
/** Equal bit for bit (f32 / i32 data compared as 32-bit words). */
function sameBits(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  if (ArrayBuffer.isView(a) && ArrayBuffer.isView(b) && (a as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT === 4 && (b as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT === 4) {
    const x = new Uint32Array(a.buffer, a.byteOffset, a.length), y = new Uint32Array(b.buffer, b.byteOffset, b.length);
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
    return true;
  }
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
  return true;
}

/** One variant of the experts (bf16, or FP8 with fp8SegmentDot): the small check, then the full size; returns the replay's median ms. */
function runVariant(fp8: boolean): number {
  const label = fp8 ? "FP8 experts:" : "bf16 experts:";
  gpu = new CudaExecutor(native());
  let graphMs = NaN;
  // 1. small size: both eager modes against the CPU reference (uneven loads, some experts empty)
  {
    const z: Size = { T: 384, D: 256, F: 128, E: 16, K: 4 };
    try {
      const step = buildTrain(z, { fp8 });
      const feeds = new Map([...step.weights, ...step.batch(11)]);
      const cpu = runPlanCpu(step.plan, feeds).outputs;
      for (const onDevice of [false, true]) {
        const got = withCounts(onDevice, () => gpu.run(step.plan, feeds).outputs);
        const errs = step.outNames.map((k, i) => [k, relError(got[i]!.data, cpu[i]!.data)] as const);
        // FP8: a bf16 intermediate one ulp apart on the two sides can quantize to a neighbouring e4m3 code (a step of 6%)
        const tol = fp8 ? 3e-2 : 1e-2;
        const bad = errs.filter(([k, e]) => (k === "counts" ? e !== 0 : !(e <= tol)));
        if (bad.length) failed++;
        say(`${label} check T ${z.T} d ${z.D} ffn ${z.F} ${z.E} experts top-${z.K}, counts on the ${onDevice ? "device" : "host"}: ${bad.length ? "FAIL" : "ok"} (${errs.map(([k, e]) => `${k} ${e === 0 ? "equal" : e.toExponential(2)}`).join(", ")}; tolerance ${tol} against the CPU's same recipe, counts exact)`);
      }
    } catch (e) {
      failed++;
      say(`${label} check FAILED: ${(e as Error).stack}`);
    }
  }

  // 2. full size: eager (host counts), eager (device counts), captured
  const Z: Size = { T: 8192, D: 2048, F: 1408, E: 64, K: 6 };
  // forward: 3 expert GEMMs per routed token + the router; backward: twice the expert GEMMs (dX, dW) + the router's two
  const flops = 3 * 2 * Z.T * Z.K * Z.D * Z.F * 3 + 3 * 2 * Z.T * Z.D * Z.E;
  try {
    const step = buildTrain(Z, { fp8 });
    const b1 = step.batch(21), b2 = step.batch(41);
    for (const [name, pieces] of [...step.weights, ...b1]) gpu.setResident(name, pieces);
    const timeEager = (onDevice: boolean) =>
      withCounts(onDevice, () => {
        const ms: number[] = [];
        for (let i = 0; i < STEPS + 3; i++) {
          const t = performance.now();
          gpu.run(step.plan, undefined, [], { download: false });
          if (i >= 3) ms.push(performance.now() - t);
        }
        return median(ms);
      });
    const read = (onDevice: boolean) => withCounts(onDevice, () => gpu.run(step.plan, undefined).outputs.map((o) => o!.data));
    const host1 = read(false), dev1 = read(true);
    const errs = step.outNames.map((k, i) => `${k} ${relError(dev1[i]!, host1[i]!).toExponential(2)}`);
    say(`${label} full size: device counts against host counts (eager): ${errs.join(", ")}`);
    const eagerHostMs = timeEager(false), eagerDevMs = timeEager(true);
    // one traced eager run (device counts): where the step's time goes, each instruction between CUDA events
    const events: TraceEvent[] = [];
    withCounts(true, () => gpu.run(step.plan, undefined, [], { download: false, trace: events }));
    say(`${label} trace (eager, device counts), largest instructions:`);
    for (const t of traceTotals(events).slice(0, 25)) say(`  ${(t.us / 1e3).toFixed(3).padStart(8)} ms ${String(t.n).padStart(4)}x ${t.cat.padEnd(6)} ${t.name}`);
    writeChromeTrace(join(outDir, `moe-graph-trace${fp8 ? "-fp8" : ""}.json`), events, 0, "moe-graph");

    const t0 = performance.now();
    const cap = gpu.capture(step.plan);
    const captureMs = performance.now() - t0;
    cap.replay();
    const g1 = cap.read().map((o) => o!.data);
    const ok1 = g1.every((d, i) => sameBits(d, dev1[i]!));
    // a new batch through the captured step: the routing changes, the graph does not
    cap.replay(b2);
    const g2 = cap.read().map((o) => o!.data);
    const dev2 = read(true); // the resident x and dy now hold batch 2 (the replay fed them)
    const ok2 = g2.every((d, i) => sameBits(d, dev2[i]!));
    const ci = step.outNames.indexOf("counts");
    const moved = !sameBits(g1[ci]!, g2[ci]!);
    const ms: number[] = [];
    for (let i = 0; i < STEPS + 3; i++) {
      const t = performance.now();
      cap.replay();
      if (i >= 3) ms.push(performance.now() - t);
    }
    graphMs = median(ms);
    const r = { device, experts: label, instrs: step.plan.instrs.length, graphNodes: cap.nodes, captureMs, eagerHostMs, eagerDevMs, graphMs, bitExact: ok1, bitExactNewBatch: ok2, routingChanged: moved, tflops: flops / graphMs / 1e9 };
    results.push(r);
    if (!(ok1 && ok2 && moved)) failed++;
    say(`${label} full size T ${Z.T} d ${Z.D} ffn ${Z.F} ${Z.E} experts top-${Z.K}: ${r.instrs} plan instructions -> ${r.graphNodes} graph nodes (capture ${captureMs.toFixed(0)} ms)`);
    say(`  step: eager, host counts ${eagerHostMs.toFixed(2)} ms; eager, device counts ${eagerDevMs.toFixed(2)} ms; graph ${graphMs.toFixed(2)} ms (${r.tflops.toFixed(0)} TFLOP/s of ${(flops / 1e12).toFixed(2)} TFLOP)`);
    say(`  replay == eager (device counts) bit for bit: ${ok1 ? "yes" : "NO"}; after a new batch: ${ok2 ? "yes" : "NO"} (its counts ${moved ? "differ" : "DO NOT differ"} from the first batch's)`);
    cap.destroy();
  } catch (e) {
    failed++;
    say(`${label} full size FAILED: ${(e as Error).stack}`);
  }
  return graphMs;
}
const variants = (process.env.MOE_GRAPH_VARIANTS ?? "bf16,fp8").split(",");
for (const v of variants) if (v !== "bf16" && v !== "fp8") throw new RangeError(`MOE_GRAPH_VARIANTS=${process.env.MOE_GRAPH_VARIANTS}: give bf16 and/or fp8, comma-separated`);
const graphMsOf = new Map(variants.map((v) => [v, runVariant(v === "fp8")] as const));

// 3. the PyTorch peer, same GPU, same run
const peerFile = join(outDir, "moe-graph-peer.jsonl");
if (existsSync("bench/peers/moe_layer.py")) {
  const p = spawnSync("python3", ["bench/peers/moe_layer.py", "--backward", "--profile", "--out", peerFile], { stdio: "inherit", env: { ...process.env, PYTHONUNBUFFERED: "1" } });
  if (p.status !== 0) say(`PyTorch peer failed (exit ${p.status})`);
  if (existsSync(peerFile))
    for (const l of readFileSync(peerFile, "utf8").trim().split("\n").filter(Boolean)) {
      const j = JSON.parse(l) as { impl: string; ms: number };
      for (const [v, graphMs] of graphMsOf) {
        say(`PyTorch ${j.impl} (forward + backward, bf16): ${j.ms.toFixed(2)} ms; shardts graph (${v} experts) / this = ${(j.ms / graphMs).toFixed(2)}x speed`);
        results.push({ device, peer: j.impl, experts: v, ms: j.ms, ratio: j.ms / graphMs });
      }
    }
} else say("PyTorch peer not found (bench/peers/moe_layer.py)");
writeFileSync(join(outDir, "moe-graph.jsonl"), results.map((r) => JSON.stringify(r)).join("\n") + "\n");
writeFileSync(join(outDir, "moe-graph.txt"), lines.join("\n") + "\n");
process.exit(failed ? 1 : 0);
