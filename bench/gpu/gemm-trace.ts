// On a Hopper GPU: where a chunked FP8 GEMM kernel's time goes, tile by tile. Runs the executor's default
// dense configuration (or --only REGEX over the dense candidates the trace can stamp) and the same kernel traced
// (config trace: clock stamps at the tile boundaries, compiler/codegen/cuda/gemm/trace.ts), on seeded
// random inputs rotated so L2 does not hold them, and prints each one's TFLOP/s and the traced run's
// timeline summed (lib/gemm-trace-summary.ts): tile start, K loop per block, epilogue, gaps, the
// producer's waits, the SM clock. Then (--sweep) times the default on shapes that separate the cost per
// K block from the cost per tile: 4096 x 7168 x K for K = 1024..8192, and M = 2048 / 8192 at K = 2048.
//   (bundled by npm run gpu:pack; run there: bash bench/gpu/run.sh gemm-trace, or
//    /tmp/node .gpu/gemm-trace.mjs --out DIR [--shapes MxNxK,...] [--only REGEX] [--sweep])
// Each run is a child process (this file with --job) killed after JOB_TIMEOUT_S (default 60 s), so a kernel
// that hangs costs its own run and not the rest. Writes <out>/gemm-trace.txt and .json. Exit status 0 when
// every run completed with a consistent trace.
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { configName, configProblem, defaultGemmConfig, experimentalGemmCandidates, gemmCandidates, geometryOf, type Fp8GemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { traceWords } from "../../compiler/codegen/cuda/gemm/trace.ts";
import { FP8_BLOCK } from "../../compiler/numeric/fp8-gemm.ts";
import { cudaAvailable, native } from "../../runtime/cuda/native.ts";
import { Fp8Gemm, gemmSms, type Fp8GemmBuffers } from "../../runtime/cuda/fp8-gemm.ts";
import { timeMedian } from "../../runtime/cuda/gemm-tune.ts";
import { makeProblem } from "./lib/fp8-gemm-data.ts";
import { formatTrace, summarizeTrace, type TraceSummary } from "./lib/gemm-trace-summary.ts";
import { rotated } from "../../runtime/cuda/gemm-inputs.ts";
import { runSelfChild } from "./lib/self-child.ts";

const argv = process.argv;
const arg = (k: string) => (argv.includes(k) ? argv[argv.indexOf(k) + 1] : undefined);
const outDir = arg("--out") ?? ".";
const REPS = 20;
const SHAPES = (arg("--shapes") ?? "4096x7168x2048,4096x4096x7168,8192x8192x8192").split(",");
const SWEEP = ["4096x7168x1024", "4096x7168x2048", "4096x7168x4096", "4096x7168x8192", "2048x7168x2048", "8192x7168x2048"];

function parseShape(s: string): { M: number; N: number; K: number } {
  const m = /^(\d+)x(\d+)x(\d+)$/.exec(s.trim());
  if (!m) {
    console.error(`gemm-trace: a shape is MxNxK (e.g. 4096x7168x2048), got "${s}"`);
    process.exit(2);
  }
  return { M: Number(m[1]), N: Number(m[2]), K: Number(m[3]) };
}

type Entry = { shape: string; config: string; tflops: number; tracedTflops?: number; summary?: TraceSummary; error?: string };
interface Job {
  shape: string;
  config: Fp8GemmConfig;
  traced: boolean;
}
const JOB_TIMEOUT_S = Number(process.env.GEMM_TRACE_JOB_TIMEOUT_S ?? 60);

// ------------------------------------------------------------------ child: one run
/** Times the job's configuration (and, traced, its timeline) on its shape; prints { entry, lines } as one JSON line. */
function child(job: Job): void {
  const { M, N, K } = parseShape(job.shape);
  const a = native(), stream = a.streamCreate(), g = new Fp8Gemm(a, stream);
  const c = job.config, name = configName(c), lines: string[] = [];
  const owned: bigint[] = [];
  const alloc = (bytes: number) => {
    const d = a.memAlloc(Math.max(bytes, 256));
    owned.push(d);
    return d;
  };
  let entry: Entry;
  try {
    const p = makeProblem({ kind: "dense", name: job.shape, M, N, K, timed: true }, 7);
    const put = (host: ArrayBufferView) => {
      const d = alloc(host.byteLength);
      a.memcpyHtoD(d, host);
      return d;
    };
    const base: Fp8GemmBuffers = { a: put(p.a), b: put(p.b), sa: put(p.sa), sb: put(p.sb), d: alloc(M * N * 2) };
    const sets = rotated(a, base, p, alloc), flops = 2 * M * N * K;
    const plain = sets.map((b) => g.prepare(c, { M, N, K }, b));
    const ms = timeMedian(g, (i) => plain[i % plain.length]!(), REPS);
    entry = { shape: job.shape, config: name, tflops: flops / ms / 1e9 };
    let text = `${job.shape.padEnd(16)} ${name.padEnd(40)} ${entry.tflops.toFixed(0).padStart(5)} TFLOP/s (${(ms * 1000).toFixed(1)} µs)`;
    if (job.traced) {
      const tc: Fp8GemmConfig = { ...c, trace: true }, sms = g.gridSms();
      const geo = geometryOf(tc, { M, N, K }, sms), words = traceWords(geo.tiles, geo.grid);
      const trace = alloc(words * 8);
      const runs = sets.map((b) => g.prepare(tc, { M, N, K }, { ...b, trace }));
      const tms = timeMedian(g, (i) => runs[i % runs.length]!(), REPS);
      entry.tracedTflops = flops / tms / 1e9;
      a.memsetD8(trace, 0, words * 8);
      runs[1 % runs.length]!();
      a.streamSynchronize(stream);
      const host = new BigUint64Array(words);
      a.memcpyDtoH(host, trace, words * 8);
      entry.summary = summarizeTrace(host, geo.grid, geo.tiles, Math.ceil(K / FP8_BLOCK));
      text += `; traced ${entry.tracedTflops.toFixed(0)} TFLOP/s (${(tms * 1000).toFixed(1)} µs), ${geo.tiles} tiles on ${geo.grid} CTAs, ${Math.ceil(K / FP8_BLOCK)} K blocks a tile`;
      lines.push(text, ...formatTrace(entry.summary));
    } else lines.push(text);
  } catch (e) {
    const error = (e as Error).message.split("\n").slice(0, 3).join(" | ");
    lines.push(`${job.shape} ${name}: FAILED: ${error}`);
    entry = { shape: job.shape, config: name, tflops: NaN, error };
  }
  for (const d of owned) a.memFree(d);
  process.stdout.write(JSON.stringify({ entry, lines }) + "\n");
}

/** Runs a job in a child process; a child that prints nothing within JOB_TIMEOUT_S is killed (a hung kernel). */
async function runJob(job: Job): Promise<{ entry: Entry; lines: string[] }> {
  const { stdout, stderr, code, killedWhy } = await runSelfChild(fileURLToPath(import.meta.url), ["--job", JSON.stringify(job)], { totalS: JOB_TIMEOUT_S });
  const line = stdout.split("\n").find((l) => l.startsWith("{"));
  if (line && killedWhy === undefined && code === 0) return JSON.parse(line) as { entry: Entry; lines: string[] };
  const why = killedWhy !== undefined ? `${killedWhy} (a hung kernel?)` : `child exited ${code}: ${stderr.trim().split("\n").slice(-2).join(" | ")}`;
  const name = configName(job.config);
  return { entry: { shape: job.shape, config: name, tflops: NaN, error: why }, lines: [`${job.shape} ${name}: FAILED: ${why}`] };
}

// ------------------------------------------------------------------ parent
async function parent(): Promise<void> {
  const lines: string[] = [];
  const log = (s: string) => (console.log(s), lines.push(s));
  const write = () => writeFileSync(join(outDir, "gemm-trace.txt"), lines.join("\n") + "\n");
  const gpu = cudaAvailable();
  if (!gpu.ok) {
    log(`gemm-trace: no usable GPU: ${gpu.reason}`);
    write();
    process.exit(2);
  }
  const dev = gpu.device;
  if (dev.computeCapability[0] !== 9 || dev.computeCapability[1] !== 0) {
    log(`gemm-trace: ${dev.name} is not Hopper (sm_90a): the generated kernels do not run here`);
    write();
    process.exit(2);
  }
  const sms = gemmSms(dev.smCount);
  log(`gemm-trace on ${dev.name} (${dev.smCount} SMs, grid ${sms}), driver ${gpu.driverVersion}`);
  const only = arg("--only") !== undefined ? new RegExp(arg("--only")!) : undefined;
  const configsFor = (M: number, N: number): Fp8GemmConfig[] =>
    only ? [...gemmCandidates(false), ...experimentalGemmCandidates(false)].filter((c) => configProblem({ ...c, trace: true }) === undefined && only.test(configName(c))) : [defaultGemmConfig(false, { M, N }, sms)];
  const jobs: Job[] = [];
  for (const shape of SHAPES) {
    const { M, N } = parseShape(shape);
    for (const config of configsFor(M, N)) jobs.push({ shape, config, traced: true });
  }
  if (argv.includes("--sweep")) for (const shape of SWEEP) {
    const { M, N } = parseShape(shape);
    jobs.push({ shape, config: defaultGemmConfig(false, { M, N }, sms), traced: false });
  }
  const json: Entry[] = [];
  let failed = 0, sweepHeader = false;
  for (const job of jobs) {
    if (!job.traced && !sweepHeader) (sweepHeader = true), log("sweep: the default configuration, untraced");
    const r = await runJob(job);
    for (const l of r.lines) log(l);
    if (r.entry.error) failed++;
    json.push(r.entry);
  }
  write();
  writeFileSync(join(outDir, "gemm-trace.json"), JSON.stringify(json, null, 1) + "\n");
  process.exit(failed ? 1 : 0);
}

if (arg("--job") !== undefined) child(JSON.parse(arg("--job")!) as Job);
else await parent();
