// bf16 segment_dot on the generated grouped wgmma kernel (runtime/cuda/bf16-segment.ts, here with
// SHARDTS_SEGMENT_GEMM=wgmma set), through the executor over the fake native layer: one launch of the
// grouped bf16 kernel over row runs (X read and Y written in place) with the geometry its config gives, TMA maps of bf16 with
// 64-element (128-byte) boxes, and no cuBLAS GEMM; the weights [e, k, n] read as they are (MN-major B: a
// 3-D map [E][K][N], no transpose kernel) or, with SHARDTS_SEGMENT_B=kmajor, transposed to [E][N][K] first; a shape the kernel refuses (K not a multiple of 16)
// and an f32 segment_dot run the cuBLAS path as without the setting, with no error. Not numerics
// (the fake does no device work): bench/gpu/cuda-ops-check.ts checks those on a GPU.
import { fp8GemmOf, gemmSms, MULTI_RANK_RESERVED_SMS } from "../../runtime/cuda/fp8-gemm.ts";
import type { TraceEvent } from "../../runtime/cuda/trace.ts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { segmentBFromEnv, segmentWeightsLayout, wgmmaSegmentConfig, wgmmaSegmentRefusal } from "../../runtime/cuda/bf16-segment.ts";
import { configName } from "../../compiler/codegen/cuda/gemm/config.ts";
import { namingLaunches } from "../fakes/kernel-names.ts";
import { geometryOf, smemBytes, threadsOf } from "../../compiler/codegen/cuda/gemm/config.ts";
import type { TensorMapOptions } from "../../runtime/cuda/native-types.ts";
import { compile } from "../../compiler/pipeline.ts";
import type { DType } from "../../compiler/ir/types.ts";
import { DTensor, Mesh, fromGlobal, type AnyDTensor } from "../../stdlib/index.ts";
import { fakeAddon } from "../fakes/native-addon.ts";
import { useTempKernelCache } from "../fakes/kernel-cache.ts";

/** The executor with the counts read on the host (the path these tests are about; device-side counts: segment-device.test.ts). */
const hostCounts = (ex: CudaExecutor) => ((ex.segmentCountsOnDevice = false), ex);

const raw = (name: string, ins: AnyDTensor[], attrs: Record<string, unknown>) => ins[0]!.mesh.builder.add(name, ins.map((t) => t.ref), attrs as never).map((r) => new DTensor(ins[0]!.mesh, r) as AnyDTensor);
const T = (m: Mesh<"d">, dims: Record<string, number>, dtype: DType) => fromGlobal(m, dims, dtype, Array.from({ length: Object.values(dims).reduce((a, b) => a * b, 1) }, (_, i) => (i % 7) - 3)) as AnyDTensor;

/** segment_dot of 3 entries x 24 rows sorted into 5 experts, K x N weights. */
function dotPlan(dtype: DType, K: number, N: number, nk = false) {
  const m = Mesh.of({ d: 1 });
  const [perm, counts] = raw("sort_by_key", [fromGlobal(m, { g: 3, s: 24 }, "i32", Array.from({ length: 72 }, (_, i) => (i * 7) % 5)) as AnyDTensor], { dim: "s", rows: "rows", groups: "e", numGroups: 5 });
  const x = raw("gather", [T(m, { g: 3, s: 24, k: K }, dtype), perm!], { dim: "s" })[0]!;
  const outs = raw("segment_dot", [x, T(m, nk ? { e: 5, n: N, k: K } : { e: 5, k: K, n: N }, dtype), counts!], { contract: "k" });
  return compile(m.builder.graph, outs.map((t) => t.ref));
}

// every i32 read answers these counts ([3][5]: skewed, with empty experts; each entry's sum <= 24)
const COUNTS = [5, 0, 9, 0, 3, 12, 1, 7, 0, 2];
/** Non-empty segments of those counts: 3 + 4 + 3, each padded to one 128-row block. */
const PADDED_ROWS = 10 * 128;

/** The run with SHARDTS_SEGMENT_B as given (undefined: unset, the MN-major default). */
function run(dtype: DType, K: number, N: number, segmentB?: string, nk = false) {
  const savedB = process.env.SHARDTS_SEGMENT_B;
  if (segmentB === undefined) delete process.env.SHARDTS_SEGMENT_B;
  else process.env.SHARDTS_SEGMENT_B = segmentB;
  try {
    return runWith(dtype, K, N, nk);
  } finally {
    if (savedB === undefined) delete process.env.SHARDTS_SEGMENT_B;
    else process.env.SHARDTS_SEGMENT_B = savedB;
  }
}

function runWith(dtype: DType, K: number, N: number, nk: boolean) {
  const launches: { grid: number[]; block: number[]; smem: number }[] = [], maps: TensorMapOptions[] = [], uploads: Int32Array[] = [];
  const f = fakeAddon({
    read: (dst) => void (dst instanceof Int32Array && dst.forEach((_, i) => (dst[i] = COUNTS[i % COUNTS.length]!))),
    spy: (method, args) => {
      if (method === "launchKernel") launches.push({ grid: [...(args[1] as number[])], block: [...(args[2] as number[])], smem: args[3] as number });
      if (method === "tensorMapEncodeTiled") maps.push({ ...(args[0] as TensorMapOptions) });
      if (method === "memcpyHtoDAsync" && args[1] instanceof Int32Array) uploads.push(Int32Array.from(args[1]));
    },
  });
  const named = namingLaunches(f.addon);
  hostCounts(new CudaExecutor(named.addon, 0)).run(dotPlan(dtype, K, N, nk), undefined, undefined, { download: false });
  const gemm = launches.filter((l) => l.block[0] === threadsOf(wgmmaSegmentConfig(N)) && l.smem === smemBytes(wgmmaSegmentConfig(N)));
  return { gemm, maps, uploads, names: named.order, cublas: (f.calls.get("cublasLtMatmulRun") ?? 0) + (f.calls.get("cublasGroupedGemm") ?? 0) };
}

describe("bf16 segment_dot on the grouped wgmma kernel (SHARDTS_SEGMENT_GEMM=wgmma, fake native layer)", () => {
  useTempKernelCache();
  const saved = process.env.SHARDTS_SEGMENT_GEMM;
  beforeAll(() => void (process.env.SHARDTS_SEGMENT_GEMM = "wgmma"));
  afterAll(() => void (saved === undefined ? delete process.env.SHARDTS_SEGMENT_GEMM : (process.env.SHARDTS_SEGMENT_GEMM = saved)));

  it("launches the grouped bf16 kernel once over the row runs, reading X and writing Y in place, with bf16 TMA maps, and no cuBLAS GEMM", () => {
    const K = 32, N = 48;
    const r = run("bf16", K, N);
    expect(r.cublas).toBe(0);
    expect(r.gemm.length).toBe(1);
    const g = geometryOf(wgmmaSegmentConfig(N), { M: PADDED_ROWS, N, K }, 132);
    expect(r.gemm[0]!.grid).toEqual([g.grid, 1, 1]);
    expect(g.grid).toBe(10); // one tile per 128-row block of a run: N fits one 128-column tile
    // the weights [e, k, n] as they are: the MN-major kernel, no transpose kernel before it
    expect(r.names.filter((n) => n.startsWith("sh_bf16_gemm"))).toEqual([configName(wgmmaSegmentConfig(N, true))]);
    expect(configName(wgmmaSegmentConfig(N, true))).toMatch(/_rr_bn$/);
    const km = run("bf16", K, N, "kmajor");
    expect(km.names.filter((n) => n.startsWith("sh_bf16_gemm"))).toEqual([configName(wgmmaSegmentConfig(N))]);
    expect(km.names.length).toBe(r.names.length + 1); // the transpose to [E][N][K]
    expect(km.names.slice(0, km.names.length - 1).filter((n) => !r.names.includes(n)).length).toBe(1);
    // A is X's 72 rows as they are ([3][24][K]): bf16, one 128-byte row (64 elements) of K per box row
    const ab = r.maps.filter((m) => m.swizzle === "128B" && m.dtype === "bf16" && m.dims[0] === K);
    expect(ab.map((m) => [m.dims[1], m.box[0], m.strides[0]])).toEqual([[72, 64, 2 * K]]);
    // B is W [E][K][N] where it is: a 3-D map, boxes of 64 columns (128 bytes) x 64 K rows x 1 expert
    expect(r.maps.filter((m) => m.dims.length === 3).map((m) => [m.dims, m.box, m.strides, m.swizzle])).toEqual([[[N, K, 5], [64, 64, 1], [2 * N, 2 * K * N], "128B"]]);
    // SHARDTS_SEGMENT_B=kmajor: B [E·N][K], transposed first
    expect(km.maps.filter((m) => m.swizzle === "128B" && m.dtype === "bf16" && m.dims[0] === K).map((m) => [m.dims[1], m.box[0], m.strides[0]]).sort((a, b) => a[0]! - b[0]!)).toEqual([
      [72, 64, 2 * K],
      [5 * N, 64, 2 * K],
    ]);
    expect(km.maps.filter((m) => m.dims.length === 3)).toEqual([]);
    // weights laid out [e, n, k]: already K-major, read as they are (no transpose either)
    const nk = run("bf16", K, N, undefined, true);
    expect(nk.names.filter((n) => n.startsWith("sh_bf16_gemm"))).toEqual([configName(wgmmaSegmentConfig(N))]);
    expect(nk.names.length).toBe(r.names.length);
    expect(nk.maps.filter((m) => m.dims.length === 3)).toEqual([]);
    // the run table, group-major: (expert, X row, Y row, rows) per 128-row block; counts per entry [5,0,9,0,3], [12,1,7,0,2], [5,0,9,0,3]
    expect(r.uploads.map((u) => Array.from(u))).toContainEqual([
      0, 0, 0, 5, 0, 24, 24, 12, 0, 48, 48, 5,
      1, 36, 36, 1,
      2, 5, 5, 9, 2, 37, 37, 7, 2, 53, 53, 9,
      4, 14, 14, 3, 4, 44, 44, 2, 4, 62, 62, 3,
    ]);
    // no row map for a gather into a padded layout (PADDED_ROWS long): the kernel reads and writes the rows where they are
    expect(r.uploads.filter((u) => u.length === PADDED_ROWS)).toEqual([]);
    // no scale maps: the only other map is the TMA-store epilogue's D, over Y's 72 rows
    expect(r.maps.filter((m) => m.dtype === "f32" || m.dtype === "u8")).toEqual([]);
    expect(r.maps.filter((m) => m.dtype === "bf16" && m.dims[0] === N && m.dims.length === 2).map((m) => m.dims[1])).toEqual([72]);
  });

  it("falls back to the cuBLAS path, with no error, where the kernel refuses the shape or the types", () => {
    const odd = run("bf16", 24, 48); // K = 24: not a multiple of 16
    expect(odd.gemm).toEqual([]);
    expect(odd.cublas).toBeGreaterThan(0);
    const f32 = run("f32", 32, 48);
    expect(f32.gemm).toEqual([]);
    expect(f32.cublas).toBeGreaterThan(0);
  });

  it("traces its parts (host table, weights, upload, the GEMM) on their own row", () => {
    const f = fakeAddon({ read: (dst) => void (dst instanceof Int32Array && dst.forEach((_, i) => (dst[i] = COUNTS[i % COUNTS.length]!))) });
    const trace: TraceEvent[] = [];
    hostCounts(new CudaExecutor(f.addon, 0)).run(dotPlan("bf16", 32, 48), undefined, undefined, { download: false, trace });
    const parts = trace.filter((e) => e.cat === "part");
    expect(parts.map((e) => e.name)).toEqual(expect.arrayContaining(["counts to host", "row runs (host)", "row runs upload", "grouped GEMM"]));
    expect(parts.map((e) => e.name)).not.toContain("weights K-major"); // read MN-major as they are
    expect(new Set(parts.map((e) => e.tid))).toEqual(new Set(["stream parts"]));
    expect(trace.filter((e) => e.name === "segment_dot")).toHaveLength(1);
    // untraced runs record nothing
    const g = fakeAddon({ read: (dst) => void (dst instanceof Int32Array && dst.forEach((_, i) => (dst[i] = COUNTS[i % COUNTS.length]!))) });
    hostCounts(new CudaExecutor(g.addon, 0)).run(dotPlan("bf16", 32, 48), undefined, undefined, { download: false });
    expect(g.calls.get("eventRecord") ?? 0).toBe(0);
  });

  it("reads the weights MN-major where they are [groups, k, ...nOut] and SHARDTS_SEGMENT_B allows; K-major otherwise", () => {
    expect(segmentWeightsLayout(["e", "k", "n"], "e", "k", ["n"], undefined)).toEqual({ bMnMajor: true, order: ["e", "k", "n"] });
    expect(segmentWeightsLayout(["e", "k", "h", "f"], "e", "k", ["h", "f"], "mn")).toEqual({ bMnMajor: true, order: ["e", "k", "h", "f"] });
    expect(segmentWeightsLayout(["e", "k", "n"], "e", "k", ["n"], "kmajor")).toEqual({ bMnMajor: false, order: ["e", "n", "k"] });
    // already K-major: no copy either way; another order: transposed to K-major as before
    expect(segmentWeightsLayout(["e", "n", "k"], "e", "k", ["n"], undefined)).toEqual({ bMnMajor: false, order: ["e", "n", "k"] });
    expect(segmentWeightsLayout(["k", "e", "n"], "e", "k", ["n"], undefined)).toEqual({ bMnMajor: false, order: ["e", "n", "k"] });
    expect(segmentBFromEnv("")).toBe("mn");
    expect(() => segmentBFromEnv("nk")).toThrow(/SHARDTS_SEGMENT_B=nk: give mn .* or kmajor/);
  });

  it("says why it refuses", () => {
    const ok = { dtype: "bf16", outDtype: "bf16", arch: "sm_90a", M: 1280, N: 1408, K: 2048 };
    expect(wgmmaSegmentRefusal(ok)).toBeUndefined();
    expect(wgmmaSegmentRefusal({ ...ok, outDtype: "f32" })).toMatch(/bf16 to bf16/);
    expect(wgmmaSegmentRefusal({ ...ok, arch: "sm_80" })).toMatch(/Hopper/);
    expect(wgmmaSegmentRefusal({ ...ok, M: 0 })).toMatch(/no rows/);
    expect(wgmmaSegmentRefusal({ ...ok, K: 24 })).toMatch(/multiple of 16/);
    expect(wgmmaSegmentRefusal({ ...ok, N: 1400 })).toMatch(/multiple of 16/);
  });
});

describe("SMs left to communication by the persistent generated GEMMs (SHARDTS_GEMM_RESERVED_SMS)", () => {
  it("takes all SMs by default and leaves the reserved ones otherwise; refuses nonsense", () => {
    expect(gemmSms(132, undefined)).toBe(132);
    expect(gemmSms(132, "")).toBe(132);
    expect(gemmSms(132, "24")).toBe(108);
    expect(() => gemmSms(132, "132")).toThrow(/from 0 to 131/);
    expect(() => gemmSms(132, "x")).toThrow(/SHARDTS_GEMM_RESERVED_SMS=x/);
    // the executor's multi-rank default, which the variable overrides (0 included)
    expect(gemmSms(132, undefined, MULTI_RANK_RESERVED_SMS)).toBe(132 - MULTI_RANK_RESERVED_SMS);
    expect(gemmSms(132, "0", MULTI_RANK_RESERVED_SMS)).toBe(132);
  });
  it("is reserved by default only for a process running one rank of several", () => {
    const one = fakeAddon({}), two = fakeAddon({});
    expect(fp8GemmOf({ addon: one.addon, stream: 1n }).reservedSms).toBe(0);
    expect(fp8GemmOf({ addon: two.addon, stream: 1n, rankLocal: { worldSize: 2 } }).reservedSms).toBe(MULTI_RANK_RESERVED_SMS);
  });
});
