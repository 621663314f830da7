// The FP8 GEMM autotuner (runtime/cuda/gemm-tune.ts) on a simulated device: it times every
// candidate, picks the fastest that works, records failures, caches the choice per device, problem
// and emitter source, and answers from the cache the second time.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { configName, gemmCandidates, type Fp8GemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { tuneCacheFile, tuneFp8Gemm, tuneKey } from "../../runtime/cuda/gemm-tune.ts";
import type { Fp8Gemm, Fp8GemmBuffers } from "../../runtime/cuda/fp8-gemm.ts";

/** A device whose kernels take `cost(config)` ms each; events read a simulated clock. */
function fakeDevice(name: string, cost: (c: Fp8GemmConfig) => number) {
  let clock = 0, nextEvent = 1n;
  const at = new Map<bigint, number>();
  const prepared: string[] = [];
  const g = {
    device: { name },
    stream: 0n,
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
      return () => void (clock += ms);
    },
  };
  return { g: g as unknown as Fp8Gemm, prepared };
}

const bufs: Fp8GemmBuffers = { a: 1n, b: 2n, sa: 3n, sb: 4n, d: 5n };
const shape = { M: 4096, N: 7168, K: 2048 };
let saved: string | undefined;
beforeEach(() => {
  saved = process.env.SHARDTS_CACHE_DIR;
  process.env.SHARDTS_CACHE_DIR = mkdtempSync(join(tmpdir(), "shardts-tune-"));
});
afterEach(() => {
  if (saved === undefined) delete process.env.SHARDTS_CACHE_DIR;
  else process.env.SHARDTS_CACHE_DIR = saved;
});

describe("FP8 GEMM autotuner", () => {
  it("picks the fastest working candidate, records failures, and caches the choice", () => {
    const cost = (c: Fp8GemmConfig) => (c.blockN === 160 ? Infinity : c.blockN === 192 && c.consumers === 2 && !c.multicast && !c.tmaStore ? 0.1 : c.blockN === 128 ? 0.2 : 0.5);
    const { g, prepared } = fakeDevice("Fake H200", cost);
    const first = tuneFp8Gemm(g, shape, [bufs, bufs]);
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

  it("says so when every candidate fails", () => {
    const { g } = fakeDevice("Broken", () => Infinity);
    expect(() => tuneFp8Gemm(g, shape, [bufs])).toThrow(/every candidate failed/);
  });
});
