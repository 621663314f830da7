// On a Hopper GPU: the generated bf16 GEMM kernels (compiler/codegen/cuda/gemm/, ab: "bf16"), every
// candidate of bf16GemmCandidates, dense and grouped, checked against an f64 reference on sampled rows
// and timed on the MoE expert shapes, against the PyTorch peer (bench/peers/fp8_gemm.py's bf16 rows:
// torch._grouped_mm for the grouped shapes, torch.matmul for the dense one) and against the floor
// FLOPs / 700 TFLOP/s (the H100/H200 dense bf16 rate the kernels should approach).
//
// The K-grouped kernels (kGrouped: the MoE weight gradient dW[e] = X_eᵀ·dY_e of every expert in one
// launch) run on their own cases: A = Xᵀ [M][P] and B = dYᵀ [N][P] with each expert's token columns
// zero-padded to 64 (P in all), D = [E·M][N]; the peer is torch._grouped_mm in its 2-D x 2-D form (jagged
// K, what torch's MoE backward calls), on x.t() and dy as a model holds them and on the padded K-major
// operands these kernels take; a per-expert torch.matmul loop where it refuses (the output says which).
//
// The MN-major-B kernels (bMnMajor, names ending _bn: B [E][K][N] as segment_dot's weights are, read with
// no transpose) run on the dense and grouped cases beside the K-major ones, on the same values (B uploaded
// transposed to [E][K][N]) and the same reference and peer; the summary puts the best of each form side by
// side (--only _bn keeps them alone).
//
// Each candidate runs in its own child process (this file with --child), killed after CHILD_TIMEOUT_S
// (a deadlocked kernel: a wrong mbarrier phase), so one broken kernel does not hide the others. D is
// pre-filled with NaN so unwritten rows show. Timings: median of 20 CUDA-event timings after warm-up,
// input sets rotated so L2 does not hold them. Writes <out>/bf16-gemm.txt and .json.
//   (bundled by npm run gpu:pack; run there: bash bench/gpu/run.sh bf16-gemm, or directly
//    /tmp/node .gpu/bf16-gemm.mjs --out DIR [--only REGEX] [--no-peer]; --only keeps the configurations
//    whose name matches, and only the cases (and peer rows) those run: --only _kg is the K-grouped ones)
import { caseBuffers } from "./lib/case-buffers.ts";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { bf16GemmCandidates, bf16MnMajorCandidates, configName, defaultBf16GemmConfig, defaultKGroupedConfig, kGroupedCandidates, type Fp8GemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { GROUPED_M_ALIGN } from "../../compiler/numeric/fp8-gemm.ts";
import { bf16FromBits, bf16ToBits } from "../../compiler/numeric/bf16.ts";
import { cudaAvailable, native } from "../../runtime/cuda/native.ts";
import { runGemmPeer, type PeerRow, type PeerSpec } from "./lib/gemm-peer.ts";
import { Fp8Gemm, type Fp8GemmBuffers } from "../../runtime/cuda/fp8-gemm.ts";
import { timeMedian } from "../../runtime/cuda/gemm-tune.ts";
import { paddedRows, routing } from "./lib/fp8-gemm-data.ts";

const argv = process.argv;
const arg = (k: string) => (argv.includes(k) ? argv[argv.indexOf(k) + 1] : undefined);
const outDir = arg("--out") ?? ".";
const REPS = 20, CHILD_TIMEOUT_S = Number(process.env.BF16_GEMM_CHILD_TIMEOUT_S ?? 180);
/** The dense bf16 tensor-core rate the floor is taken at (TFLOP/s). */
const FLOOR_TFLOPS = 700;
/** Relative Frobenius error allowed on the sampled rows: the bf16 output rounding (~2e-3) and f32 sums. */
const TOL = 8e-3;

interface Bf16Case {
  name: string;
  /** Which kernels run it: dense, grouped over M (rows padded to 128 in A), grouped over K (kGrouped). */
  kind: "dense" | "grouped" | "kgrouped";
  /** Grouped: routed rows per expert; K-grouped: routed token rows per expert (the contracted dim). */
  rows?: number[];
  /** K-grouped: each expert's rows of D (the weight's input dim). */
  M: number;
  N: number;
  /** K-grouped: P, the token columns padded to 64 per expert. */
  K: number;
  timed: boolean;
}
const grouped = (name: string, rows: number[], N: number, K: number, timed: boolean): Bf16Case => ({ name, kind: "grouped", rows, M: paddedRows(rows), N, K, timed });
/** Token columns of expert e padded to the K-grouped kernel's 64-column blocks. */
const kgBlocks = (r: number) => Math.ceil(r / 64);
const kgrouped = (name: string, rows: number[], M: number, N: number, timed: boolean): Bf16Case => ({ name, kind: "kgrouped", rows, M, N, K: 64 * rows.reduce((s, r) => s + kgBlocks(r), 0), timed });
/** A config runs the cases of its kind. */
const runsCase = (config: Fp8GemmConfig, c: Bf16Case): boolean => c.kind === (config.kGrouped ? "kgrouped" : config.grouped ? "grouped" : "dense");
const CASES: Bf16Case[] = [
  { name: "edge 300x528x1040", kind: "dense", M: 300, N: 528, K: 1040, timed: false },
  { name: "4096x7168x2048", kind: "dense", M: 4096, N: 7168, K: 2048, timed: true },
  grouped("edge E4 rows[100,0,300,37] N256 K512", [100, 0, 300, 37], 256, 512, false),
  // K = 208: not a multiple of the 64-wide K block (TMA zero fill); N = 176: a partial tile
  grouped("edge E3 rows[130,1,255] N176 K208", [130, 1, 255], 176, 208, false),
  // the EP MoE layer's routed experts: 64 experts x 8192 tokens x top-6, hidden 2048, expert width 1408
  grouped("E64 49152 rows N1408 K2048", routing(64, 8192 * 6, 7), 1408, 2048, true),
  grouped("E64 49152 rows N2816 K2048", routing(64, 8192 * 6, 5), 2816, 2048, true),
  grouped("E64 49152 rows N2048 K1408", routing(64, 8192 * 6, 6), 2048, 1408, true),
  // K-grouped (the MoE weight gradient): M not a multiple of 128 and N of the tile, empty experts
  kgrouped("kg edge E6 rows[100,0,300,37,64,0] 200x320", [100, 0, 300, 37, 64, 0], 200, 320, false),
  // DeepSeek-V2-Lite's experts (d 2048, ffn 1408; gate+up 2816), 8192 tokens x top-6 over 32 or 64
  // experts, a skewed split with empty experts (routing: every 13th from the 6th gets none)
  kgrouped("kg E32 49152 rows 2048x2816", routing(32, 8192 * 6, 11), 2048, 2816, true),
  kgrouped("kg E64 49152 rows 2048x2816", routing(64, 8192 * 6, 12), 2048, 2816, true),
  kgrouped("kg E32 49152 rows 1408x2048", routing(32, 8192 * 6, 13), 1408, 2048, true),
  kgrouped("kg E64 49152 rows 1408x2048", routing(64, 8192 * 6, 14), 1408, 2048, true),
];
/** Useful FLOPs: routed rows only (not the padding). K-grouped: the routed rows are the contracted dim. */
const flops = (c: Bf16Case) => (c.kind === "kgrouped" ? 2 * c.M * c.N * c.rows!.reduce((a, b) => a + b, 0) : 2 * (c.rows ? c.rows.reduce((a, b) => a + b, 0) : c.M) * c.N * c.K);
const floorMs = (c: Bf16Case) => flops(c) / (FLOOR_TFLOPS * 1e9);

// bf16 codes of ~N(0, 1) values by table lookup (the largest operand has 369M elements)
const TABLE = (() => {
  let s = 99;
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 0.5) / 2 ** 32;
  return Uint16Array.from({ length: 4096 }, () => bf16ToBits(Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u())));
})();
function codes(n: number, seed: number): Uint16Array {
  const out = new Uint16Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) out[i] = TABLE[(s = (Math.imul(s, 1664525) + 1013904223) >>> 0) >>> 20]!;
  return out;
}

/**
 * A [M][K] (grouped: padding rows zero), B [E][N][K], blockExpert (grouped). K-grouped: A [M][P] and
 * B [N][P] with each expert's padding columns zero, blockExpert [E][2] (first 64-column block, blocks).
 */
function problem(c: Bf16Case, seed: number) {
  const E = c.rows?.length ?? 1;
  const a = codes(c.M * c.K, seed), b = codes((c.kind === "kgrouped" ? 1 : E) * c.N * c.K, seed + 1);
  let blockExpert: Int32Array | undefined;
  if (c.kind === "kgrouped") {
    blockExpert = new Int32Array(2 * E);
    let block = 0;
    c.rows!.forEach((r, e) => {
      blockExpert![2 * e] = block;
      blockExpert![2 * e + 1] = kgBlocks(r);
      for (const [x, rows] of [[a, c.M], [b, c.N]] as const)
        for (let m = 0; m < rows; m++) x.fill(0, m * c.K + 64 * block + r, m * c.K + 64 * (block + kgBlocks(r)));
      block += kgBlocks(r);
    });
  } else if (c.rows) {
    blockExpert = new Int32Array(c.M / GROUPED_M_ALIGN).fill(-1);
    let row = 0;
    c.rows.forEach((r, e) => {
      const padded = Math.ceil(r / GROUPED_M_ALIGN) * GROUPED_M_ALIGN;
      a.fill(0, (row + r) * c.K, (row + padded) * c.K);
      for (let i = row / GROUPED_M_ALIGN; i < (row + padded) / GROUPED_M_ALIGN; i++) blockExpert![i] = e;
      row += padded;
    });
  }
  return { a, b, blockExpert, E };
}

/**
 * Rows of D checked (K-grouped: e·M + m): all of a small problem, else block edges and a spread (grouped:
 * expert blocks only; K-grouped: the first, last, largest and an empty expert's edges and a spread).
 */
function sampleRows(c: Bf16Case, blockExpert?: Int32Array): number[] {
  if (c.kind === "kgrouped") {
    const E = c.rows!.length, all = c.M * E;
    if (all <= 1600) return Array.from({ length: all }, (_, i) => i);
    const largest = c.rows!.indexOf(Math.max(...c.rows!)), empty = c.rows!.indexOf(0);
    const experts = [...new Set([0, E - 1, largest, ...(empty >= 0 ? [empty] : []), Math.floor(E / 2)])];
    const ms = [0, 1, 63, 64, 127, 128, 191, c.M - 65, c.M - 1, Math.floor(c.M / 3) + 5].filter((m) => m >= 0 && m < c.M);
    return [...new Set(experts.flatMap((e) => ms.map((m) => e * c.M + m)))].sort((x, y) => x - y);
  }
  const real = (m: number) => !blockExpert || blockExpert[Math.floor(m / GROUPED_M_ALIGN)]! >= 0;
  if (c.M <= 320) return Array.from({ length: c.M }, (_, i) => i).filter(real);
  const want = [0, 1, 63, 64, 127, 128, 191, 200, c.M - 129, c.M - 65, c.M - 2, c.M - 1];
  for (let i = 1; i <= 8; i++) want.push(Math.floor((c.M * i) / 9) + i);
  return [...new Set(want.filter((m) => m >= 0 && m < c.M))].filter(real).sort((x, y) => x - y);
}

interface Result {
  case: string;
  impl: string;
  ok: boolean;
  err?: number;
  ms?: number;
  error?: string;
}

/** B [E][N][K] -> [E][K][N] (the MN-major kernels' layout). */
function nkToKn(b: Uint16Array, E: number, N: number, K: number): Uint16Array {
  const out = new Uint16Array(b.length);
  for (let e = 0; e < E; e++)
    for (let n = 0; n < N; n++)
      for (let k = 0; k < K; k++) out[(e * K + k) * N + n] = b[(e * N + n) * K + k]!;
  return out;
}

// ------------------------------------------------------------------ child: one configuration
function child(config: Fp8GemmConfig): void {
  const a = native(), stream = a.streamCreate(), g = new Fp8Gemm(a, stream);
  const lut = Float64Array.from({ length: 65536 }, (_, i) => bf16FromBits(i));
  CASES.forEach((c, ci) => {
    if (!runsCase(config, c)) return;
    const res: Result = { case: c.name, impl: configName(config), ok: false };
    const { alloc, finish } = caseBuffers(a);
    const put = (host: ArrayBufferView) => {
      const d = alloc(host.byteLength);
      a.memcpyHtoD(d, host);
      return d;
    };
    try {
      const p = problem(c, 1000 + 10 * ci);
      const dRows = c.kind === "kgrouped" ? p.E * c.M : c.M;
      // MN-major B: the same values as [E][K][N] (the reference below reads p.b as [E][N][K])
      const bUp = config.bMnMajor ? nkToKn(p.b, p.E, c.N, c.K) : p.b;
      const base: Fp8GemmBuffers = { a: put(p.a), b: put(bUp), sa: 0n, sb: 0n, d: alloc(dRows * c.N * 2), blockExpert: p.blockExpert ? put(p.blockExpert) : undefined };
      const shape = { M: c.M, N: c.N, K: c.K, experts: c.rows ? p.E : undefined };
      a.memsetD16(base.d, 0x7fc0, dRows * c.N); // bf16 NaN: rows the kernel leaves unwritten show
      g.prepare(config, shape, base)();
      a.streamSynchronize(stream);
      // f64 reference of the sampled rows (the bf16 operands are exact in f64)
      let num = 0, den = 0;
      const row = new Uint16Array(c.N);
      for (const m of sampleRows(c, p.blockExpert)) {
        a.memcpyDtoH(row, base.d + BigInt(m * c.N * 2), c.N * 2);
        // K-grouped: row e·M + mm of D sums A's row mm and B's rows over expert e's columns only
        const kg = c.kind === "kgrouped", ke = Math.floor(m / c.M);
        const e = kg ? 0 : p.blockExpert ? p.blockExpert[Math.floor(m / GROUPED_M_ALIGN)]! : 0;
        const k0 = kg ? 64 * p.blockExpert![2 * ke]! : 0, k1 = kg ? k0 + 64 * p.blockExpert![2 * ke + 1]! : c.K;
        for (let n = 0; n < c.N; n++) {
          let ref = 0;
          const ao = (kg ? m % c.M : m) * c.K, bo = (e * c.N + n) * c.K;
          for (let k = k0; k < k1; k++) ref += lut[p.a[ao + k]!]! * lut[p.b[bo + k]!]!;
          const got = lut[row[n]!]!;
          num += (got - ref) ** 2;
          den += ref * ref;
        }
      }
      res.err = Math.sqrt(num / Math.max(den, 1e-30));
      res.ok = res.err <= TOL; // NaN (an unwritten row) fails
      if (c.timed) {
        // input sets with the same values at other addresses, enough to overflow L2 twice over
        const bytes = (p.a.length + p.b.length) * 2, sets = [base];
        for (let i = 1; i < Math.max(2, Math.min(8, Math.ceil((160 << 20) / bytes))); i++) {
          const A = alloc(p.a.length * 2), B = alloc(p.b.length * 2);
          a.memcpyDtoD(A, base.a, p.a.length * 2);
          a.memcpyDtoD(B, base.b, p.b.length * 2);
          sets.push({ ...base, a: A, b: B });
        }
        const runs = sets.map((s) => g.prepare(config, shape, s));
        res.ms = timeMedian(g, (i) => runs[i % runs.length]!(), REPS);
      }
    } catch (e) {
      res.error = (e as Error).message.split("\n").slice(0, 3).join(" | ");
    }
    finish(res);
  });
}

// ------------------------------------------------------------------ parent
function runPeer(cases: Bf16Case[], log: (s: string) => void): PeerRow[] {
  const timed = cases.filter((c) => c.timed);
  const spec: PeerSpec = {
    reps: REPS,
    dense: timed.filter((c) => c.kind === "dense").map((c) => ({ name: c.name, M: c.M, N: c.N, K: c.K, bRows: false })),
    grouped: timed.filter((c) => c.kind === "grouped").map((c) => ({ name: c.name, rows: c.rows!, N: c.N, K: c.K })),
    kgrouped: timed.filter((c) => c.kind === "kgrouped").map((c) => ({ name: c.name, rows: c.rows!, M: c.M, N: c.N })),
  };
  return runGemmPeer(spec, log);
}

function parent(): void {
  const lines: string[] = [];
  const log = (s: string) => (console.log(s), lines.push(s));
  const gpu = cudaAvailable();
  if (!gpu.ok) {
    log(`bf16-gemm: no CUDA device: ${gpu.reason}`);
    process.exit(2);
  }
  const props = native().deviceProperties(0);
  log(`device ${props.name} (${props.smCount} SMs, sm_${props.computeCapability.join("")}); date ${new Date().toISOString()}; floor at ${FLOOR_TFLOPS} TFLOP/s`);
  const only = arg("--only") ? new RegExp(arg("--only")!) : undefined;
  const configs = [...bf16GemmCandidates(false), ...bf16GemmCandidates(true), ...bf16MnMajorCandidates(false), ...bf16MnMajorCandidates(true), ...kGroupedCandidates()].filter((c) => !only || only.test(configName(c)));
  // the cases (and peer rows) of the kinds the chosen configurations run
  const cases = CASES.filter((c) => configs.some((x) => runsCase(x, c)));
  const results: Result[] = [];
  for (const config of configs) {
    const name = configName(config), t0 = performance.now();
    const r = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), "--child", JSON.stringify(config)], { encoding: "utf8", timeout: CHILD_TIMEOUT_S * 1000, killSignal: "SIGKILL", maxBuffer: 16 << 20 });
    const got = (r.stdout ?? "").split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Result);
    for (const x of got) log(`  ${x.ok ? "ok  " : "FAIL"} ${name} | ${x.case} | ${x.error ?? `rel err ${x.err!.toExponential(2)}${x.ms !== undefined ? `, ${x.ms.toFixed(4)} ms` : ""}`}`);
    const want = CASES.filter((c) => runsCase(config, c)).length;
    if (got.length < want) log(`  FAIL ${name}: ${got.length}/${want} cases reported; exit ${r.status ?? r.signal}${r.error ? ` (${r.error.message})` : ""} after ${((performance.now() - t0) / 1000).toFixed(0)} s: ${(r.stderr ?? "").trim().split("\n").slice(-3).join(" | ")}`);
    results.push(...got);
  }
  const peer = argv.includes("--no-peer") ? [] : runPeer(cases, log);
  const failed = results.filter((r) => !r.ok);
  log(`\ncorrectness: ${results.length - failed.length}/${results.length} checks pass`);
  log("\nsummary (TFLOP/s of routed rows' FLOPs; floor = FLOPs / 700 TFLOP/s)");
  log(`${"case".padEnd(32)} ${"best shardts bf16 kernel".padEnd(40)} ${"ms".padStart(8)} ${"TF/s".padStart(6)} ${"default".padStart(8)} ${"torch".padStart(8)} ${"x torch".padStart(7)} ${"floor ms".padStart(8)}`);
  const kgTorch: string[] = [];
  for (const c of cases.filter((x) => x.timed)) {
    const mine = results.filter((r) => r.case === c.name && r.ok && r.ms !== undefined).sort((x, y) => x.ms! - y.ms!);
    const best = mine[0], dflt = mine.find((r) => r.impl === configName(c.kind === "kgrouped" ? defaultKGroupedConfig(c.N) : defaultBf16GemmConfig(c.kind === "grouped", c.N)));
    // K-grouped: the fastest of the peer's forms that ran and matched the reference
    const torch =
      c.kind === "kgrouped"
        ? peer.filter((p) => p.case === c.name && p.ms !== undefined && p.impl.startsWith("kg ")).sort((x, y) => x.ms! - y.ms!)[0]
        : peer.find((p) => p.case === c.name && p.ms !== undefined && (c.rows ? p.impl === "torch._grouped_mm bf16" : p.impl === "torch bf16 matmul"));
    if (c.kind === "kgrouped") kgTorch.push(`  ${c.name}: torch = ${torch?.impl ?? "none ran"}`);
    const tf = (ms?: number) => (ms === undefined ? "-" : (flops(c) / ms / 1e9).toFixed(0));
    log(`${c.name.padEnd(32)} ${(best?.impl ?? "none").padEnd(40)} ${(best?.ms?.toFixed(4) ?? "-").padStart(8)} ${tf(best?.ms).padStart(6)} ${tf(dflt?.ms).padStart(8)} ${tf(torch?.ms).padStart(8)} ${(best && torch ? (torch.ms! / best.ms!).toFixed(2) : "-").padStart(7)} ${floorMs(c).toFixed(4).padStart(8)}`);
  }
  // MN-major B against K-major B: the best of each form per case (what dropping segment_dot's transpose costs or saves in the GEMM)
  const forms: string[] = [];
  for (const c of cases.filter((x) => x.timed && x.kind !== "kgrouped")) {
    const ok = results.filter((r) => r.case === c.name && r.ok && r.ms !== undefined);
    const bestOf = (mn: boolean) => ok.filter((r) => r.impl.endsWith("_bn") === mn).sort((x, y) => x.ms! - y.ms!)[0];
    const k = bestOf(false), m = bestOf(true);
    if (k && m) forms.push(`  ${c.name.padEnd(32)} K-major ${k.ms!.toFixed(4)} ms (${k.impl}), MN-major ${m.ms!.toFixed(4)} ms (${m.impl}): MN/K ${(m.ms! / k.ms!).toFixed(3)}`);
  }
  if (forms.length) log(`\nB K-major [E][N][K] against MN-major [E][K][N] (_bn), best of each:\n${forms.join("\n")}`);
  if (kgTorch.length) log(`\nK-grouped cases: "default" is defaultKGroupedConfig(N); the torch column is the fastest peer form:\n${kgTorch.join("\n")}`);
  writeFileSync(join(outDir, "bf16-gemm.txt"), lines.join("\n") + "\n");
  writeFileSync(join(outDir, "bf16-gemm.json"), JSON.stringify({ device: props.name, results, peer }, null, 1));
  process.exit(failed.length || results.length === 0 ? 1 : 0);
}

if (argv.includes("--child")) child(JSON.parse(arg("--child")!) as Fp8GemmConfig);
else parent();
