// On a Hopper GPU: the generated FP8 block-scaled GEMM kernels (compiler/codegen/cuda/gemm/), every
// autotuner candidate, dense and grouped, then the cuBLASLt fallback, the autotuner itself and the
// PyTorch peer (bench/peers/fp8_gemm.py: torch scaled_mm blockwise, bf16 matmul, _grouped_mm).
//
// Each implementation runs in its own child process (this file with --child), so a kernel that
// faults (a sticky CUDA error) or deadlocks (a wrong mbarrier phase) is reported and killed after a
// time limit without hiding the others. A child checks every case (output rows downloaded, D
// pre-filled with NaN so unwritten rows show) and times the issue's shapes (median of 20 CUDA-event
// timings after warm-up, input sets rotated so L2 does not hold them). The parent compares each
// output with the CPU reference (compiler/numeric/fp8-gemm.ts) and with f64 of the dequantized
// operands, prints every check, a summary table last, and writes <out>/fp8-gemm.txt and .json.
// A child that prints no result for CASE_TIMEOUT_S (default 30 s: a deadlocked kernel) is killed.
//   (bundled by npm run gpu:pack; run there: bash bench/gpu/run.sh fp8-gemm, or directly
//    /tmp/node .gpu/fp8-gemm.mjs --out DIR [--only REGEX] [--shapes large] [--case NAME] [--no-peer];
//    --shapes large keeps the correctness-only edge cases and times only the four large dense
//    shapes and the grouped ones, for the kernels, cuBLASLt, the autotuner and the peer)
import { caseBuffers } from "./lib/case-buffers.ts";
import { rotated } from "../../runtime/cuda/gemm-inputs.ts";
import { runSelfChild } from "./lib/self-child.ts";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { configName, experimentalGemmCandidates, gemmCandidates, rowScaledCandidates, type Fp8GemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { fp8GemmF64, fp8GemmRef, relFrobenius } from "../../compiler/numeric/fp8-gemm.ts";
import { bf16FromBits } from "../../compiler/numeric/bf16.ts";
import { cudaAvailable, native } from "../../runtime/cuda/native.ts";
import { runGemmPeer, type PeerRow, type PeerSpec } from "./lib/gemm-peer.ts";
import { Fp8Gemm, type Fp8GemmBuffers } from "../../runtime/cuda/fp8-gemm.ts";
import { timeMedian, tuneCacheFile, tuneFp8Gemm } from "../../runtime/cuda/gemm-tune.ts";
import { DENSE_CASES, GROUPED_CASES, inShapeSet, makeProblem, rowsOf, sampleRows, usefulFlops, type GemmCase } from "./lib/fp8-gemm-data.ts";

const argv = process.argv;
const arg = (k: string) => (argv.includes(k) ? argv[argv.indexOf(k) + 1] : undefined);
const outDir = arg("--out") ?? ".";
const REPS = 20, CHILD_TIMEOUT_S = Number(process.env.FP8_GEMM_CHILD_TIMEOUT_S ?? 240);
/** A kernel or cuBLASLt child that prints no case result for this long is hung (the autotuner, which compiles every candidate per case, gets CHILD_TIMEOUT_S). */
const CASE_TIMEOUT_S = Number(process.env.FP8_GEMM_CASE_TIMEOUT_S ?? 30);
const seedOf = (c: GemmCase) => 1000 + [...DENSE_CASES, ...GROUPED_CASES].indexOf(c) * 10;
const SHAPES = arg("--shapes") ?? "all";
if (SHAPES !== "all" && SHAPES !== "large") {
  console.error(`fp8-gemm: --shapes takes "all" or "large", got "${SHAPES}"`);
  process.exit(2);
}
// --case NAME keeps just that case (a profiler's one launch: bench/gpu/gemm-profile.sh PROFILE_CASE)
const ONLY_CASE = arg("--case");
const SHAPE_SET: GemmCase[] = [...DENSE_CASES, ...GROUPED_CASES].filter((c) => inShapeSet(c, SHAPES));
const ALL_CASES: GemmCase[] = SHAPE_SET.filter((c) => ONLY_CASE === undefined || c.name === ONLY_CASE);
if (ALL_CASES.length === 0) {
  console.error(`fp8-gemm: no case named '${ONLY_CASE}' in --shapes ${SHAPES}; the cases: ${SHAPE_SET.map((c) => c.name).join("; ")}`);
  process.exit(2);
}

type ChildJob = { impl: "kernel"; config: Fp8GemmConfig } | { impl: "cublaslt" } | { impl: "tune" };
interface CaseResult {
  case: string;
  impl: string;
  ok: boolean;
  error?: string;
  rows?: number[];
  /** bf16 codes of the sampled rows, base64. */
  out?: string;
  ms?: number;
  note?: string;
}

// ------------------------------------------------------------------ child: run one implementation
function child(job: ChildJob): void {
  const a = native(), stream = a.streamCreate(), g = new Fp8Gemm(a, stream);
  const grouped = job.impl === "kernel" && job.config.grouped;
  // row-scaled B cases (the Wgrad form) run only on the bRows kernels, and those kernels only on them
  const rowScaled = (c: GemmCase) => c.kind === "dense" && c.bRows === true;
  const bRows = job.impl === "kernel" && job.config.bRows === true;
  const cases = ALL_CASES.filter((c) => (job.impl === "tune" ? c.timed && !rowScaled(c) : (c.kind === "grouped") === grouped && rowScaled(c) === bRows));
  const ws = job.impl === "cublaslt" ? { ptr: a.memAlloc(32 << 20), bytes: 32 << 20 } : undefined;
  for (const c of cases) {
    const impl = job.impl === "kernel" ? configName(job.config) : job.impl;
    const res: CaseResult = { case: c.name, impl, ok: false };
    const { alloc, finish } = caseBuffers(a);
    try {
      const p = makeProblem(c, seedOf(c));
      const put = (host: ArrayBufferView) => {
        const d = alloc(host.byteLength);
        a.memcpyHtoD(d, host);
        return d;
      };
      const base: Fp8GemmBuffers = { a: put(p.a), b: put(p.b), sa: put(p.sa), sb: put(p.sb), d: alloc(p.M * p.N * 2), blockExpert: p.blockExpert ? put(p.blockExpert) : undefined };
      const shape = { M: p.M, N: p.N, K: p.K, experts: c.kind === "grouped" ? c.experts : undefined };
      if (job.impl === "tune") {
        const sets = rotated(a, base, p, alloc);
        const first = tuneFp8Gemm(g, shape, sets, { reps: REPS, force: true });
        const again = tuneFp8Gemm(g, shape, sets);
        res.ok = again.fromCache && again.best.name === first.best.name;
        res.ms = first.best.ms;
        res.note = `picked ${first.best.name}; second call ${again.fromCache ? "came from the cache" : "RE-TIMED (cache miss)"} (${tuneCacheFile()}); failed candidates: ${first.entries.filter((e) => e.error).map((e) => e.name).join(", ") || "none"}`;
      } else {
        const prep = (b: Fp8GemmBuffers) => (job.impl === "kernel" ? g.prepare(job.config, shape, b) : g.prepareCublasLt(shape, b, ws));
        a.memsetD16(base.d, 0x7fc0, p.M * p.N); // bf16 NaN: rows the kernel leaves unwritten show
        prep(base)();
        a.streamSynchronize(stream);
        const rows = sampleRows(p, c), out = new Uint16Array(rows.length * p.N);
        rows.forEach((m, i) => a.memcpyDtoH(out.subarray(i * p.N, (i + 1) * p.N), base.d + BigInt(m * p.N * 2), p.N * 2));
        res.rows = rows;
        res.out = Buffer.from(out.buffer).toString("base64");
        if (c.timed) {
          const runs = rotated(a, base, p, alloc).map(prep);
          res.ms = timeMedian(g, (i) => runs[i % runs.length]!(), REPS);
        }
        res.ok = true;
      }
    } catch (e) {
      res.error = (e as Error).message.split("\n").slice(0, 3).join(" | ");
    }
    finish(res);
  }
}

// ------------------------------------------------------------------ parent
async function runChild(job: ChildJob, log: (s: string) => void): Promise<CaseResult[]> {
  const label = job.impl === "kernel" ? configName(job.config) : job.impl;
  const idleLimit = job.impl === "tune" ? CHILD_TIMEOUT_S : CASE_TIMEOUT_S;
  const t0 = performance.now();
  const { stdout, stderr, code, signal, killedWhy } = await runSelfChild(fileURLToPath(import.meta.url), ["--child", JSON.stringify(job), "--shapes", SHAPES, ...(ONLY_CASE === undefined ? [] : ["--case", ONLY_CASE])], { totalS: CHILD_TIMEOUT_S, idleS: idleLimit });
  const results = stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as CaseResult);
  const secs = ((performance.now() - t0) / 1000).toFixed(1);
  if (killedWhy !== undefined || code !== 0) {
    const why = killedWhy ?? `exit ${code ?? signal}`;
    log(`  ${label}: child ${why} after ${results.length} case(s), ${secs} s; stderr: ${stderr.trim().split("\n").slice(-3).join(" | ")}`);
    results.push({ case: "(remaining cases)", impl: label, ok: false, error: why });
  } else log(`  ${label}: ${results.length} case(s) in ${secs} s`);
  return results;
}

interface Check {
  case: string;
  impl: string;
  pass: boolean;
  detail: string;
  ms?: number;
  tflops?: number;
}

async function parent(): Promise<void> {
  const lines: string[] = [];
  const log = (s: string) => (console.log(s), lines.push(s));
  const gpu = cudaAvailable();
  if (!gpu.ok) {
    log(`fp8-gemm: no usable GPU: ${gpu.reason}`);
    writeFileSync(join(outDir, "fp8-gemm.txt"), lines.join("\n") + "\n");
    process.exit(2);
  }
  const dev = gpu.device;
  log(`fp8-gemm on ${dev.name} (sm_${dev.computeCapability.join("")}, ${dev.smCount} SMs), driver ${gpu.driverVersion}, cuBLASLt ${native().cublasLtVersion()}`);
  const hopper = dev.computeCapability[0] === 9 && dev.computeCapability[1] === 0;
  if (!hopper) log("  not Hopper: the generated kernels need sm_90a; only the cuBLASLt fallback and the peer run");

  const jobs: ChildJob[] = [
    ...(hopper ? [...gemmCandidates(false), ...gemmCandidates(true), ...rowScaledCandidates(), ...experimentalGemmCandidates(false), ...experimentalGemmCandidates(true)].map((config) => ({ impl: "kernel" as const, config })) : []),
    { impl: "cublaslt" },
    ...(hopper ? [{ impl: "tune" as const }] : []),
  ];
  // --only REGEX keeps the implementations whose label matches (config names, "cublaslt", "tune"); checked
  // before the references are computed, so a mistyped pattern costs no GPU time
  const label = (j: ChildJob) => (j.impl === "kernel" ? configName(j.config) : j.impl);
  const only = onlyPattern(arg("--only"));
  const picked = jobs.filter((j) => !only || only.test(label(j)));
  if (only) log(`  --only ${only.source}: ${picked.length} of ${jobs.length} implementations`);
  if (only && picked.length === 0) {
    log(`fp8-gemm: --only ${only.source} matches no implementation; the labels look like ${jobs.slice(-4).map(label).join(", ")}, ${label(jobs[0]!)}`);
    writeFileSync(join(outDir, "fp8-gemm.txt"), lines.join("\n") + "\n");
    process.exit(2);
  }

  // references for the sampled rows, computed once
  const refs = new Map<string, { rows: number[]; ref: Float32Array; f64: Float64Array; N: number }>();
  if (SHAPES !== "all") log(`  --shapes ${SHAPES}: ${ALL_CASES.map((c) => c.name).join("; ")}`);
  for (const c of ALL_CASES) {
    const t0 = performance.now(), p = makeProblem(c, seedOf(c)), rows = sampleRows(p, c);
    refs.set(c.name, { rows, ref: fp8GemmRef(p, rows), f64: fp8GemmF64(p, rows), N: p.N });
    log(`  reference ${c.name}: ${rows.length} rows of ${p.M} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }

  const checks: Check[] = [];
  for (const job of picked) {
    for (const r of await runChild(job, log)) {
      const c = ALL_CASES.find((x) => x.name === r.case);
      const tflops = r.ms !== undefined && c ? usefulFlops(c) / (r.ms * 1e9) : undefined;
      if (!r.ok || !c) {
        checks.push({ case: r.case, impl: r.impl, pass: false, detail: r.error ?? r.note ?? "failed", ms: r.ms, tflops });
      } else if (r.out === undefined) {
        checks.push({ case: r.case, impl: r.impl, pass: true, detail: r.note ?? "", ms: r.ms, tflops });
      } else {
        checks.push({ case: r.case, impl: r.impl, ms: r.ms, tflops, ...compare(refs.get(r.case)!, r) });
      }
      const k = checks[checks.length - 1]!;
      log(`    ${k.pass ? "ok  " : "FAIL"} ${k.impl} | ${k.case} | ${k.detail}${k.ms !== undefined ? ` | ${k.ms.toFixed(4)} ms, ${k.tflops?.toFixed(0)} TFLOP/s` : ""}`);
    }
  }

  const peer = argv.includes("--no-peer") ? [] : runPeer(log);
  summary(checks, peer, log);
  writeFileSync(join(outDir, "fp8-gemm.txt"), lines.join("\n") + "\n");
  writeFileSync(join(outDir, "fp8-gemm.json"), JSON.stringify({ device: dev.name, checks, peer }, null, 1) + "\n");
  process.exit(checks.every((c) => c.pass) ? 0 : 1);
}

// Error model (compiler/numeric/fp8-gemm.ts): vs the CPU reference, one bf16 rounding apart at most
// (2^-7 |ref| covers a 1-ulp flip, plus 1e-3 of the rows' RMS for cancellation); vs f64 of the
// dequantized operands, relative Frobenius error < 5e-3 (bf16 output rounding alone is ~1.6e-3).
function compare(ref: { rows: number[]; ref: Float32Array; f64: Float64Array; N: number }, r: CaseResult): { pass: boolean; detail: string } {
  const codes = new Uint16Array(Buffer.from(r.out!, "base64").buffer.slice(0));
  const got = Float32Array.from(codes, (x) => bf16FromBits(x));
  if (got.length !== ref.ref.length) return { pass: false, detail: `got ${got.length} values, expected ${ref.ref.length}` };
  let rms = 0;
  for (const v of ref.ref) rms += v * v;
  rms = Math.sqrt(rms / ref.ref.length);
  let bad = 0, nan = 0, worst = 0, worstAt = -1;
  for (let i = 0; i < got.length; i++) {
    const g = got[i]!, w = ref.ref[i]!;
    if (Number.isNaN(g)) nan++;
    const excess = Math.abs(g - w) / (2 ** -7 * Math.abs(w) + 1e-3 * rms);
    if (!(excess <= 1)) bad++;
    if (!(excess <= worst)) (worst = excess), (worstAt = i);
  }
  const vsRef = relFrobenius(got, ref.ref).rel, vsF64 = relFrobenius(got, ref.f64).rel;
  const pass = bad === 0 && vsF64 < 5e-3;
  const at = worstAt >= 0 ? ` (row ${ref.rows[Math.floor(worstAt / ref.N)]}, col ${worstAt % ref.N}: got ${got[worstAt]}, ref ${ref.ref[worstAt]})` : "";
  return { pass, detail: `${ref.rows.length} rows: vs CPU ref rel-Frobenius ${vsRef.toExponential(2)}, ${bad} outside tolerance${nan ? ` (${nan} NaN = unwritten)` : ""}, worst ${worst.toFixed(2)}x tol${bad ? at : ""}; vs f64 ${vsF64.toExponential(2)} (limit 5e-3)` };
}

function runPeer(log: (s: string) => void): PeerRow[] {
  const spec: PeerSpec = {
    reps: REPS,
    dense: ALL_CASES.filter((c) => c.timed && c.kind === "dense").map((c) => ({ name: c.name, M: c.kind === "dense" ? c.M : 0, N: c.N, K: c.K, bRows: c.kind === "dense" && c.bRows === true })),
    grouped: ALL_CASES.filter((c) => c.timed && c.kind === "grouped").map((c) => ({ name: c.name, rows: c.kind === "grouped" ? c.rows : [], N: c.N, K: c.K })),
  };
  return runGemmPeer(spec, log);
}

/** --only's pattern, or undefined; a pattern that is no regular expression stops the bench with what was typed. */
function onlyPattern(text: string | undefined): RegExp | undefined {
  if (text === undefined) return undefined;
  try {
    return new RegExp(text);
  } catch (e) {
    console.error(`fp8-gemm: --only takes a regular expression over the implementations' labels, got '${text}': ${(e as Error).message}`);
    process.exit(2);
  }
}

function summary(checks: Check[], peer: PeerRow[], log: (s: string) => void): void {
  log("\ncorrectness: " + `${checks.filter((c) => c.pass).length}/${checks.length} checks pass`);
  const failed = checks.filter((c) => !c.pass);
  for (const f of failed) log(`  FAIL ${f.impl} | ${f.case}`);
  log("\nsummary (TFLOP/s of useful FLOPs; ratios against torch in the same run)");
  log(`${"case".padEnd(30)} ${"best shardts kernel".padEnd(36)} ${"TF/s".padStart(6)} ${"plain".padStart(6)} ${"cuBLASLt".padStart(8)} ${"torch fp8".padStart(9)} ${"torch bf16".padStart(10)} ${"x fp8".padStart(6)} ${"x bf16".padStart(6)}`);
  for (const c of ALL_CASES.filter((x) => x.timed)) {
    const ran = checks.filter((k) => k.case === c.name && k.impl.startsWith("sh_fp8_gemm"));
    const mine = ran.filter((k) => k.pass && k.tflops !== undefined);
    const best = mine.sort((x, y) => y.tflops! - x.tflops!)[0];
    // none ran (--only left this case's kernels out) is not the same as none passing
    const none = ran.length === 0 ? "(none run)" : "(none passed)";
    const plain = mine.find((k) => k.impl === configName(gemmCandidates(c.kind === "grouped")[0]!));
    const lt = checks.find((k) => k.case === c.name && k.impl === "cublaslt" && k.pass);
    const fp8 = peer.find((p) => p.case === c.name && /scaled_mm/.test(p.impl) && p.tflops !== undefined);
    const bf16 = peer.find((p) => p.case === c.name && /bf16/.test(p.impl) && p.tflops !== undefined);
    const f = (x?: number, w = 6) => (x === undefined ? "-" : x.toFixed(0)).padStart(w);
    const ratio = (x?: number, y?: number) => (x === undefined || y === undefined ? "-" : (x / y).toFixed(2)).padStart(6);
    log(`${c.name.slice(0, 30).padEnd(30)} ${(best?.impl ?? none).padEnd(36)} ${f(best?.tflops)} ${f(plain?.tflops)} ${f(lt?.tflops, 8)} ${f(fp8?.tflops, 9)} ${f(bf16?.tflops, 10)} ${ratio(best?.tflops, fp8?.tflops)} ${ratio(best?.tflops, bf16?.tflops)}`);
  }
  log(`rows: grouped M is padded (${ALL_CASES.filter((c) => c.timed && c.kind === "grouped").map((c) => `${c.name}: ${rowsOf(c)} rows`).join("; ")}); FLOPs count routed rows only`);
}

if (argv.includes("--child")) child(JSON.parse(arg("--child")!) as ChildJob);
else
  void parent().catch((e: unknown) => {
    console.error(`fp8-gemm: ${(e as Error).stack ?? e}`);
    process.exit(1);
  });
