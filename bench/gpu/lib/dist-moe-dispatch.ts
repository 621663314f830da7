// One rank of the MoE dispatch/combine check and benchmark, run under `shardts launch
// --nproc-per-node N` (bench/gpu/multi-gpu.sh, stage 7). Mesh ep=N; tokens sharded by batch entry.
//   1. checks: dispatch -> identity experts -> weighted combine, forward and the gradients of the
//      tokens and the gate weights, on the GPUs (kernels + NCCL exchanges) against the CPU-simulated
//      mesh of the same plan, with random, skewed and empty-expert routings, f32, bf16 and fp8e4m3
//      (FP8 dispatch of bf16 tokens, stdlib/nn/fp8.ts: e4m3 codes and their scales travel, the
//      identity experts dequantize). Integer outputs, the dispatched rows and scales must be equal;
//      floats within 1e-5 (f32) / 1e-2 (bf16). With the NVLink transport
//      (SHARDTS_MOE_TRANSPORT=nvlink, runtime/cuda/moe-nvlink.ts) the same plan runs again and every
//      output and gradient must equal the NCCL path's bit for bit.
//   2. timing: 4096 and 8192 tokens per GPU x d 2048 / 7168 x top-6 / top-8, 256 experts, bf16
//      tokens dispatched as bf16 or as FP8 (quantize + codes + scales, a second token exchange):
//      the dispatch plan (permute + count exchange + token exchange) and the round trip (dispatch
//      + weighted combine, bf16) per run, median wall time of 15 after 3 warm-ups; combine = round
//      trip - dispatch. GB/s = dispatched payload per GPU (tokens x k x row bytes: 2d in bf16,
//      d + 4 ceil(d/128) in FP8) / time; combine's payload is bf16 in both. Once per transport
//      (--transport nccl|nvlink|both, default both; rows carry `transport`).
// Every check and every size is caught and reported on its own; rank 0 prints a summary table and
// writes one JSON line per result to --json FILE.
import { writeFileSync } from "node:fs";
import { defineMain } from "../../../stdlib/model.ts";
import { cudaExecutor, jobRank } from "../../../stdlib/run.ts";
import { Mesh } from "../../../stdlib/mesh.ts";
import type { AnyDTensor } from "../../../stdlib/dtensor.ts";
import { fromGlobal } from "../../../stdlib/ops/factories.ts";
import { input } from "../../../stdlib/program.ts";
import { moeCombine, moeDispatch } from "../../../stdlib/ops/dispatch.ts";
import { fp8Dispatch } from "../../../stdlib/nn/fp8.ts";
import { dequantize } from "../../../stdlib/ops/quantize.ts";
import { redistribute } from "../../../stdlib/ops/redistribute.ts";
import { sum } from "../../../stdlib/ops/reduce.ts";
import { mul } from "../../../stdlib/nn/ops-internal.ts";
import { grad } from "../../../stdlib/autodiff.ts";
import { compile } from "../../../compiler/pipeline.ts";
import type { DType } from "../../../compiler/ir/types.ts";
import { allocLocal, type LocalTensor } from "../../../compiler/ir/local.ts";
import { roundToBf16 } from "../../../compiler/numeric/bf16.ts";
import { runPlanCpu } from "../../../runtime/cpu/executor.ts";
import { relError } from "./compare.ts";
import { commOverlap, traceTotals, type TraceEvent } from "../../../runtime/cuda/trace.ts";

type Routing = "random" | "skewed" | "empty";
const E = 256, SEQ = 512;

/** Expert ids: uniform; 70% to expert 1; or never experts 0, E/2, E-1 and a few dropped (-1). */
function route(r: Routing, n: number, experts: number, seed: number, K: number): Int32Array {
  const ids = new Int32Array(n);
  let s = seed >>> 0;
  const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  for (let i = 0; i < n; i++) {
    // a token's k ids differ (as top-k's do): redraw on a repeat within the token
    for (;;) {
      let e = Math.floor(rnd() * experts);
      if (r === "skewed" && rnd() < 0.7) e = 1;
      if (r === "empty") {
        if (rnd() < 0.03) e = -1;
        else if (e === 0 || e === experts >> 1 || e === experts - 1) e = 2;
      }
      let dup = false;
      for (let j = i - (i % K); j < i; j++) if (ids[j] === e && e >= 0) dup = true;
      if (!dup || r === "skewed") {
        ids[i] = e;
        break;
      }
    }
  }
  return ids;
}
const values = (n: number, dtype: DType, seed: number) => {
  let s = seed >>> 0;
  const f = dtype === "bf16" ? roundToBf16 : Math.fround;
  return Float32Array.from({ length: n }, () => f(((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32 - 0.5) * 4));
};


export default defineMain(async ({ args, log }) => {
  const W = Number(process.env.WORLD_SIZE ?? 1), rank = jobRank();
  const outFile = args.includes("--json") ? args[args.indexOf("--json") + 1] : undefined;
  const only = args.includes("--only") ? args[args.indexOf("--only") + 1] : undefined;
  const tArg = args.includes("--transport") ? args[args.indexOf("--transport") + 1]! : "both";
  const transports = tArg === "both" ? ["nccl", "nvlink"] : [tArg];
  // the transport is read at each MoE op: switching the variable between runs switches the path
  const onTransport = <T>(t: string, f: () => T): T => {
    const was = process.env.SHARDTS_MOE_TRANSPORT;
    process.env.SHARDTS_MOE_TRANSPORT = t;
    try {
      return f();
    } finally {
      if (was === undefined) delete process.env.SHARDTS_MOE_TRANSPORT;
      else process.env.SHARDTS_MOE_TRANSPORT = was;
    }
  };
  const ex = cudaExecutor();
  if (!ex.rankLocal) throw new Error("not in a multi-GPU job: run under shardts launch --nproc-per-node N with a GPU per rank");
  const results: Record<string, unknown>[] = [];
  const say = (s: string) => rank === 0 && log(s);
  let failures = 0;

  // ---- 1. checks against the CPU-simulated mesh
  if (only !== "time") {
    for (const routing of ["random", "skewed", "empty"] as Routing[]) {
      for (const dtype of ["f32", "bf16", "fp8e4m3"] as DType[]) {
        const what = `check ${routing} ${dtype} (ep=${W})`;
        const fp8 = dtype === "fp8e4m3", ft: DType = fp8 ? "bf16" : dtype;
        try {
          const B = 2 * W, S = 48, K = 4, D = 160, Ex = 4 * W + 1; // uneven experts per rank
          const mesh = Mesh.of({ ep: W });
          const on = { ep: "S(b)" } as never;
          const x = fromGlobal(mesh, { b: B, s: S, d: D }, ft, values(B * S * D, ft, 1), on) as AnyDTensor;
          const idx = fromGlobal(mesh, { b: B, s: S, k: K }, "i32", route(routing, B * S * K, Ex, 7, K), on) as AnyDTensor;
          const w = fromGlobal(mesh, { b: B, s: S, k: K }, ft, values(B * S * K, ft, 2), on) as AnyDTensor;
          const rr = fromGlobal(mesh, { b: B, s: S, d: D }, ft, values(B * S * D, ft, 3), on) as AnyDTensor;
          const o = { axis: "ep", dim: "s", k: "k", rows: "rows", groups: "e", numGroups: Ex };
          const f8 = fp8 ? fp8Dispatch(x, idx, o, "d") : undefined;
          const d = f8 ? { ...f8, rows: f8.rows.q } : moeDispatch(x, idx, o);
          const rows = f8 ? (dequantize(f8.rows.q as never, f8.rows.scales as never) as AnyDTensor) : d.rows;
          const y = moeCombine(rows, d.perm, w, { axis: "ep", dim: "s", size: S, k: "k", numK: K }); // identity experts
          const loss = redistribute(sum(mul(y, rr), ["b", "s", "d"]) as AnyDTensor, { ep: "R" } as never) as AnyDTensor;
          const g = grad(loss, { x, w });
          const outs = { rows: d.rows, perm: d.perm, counts: d.counts, ...(f8 ? { scales: f8.rows.scales } : {}), y, dx: g.x as AnyDTensor, dw: g.w as AnyDTensor };
          const plan = compile(mesh.builder.graph, Object.values(outs).map((t) => t.ref));
          const cpu = runPlanCpu(plan).outputs, gpu = onTransport("nccl", () => ex.run(plan).outputs);
          const tol = ft === "f32" ? 1e-5 : 1e-2;
          const errs = Object.keys(outs).map((k, i) => [k, relError(gpu[i]!.data, cpu[i]!.data)] as const);
          const exact = new Set(["rows", "perm", "counts", "scales"]);
          const bad = errs.filter(([k, e]) => (exact.has(k) ? e !== 0 : !(e <= tol)));
          // NVLink against NCCL: the same kernels around another transport, so every output bit for bit
          const nvl = transports.includes("nvlink") ? onTransport("nvlink", () => ex.run(plan).outputs) : undefined;
          const differ = nvl ? Object.keys(outs).filter((_, i) => nvl[i]!.data.some((v, j) => !Object.is(v, gpu[i]!.data[j]))) : [];
          if (bad.length || differ.length) failures++;
          const detail = errs.map(([k, e]) => `${k} ${e === 0 ? "equal" : e.toExponential(2)}`).join(", ");
          const nvlSays = nvl ? `; nvlink vs nccl: ${differ.length ? `FAIL, ${differ.join("/")} differ` : "all equal"}` : "";
          say(`${what}: ${bad.length || differ.length ? "FAIL" : "ok"}  (${detail}; tolerance ${tol} for y/dx/dw, exact for rows/perm/counts/scales${nvlSays})`);
          results.push({ kind: "check", routing, dtype, world: W, ok: !bad.length && !differ.length, errors: Object.fromEntries(errs), ...(nvl ? { nvlinkDiffer: differ } : {}) });
        } catch (e) {
          failures++;
          say(`${what}: FAIL with ${(e as Error).stack?.split("\n").slice(0, 4).join(" | ")}`);
          results.push({ kind: "check", routing, dtype, world: W, ok: false, error: String((e as Error).message) });
        }
      }
    }
  }

  // ---- 2. timing
  if (only !== "check") {
    for (const T of [4096, 8192]) for (const D of [2048, 7168]) for (const K of [6, 8]) for (const fmt of ["bf16", "fp8"] as const) {
      const what = `time T=${T} d=${D} top-${K} ${fmt} dispatch (ep=${W})`;
      try {
        const Bper = T / SEQ, B = Bper * W;
        const mesh = Mesh.of({ ep: W });
        const on = { ep: "S(b)" } as never;
        const x = input(mesh, "x", { b: B, s: SEQ, d: D }, "bf16", on) as AnyDTensor;
        const idx = input(mesh, "idx", { b: B, s: SEQ, k: K }, "i32", on) as AnyDTensor;
        const w = input(mesh, "w", { b: B, s: SEQ, k: K }, "bf16", on) as AnyDTensor;
        const o = { axis: "ep", dim: "s", k: "k", rows: "rows", groups: "e", numGroups: E };
        const f8 = fmt === "fp8" ? fp8Dispatch(x, idx, o, "d") : undefined;
        const d = f8 ? { ...f8, rows: f8.rows.q } : moeDispatch(x, idx, o);
        const rows = f8 ? (dequantize(f8.rows.q as never, f8.rows.scales as never) as AnyDTensor) : d.rows;
        const y = moeCombine(rows, d.perm, w, { axis: "ep", dim: "s", size: SEQ, k: "k", numK: K });
        const planD = compile(mesh.builder.graph, f8 ? [f8.rows.q.ref, f8.rows.scales.ref] : [d.rows.ref]), planRT = compile(mesh.builder.graph, [y.ref]);
        const mine = (t: LocalTensor) => {
          const a = new Array<LocalTensor>(W);
          a[rank] = t;
          return a;
        };
        const xs = allocLocal("bf16", [Bper, SEQ, D]);
        xs.data.set(values(Bper * SEQ * D, "bf16", 11 + rank));
        const ws = allocLocal("bf16", [Bper, SEQ, K]);
        ws.data.set(values(Bper * SEQ * K, "bf16", 13 + rank));
        const is = allocLocal("i32", [Bper, SEQ, K]);
        is.data.set(route("random", Bper * SEQ * K, E, 17 + rank, K));
        ex.setResident("x", mine(xs));
        ex.setResident("w", mine(ws));
        ex.setResident("idx", mine(is));
        const time = (plan: typeof planD) => {
          for (let i = 0; i < 3; i++) ex.run(plan, undefined, [], { download: false });
          const ts: number[] = [];
          for (let i = 0; i < 15; i++) {
            const t0 = performance.now();
            ex.run(plan, undefined, [], { download: false });
            ts.push(performance.now() - t0);
          }
          return ts.sort((a, b) => a - b)[7]!;
        };
        for (const transport of transports) {
          const msD = onTransport(transport, () => time(planD)), msRT = onTransport(transport, () => time(planRT)), msC = msRT - msD;
          const bytes = T * K * (f8 ? D + 4 * Math.ceil(D / 128) : 2 * D), combineBytes = T * K * D * 2;
          const row = { kind: "time", impl: "shardts", fmt, transport, tokens: T, d: D, k: K, experts: E, world: W, dispatchMs: +msD.toFixed(3), roundTripMs: +msRT.toFixed(3), combineMs: +msC.toFixed(3), dispatchGBs: +(bytes / msD / 1e6).toFixed(1), combineGBs: +(combineBytes / msC / 1e6).toFixed(1), peakGiB: +(ex.mem.peak / 2 ** 30).toFixed(2) };
          say(`${what} ${transport}: dispatch ${msD.toFixed(3)} ms (${row.dispatchGBs} GB/s), round trip ${msRT.toFixed(3)} ms, combine ${msC.toFixed(3)} ms (${row.combineGBs} GB/s)`);
          results.push(row);
          if (T === 8192 && D === 2048 && K === 6) {
            // one traced round trip of this size: where the time goes, and the host's share (wall - spans)
            const events: TraceEvent[] = [];
            const t0 = performance.now();
            onTransport(transport, () => ex.run(planRT, undefined, [], { download: false, trace: events }));
            const wall = performance.now() - t0, ov = commOverlap(events);
            say(`  trace ${fmt} ${transport} round trip: wall ${wall.toFixed(3)} ms (traced), device spans ${(ov.wallUs / 1e3).toFixed(3)} ms first to last, busy ${((ov.computeUs + ov.commUs - ov.overlapUs) / 1e3).toFixed(3)} ms:`);
            for (const t of traceTotals(events).slice(0, 12)) say(`    ${(t.us / 1e3).toFixed(3).padStart(8)} ms ${String(t.n).padStart(3)}x ${t.cat.padEnd(5)} ${t.name}`);
          }
        }
        for (const n of ["x", "w", "idx"]) ex.setResident(n, undefined);
      } catch (e) {
        failures++;
        say(`${what}: FAIL with ${(e as Error).stack?.split("\n").slice(0, 4).join(" | ")}`);
        results.push({ kind: "time", impl: "shardts", fmt, tokens: T, d: D, k: K, world: W, error: String((e as Error).message) });
        for (const n of ["x", "w", "idx"]) ex.setResident(n, undefined);
      }
    }
  }

  if (rank === 0) {
    log("\nsummary (shardts, ep=" + W + ")");
    for (const r of results) log(r.kind === "check" ? `  check ${r.routing} ${r.dtype}: ${r.ok ? "ok" : "FAIL"}` : `  T ${r.tokens} d ${r.d} top-${r.k} ${r.fmt} ${r.transport ?? ""}: ${r.error ? "FAIL " + r.error : `dispatch ${r.dispatchMs} ms ${r.dispatchGBs} GB/s, combine ${r.combineMs} ms ${r.combineGBs} GB/s`}`);
    if (outFile) writeFileSync(outFile, results.map((r) => JSON.stringify(r)).join("\n") + "\n");
  }
  return failures ? 1 : 0;
});
