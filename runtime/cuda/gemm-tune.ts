// The FP8 GEMM autotuner: for a problem (M, N, K, grouped?, experts) it times every candidate
// configuration on the device, then times the finalists (within 10% of the fastest, and the executor's
// default) again in turns, keeps the fastest, and caches the choice in <cache dir>/fp8-gemm-tune.json
// (beside the NVRTC cubin cache), keyed by device name, problem and a hash of the candidates' sources,
// so a changed emitter re-tunes. A candidate that fails to compile or launch is recorded with its error and never chosen.
// The executor launches the cached choice where there is one (tunedGemmConfig), its default otherwise;
// `shardts tune-gemm` fills the cache for given shapes.
//
// Why the turns: one pass in candidate order measured the later candidates on a hotter, power-capped
// GPU. On an H200 (bench/results/2026-11-23-fp8-gemm-h200-seventh.txt) it picked a kernel 11% slower
// than the best on 8192³ and 7% on 4096×4096×7168. The finalists are re-timed in rounds of
// alternating order (forward, backward, ...), and each keeps the median of its rounds: with four
// rounds a drift linear in time adds the same to every finalist's median.
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { configName, configProblem, defaultGemmConfig, gemmCandidates, type Fp8GemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { emitFp8Gemm } from "../../compiler/codegen/cuda/gemm/emit.ts";
import { cacheDir } from "./compile.ts";
import type { Fp8Gemm, Fp8GemmBuffers, Fp8GemmProblemShape } from "./fp8-gemm.ts";

export interface TuneEntry {
  name: string;
  config: Fp8GemmConfig;
  /** Milliseconds: a finalist's median over its rounds, else its first timing; undefined when it failed. */
  ms?: number;
  /** A finalist's timing in each round of turns (after the first pass). */
  rounds?: number[];
  error?: string;
}

export interface TuneOptions {
  /** Launches a timing takes the median of (default 20). */
  reps?: number;
  /** Re-time even when the cache has the problem, and return every candidate's time. */
  force?: boolean;
  /** Rounds the finalists are re-timed in, alternating order (default 4; 0: the first pass decides). */
  rounds?: number;
  /** Finalists: candidates within this fraction of the first pass's fastest (default 0.1), ... */
  within?: number;
  /** ... at most this many (default 6), and the executor's default configuration. */
  maxFinalists?: number;
  /** Progress lines (each candidate's first timing, each round). */
  log?: (line: string) => void;
}

export interface TuneResult {
  best: TuneEntry;
  /** Every candidate's time (empty when the choice came from the cache). */
  entries: TuneEntry[];
  fromCache: boolean;
  key: string;
}

export const tuneCacheFile = (): string => join(cacheDir(), "fp8-gemm-tune.json");

// The candidates' sources change only with the emitter: hashed once per process.
const sourceHash = new Map<boolean, string>();
const candidatesHash = (grouped: boolean): string => {
  let h = sourceHash.get(grouped);
  if (h === undefined) {
    const hash = createHash("sha256");
    for (const c of gemmCandidates(grouped)) hash.update(emitFp8Gemm(c).source);
    sourceHash.set(grouped, (h = hash.digest("hex").slice(0, 16)));
  }
  return h;
};

/** The cache key: device, problem and the candidates' sources. */
export function tuneKey(device: string, s: Fp8GemmProblemShape, grouped: boolean): string {
  const problem = `${grouped ? "grouped" : "dense"} ${s.M}x${s.N}x${s.K}${s.experts !== undefined ? ` E${s.experts}` : ""}`;
  return `${device}|${problem}|${candidatesHash(grouped)}`;
}

// The cache file as last read, with its modification time and size: the executor asks per launch, and
// one stat tells whether the file changed (or is gone). The stat itself is taken at most every
// RECHECK_MS for the same file (a stat a GEMM launch was ~3 us of an eager FP8 Linear step's host time,
// bench/NOTES.md "fourteenth session"): a tune written by another process is seen within that time, one
// written by this process (writeCache) at once.
let cached: { file: string; mtimeMs: number; size: number; entries: Record<string, TuneEntry>; checkedAt: number } | undefined;
const NONE: Record<string, TuneEntry> = Object.freeze({});
const RECHECK_MS = 1000;

function readCache(): Record<string, TuneEntry> {
  const f = tuneCacheFile(), now = performance.now();
  if (cached && cached.file === f && now - cached.checkedAt < RECHECK_MS) return cached.entries;
  const st = statSync(f, { throwIfNoEntry: false });
  const [mtimeMs, size] = st ? [st.mtimeMs, st.size] : [-1, -1];
  if (!cached || cached.file !== f || cached.mtimeMs !== mtimeMs || cached.size !== size) {
    let entries: Record<string, TuneEntry> = NONE;
    if (st)
      try {
        entries = JSON.parse(readFileSync(f, "utf8")) as Record<string, TuneEntry>;
      } catch {
        entries = NONE; // a torn or foreign file: re-tune and overwrite
      }
    cached = { file: f, mtimeMs, size, entries, checkedAt: now };
  }
  cached.checkedAt = now;
  return cached.entries;
}

/**
 * The tuned configuration for this problem on this device, when the cache has one that still builds
 * (the executor's choice; it falls back to defaultGemmConfig otherwise).
 */
export function tunedGemmConfig(device: string, s: Fp8GemmProblemShape, grouped: boolean): Fp8GemmConfig | undefined {
  const entries = readCache();
  if (entries === NONE) return undefined; // no cache: no key to build
  const hit = entries[tuneKey(device, s, grouped)];
  if (!hit || hit.ms === undefined || typeof hit.config !== "object" || hit.config === null) return undefined;
  return configProblem(hit.config) === undefined && hit.config.grouped === grouped ? hit.config : undefined;
}

function writeCache(key: string, e: TuneEntry): void {
  const all = { ...readCache(), [key]: e };
  mkdirSync(cacheDir(), { recursive: true });
  const tmp = `${tuneCacheFile()}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(all, null, 1) + "\n");
  renameSync(tmp, tuneCacheFile());
  cached = undefined;
}

/** SM clocks the stream is held for before a timed loop (Fp8Gemm.spin): ~2-3 ms at H200 clocks, more than the host takes to enqueue the loop. */
export const QUEUE_AHEAD_CYCLES = 5_000_000;

/**
 * Times `run` with CUDA events: `warmup` untimed runs, then the median of `reps`, each run given the
 * index of the input set to use (the caller rotates sets so L2 does not hold the operands). The loop
 * is enqueued behind a spin kernel, so the runs go back to back on the GPU and the host's launch
 * time is not counted (bench/peers/timing.py times the PyTorch peers the same way).
 */
export function timeMedian(g: Fp8Gemm, run: (i: number) => void, reps = 20, warmup = 3): number {
  const a = g.addon;
  for (let i = 0; i < warmup; i++) run(i);
  const ev = Array.from({ length: reps + 1 }, () => a.eventCreate());
  g.spin(QUEUE_AHEAD_CYCLES);
  a.eventRecord(ev[0]!, g.stream);
  for (let i = 0; i < reps; i++) {
    run(i);
    a.eventRecord(ev[i + 1]!, g.stream);
  }
  a.eventSynchronize(ev[reps]!);
  const ts = Array.from({ length: reps }, (_, i) => a.eventElapsedTime(ev[i]!, ev[i + 1]!)).sort((x, y) => x - y);
  for (const e of ev) a.eventDestroy(e);
  return ts[Math.floor(reps / 2)]!;
}

/** The executor's untuned configuration for a problem on this device's grid (defaultGemmConfig). */
export const untunedGemmConfig = (g: Fp8Gemm, s: Fp8GemmProblemShape, grouped: boolean): Fp8GemmConfig => defaultGemmConfig(grouped, { M: s.M, N: s.N }, g.gridSms());

/** The executor's configuration for a problem: the tuned one where the cache has it, else the untuned one. */
export const gemmConfigFor = (g: Fp8Gemm, s: Fp8GemmProblemShape, grouped: boolean): Fp8GemmConfig =>
  tunedGemmConfig(g.device.name, s, grouped) ?? untunedGemmConfig(g, s, grouped);

/** The middle of a list of timings (the mean of the two middle ones for an even count). */
const median = (xs: number[]): number => {
  const v = [...xs].sort((a, b) => a - b), h = v.length >> 1;
  return v.length % 2 ? v[h]! : (v[h - 1]! + v[h]!) / 2;
};

/**
 * The configuration to use for this problem: from the cache, or by timing every candidate on the
 * given input sets, then the finalists again in `rounds` rounds of alternating order (`force`
 * re-times even when cached, and returns every candidate's time).
 */
export function tuneFp8Gemm(g: Fp8Gemm, s: Fp8GemmProblemShape, sets: Fp8GemmBuffers[], opts: TuneOptions = {}): TuneResult {
  const grouped = s.experts !== undefined;
  const key = tuneKey(g.device.name, s, grouped);
  if (!opts.force) {
    const hit = readCache()[key];
    if (hit && hit.ms !== undefined) return { best: hit, entries: [], fromCache: true, key };
  }
  const reps = opts.reps ?? 20, log = opts.log ?? (() => undefined);
  const entries: TuneEntry[] = [];
  const runsOf = new Map<TuneEntry, (i: number) => void>();
  const candidates = gemmCandidates(grouped);
  for (const [i, config] of candidates.entries()) {
    const name = configName(config);
    try {
      const runs = sets.map((b) => g.prepare(config, s, b));
      const run = (j: number) => runs[j % runs.length]!();
      const ms = timeMedian(g, run, reps);
      const e: TuneEntry = { name, config, ms };
      entries.push(e);
      runsOf.set(e, run);
      log(`  [${i + 1}/${candidates.length}] ${name}: ${ms.toFixed(4)} ms`);
    } catch (e) {
      const error = (e as Error).message.split("\n")[0];
      entries.push({ name, config, error });
      log(`  [${i + 1}/${candidates.length}] ${name}: failed (${error})`);
      // a launch failure may leave the context unusable; later candidates then fail and say so
    }
  }
  const ok = entries.filter((e) => e.ms !== undefined).sort((x, y) => x.ms! - y.ms!);
  if (ok.length === 0) throw new Error(`FP8 GEMM autotune ${key}: every candidate failed:\n${entries.map((e) => `  ${e.name}: ${e.error}`).join("\n")}`);
  // the finalists in turns: forward, backward, ...; each keeps the median of its rounds
  // the executor's default is always a finalist: the choice departs from it only on a like-for-like win
  const finalists = ok.filter((e) => e.ms! <= ok[0]!.ms! * (1 + (opts.within ?? 0.1))).slice(0, opts.maxFinalists ?? 6);
  const fallback = ok.find((e) => e.name === configName(untunedGemmConfig(g, s, grouped)));
  if (fallback && !finalists.includes(fallback)) finalists.push(fallback);
  const rounds = opts.rounds ?? 4;
  if (finalists.length > 1 && rounds > 0) {
    for (const e of finalists) e.rounds = [];
    for (let r = 0; r < rounds; r++) {
      for (const e of r % 2 ? [...finalists].reverse() : finalists) e.rounds!.push(timeMedian(g, runsOf.get(e)!, reps));
      log(`  round ${r + 1}: ${finalists.map((e) => `${e.name} ${e.rounds!.at(-1)!.toFixed(4)}`).join(", ")}`);
    }
    for (const e of finalists) e.ms = median(e.rounds!);
    finalists.sort((x, y) => x.ms! - y.ms!);
  }
  // only a finalist can win: the others' single timings are not comparable with the rounds' medians
  writeCache(key, finalists[0]!);
  return { best: finalists[0]!, entries, fromCache: false, key };
}
