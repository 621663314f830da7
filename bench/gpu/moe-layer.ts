// On a GPU machine: the MoE layer of examples/moe-layer.ts (router -> softmax -> top-k -> sort by
// expert -> gather rows -> per-expert SwiGLU as segment contractions -> weighted scatter back) at
// DeepSeek-V2-Lite size on one GPU, forward, bf16: 8192 tokens, d=2048, expert ffn 1408, 64
// experts, top-6. First the same program at a small size on the CUDA backend against the CPU
// reference; then the full size timed (median wall time of the whole forward, weights resident on
// the device, the input uploaded once, output left on the device); then the PyTorch peer
// (bench/peers/moe_layer.py: a per-expert loop and torch._grouped_mm) in the same run.
//   (bundled by npm run gpu:pack; run there: bash bench/gpu/run.sh moe-layer)
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { native } from "../../runtime/cuda/native.ts";
import { runPlanCpu as runPlan } from "../../runtime/cpu/executor.ts";
import { build } from "./lib/moe-build.ts";

const outDir = process.argv.includes("--out") ? process.argv[process.argv.indexOf("--out") + 1]! : ".";
const gpu = new CudaExecutor(native());
const device = gpu.addon.deviceProperties(0).name;
const lines: string[] = [`device ${device}; MoE layer forward, bf16, one GPU`];
let failed = 0;

// 1. correctness at a small size: CUDA against the CPU reference
{
  const z = { T: 512, D: 256, F: 128, E: 16, K: 4 };
  try {
    const { plan, feeds } = build(z);
    const cpu = runPlan(plan, feeds).outputs;
    const got = gpu.run(plan, feeds).outputs;
    let num = 0, den = 0;
    got[0]!.data.forEach((v, i) => ((num = Math.max(num, Math.abs(v - cpu[0]!.data[i]!))), (den = Math.max(den, Math.abs(cpu[0]!.data[i]!)))));
    const countsEqual = got[1]!.data.every((v, i) => v === cpu[1]!.data[i]);
    const rel = num / den, ok = rel < 1e-2 && countsEqual;
    if (!ok) failed++;
    lines.push(`check (T ${z.T}, d ${z.D}, ffn ${z.F}, ${z.E} experts, top-${z.K}): CUDA vs CPU reference y max rel diff ${rel.toExponential(2)} (bf16 tolerance 1e-2), expert counts ${countsEqual ? "equal" : "DIFFER"}: ${ok ? "ok" : "FAIL"}`);
  } catch (e) {
    failed++;
    lines.push(`check FAILED: ${(e as Error).stack}`);
  }
}

// 2. the DeepSeek-V2-Lite-sized layer, timed
const Z = { T: 8192, D: 2048, F: 1408, E: 64, K: 6 };
const flops = 2 * Z.T * Z.K * Z.D * Z.F * 3 + 2 * Z.T * Z.D * Z.E;
let ours = NaN;
try {
  const { plan, feeds } = build(Z);
  for (const [name, pieces] of feeds) gpu.setResident(name, pieces);
  const times: number[] = [];
  for (let i = 0; i < 13; i++) {
    const t = performance.now();
    gpu.run(plan, undefined, [], { download: false });
    if (i >= 3) times.push(performance.now() - t);
  }
  ours = [...times].sort((a, b) => a - b)[Math.floor(times.length / 2)]!;
  lines.push(`shardts (CUDA backend, eager; segment GEMMs as a per-expert cuBLASLt loop): ${ours.toFixed(2)} ms, ${(flops / ours / 1e9).toFixed(0)} TFLOP/s (${(flops / 1e12).toFixed(2)} TFLOP counted: expert GEMMs + router)`);
  // where the time goes: each kernel/GEMM instruction timed once with events would need a profile run; the plan's op mix instead
  lines.push(`  plan: ${plan.instrs.length} instructions; peak device memory ${(gpu.mem.peak / 2 ** 30).toFixed(2)} GiB`);
} catch (e) {
  failed++;
  lines.push(`full size FAILED: ${(e as Error).stack}`);
}

// 3. the PyTorch peer, same GPU, same run
const peerFile = join(outDir, "moe-layer-peer.jsonl");
const script = ["bench/peers/moe_layer.py"].find((p) => existsSync(p));
if (script) {
  const p = spawnSync("python3", [script, "--out", peerFile], { stdio: "inherit", env: { ...process.env, PYTHONUNBUFFERED: "1" } });
  if (p.status !== 0) lines.push(`PyTorch peer failed (exit ${p.status})`);
  if (existsSync(peerFile))
    for (const l of readFileSync(peerFile, "utf8").trim().split("\n")) {
      const j = JSON.parse(l) as { impl: string; ms: number };
      lines.push(`PyTorch ${j.impl}: ${j.ms.toFixed(2)} ms, ${(flops / j.ms / 1e9).toFixed(0)} TFLOP/s; shardts / this = ${(j.ms / ours).toFixed(2)}x speed`);
    }
} else lines.push("PyTorch peer not found (bench/peers/moe_layer.py)");
writeFileSync(join(outDir, "moe-layer.txt"), lines.join("\n") + "\n");
console.log("\n" + lines.join("\n"));
process.exit(failed ? 1 : 0);
