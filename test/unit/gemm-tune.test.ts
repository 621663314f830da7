// The FP8 GEMM autotuner (runtime/cuda/gemm-tune.ts) on a simulated device: it times every
// candidate, re-times the finalists in turns, picks the fastest that works, records failures, caches
// the choice per device, problem and emitter source, answers from the cache the second time, and the
// executor's lookup (tunedGemmConfig, gemmConfigFor) launches the cached choice.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeFileSync } from "node:fs";
import { configName, defaultGemmConfig, gemmCandidates, type Fp8GemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { gemmConfigFor, tuneCacheFile, tuneFp8Gemm, tuneKey, tunedGemmConfig } from "../../runtime/cuda/gemm-tune.ts";
import type { Fp8Gemm, Fp8GemmBuffers } from "../../runtime/cuda/fp8-gemm.ts";

/**
 * A device whose kernels take `cost(config)` ms each, times 1 + `drift` per launch made before (a GPU
 * that slows as it heats); events read a simulated clock.
 */
function fakeDevice(name: string, cost: (c: Fp8GemmConfig) => number, drift = 0) {
  let clock = 0, nextEvent = 1n, launches = 0, spins = 0;
  const at = new Map<bigint, number>();
  const prepared: string[] = [];
  const g = {
    device: { name },
    stream: 0n,
    gridSms: () => 132,
    spin: () => void spins++,
    addon: {
      eventCreate: () => nextEvent++,
      eventRecord: (e: bigint) => void at.set(e, clock),
      eventSynchronize: () => undefined,
      eventElapsedTime: (a: bigint, b: bigint) => at.get(b)! - at.get(a)!,
      eventDestroy: () => undefined,
    },
    prepare: (c: Fp8GemmConfig) => {
      prepared.push(configName(c));
      const ms = cost(c);
      if (!Number.isFinite(ms)) throw new Error(`CUDA_ERROR_ILLEGAL_ADDRESS in ${configName(c)}`);
      return () => void (clock += ms * (1 + drift * launches++));
    },
  };
  return { g: g as unknown as Fp8Gemm, prepared, spins: () => spins };
}

const bufs: Fp8GemmBuffers = { a: 1n, b: 2n, sa: 3n, sb: 4n, d: 5n };
const shape = { M: 4096, N: 7168, K: 2048 };
let saved: string | undefined;
beforeEach(() => {
  saved = process.env.SHARDTS_CACHE_DIR;
  process.env.SHARDTS_CACHE_DIR = mkdtempSync(join(tmpdir(), "shardts-tune-"));
});
afterEach(() => {
  vi.useRealTimers();
  if (saved === undefined) delete process.env.SHARDTS_CACHE_DIR;
  else process.env.SHARDTS_CACHE_DIR = saved;
});

describe("FP8 GEMM autotuner", () => {
  it("picks the fastest working candidate, records failures, and caches the choice", () => {
    const cost = (c: Fp8GemmConfig) => (c.blockN === 160 ? Infinity : c.blockN === 192 && c.consumers === 2 && !c.multicast && !c.tmaStore ? 0.1 : c.blockN === 128 ? 0.2 : 0.5);
    const { g, prepared, spins } = fakeDevice("Fake H200", cost);
    const first = tuneFp8Gemm(g, shape, [bufs, bufs]);
    // every timing is queued behind a spin kernel (the host's launches are not timed): one per timed candidate and round
    const timed = first.entries.filter((e) => e.ms !== undefined);
    expect(spins()).toBe(timed.length + timed.reduce((n, e) => n + (e.rounds?.length ?? 0), 0));
    expect(first.fromCache).toBe(false);
    expect(first.best.name).toBe("sh_fp8_gemm_dense_m128n192_s5_p");
    expect(first.best.ms).toBeCloseTo(0.1);
    expect(first.entries).toHaveLength(gemmCandidates(false).length);
    for (const e of first.entries.filter((x) => x.config.blockN === 160)) expect(e.error).toMatch(/ILLEGAL_ADDRESS/);
    expect(JSON.parse(readFileSync(tuneCacheFile(), "utf8"))[first.key].name).toBe(first.best.name);

    prepared.length = 0;
    const again = tuneFp8Gemm(g, shape, [bufs]);
    expect(again.fromCache).toBe(true);
    expect(again.best.name).toBe(first.best.name);
    expect(prepared).toEqual([]); // nothing timed
  });

  it("keys the cache by device, problem and grouping", () => {
    expect(tuneKey("A", shape, false)).not.toBe(tuneKey("B", shape, false));
    expect(tuneKey("A", shape, false)).not.toBe(tuneKey("A", { ...shape, K: 4096 }, false));
    expect(tuneKey("A", { ...shape, experts: 64 }, true)).toMatch(/^A\|grouped 4096x7168x2048 E64\|[0-9a-f]{16}$/);
    const { g } = fakeDevice("Other GPU", () => 0.3);
    expect(tuneFp8Gemm(g, shape, [bufs]).fromCache).toBe(false);
  });

  it("re-times the finalists in turns, so a GPU slowing over the pass does not pick an early candidate", () => {
    // the true best is the last candidate (3% ahead of the first); each launch makes the next 0.005% slower,
    // so one pass in order (~830 launches between them) sees the first ahead
    const best = "sh_fp8_gemm_dense_m128n256_s3_p_ts_ch_g16_sbs_sm", early = "sh_fp8_gemm_dense_m64n128_s4";
    expect(configName(gemmCandidates(false).at(-1)!)).toBe(best);
    expect(configName(gemmCandidates(false)[0]!)).toBe(early);
    const cost = (c: Fp8GemmConfig) => (configName(c) === best ? 0.1 : configName(c) === early ? 0.103 : 0.2);
    const onePass = tuneFp8Gemm(fakeDevice("Warming GPU", cost, 5e-5).g, shape, [bufs], { force: true, rounds: 0 });
    expect(onePass.best.name).toBe(early); // the drift wins without the turns: the test can fail
    const lines: string[] = [];
    const tuned = tuneFp8Gemm(fakeDevice("Warming GPU", cost, 5e-5).g, shape, [bufs], { force: true, log: (l) => lines.push(l) });
    expect(tuned.best.name).toBe(best);
    expect(tuned.best.rounds).toHaveLength(4);
    // the finalists: within 10% of the fastest, and the executor's default (0.2 ms here), timed in the same rounds
    const fallback = configName(defaultGemmConfig(false, shape, 132));
    expect(tuned.entries.filter((e) => e.rounds).map((e) => e.name).sort()).toEqual([best, early, fallback].sort());
    expect(tuned.entries.find((e) => e.name === fallback)!.ms).toBeGreaterThan(0.19);
    expect(lines.filter((l) => l.startsWith("  round "))).toHaveLength(4);
    expect(lines[0]).toMatch(/^ {2}\[1\/\d+\] sh_fp8_gemm_dense_m64n128_s4: 0\.10\d+ ms$/);
  });

  it("the executor launches the cached choice for that problem on that device, and the default elsewhere", () => {
    vi.useFakeTimers({ toFake: ["performance"] });
    const { g } = fakeDevice("Fake H200", (c) => (c.blockN === 128 && c.consumers === 2 && !c.multicast && !c.tmaStore && !c.overlap && c.persistent ? 0.1 : 0.3));
    expect(tunedGemmConfig("Fake H200", shape, false)).toBeUndefined(); // no cache yet
    expect(gemmConfigFor(g, shape, false)).toEqual(defaultGemmConfig(false, shape, 132));
    const t = tuneFp8Gemm(g, shape, [bufs]);
    expect(t.best.name).toBe("sh_fp8_gemm_dense_m128n128_s6_p");
    expect(configName(gemmConfigFor(g, shape, false))).toBe(t.best.name);
    expect(tunedGemmConfig("Other GPU", shape, false)).toBeUndefined();
    expect(tunedGemmConfig("Fake H200", { ...shape, M: 8192 }, false)).toBeUndefined();
    expect(gemmConfigFor(g, { ...shape, M: 8192 }, false)).toEqual(defaultGemmConfig(false, { ...shape, M: 8192 }, 132));
    // an entry whose configuration no longer builds (edited by hand, or from another version) is passed over,
    // once the file is looked at again: a launch stats it at most once a second
    const file = JSON.parse(readFileSync(tuneCacheFile(), "utf8"));
    file[t.key].config = { ...file[t.key].config, blockN: 100 };
    writeFileSync(tuneCacheFile(), JSON.stringify(file));
    expect(configName(tunedGemmConfig("Fake H200", shape, false)!), "within the second").toBe(t.best.name);
    vi.advanceTimersByTime(1001);
    expect(tunedGemmConfig("Fake H200", shape, false)).toBeUndefined();
    writeFileSync(tuneCacheFile(), "{ torn");
    vi.advanceTimersByTime(1001);
    expect(gemmConfigFor(g, shape, false)).toEqual(defaultGemmConfig(false, shape, 132));
  });

  it("says so when every candidate fails", () => {
    const { g } = fakeDevice("Broken", () => Infinity);
    expect(() => tuneFp8Gemm(g, shape, [bufs])).toThrow(/every candidate failed/);
  });
});
