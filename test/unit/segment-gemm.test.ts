// The segment contractions' grouped GEMM (runtime/cuda/segment-gemm.ts) on the CPU: the problems built
// from the counts equal the calls of the per-group loop it replaced (transcribed below as the oracle),
// through empty groups, packed and unpacked rows, rows clipped at R and local groups that start past
// the counts' first; and through the executor over the fake native layer, the grouped calls' problems
// are exactly the cuBLASLt calls the loop makes when libcublas is missing.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dotProblems, groupedArgs, groupedRefusal, nonOverlapping, problemLanes, runProblems, segmentDotOnWgmma, segmentModeFromEnv, segments, wgradProblems, type Problem, type SegmentLayout } from "../../runtime/cuda/segment-gemm.ts";
import { lanesFromEnv } from "../../runtime/cuda/side-streams.ts";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { empty } from "../../runtime/cuda/memory.ts";
import type { MatmulOptions } from "../../runtime/cuda/native-types.ts";
import { compile } from "../../compiler/pipeline.ts";
import type { DType } from "../../compiler/ir/types.ts";
import { DTensor, Mesh, fromGlobal, type AnyDTensor } from "../../stdlib/index.ts";
import { buildOn } from "../../stdlib/model.ts";
import moeLayer from "../../examples/moe-layer.ts";
import { fakeAddon } from "../fakes/native-addon.ts";
import { useTempKernelCache } from "../fakes/kernel-cache.ts";

/** The executor with the counts read on the host (the path these tests are about; device-side counts: segment-device.test.ts). */
const hostCounts = (ex: CudaExecutor) => ((ex.segmentCountsOnDevice = false), ex);

let seed = 7;
const rnd = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32);

/** The loop segmentContract ran before the grouped GEMM, recording its matmulRowMajor calls. */
function loopCalls(op: "dot" | "wgrad", l: SegmentLayout, K: number, N: number) {
  const calls: { M: number; N: number; K: number; a: bigint; b: bigint; d: bigint }[] = [];
  const [x, w, y, eb, ebo] = [0x1000n, 0x900000n, 0x5000000n, 2, 4];
  for (let t = 0; t < l.bt; t++) {
    let row = 0;
    if (!l.packed) for (let g = 0; g < l.first; g++) row += l.counts[t * l.gC + g]!;
    const start = row;
    for (let g = 0; g < l.groups; g++) {
      const cnt = l.counts[t * l.gC + l.first + g]!;
      if (op === "dot") {
        const m = Math.max(0, Math.min(cnt, l.R - row));
        if (m > 0 && N > 0 && K > 0) calls.push({ M: m, N, K, a: x + BigInt((t * l.R + row) * K * eb), b: w + BigInt(g * K * N * eb), d: y + BigInt((t * l.R + row - start) * N * ebo) });
      } else {
        const m = Math.max(0, Math.min(row + cnt, l.R) - row);
        if (m > 0 && K > 0 && N > 0) calls.push({ M: K, N, K: m, a: x + BigInt((t * l.R + row) * K * eb), b: w + BigInt((t * l.R + row) * N * eb), d: y + BigInt(g * K * N * 4) });
      }
      row += cnt;
    }
  }
  return calls;
}

function layout(packed: boolean, clip: boolean): SegmentLayout {
  const bt = 1 + Math.floor(rnd() * 4), gC = 1 + Math.floor(rnd() * 8);
  const first = Math.floor(rnd() * gC), groups = 1 + Math.floor(rnd() * (gC - first));
  // a third of the groups empty, one often hot
  const counts = Array.from({ length: bt * gC }, () => (rnd() < 0.33 ? 0 : rnd() < 0.2 ? 20 + Math.floor(rnd() * 40) : Math.floor(rnd() * 9)));
  const need = Math.max(...Array.from({ length: bt }, (_, t) => counts.slice(t * gC, (t + 1) * gC).reduce((a, b) => a + b, 0)));
  return { counts, bt, gC, first, groups, packed, R: clip ? Math.floor(need * rnd()) : need };
}

describe("segment GEMM problems", () => {
  it("equal the per-group loop's calls: empty groups, packed and unpacked, clipped rows, offset groups", () => {
    let clipped = 0;
    for (let i = 0; i < 400; i++) {
      const l = layout(i % 2 === 0, i % 3 === 0), K = i % 17 === 0 ? 0 : 16, N = 24;
      const segs = segments(l);
      expect(segs.every((s) => s.m > 0 && s.row + s.m <= l.R)).toBe(true);
      expect(dotProblems(segs, { R: l.R, K, N, x: 0x1000n, w: 0x900000n, y: 0x5000000n, eb: 2, ebo: 4 })).toEqual(loopCalls("dot", l, K, N));
      expect(wgradProblems(segs, { R: l.R, K, N, x: 0x1000n, gy: 0x900000n, acc: 0x5000000n, eb: 2 })).toEqual(loopCalls("wgrad", l, K, N));
      if (segs.some((s) => s.m < l.counts[s.t * l.gC + l.first + s.g]!)) clipped++;
    }
    expect(clipped).toBeGreaterThan(20);
  });

  it("split accumulating problems into runs whose outputs do not overlap, in order", () => {
    const p = (d: bigint) => ({ M: 1, N: 1, K: 1, a: 0n, b: 0n, d });
    const runs = nonOverlapping([p(1n), p(2n), p(1n), p(3n), p(2n), p(2n)]);
    expect(runs.map((r) => r.map((x) => x.d))).toEqual([[1n, 2n], [1n, 3n, 2n], [2n]]);
  });

  it("pass cuBLAS the column-major form matmulRowMajor passes cuBLASLt, and refuse what the grouped GEMM lacks", () => {
    const ps = [{ M: 3, N: 5, K: 7, a: 16n, b: 32n, d: 48n }, { M: 2, N: 5, K: 7, a: 64n, b: 80n, d: 96n }];
    for (const transA of [false, true]) {
      const { dims, ptrs } = groupedArgs(ps, transA);
      expect([...dims]).toEqual([5, 5, 3, 2, 7, 7, 5, 5, transA ? 3 : 7, transA ? 2 : 7, 5, 5]);
      expect([...ptrs]).toEqual([32n, 80n, 16n, 64n, 48n, 96n]);
    }
    const set = (dtype: "f32" | "bf16", outDtype: "f32" | "bf16", a = 16n) => ({ dtype, outDtype, transA: false, accumulate: false, problems: [{ ...ps[0]!, a }] });
    expect(groupedRefusal(set("f32", "f32", 4n))).toBeUndefined();
    expect(groupedRefusal(set("bf16", "bf16"))).toBeUndefined();
    expect(groupedRefusal(set("bf16", "bf16", 8n))).toMatch(/16-byte/);
    expect(groupedRefusal(set("bf16", "f32"))).toMatch(/bf16 -> f32/);
    expect(groupedRefusal({ ...set("f32", "f32"), problems: [{ ...ps[0]!, N: 2 ** 31 }] })).toMatch(/2\^31/);
  });
});

/** Each GEMM the run asks for, one line per problem, whether through cuBLASLt or the grouped call. */
function gemms(missing: boolean, counts: number[]) {
  const lines: string[] = [], grouped: number[] = [];
  const line = (dt: string, out: string, tA: boolean, tB: boolean, m: number, n: number, k: number, a: bigint, lda: number, b: bigint, ldb: number, c: bigint, ldc: number, d: bigint, ldd: number, beta: number) =>
    lines.push(`${dt}->${out} ${tA ? "T" : "N"}${tB ? "T" : "N"} ${m}x${n}x${k} a=${a}/${lda} b=${b}/${ldb} c=${c}/${ldc} d=${d}/${ldd} beta=${beta}`);
  const f = fakeAddon({
    missing: missing ? ["cublas"] : [],
    read: (dst) => void (dst instanceof Int32Array && dst.forEach((_, i) => (dst[i] = counts[i % counts.length]!))),
    spy: (method, args) => {
      if (method === "cublasLtMatmulRun") {
        const [h, a, b, c, d] = args as [number, bigint, bigint, bigint, bigint];
        const o: MatmulOptions = f.matmulProblem(h);
        if ((o.batch ?? 1) === 1) line(o.dtype, o.outDtype ?? o.dtype, !!o.transA, !!o.transB, o.m, o.n, o.k, a, o.lda, b, o.ldb, c || d, o.ldc ?? o.ldd, d, o.ldd, o.beta ?? 0);
      }
      if (method === "cublasGroupedGemm") {
        const [dt, tA, tB, dims, ptrs, beta] = args as [string, boolean, boolean, Int32Array, BigUint64Array, number];
        const G = dims.length / 6;
        grouped.push(G);
        for (let i = 0; i < G; i++)
          line(dt, dt, tA, tB, dims[i]!, dims[G + i]!, dims[2 * G + i]!, ptrs[i]!, dims[3 * G + i]!, ptrs[G + i]!, dims[4 * G + i]!, ptrs[2 * G + i]!, dims[5 * G + i]!, ptrs[2 * G + i]!, dims[5 * G + i]!, beta);
      }
    },
  });
  return { ex: hostCounts(new CudaExecutor(f.addon, 0)), lines, grouped };
}

const raw = (name: string, ins: AnyDTensor[], attrs: Record<string, unknown>) => ins[0]!.mesh.builder.add(name, ins.map((t) => t.ref), attrs as never).map((r) => new DTensor(ins[0]!.mesh, r) as AnyDTensor);
const T = (m: Mesh<"d">, dims: Record<string, number>, dtype: DType) => fromGlobal(m, dims, dtype, Array.from({ length: Object.values(dims).reduce((a, b) => a * b, 1) }, () => rnd() * 4 - 2)) as AnyDTensor;

function segmentPlan(op: "segment_dot" | "segment_wgrad", dtype: DType) {
  const m = Mesh.of({ d: 1 });
  const [perm, counts] = raw("sort_by_key", [fromGlobal(m, { g: 3, s: 24 }, "i32", Array.from({ length: 72 }, () => Math.floor(rnd() * 5))) as AnyDTensor], { dim: "s", rows: "rows", groups: "e", numGroups: 5 });
  const x = raw("gather", [T(m, { g: 3, s: 24, k: 16 }, dtype), perm!], { dim: "s" })[0]!;
  const outs = op === "segment_dot"
    ? raw("segment_dot", [x, T(m, { e: 5, k: 16, n: 32 }, dtype), counts!], { contract: "k" })
    : raw("segment_wgrad", [x, raw("gather", [T(m, { g: 3, s: 24, n: 32 }, dtype), perm!], { dim: "s" })[0]!, counts!], { k: "k", n: "n" });
  return compile(m.builder.graph, outs.map((t) => t.ref));
}

describe("segment contractions through the executor (fake native layer)", () => {
  useTempKernelCache();
  // the grouped call where it can run (bf16's default is the side-stream fan-out of the loop's calls)
  const saved = process.env.SHARDTS_SEGMENT_GEMM;
  beforeAll(() => void (process.env.SHARDTS_SEGMENT_GEMM = "grouped"));
  afterAll(() => void (saved === undefined ? delete process.env.SHARDTS_SEGMENT_GEMM : (process.env.SHARDTS_SEGMENT_GEMM = saved)));

  // every i32 read answers this pattern: skewed, with empty groups, and more rows than there are (clipped)
  const skew = [5, 0, 9, 0, 3, 12, 1, 7, 0, 2];
  const cases: [string, () => ReturnType<typeof compile>, number | undefined, number[]][] = [
    // one grouped call for segment_dot; segment_wgrad accumulates over entries: one per batch entry
    ["segment_dot f32", () => segmentPlan("segment_dot", "f32"), 1, skew],
    ["segment_dot bf16", () => segmentPlan("segment_dot", "bf16"), 1, skew],
    ["segment_wgrad f32", () => segmentPlan("segment_wgrad", "f32"), 3, skew],
    // bf16 -> f32 accumulation is not a grouped GEMM type: the cuBLASLt loop stays
    ["segment_wgrad bf16", () => segmentPlan("segment_wgrad", "bf16"), 0, skew],
    // expert-sharded segments over dp=2 x ep=2 (local experts past the counts' first); the simulated
    // exchange needs counts that add up to each group's 32 rows: every other expert empty
    ["moe-layer", () => { const { mesh, outputs } = buildOn(moeLayer, moeLayer.mesh); return compile(mesh.builder.graph, Object.values(outputs).map((o) => (o as AnyDTensor).ref)); }, undefined, [8, 0]],
  ];
  for (const [name, make, calls, counts] of cases)
    it(`${name}: the grouped calls' problems are the loop's cuBLASLt calls`, () => {
      const plan = make(), loop = gemms(true, counts), grouped = gemms(false, counts);
      loop.ex.run(plan, undefined, undefined, { download: false });
      grouped.ex.run(plan, undefined, undefined, { download: false });
      expect(loop.grouped).toEqual([]);
      expect(loop.lines.length).toBeGreaterThan(0);
      expect(grouped.lines).toEqual(loop.lines);
      if (calls !== undefined) expect(grouped.grouped.length).toBe(calls);
      else expect(grouped.grouped.length).toBeGreaterThan(0);
    });
});

describe("segment contractions read their counts back once per run", () => {
  useTempKernelCache();
  it("hostPiece reads a piece back once per run; another order is the same piece reordered on the host", () => {
    let reads = 0;
    const f = fakeAddon({
      spy: (m) => void (m === "memcpyDtoHAsync" && reads++),
      read: (dst) => void (dst instanceof Int32Array && dst.forEach((_, i) => (dst[i] = i))),
    });
    const ex = new CudaExecutor(f.addon, 0);
    const d = empty(ex.mem, "i32", [2, 3]), live = ex.mem.live;
    const a = ex.hostPiece(d, ["b", "g"], ["b", "g"]);
    expect(ex.hostPiece(d, ["b", "g"], ["b", "g"])).toBe(a);
    expect(reads).toBe(1);
    const t = ex.hostPiece(d, ["b", "g"], ["g", "b"]);
    expect(t.shape).toEqual([3, 2]);
    expect([...t.data]).toEqual([0, 3, 1, 4, 2, 5]);
    expect(reads).toBe(1); // no second read, and no device copy
    expect(ex.mem.live).toBe(live);
    ex.run(segmentPlan("segment_dot", "f32"), undefined, undefined, { download: false }); // a run starts afresh
    reads = 0;
    ex.hostPiece(d, ["b", "g"], ["b", "g"]);
    expect(reads).toBe(1);
  });
});

describe("segment GEMMs fanned out over side streams", () => {
  const P = (d: number, m = 64): Problem => ({ M: m, N: 32, K: 16, a: 0x1000n, b: 0x2000n, d: BigInt(d) * 0x10000n });

  it("give problems with one output one lane (they accumulate in order) and spread the outputs round-robin", () => {
    expect(problemLanes([P(1), P(2), P(1), P(3), P(4), P(5), P(2)], 4)).toEqual([0, 1, 0, 2, 3, 0, 1]);
    expect(problemLanes([P(1), P(2)], 1)).toEqual([0, 0]);
  });

  it("fork from the stream, run each problem on its lane, and make the stream wait for every lane used", () => {
    const calls: string[] = [];
    const f = fakeAddon({
      spy: (m, a) => {
        if (m === "eventRecord") calls.push(`record ${a[0]} on ${a[1]}`);
        if (m === "streamWaitEvent") calls.push(`wait ${a[0]} for ${a[1]}`); // stream, event
        if (m === "cublasLtMatmulRun") calls.push(`gemm d=${(a[4] as bigint).toString(16)} on ${a[6]}`);
      },
    });
    const main = f.addon.streamCreate(0);
    const set = { dtype: "bf16" as const, outDtype: "f32" as const, transA: true, accumulate: true, problems: [P(1), P(2), P(1)] };
    runProblems(f.addon, set, main, "lanes");
    const gemm = calls.filter((c) => c.startsWith("gemm")), lanes = gemm.map((c) => c.split(" on ")[1]);
    expect(gemm.map((c) => c.split(" ")[1])).toEqual(["d=10000", "d=20000", "d=10000"]);
    expect(lanes[0]).toBe(lanes[2]); // same output, same lane
    expect(lanes[0]).not.toBe(lanes[1]);
    expect(lanes).not.toContain(String(main));
    const fork = calls.findIndex((c) => c.endsWith(`on ${main}`) && c.startsWith("record"));
    expect(fork).toBeGreaterThanOrEqual(0);
    expect(fork).toBeLessThan(calls.indexOf(gemm[0]!));
    const waitsOfMain = calls.filter((c) => c.startsWith(`wait ${main} `));
    expect(waitsOfMain.length).toBe(2); // one per lane used, after the last GEMM
    expect(calls.indexOf(waitsOfMain[0]!)).toBeGreaterThan(calls.lastIndexOf(gemm[2]!));
    // loop mode: every problem on the stream itself, no events
    calls.length = 0;
    runProblems(f.addon, set, main, "loop");
    expect(calls).toEqual(["gemm d=10000 on " + main, "gemm d=20000 on " + main, "gemm d=10000 on " + main]);
  });

  it("read their settings from the environment and refuse bad ones", () => {
    expect(segmentModeFromEnv(undefined)).toBe("grouped");
    expect(segmentModeFromEnv(undefined, "bf16")).toBe("lanes");
    expect(segmentModeFromEnv("grouped", "bf16")).toBe("grouped");
    expect(segmentModeFromEnv("lanes")).toBe("lanes");
    expect(segmentModeFromEnv("wgmma", "bf16")).toBe("wgmma");
    expect(() => segmentModeFromEnv("fast")).toThrow(/give grouped, lanes, loop or wgmma/);
    // bf16 segment_dot takes the generated kernel unless another mode is named; f32 only when asked (and then falls back)
    expect(segmentDotOnWgmma(undefined, "bf16")).toBe(true);
    expect(segmentDotOnWgmma("", "bf16")).toBe(true);
    expect(segmentDotOnWgmma(undefined, "f32")).toBe(false);
    expect(segmentDotOnWgmma("lanes", "bf16")).toBe(false);
    expect(segmentDotOnWgmma("grouped", "bf16")).toBe(false);
    expect(segmentDotOnWgmma("wgmma", "f32")).toBe(true);
    expect(lanesFromEnv(undefined)).toBe(4);
    expect(lanesFromEnv("8")).toBe(8);
    expect(() => lanesFromEnv("0")).toThrow(/1 to 32/);
  });
});
