// The segment contractions on device-side counts (runtime/cuda/segment-device.ts) through the executor
// over the fake native layer: with CudaExecutor.segmentCountsOnDevice set, bf16 segment_dot reads no
// counts back (no hostPiece, no device-to-host copy or stream sync before the GEMM), launches the plan
// kernel with the layout the host path would read the counts with (entries, groups, the local groups'
// first, packed or not, rows; on a simulated two-rank mesh each rank its own groups), a table of
// rowRunCapacity blocks and Y's rows (the kernel zeroes those outside the segments: no memset), and
// launches the grouped bf16 kernel once over M = 128 x that capacity; what the device path refuses (a shape, f32, the FP8 ops) reads the counts on the host as
// before. bf16 segment_wgrad likewise: the column plan, the two transposing gathers and one K-grouped
// GEMM over columnCapacity columns writing dW in bf16. SHARDTS_SEGMENT_COUNTS is parsed, a bad value refused. Not numerics (the fake does no device
// work): the plan kernel's emulation (test/codegen/segment-plan-emulation.test.ts) and
// bench/gpu/cuda-ops-check.ts's "device counts" cases check those.
import { afterEach, describe, expect, it } from "vitest";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { columnCapacity, deviceSegmentRefusal, rowRunCapacity, segmentCountsFromEnv } from "../../runtime/cuda/segment-device.ts";
import { wgmmaSegmentConfig } from "../../runtime/cuda/bf16-segment.ts";
import { segmentColumnsPlan, segmentGatherT, segmentRunsPlan } from "../../runtime/cuda/kernels/segment-sources.ts";
import { geometryOf } from "../../compiler/codegen/cuda/gemm/config.ts";
import { compile } from "../../compiler/pipeline.ts";
import type { DType, TensorType } from "../../compiler/ir/types.ts";
import { DTensor, Mesh, fromGlobal, type AnyDTensor } from "../../stdlib/index.ts";
import { redistribute } from "../../stdlib/ops/redistribute.ts";
import { fakeAddon } from "../fakes/native-addon.ts";
import { runOnFakeGpu } from "../fakes/segment-run.ts";
import { namingLaunches } from "../fakes/kernel-names.ts";
import { buildTrain } from "../../bench/gpu/lib/moe-build.ts";
import { useTempKernelCache } from "../fakes/kernel-cache.ts";

const raw = (name: string, ins: AnyDTensor[], attrs: Record<string, unknown>) => ins[0]!.mesh.builder.add(name, ins.map((t) => t.ref), attrs as never).map((r) => new DTensor(ins[0]!.mesh, r) as AnyDTensor);
const T = (m: Mesh<"d">, dims: Record<string, number>, dtype: DType, placements?: Record<string, string>) =>
  fromGlobal(m, dims, dtype, Array.from({ length: Object.values(dims).reduce((a, b) => a * b, 1) }, (_, i) => (i % 7) - 3), placements as never) as AnyDTensor;

/**
 * segment_dot (or segment_wgrad) of 3 entries x 24 rows sorted into 5 experts; on `ranks` ranks the
 * experts are sharded: x whole (unpacked rows), or with `packed` the rows and counts dispatched (S(rows), S(e)).
 */
function plan(op: "segment_dot" | "segment_wgrad", dtype: DType, K: number, N: number, ranks = 1, packed = false) {
  const m = Mesh.of({ d: ranks });
  const [perm, counts] = raw("sort_by_key", [fromGlobal(m, { g: 3, s: 24 }, "i32", Array.from({ length: 72 }, (_, i) => (i * 7) % 5)) as AnyDTensor], { dim: "s", rows: "rows", groups: "e", numGroups: 5 });
  const rows = (v: AnyDTensor) => (packed ? (redistribute(v as never, { d: "S(rows)" } as never) as AnyDTensor) : v);
  const c = packed ? (redistribute(counts! as never, { d: "S(e)" } as never) as AnyDTensor) : counts!;
  const x = rows(raw("gather", [T(m, { g: 3, s: 24, k: K }, dtype), perm!], { dim: "s" })[0]!);
  const outs = op === "segment_dot"
    ? raw("segment_dot", [x, T(m, { e: 5, k: K, n: N }, dtype, ranks > 1 ? { d: "S(e)" } : undefined), c], { contract: "k" })
    : raw("segment_wgrad", [x, rows(raw("gather", [T(m, { g: 3, s: 24, n: N }, dtype), perm!], { dim: "s" })[0]!), c], { k: "k", n: "n" });
  return compile(m.builder.graph, outs.map((t) => t.ref));
}

const COUNTS = [5, 0, 9, 0, 3, 12, 1, 7, 0, 2];

/** The plan kernel's arguments as packArgs lays them out: counts, bt, gC, first, E, packed, R, Rout, runs, cap, y, rowWords. */
function planArgs(p: Uint8Array) {
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength), i = (at: number) => v.getInt32(at, true);
  return { bt: i(8), gC: i(12), first: i(16), E: i(20), packed: i(24), R: i(28), Rout: i(32), cap: i(48), rowWords: Number(v.getBigInt64(64, true)) };
}

function run(op: "segment_dot" | "segment_wgrad", dtype: DType, K: number, N: number, o: { ranks?: number; packed?: boolean; device?: boolean } = {}) {
  const plans: ReturnType<typeof planArgs>[] = [];
  const r = runOnFakeGpu(plan(op, dtype, K, N, o.ranks, o.packed), { counts: COUNTS, device: o.device ?? true, onLaunch: (name, args) => void (name === segmentRunsPlan().name && plans.push(planArgs(args))) });
  return { ...r, plans, gemmAt: r.events.findIndex((e) => e.startsWith("sh_bf16_gemm_grouped")) };
}

describe("bf16 segment contractions on device-side counts (fake native layer)", () => {
  useTempKernelCache();

  it("segment_dot: no counts read on the host; the plan kernel (table and Y's zeros), then one grouped GEMM over the table's capacity", () => {
    const K = 32, N = 48, r = run("segment_dot", "bf16", K, N);
    expect(r.hostPieces).toBe(0);
    expect(r.cublas).toBe(0);
    // nothing is read back (and the stream not waited for) before the GEMM: the reads after it are the run's deferred index checks
    expect(r.gemmAt).toBeGreaterThan(0);
    expect(r.events.slice(0, r.gemmAt).filter((e) => !e.startsWith("sh") && !e.startsWith("shardts"))).toEqual([]);
    // the weights [e, k, n] read as they are: the MN-major kernel, and no kernel but the plan's between the rows layout and it
    expect(r.events.filter((e) => e.startsWith("sh_bf16_gemm_grouped"))).toEqual([`sh_bf16_gemm_grouped_m128n128_s${wgmmaSegmentConfig(N, true).stages}_p_ts_rr_bn`]);
    expect(r.events[r.gemmAt - 1]).toBe(segmentRunsPlan().name);
    expect(r.events.indexOf(segmentRunsPlan().name)).toBeLessThan(r.gemmAt);
    const cap = rowRunCapacity(3, 24, 5);
    expect(r.plans).toEqual([{ bt: 3, gC: 5, first: 0, E: 5, packed: 0, R: 24, Rout: 24, cap, rowWords: N / 8 }]);
    // one tile per 128-row block of the capacity (N fits one 128-column tile): a fixed grid, whatever the counts
    expect(cap).toBe(15);
    expect(geometryOf(wgmmaSegmentConfig(N), { M: 128 * cap, N, K }, 132).tiles).toBe(15);
    // A: X's 72 rows where they are; B: W [E][K][N] where it is (3-D, 64 x 64 boxes); D: Y's 72 rows
    expect(r.maps.filter((m) => m.dtype === "bf16" && m.dims[0] === K).map((m) => m.dims[1])).toEqual([72]);
    expect(r.maps.filter((m) => m.dims.length === 3).map((m) => [m.dims, m.box])).toEqual([[[N, K, 5], [64, 64, 1]]]);
    expect(r.maps.filter((m) => m.dtype === "bf16" && m.dims[0] === N && m.dims.length === 2).map((m) => m.dims[1])).toEqual([72]);
    // SHARDTS_SEGMENT_B=kmajor: the weights transposed to [E][N][K] first (one more kernel), B [E·N][K]
    const saved = process.env.SHARDTS_SEGMENT_B;
    process.env.SHARDTS_SEGMENT_B = "kmajor";
    try {
      const km = run("segment_dot", "bf16", K, N);
      expect(km.events.filter((e) => e.startsWith("sh_bf16_gemm_grouped"))).toEqual([`sh_bf16_gemm_grouped_m128n128_s${wgmmaSegmentConfig(N).stages}_p_ts_rr`]);
      expect(km.events.filter((e) => !e.startsWith("memcpy") && e !== "streamSynchronize").length).toBe(r.events.filter((e) => !e.startsWith("memcpy") && e !== "streamSynchronize").length + 1);
      expect(km.maps.filter((m) => m.dtype === "bf16" && m.dims[0] === K).map((m) => m.dims[1]).sort((a, b) => a - b)).toEqual([72, 5 * N]);
      expect(km.maps.filter((m) => m.dims.length === 3)).toEqual([]);
    } finally {
      if (saved === undefined) delete process.env.SHARDTS_SEGMENT_B;
      else process.env.SHARDTS_SEGMENT_B = saved;
    }
    // Y's rows outside the segments are zeroed by the plan kernel (it alone knows them), not by a memset of all of Y
    expect(r.memsets).not.toContain(72 * N * 2);
  });

  it("segment_dot on two ranks with the experts sharded: x whole (unpacked, groups past the counts' first) and dispatched (packed)", () => {
    const r = run("segment_dot", "bf16", 32, 48, { ranks: 2 });
    expect(r.hostPieces).toBe(0);
    expect(r.cublas).toBe(0);
    expect(r.plans.map((p) => [p.first, p.E, p.packed, p.gC, p.bt])).toEqual([[0, 3, 0, 5, 3], [3, 2, 0, 5, 3]]);
    expect(r.plans.map((p) => p.cap)).toEqual([rowRunCapacity(3, 24, 3), rowRunCapacity(3, 24, 2)]);
    // rows and counts dispatched (as the MoE layer's): packed rows, the counts' groups those of the weights
    const p = run("segment_dot", "bf16", 32, 48, { ranks: 2, packed: true });
    expect(p.hostPieces).toBe(0);
    expect(p.cublas).toBe(0);
    expect(p.plans.map((q) => [q.first, q.E, q.packed, q.gC, q.bt, q.R])).toEqual([[0, 3, 1, 3, 3, 24], [0, 2, 1, 2, 3, 24]]);
  });

  it("segment_wgrad: no counts read on the host; the column plan, Xᵀ and Gᵀ gathered, one K-grouped GEMM writing dW in bf16", () => {
    const K = 32, N = 48, r = run("segment_wgrad", "bf16", K, N);
    expect(r.hostPieces).toBe(0);
    expect(r.cublas).toBe(0);
    const gemm = r.events.findIndex((e) => e.startsWith("sh_bf16_gemm_grouped"));
    expect(r.events.slice(0, gemm).filter((e) => !e.startsWith("sh"))).toEqual([]);
    expect(r.events[gemm]).toMatch(/_kg$/);
    const seg = r.events.filter((e) => e.startsWith("shardts_segment") || e.startsWith("sh_bf16"));
    expect(seg).toEqual([segmentColumnsPlan().name, segmentGatherT().name, segmentGatherT().name, r.events[gemm]]);
    // A = Xᵀ [K][P], B = Gᵀ [N][P] (P columns, 64-column boxes), D [E][K][N] through a 3-D map; no f32 accumulator, no cast
    const P = columnCapacity(3, 24, 5);
    expect(P).toBe(64 * Math.floor((72 + 63 * 5) / 64));
    expect(r.maps.filter((m) => m.dims[0] === P).map((m) => [m.dims[1], m.box[0]])).toEqual([[K, 64], [N, 64]]);
    expect(r.maps.filter((m) => m.dims.length === 3).map((m) => m.dims)).toEqual([[N, K, 5]]);
    expect(r.events.some((e) => e.includes("cast"))).toBe(false);
    // dispatched rows on two ranks: each rank's own experts, packed
    const p = run("segment_wgrad", "bf16", K, N, { ranks: 2, packed: true });
    expect(p.hostPieces).toBe(0);
    expect(p.events.filter((e) => e === segmentColumnsPlan().name)).toHaveLength(2);
  });

  it("what the device path refuses reads the counts on the host as before, with no error", () => {
    const odd = run("segment_dot", "bf16", 24, 48); // K = 24: not a multiple of 16
    expect(odd.plans).toEqual([]);
    expect(odd.hostPieces).toBe(1);
    expect(odd.cublas).toBeGreaterThan(0);
    const f32 = run("segment_dot", "f32", 32, 48);
    expect(f32.plans).toEqual([]);
    expect(f32.hostPieces).toBe(1);
    const wodd = run("segment_wgrad", "bf16", 36, 48); // K = 36: not whole 16-byte words
    expect(wodd.events).not.toContain(segmentColumnsPlan().name);
    expect(wodd.hostPieces).toBe(1);
    const off = run("segment_dot", "bf16", 32, 48, { device: false });
    expect(off.plans).toEqual([]);
    expect(off.hostPieces).toBe(1);
  });

  afterEach(() => void delete process.env.SHARDTS_SEGMENT_COUNTS);
  it("reads SHARDTS_SEGMENT_COUNTS (device by default) and refuses other values", () => {
    expect(segmentCountsFromEnv(undefined)).toBe(true);
    expect(segmentCountsFromEnv("")).toBe(true);
    expect(segmentCountsFromEnv("host")).toBe(false);
    expect(segmentCountsFromEnv("device")).toBe(true);
    expect(() => segmentCountsFromEnv("gpu")).toThrow(RangeError);
    expect(() => segmentCountsFromEnv("gpu")).toThrow(/SHARDTS_SEGMENT_COUNTS=gpu: give device .* or host/);
    const f = fakeAddon({});
    expect(new CudaExecutor(f.addon, 0).segmentCountsOnDevice).toBe(true);
    process.env.SHARDTS_SEGMENT_COUNTS = "host";
    expect(new CudaExecutor(f.addon, 0).segmentCountsOnDevice).toBe(false);
    process.env.SHARDTS_SEGMENT_COUNTS = "yes";
    expect(() => new CudaExecutor(f.addon, 0)).toThrow(RangeError);
  });
});

describe("deviceSegmentRefusal", () => {
  const t = (dims: [string, number, string?][], dtype: DType): TensorType => ({
    dims: dims.map(([name, size, groups]) => (groups ? { name, size, segmented: { counts: { node: 0, out: 1 }, groups, numGroups: 8 } } : { name, size })),
    dtype, placements: [],
  });
  const x = (dtype: DType, K = 256) => t([["b", 4], ["rows", 512, "e"], ["k", K]], dtype);
  const w = (dtype: DType, N = 128) => t([["e", 8], ["k", 256], ["n", N]], dtype);
  const c = t([["b", 4], ["e", 8]], "i32");
  const y = (dtype: DType) => t([["b", 4], ["rows", 512, "e"], ["n", 128]], dtype);

  it("takes bf16 segment_dot and segment_wgrad on sm_90a and says why it refuses the rest", () => {
    expect(deviceSegmentRefusal("segment_dot", [x("bf16"), w("bf16"), c], y("bf16"), "sm_90a")).toBeUndefined();
    expect(deviceSegmentRefusal("segment_dot", [x("f32"), w("f32"), c], y("f32"), "sm_90a")).toMatch(/bf16 to bf16/);
    expect(deviceSegmentRefusal("segment_dot", [x("bf16"), w("bf16"), c], y("f32"), "sm_90a")).toMatch(/bf16 to bf16/);
    expect(deviceSegmentRefusal("segment_dot", [x("bf16"), w("bf16"), c], y("bf16"), "sm_80")).toMatch(/Hopper/);
    expect(deviceSegmentRefusal("scaled_segment_dot", [x("bf16"), w("bf16"), c], y("bf16"), "sm_90a")).toMatch(/not a bf16 segment contraction.*fp8-segment-device.ts/);
    expect(deviceSegmentRefusal("segment_dot", [x("bf16", 24), w("bf16"), c], y("bf16"), "sm_90a")).toMatch(/K = 24/);
    expect(deviceSegmentRefusal("segment_dot", [x("bf16"), w("bf16", 40), c], y("bf16"), "sm_90a")).toMatch(/N = 40/);
    // segment_wgrad: x and gy rows, out [e, k, n]
    const gy = (N = 128) => t([["b", 4], ["rows", 512, "e"], ["n", N]], "bf16"), dw = (N = 128, K = 256) => t([["e", 8], ["k", K], ["n", N]], "bf16");
    expect(deviceSegmentRefusal("segment_wgrad", [x("bf16"), gy(), c], dw(), "sm_90a")).toBeUndefined();
    expect(deviceSegmentRefusal("segment_wgrad", [x("bf16", 36), gy(), c], dw(128, 36), "sm_90a")).toMatch(/16-byte words/);
    expect(deviceSegmentRefusal("segment_wgrad", [x("bf16"), gy(40), c], dw(40), "sm_90a")).toMatch(/N = 40/);
    expect(deviceSegmentRefusal("segment_wgrad", [x("bf16"), gy(), c], { ...dw(), dtype: "f32" }, "sm_90a")).toMatch(/bf16 to bf16/);
    expect(deviceSegmentRefusal("scaled_segment_wgrad", [x("bf16"), gy(), c], dw(), "sm_90a")).toMatch(/not a bf16 segment contraction.*fp8-segment-device.ts/);
    // this rank's shapes, where given, are what it checks: 64 entries of 100 local groups outgrow the plan's shared tables
    const local = { inShapes: [[64, 512, 256], [100, 256, 128], [64, 800]], outShape: [64, 512, 128] };
    expect(deviceSegmentRefusal("segment_dot", [x("bf16"), w("bf16"), c], y("bf16"), "sm_90a", local)).toMatch(/64 entries x 100 groups/);
  });
});

describe("segment_wgrad's transposed rows, shared between gradients of the same rows (fake native layer)", () => {
  useTempKernelCache();
  it("transposes X once for the gate and up weights of the MoE training step (same rows, same counts), Gᵀ once per gradient", () => {
    const { plan, weights, batch } = buildTrain({ T: 64, D: 32, F: 16, E: 4, K: 2 });
    const wgrads = plan.instrs.filter((i) => i.kind === "op" && i.op === "segment_wgrad");
    const rowsOf = new Set(wgrads.map((i) => (i.kind === "op" ? `${i.inputs[0]}:${i.inputs[2]}` : "")));
    expect(wgrads).toHaveLength(3);
    expect(rowsOf.size).toBe(2); // dW1 and dW3 from the rows, dW2 from h
    const { addon, order } = namingLaunches(fakeAddon({}).addon);
    const ex = new CudaExecutor(addon, 0);
    for (let run = 0; run < 2; run++) {
      order.length = 0;
      ex.run(plan, new Map([...weights, ...batch(3)]), undefined, { download: false });
      expect(order.filter((n) => n === "shardts_segment_columns"), `run ${run}`).toHaveLength(2);
      expect(order.filter((n) => n === "shardts_segment_gather_t"), `run ${run}`).toHaveLength(2 + 3);
    }
  });
});
