// On a Hopper GPU: is the FP8 GEMM's time set by its cycles or by the card's power limit? A diagnostic,
// not a benchmark of the figures (bench/gpu/fp8-gemm.ts is that). For two shapes, the executor's
// default generated kernel and the cuBLASLt block-scaled call (the library torch's scaled_mm runs) on
// three kinds of operands with the same scales:
//   gaussian  the bench's e4m3 codes of quantized Gaussians (what fp8-gemm.ts times);
//   uniform   every finite e4m3 code equally often (more bits switching: more power per MMA);
//   zeros     A all zero codes, B Gaussian (the tensor cores' operands barely switch: least power).
// Each pair is timed as fp8-gemm.ts times it (median of 20 back to back, input sets rotated), then run
// for ~1.5 s in a row while nvidia-smi samples the SM clock, board power and the power-cap reason every
// 50 ms; each phase's samples are matched by timestamp (lib/power-phases.ts). If the ratio of ours to
// cuBLASLt moves with the operands, the power limit, not the kernels' cycles, is what sets it.
//   (bundled by npm run gpu:pack; run there: bash bench/gpu/run.sh gemm-power)
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { configName, defaultGemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { cudaAvailable, native } from "../../runtime/cuda/native.ts";
import { Fp8Gemm, type Fp8GemmBuffers } from "../../runtime/cuda/fp8-gemm.ts";
import { rotated } from "../../runtime/cuda/gemm-inputs.ts";
import { timeMedian } from "../../runtime/cuda/gemm-tune.ts";
import { makeProblem, usefulFlops, type DenseCase } from "./lib/fp8-gemm-data.ts";
import { clocksByPhase, parseSamples, type Phase } from "./lib/power-phases.ts";

const argv = process.argv;
const outDir = argv.includes("--out") ? argv[argv.indexOf("--out") + 1]! : ".";
const SUSTAIN_MS = Number(process.env.GEMM_POWER_SUSTAIN_MS ?? 1500);
const KINDS = ["gaussian", "uniform", "zeros"] as const;
type Kind = (typeof KINDS)[number];
const CASES: DenseCase[] = [
  { kind: "dense", name: "4096x7168x2048", M: 4096, N: 7168, K: 2048, timed: true },
  { kind: "dense", name: "8192x8192x8192", M: 8192, N: 8192, K: 8192, timed: true },
];

const lines: string[] = [];
const log = (s: string) => (console.log(s), lines.push(s));

/** The operands of `kind` (scales as the bench draws them). */
function operands(c: DenseCase, kind: Kind) {
  const p = makeProblem(c, 4242);
  if (kind === "zeros") p.a.fill(0);
  if (kind === "uniform") {
    let s = 12345;
    for (const x of [p.a, p.b])
      for (let i = 0; i < x.length; i++) {
        s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
        const v = s >>> 24;
        x[i] = (v & 0x7f) === 0x7f ? v ^ 1 : v; // 0x7f / 0xff are e4m3's NaNs
      }
  }
  return p;
}

async function main(): Promise<void> {
  const gpu = cudaAvailable();
  if (!gpu.ok) {
    log(`gemm-power: no usable GPU: ${gpu.reason}`);
    process.exit(2);
  }
  const a = native(), stream = a.streamCreate(), g = new Fp8Gemm(a, stream);
  const device = a.deviceProperties(0);
  log(`gemm-power on ${device.name}: generated default kernel vs cuBLASLt block-scaled FP8, by operand kind; median of 20, then ${SUSTAIN_MS} ms sustained with nvidia-smi sampling`);
  const smi = spawn("nvidia-smi", ["--query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.sw_power_cap", "--format=csv,noheader,nounits", "-lms", "50", "-i", "0"], { stdio: ["ignore", "pipe", "pipe"] });
  let smiOut = "", smiErr = "";
  smi.stdout.on("data", (d: Buffer) => (smiOut += d.toString()));
  smi.stderr.on("data", (d: Buffer) => (smiErr += d.toString()));
  smi.on("error", (e) => (smiErr += String(e)));
  const ws = { ptr: a.memAlloc(32 << 20), bytes: 32 << 20 };
  const phases: Phase[] = [];
  // rows[i] is phases[i]'s timings (pushed together)
  const rows: { shape: string; kind: Kind; who: "ours" | "cuBLASLt"; impl: string; ms: number; tflops: number; sustainedTflops: number }[] = [];
  for (const c of CASES) {
    const shape = { M: c.M, N: c.N, K: c.K };
    const config = defaultGemmConfig(false, shape, g.gridSms());
    for (const kind of KINDS) {
      const p = operands(c, kind);
      const allocs: bigint[] = [];
      const alloc = (n: number) => {
        const d = a.memAlloc(Math.max(n, 256));
        allocs.push(d);
        return d;
      };
      const put = (h: ArrayBufferView) => {
        const d = alloc(h.byteLength);
        a.memcpyHtoD(d, h);
        return d;
      };
      const base: Fp8GemmBuffers = { a: put(p.a), b: put(p.b), sa: put(p.sa), sb: put(p.sb), d: alloc(p.M * p.N * 2) };
      const sets = rotated(a, base, p, alloc);
      for (const impl of [configName(config), "cublaslt"]) {
        const runs = sets.map((b) => (impl === "cublaslt" ? g.prepareCublasLt(shape, b, ws) : g.prepare(config, shape, b)));
        const ms = timeMedian(g, (i) => runs[i % runs.length]!(), 20);
        // sustained: batches of launches until SUSTAIN_MS have passed, the host waiting on each batch
        const who = impl === "cublaslt" ? "cuBLASLt" : "ours";
        const t0 = Date.now();
        let n = 0;
        while (Date.now() - t0 < SUSTAIN_MS) {
          for (let i = 0; i < 50; i++) runs[(n + i) % runs.length]!();
          n += 50;
          a.streamSynchronize(stream);
        }
        const t1 = Date.now();
        phases.push({ label: `${c.name} ${kind} ${who}`, t0, t1 });
        const flops = usefulFlops(c);
        rows.push({ shape: c.name, kind, who, impl, ms, tflops: flops / ms / 1e9, sustainedTflops: (flops * n) / (t1 - t0) / 1e9 });
        for (const r of runs) if ("release" in r) (r as { release(): void }).release();
        // a second between phases, so the clock of one does not carry into the next one's first samples
        await new Promise((res) => setTimeout(res, 1000));
      }
      for (const d of allocs) a.memFree(d);
    }
  }
  await new Promise((res) => setTimeout(res, 200));
  smi.kill();
  await new Promise((res) => setTimeout(res, 200));
  const clocks = clocksByPhase(phases, parseSamples(smiOut));
  if (!smiOut.trim()) log(`  nvidia-smi gave no samples (${smiErr.trim().split("\n")[0] ?? "no output"}): clocks and power are missing`);
  log("");
  log(`${"shape".padEnd(16)}${"operands".padEnd(10)}${"impl".padEnd(10)}${"TFLOP/s".padStart(9)}${"sustained".padStart(11)}${"SM MHz".padStart(8)}${"power W".padStart(9)}${"cap".padStart(6)}${"samples".padStart(9)}`);
  rows.forEach((r, i) => {
    const k = clocks[i]!;
    log(`${r.shape.padEnd(16)}${r.kind.padEnd(10)}${r.who.padEnd(10)}${r.tflops.toFixed(0).padStart(9)}${r.sustainedTflops.toFixed(0).padStart(11)}${k.smMHz.toFixed(0).padStart(8)}${k.powerW.toFixed(0).padStart(9)}${(k.capShare * 100).toFixed(0).padStart(5)}%${String(k.samples).padStart(9)}`);
  });
  log("");
  log("ours / cuBLASLt (median of 20; sustained):");
  for (const c of CASES)
    for (const kind of KINDS) {
      const row = (who: string) => rows.find((r) => r.shape === c.name && r.kind === kind && r.who === who)!;
      const [o, l] = [row("ours"), row("cuBLASLt")];
      log(`  ${c.name.padEnd(16)}${kind.padEnd(10)}${(o.tflops / l.tflops).toFixed(3)}  ${(o.sustainedTflops / l.sustainedTflops).toFixed(3)}`);
    }
  writeFileSync(join(outDir, "gemm-power.txt"), lines.join("\n") + "\n");
  writeFileSync(join(outDir, "gemm-power.json"), JSON.stringify({ device: device.name, rows, clocks }, null, 1) + "\n");
  writeFileSync(join(outDir, "gemm-power-smi.csv"), smiOut);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
