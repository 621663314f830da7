// The FP8 GEMM autotuner: for a problem (M, N, K, grouped?, experts) it times every candidate
// configuration once on the device, keeps the fastest, and caches the choice in
// <cache dir>/fp8-gemm-tune.json (beside the NVRTC cubin cache), keyed by device name, problem and
// a hash of the candidates' sources, so a changed emitter re-tunes. A candidate that fails to
// compile or launch is recorded with its error and never chosen.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { configName, gemmCandidates, type Fp8GemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { emitFp8Gemm } from "../../compiler/codegen/cuda/gemm/emit.ts";
import { cacheDir } from "./compile.ts";
import type { Fp8Gemm, Fp8GemmBuffers, Fp8GemmProblemShape } from "./fp8-gemm.ts";

export interface TuneEntry {
  name: string;
  config: Fp8GemmConfig;
  /** Median milliseconds, or undefined when it failed. */
  ms?: number;
  error?: string;
}

export interface TuneResult {
  best: TuneEntry;
  /** Every candidate's time (empty when the choice came from the cache). */
  entries: TuneEntry[];
  fromCache: boolean;
  key: string;
}

export const tuneCacheFile = (): string => join(cacheDir(), "fp8-gemm-tune.json");

/** The cache key: device, problem and the candidates' sources. */
export function tuneKey(device: string, s: Fp8GemmProblemShape, grouped: boolean): string {
  const hash = createHash("sha256");
  for (const c of gemmCandidates(grouped)) hash.update(emitFp8Gemm(c).source);
  const problem = `${grouped ? "grouped" : "dense"} ${s.M}x${s.N}x${s.K}${s.experts !== undefined ? ` E${s.experts}` : ""}`;
  return `${device}|${problem}|${hash.digest("hex").slice(0, 16)}`;
}

function readCache(): Record<string, TuneEntry> {
  const f = tuneCacheFile();
  if (!existsSync(f)) return {};
  try {
    return JSON.parse(readFileSync(f, "utf8")) as Record<string, TuneEntry>;
  } catch {
    return {}; // a torn or foreign file: re-tune and overwrite
  }
}

function writeCache(key: string, e: TuneEntry): void {
  const all = { ...readCache(), [key]: e };
  mkdirSync(cacheDir(), { recursive: true });
  const tmp = `${tuneCacheFile()}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(all, null, 1) + "\n");
  renameSync(tmp, tuneCacheFile());
}

/**
 * Times `run` with CUDA events: `warmup` untimed runs, then the median of `reps`, each run given the
 * index of the input set to use (the caller rotates sets so L2 does not hold the operands).
 */
export function timeMedian(g: Fp8Gemm, run: (i: number) => void, reps = 20, warmup = 3): number {
  const a = g.addon;
  for (let i = 0; i < warmup; i++) run(i);
  const ev = Array.from({ length: reps + 1 }, () => a.eventCreate());
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

/**
 * The configuration to use for this problem: from the cache, or by timing every candidate on the
 * given input sets (`force` re-times even when cached, and returns every candidate's time).
 */
export function tuneFp8Gemm(g: Fp8Gemm, s: Fp8GemmProblemShape, sets: Fp8GemmBuffers[], opts: { reps?: number; force?: boolean } = {}): TuneResult {
  const grouped = s.experts !== undefined;
  const key = tuneKey(g.device.name, s, grouped);
  if (!opts.force) {
    const hit = readCache()[key];
    if (hit && hit.ms !== undefined) return { best: hit, entries: [], fromCache: true, key };
  }
  const entries: TuneEntry[] = [];
  for (const config of gemmCandidates(grouped)) {
    const name = configName(config);
    try {
      const runs = sets.map((b) => g.prepare(config, s, b));
      const ms = timeMedian(g, (i) => runs[i % runs.length]!(), opts.reps ?? 20);
      entries.push({ name, config, ms });
    } catch (e) {
      entries.push({ name, config, error: (e as Error).message.split("\n")[0] });
      // a launch failure may leave the context unusable; later candidates then fail and say so
    }
  }
  const ok = entries.filter((e) => e.ms !== undefined).sort((x, y) => x.ms! - y.ms!);
  if (ok.length === 0) throw new Error(`FP8 GEMM autotune ${key}: every candidate failed:\n${entries.map((e) => `  ${e.name}: ${e.error}`).join("\n")}`);
  writeCache(key, ok[0]!);
  return { best: ok[0]!, entries, fromCache: false, key };
}
