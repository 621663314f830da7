// One rank of the EP MoE layer benchmark, run under `shardts launch --nproc-per-node N`
// (bench/gpu/multi-gpu.sh, stage 10; N = WORLD_SIZE, 2 or 4). The program is
// bench/gpu/lib/moe-layer-build.ts: a DeepSeek-V2-Lite-sized MoE layer (8192 tokens per GPU, d 2048,
// 64 experts of ffn 1408 sharded over ep=N, top-6, 2 shared experts, bf16), forward and backward as
// one plan, run rank-locally (kernels + NCCL).
//   1. check: the same program at a small size on the GPUs against the CPU-simulated mesh: y, the
//      expert counts (exact) and every gradient (x, router, w1/w3/w2, shared), bf16 tolerance 1e-2
//      (FP8: 5e-2, the FP8 GEMMs' error model is per element, the comparison is of the max);
//   2. timing: the full size, weights and inputs resident, outputs left on the device; median wall
//      time of --reps runs (default 10) after 3 warm-ups. Wall time, not events: the run ends with a
//      stream synchronize and the host work between kernels (counts read for the exchanges) is part
//      of the step, as the peer's .tolist() is of its step.
// --trace FILE: rank 0's timeline of one more run to FILE.<fmt>.json; every rank logs where its time went.
// --fp8: the same again with the routed and shared experts in FP8 (stdlib/nn/fp8.ts); --fp8-routed: with the
// routed experts in FP8 and the shared ones in bf16 (rows "fp8r").
// --graph: each rank also captures the step as a CUDA graph (runtime/cuda/graph.ts; needs
// SHARDTS_MOE_TRANSPORT=nvlink, else the capture is refused and the line says why): at the small size
// the replay's outputs against the CPU-simulated mesh as above, at full size the median wall time of
// --reps replays (launch + synchronize).
// --nvlink-streams comm,compute: the full-size timing (and replay) once per SHARDTS_MOE_NVLINK_STREAM value,
// in that order (an A/B of the NVLink kernels beside compute against in line, one launch; rows carry `via`).
// Rank 0 prints one line per result and writes one JSON line per result to --json FILE.
import { writeFileSync } from "node:fs";
import { defineMain } from "../../../stdlib/model.ts";
import { cudaExecutor, jobRank } from "../../../stdlib/run.ts";
import { runPlanCpu } from "../../../runtime/cpu/executor.ts";
import { buildLayer, forwardFlops, globalFeeds, rankFeeds, V2_LITE, type LayerSize } from "./moe-layer-build.ts";
import { relError } from "./compare.ts";
import { commOverlap, traceTotals, writeChromeTrace, type TraceEvent } from "../../../runtime/cuda/trace.ts";


export default defineMain(async ({ args, log }) => {
  const W = Number(process.env.WORLD_SIZE ?? 1), rank = jobRank();
  const opt = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
  const outFile = opt("--json"), traceFile = opt("--trace"), reps = Number(opt("--reps") ?? 10), T = Number(opt("--tokens") ?? V2_LITE.T);
  // formats: bf16; --fp8 adds FP8 (routed and shared experts); --fp8-routed adds FP8 routed experts with bf16 shared ones ("fp8r")
  const formats = [{ fmt: "bf16", fp8: false, sharedFp8: false }];
  if (args.includes("--fp8")) formats.push({ fmt: "fp8", fp8: true, sharedFp8: true });
  if (args.includes("--fp8-routed")) formats.push({ fmt: "fp8r", fp8: true, sharedFp8: false });
  const graph = args.includes("--graph");
  const streams = (opt("--nvlink-streams") ?? "").split(",").filter((v) => v);
  for (const v of streams) if (v !== "comm" && v !== "compute") throw new Error(`--nvlink-streams ${v}: give comm and/or compute, comma-separated`);
  const ex = cudaExecutor();
  if (!ex.rankLocal) throw new Error("not in a multi-GPU job: run under shardts launch --nproc-per-node N with a GPU per rank");
  if (V2_LITE.E % W) throw new Error(`${V2_LITE.E} experts do not split over ep=${W}`);
  const results: Record<string, unknown>[] = [];
  const say = (s: string) => rank === 0 && log(s);
  let failures = 0;

  for (const { fmt, fp8, sharedFp8 } of formats) {
    // ---- 1. small size: GPUs against the CPU-simulated mesh (uneven expert loads, 2 experts a rank)
    const z: LayerSize = { T: 256, D: 256, F: 128, E: 2 * W, K: 2, shared: 2 };
    const what = `check ${fmt} T ${z.T} d ${z.D} ffn ${z.F} ${z.E} experts top-${z.K} (ep=${W})`;
    try {
      const layer = buildLayer(z, W, { fp8, sharedFp8 });
      const feeds = globalFeeds(layer, z);
      const cpu = runPlanCpu(layer.plan, feeds).outputs, gpu = ex.run(layer.plan, feeds).outputs;
      const tol = fp8 ? 5e-2 : 1e-2;
      const errs = layer.outNames.map((k, i) => [k, relError(gpu[i]!.data, cpu[i]!.data)] as const);
      const bad = errs.filter(([k, e]) => (k === "counts" ? e !== 0 : !(e <= tol)));
      if (bad.length) failures++;
      say(`${what}: ${bad.length ? "FAIL" : "ok"}  (${errs.map(([k, e]) => `${k} ${e === 0 ? "equal" : e.toExponential(2)}`).join(", ")}; tolerance ${tol}, counts exact)`);
      results.push({ kind: "check", impl: "shardts", fmt, world: W, ok: !bad.length, errors: Object.fromEntries(errs) });
      if (graph) {
        // the same step captured: two replays (the second after another eager run), each against the CPU
        const step = ex.capture(layer.plan, feeds);
        for (let k = 0; k < 2; k++) {
          if (k) ex.run(layer.plan, feeds, [], { download: false });
          step.replay();
          const got = step.read();
          const gerrs = layer.outNames.map((nm, i) => [nm, relError(got[i]!.data, cpu[i]!.data)] as const);
          const gbad = gerrs.filter(([nm, e]) => (nm === "counts" ? e !== 0 : !(e <= tol)));
          if (gbad.length) failures++;
          say(`${what}, CUDA graph replay ${k + 1}: ${gbad.length ? "FAIL" : "ok"}  (${gerrs.map(([nm, e]) => `${nm} ${e === 0 ? "equal" : e.toExponential(2)}`).join(", ")})`);
          results.push({ kind: "check", impl: "shardts-graph", fmt, world: W, ok: !gbad.length, errors: Object.fromEntries(gerrs) });
        }
        step.destroy();
      }
    } catch (e) {
      failures++;
      say(`${what}: FAIL with ${(e as Error).stack?.split("\n").slice(0, 4).join(" | ")}`);
      results.push({ kind: "check", impl: "shardts", fmt, world: W, ok: false, error: String((e as Error).message) });
    }

    // ---- 2. full size, timed
    const Z = { ...V2_LITE, T };
    const names: string[] = [], was = process.env.SHARDTS_MOE_NVLINK_STREAM;
    try {
      const layer = buildLayer(Z, W, { fp8, sharedFp8 });
      for (const [name, pieces] of rankFeeds(layer, Z, rank)) ex.setResident(name, pieces), names.push(name);
      const run = () => ex.run(layer.plan, undefined, [], { download: false });
      for (const via of streams.length ? streams : [undefined]) {
        if (via) process.env.SHARDTS_MOE_NVLINK_STREAM = via;
        const tag = via ? ` (NVLink kernels ${via === "comm" ? "beside compute" : "in line"})` : "";
        for (let i = 0; i < 3; i++) run();
        const ts: number[] = [];
        for (let i = 0; i < reps; i++) {
          const t0 = performance.now();
          run();
          ts.push(performance.now() - t0);
        }
        const ms = ts.sort((a, b) => a - b)[ts.length >> 1]!, flops = 3 * forwardFlops(Z);
        const row = { kind: "time", impl: "shardts", fmt, world: W, ...(via ? { via } : {}), tokens: Z.T, d: Z.D, ffn: Z.F, experts: Z.E, k: Z.K, shared: Z.shared, ms: +ms.toFixed(3), minMs: +ts[0]!.toFixed(3), tflops: +(flops / ms / 1e9).toFixed(1), peakGiB: +(ex.mem.peak / 2 ** 30).toFixed(2), instrs: layer.plan.instrs.length };
        say(`time ${fmt} fwd+bwd T ${Z.T} per GPU (ep=${W})${tag}: ${row.ms} ms median of ${reps} (min ${row.minMs}), ${row.tflops} TFLOP/s per GPU (3 x forward FLOPs), peak ${row.peakGiB} GiB`);
        results.push(row);
        if (graph) {
          const step = ex.capture(layer.plan);
          for (let i = 0; i < 3; i++) step.replay();
          const gs: number[] = [];
          for (let i = 0; i < reps; i++) {
            const t0 = performance.now();
            step.launch();
            step.sync();
            gs.push(performance.now() - t0);
          }
          const gms = gs.sort((x, y) => x - y)[gs.length >> 1]!;
          const grow = { ...row, impl: "shardts-graph", ms: +gms.toFixed(3), minMs: +gs[0]!.toFixed(3), tflops: +(flops / gms / 1e9).toFixed(1), peakGiB: +(ex.mem.peak / 2 ** 30).toFixed(2) };
          say(`time ${fmt} fwd+bwd T ${Z.T} per GPU (ep=${W})${tag}, CUDA graph replay: ${grow.ms} ms median of ${reps} (min ${grow.minMs}), ${grow.tflops} TFLOP/s per GPU; eager ${row.ms} ms`);
          results.push(grow);
          step.destroy();
        }
        // one traced run: where the time goes (each instruction between CUDA events on its stream)
        const events: TraceEvent[] = [];
        ex.run(layer.plan, undefined, [], { download: false, trace: events });
        const o = commOverlap(events);
        // (every rank: an NVLink op's span includes its wait for the slower rank at the barriers; `log` is
        // rank 0's alone under shardts launch, the launcher prefixes each rank's console lines)
        const rlog = rank === 0 ? log : (line: string) => console.log(line);
        rlog(`trace ${fmt}${tag}: step ${(o.wallUs / 1e3).toFixed(2)} ms, compute ${(o.computeUs / 1e3).toFixed(2)} ms, comm ${(o.commUs / 1e3).toFixed(2)} ms (${((100 * o.overlapUs) / Math.max(o.commUs, 1e-9)).toFixed(0)} % under compute); largest:`);
        for (const t of traceTotals(events).slice(0, 30)) rlog(`  ${(t.us / 1e3).toFixed(3).padStart(8)} ms ${String(t.n).padStart(4)}x ${t.cat.padEnd(6)} ${t.name}`);
        if (traceFile && rank === 0) writeChromeTrace(`${traceFile}.${fmt}${via ? `.${via}` : ""}.json`, events, rank, "moe-layer-ep");
      }
    } catch (e) {
      failures++;
      say(`time ${fmt} (ep=${W}): FAIL with ${(e as Error).stack?.split("\n").slice(0, 4).join(" | ")}`);
      results.push({ kind: "time", impl: "shardts", fmt, world: W, tokens: Z.T, error: String((e as Error).message) });
    }
    if (was === undefined) delete process.env.SHARDTS_MOE_NVLINK_STREAM;
    else process.env.SHARDTS_MOE_NVLINK_STREAM = was;
    for (const n of names) ex.setResident(n, undefined);
  }

  if (rank === 0 && outFile) writeFileSync(outFile, results.map((r) => JSON.stringify(r)).join("\n") + "\n");
  return failures ? 1 : 0;
});
