// The routed experts' FP8 ops on device-side counts (runtime/cuda/fp8-segment-device.ts) through the
// executor over the fake native layer: with CudaExecutor.segmentCountsOnDevice set, scaled_segment_dot
// reads no counts back, launches the row-run plan (Y's rows outside the segments zeroed by it), A's
// scales laid out by block, and one grouped FP8 GEMM over row runs (_rr) over 128 x the table's capacity,
// reading X's codes and writing Y's rows where they are (no gathers, no memset of Y);
// scaled_segment_wgrad launches the plan, the row map and the experts' blocks, the 128x1 quantize of
// both operands, and one K-grouped row-scaled FP8 GEMM (_br_kg) writing dW in bf16. On two ranks each
// its own experts. What the device path refuses (an f32 result, another GPU, sizes) reads the counts on
// the host as before; capture (graph.ts notCapturable) accepts the FP8 ops it takes. Not numerics: the
// plan kernels' emulation (test/codegen/segment-plan-emulation.test.ts) and the GPU check
// (bench/gpu/cuda-ops-check.ts, "device counts" cases) check those.
import { describe, expect, it } from "vitest";
import { deviceScaledSegmentRefusal } from "../../runtime/cuda/fp8-segment-device.ts";
import { rowRunCapacity } from "../../runtime/cuda/segment-device.ts";
import { notCapturable } from "../../runtime/cuda/graph.ts";
import { segmentRunBlocks, segmentRunScales, segmentRunsPlan } from "../../runtime/cuda/kernels/segment-sources.ts";
import { wgradColumns } from "../../runtime/cuda/kernels/fp8-sources.ts";
import { compile } from "../../compiler/pipeline.ts";
import type { DType, TensorType } from "../../compiler/ir/types.ts";
import { DTensor, Mesh, fromGlobal, type AnyDTensor } from "../../stdlib/index.ts";
import { quantize } from "../../stdlib/ops/quantize.ts";
import { redistribute } from "../../stdlib/ops/redistribute.ts";
import { runOnFakeGpu } from "../fakes/segment-run.ts";
import { useTempKernelCache } from "../fakes/kernel-cache.ts";

const raw = (name: string, ins: AnyDTensor[], attrs: Record<string, unknown>) => ins[0]!.mesh.builder.add(name, ins.map((t) => t.ref), attrs as never).map((r) => new DTensor(ins[0]!.mesh, r) as AnyDTensor);
const T = (m: Mesh<"d">, dims: Record<string, number>, dtype: DType, placements?: Record<string, string>) =>
  fromGlobal(m, dims, dtype, Array.from({ length: Object.values(dims).reduce((a, b) => a * b, 1) }, (_, i) => ((i % 7) - 3) / 4), placements as never) as AnyDTensor;

/**
 * scaled_segment_dot (or _wgrad) of 3 entries x 24 rows sorted into 5 experts, x quantized 1x128 along k,
 * w 128x128 per expert; on `ranks` ranks the experts sharded, with `packed` the rows and counts dispatched.
 */
function plan(op: "scaled_segment_dot" | "scaled_segment_wgrad", K: number, N: number, o: { ranks?: number; packed?: boolean; out?: DType; twice?: boolean } = {}) {
  const m = Mesh.of({ d: o.ranks ?? 1 });
  const [perm, counts] = raw("sort_by_key", [fromGlobal(m, { g: 3, s: 24 }, "i32", Array.from({ length: 72 }, (_, i) => (i * 7) % 5)) as AnyDTensor], { dim: "s", rows: "rows", groups: "e", numGroups: 5 });
  const rows = (v: AnyDTensor) => (o.packed ? (redistribute(v as never, { d: "S(rows)" } as never) as AnyDTensor) : v);
  const c = o.packed ? (redistribute(counts! as never, { d: "S(e)" } as never) as AnyDTensor) : counts!;
  const x = rows(raw("gather", [T(m, { g: 3, s: 24, k: K }, "bf16"), perm!], { dim: "s" })[0]!);
  const qx = quantize(x as never, "1x128", "k") as { q: AnyDTensor; scales: AnyDTensor };
  const out = o.out ? { out: o.out } : {};
  if (op === "scaled_segment_dot") {
    const qw = quantize(T(m, { e: 5, k: K, n: N }, "bf16", (o.ranks ?? 1) > 1 ? { d: "S(e)" } : undefined) as never, "128x128", ["n", "k"]) as { q: AnyDTensor; scales: AnyDTensor };
    return compile(m.builder.graph, raw(op, [qx.q, qx.scales, qw.q, qw.scales, c], { contract: "k", ...out }).map((t) => t.ref));
  }
  const gy = rows(raw("gather", [T(m, { g: 3, s: 24, n: N }, "bf16"), perm!], { dim: "s" })[0]!);
  const outs = raw(op, [qx.q, qx.scales, gy, c], { k: "k", n: "n", ...out });
  // twice: a second weight gradient from the same rows and counts (a SwiGLU's up projection beside its gate)
  if (o.twice) outs.push(...raw(op, [qx.q, qx.scales, rows(raw("gather", [T(m, { g: 3, s: 24, n: N }, "bf16"), perm!], { dim: "s" })[0]!), c], { k: "k", n: "n", ...out }));
  return compile(m.builder.graph, outs.map((t) => t.ref));
}

const COUNTS = [5, 0, 9, 0, 3, 12, 1, 7, 0, 2];

function run(p: ReturnType<typeof plan>, device = true, steps = 1) {
  const r = runOnFakeGpu(p, { counts: COUNTS, device, steps });
  return { ...r, gemmAt: r.events.findIndex((e) => e.startsWith("sh_fp8_gemm_grouped")) };
}

/** The launches of the segment op: the plan kernels, the 128x1 quantize-transposes and the GEMMs. */
const opLaunches = (events: string[]) => events.filter((e) => e.startsWith("shardts_segment") || e.startsWith("sh_fp8_gemm") || e === wgradColumns("fp8").name || e === wgradColumns("bf16").name);

describe("FP8 segment ops on device-side counts (fake native layer)", () => {
  useTempKernelCache();

  it("scaled_segment_dot: no counts read on the host; the plan, A's scales by block, one grouped FP8 GEMM over row runs", () => {
    const K = 256, N = 144, r = run(plan("scaled_segment_dot", K, N));
    expect(r.hostPieces).toBe(0);
    expect(r.cublas).toBe(0);
    // nothing read back (and the stream not waited for) before the GEMM
    expect(r.gemmAt).toBeGreaterThan(0);
    expect(r.events.slice(0, r.gemmAt).filter((e) => !e.startsWith("sh"))).toEqual([]);
    const cap = rowRunCapacity(3, 24, 5), P = 128 * cap;
    const seg = opLaunches(r.events);
    expect(seg).toHaveLength(3);
    expect(seg.slice(0, 2)).toEqual([segmentRunsPlan().name, segmentRunScales().name]);
    expect(seg[2]).toMatch(/^sh_fp8_gemm_grouped_m128n128_s\d+_p_ov_ts_rr$/); // a wave of tiles is more than this: the narrow default
    // A: X's 72 rows of codes where they are (K-block boxes); A's scales [KB][P] by block; D: Y's 72 rows, no memset of Y
    expect(r.maps.filter((m) => m.dtype === "u8" && m.dims[0] === K).map((m) => m.dims[1])).toContain(72);
    expect(r.maps.filter((m) => m.dtype === "f32").map((m) => [m.dims, m.box])).toEqual([[[P, K / 128], [128, 1]]]);
    expect(r.maps.filter((m) => m.dtype === "bf16" && m.dims[0] === N).map((m) => m.dims[1])).toEqual([72]);
    expect(r.memsets).not.toContain(72 * N * 2);
  });

  it("scaled_segment_wgrad: the plan, the row map and experts' blocks, both operands quantized 128x1, one K-grouped row-scaled GEMM writing dW in bf16", () => {
    const K = 256, N = 144, r = run(plan("scaled_segment_wgrad", K, N));
    expect(r.hostPieces).toBe(0);
    expect(r.cublas).toBe(0);
    expect(r.events.slice(0, r.gemmAt).filter((e) => !e.startsWith("sh"))).toEqual([]);
    const cap = rowRunCapacity(3, 24, 5), P = 128 * cap;
    const seg = opLaunches(r.events);
    expect(seg.slice(0, 4)).toEqual([segmentRunsPlan().name, segmentRunBlocks().name, wgradColumns("fp8").name, wgradColumns("bf16").name]);
    expect(seg[4]).toMatch(/^sh_fp8_gemm_grouped_m128n128_s\d+_p_ts_br_kg$/);
    expect(seg).toHaveLength(5);
    // A = Xᵀ codes [K][P], B = dYᵀ [N][P] (128-column boxes); scales [P/128][K] and [P/128][N]; D [E][K][N] by a 3-D map
    expect(r.maps.filter((m) => m.dtype === "u8").map((m) => [m.dims, m.box])).toEqual([[[P, K], [128, 128]], [[P, N], [128, 128]]]);
    expect(r.maps.filter((m) => m.dtype === "f32").map((m) => m.dims)).toEqual([[K, P / 128], [N, P / 128]]);
    expect(r.maps.filter((m) => m.dims.length === 3).map((m) => m.dims)).toEqual([[N, K, 5]]);
    expect(r.events.some((e) => e.includes("cast"))).toBe(false);
  });

  it("two weight gradients from the same rows and counts make x's side (plan, row map, x quantized 128x1) once", () => {
    const r = run(plan("scaled_segment_wgrad", 256, 144, { twice: true }));
    expect(r.hostPieces).toBe(0);
    const seg = opLaunches(r.events);
    expect(seg.filter((e) => e === segmentRunsPlan().name)).toHaveLength(1);
    expect(seg.filter((e) => e === segmentRunBlocks().name)).toHaveLength(1);
    expect(seg.filter((e) => e === wgradColumns("fp8").name)).toHaveLength(1);
    expect(seg.filter((e) => e === wgradColumns("bf16").name)).toHaveLength(2);
    expect(seg.filter((e) => /_br_kg$/.test(e))).toHaveLength(2);
    // and every step alike on one executor (the side kept by the first op is taken by the second in each run)
    const two = run(plan("scaled_segment_wgrad", 256, 144, { twice: true }), true, 2);
    expect(opLaunches(two.events)).toEqual([...seg, ...seg]);
  });

  it("on two ranks with the experts sharded, each rank plans its own (x whole, and rows dispatched)", () => {
    for (const packed of [false, true]) {
      const d = run(plan("scaled_segment_dot", 256, 144, { ranks: 2, packed }));
      expect(d.hostPieces, `dot packed ${packed}`).toBe(0);
      expect(d.events.filter((e) => e === segmentRunsPlan().name), `dot packed ${packed}`).toHaveLength(2);
      const w = run(plan("scaled_segment_wgrad", 256, 144, { ranks: 2, packed }));
      expect(w.hostPieces, `wgrad packed ${packed}`).toBe(0);
      expect(w.events.filter((e) => /_br_kg$/.test(e)), `wgrad packed ${packed}`).toHaveLength(2);
    }
  });

  it("what the device path refuses (an f32 result; the sizes: deviceScaledSegmentRefusal below) reads the counts on the host as before", () => {
    const f32 = run(plan("scaled_segment_wgrad", 256, 144, { out: "f32" }));
    expect(f32.events).not.toContain(segmentRunsPlan().name);
    expect(f32.hostPieces).toBe(1);
    const off = run(plan("scaled_segment_dot", 256, 144), false);
    expect(off.events).not.toContain(segmentRunsPlan().name);
    expect(off.hostPieces).toBe(1);
  });

  it("capture takes plans whose FP8 segment ops run on device counts, and names the op it cannot take", () => {
    expect(notCapturable(plan("scaled_segment_dot", 256, 144), "sm_90a")).toBeUndefined();
    expect(notCapturable(plan("scaled_segment_wgrad", 256, 144), "sm_90a")).toBeUndefined();
    expect(notCapturable(plan("scaled_segment_wgrad", 256, 144, { out: "f32" }), "sm_90a")).toMatch(/scaled_segment_wgrad.*f32 result/);
    expect(notCapturable(plan("scaled_segment_dot", 256, 144), "sm_80")).toMatch(/scaled_segment_dot.*Hopper/);
  });
});

describe("deviceScaledSegmentRefusal", () => {
  const t = (dims: [string, number, string?][], dtype: DType): TensorType => ({
    dims: dims.map(([name, size, groups]) => (groups ? { name, size, segmented: { counts: { node: 0, out: 1 }, groups, numGroups: 8 } } : { name, size })),
    dtype, placements: [],
  });
  const x = (K = 256) => t([["b", 4], ["rows", 512, "e"], ["k", K]], "fp8e4m3"), sx = (K = 256) => t([["b", 4], ["rows", 512, "e"], ["k/128", Math.ceil(K / 128)]], "f32");
  const w = (N = 128) => t([["e", 8], ["n", N], ["k", 256]], "fp8e4m3"), sw = t([["e", 8], ["n/128", 1], ["k/128", 2]], "f32");
  const c = t([["b", 4], ["e", 8]], "i32");
  const y = (dtype: DType, N = 128) => t([["b", 4], ["rows", 512, "e"], ["n", N]], dtype);
  const dw = (dtype: DType, K = 256) => t([["e", 8], ["k", K], ["n", 128]], dtype);

  it("takes bf16 results on sm_90a and says why it refuses the rest", () => {
    const dot = { contract: "k" }, wg = { k: "k", n: "n" };
    expect(deviceScaledSegmentRefusal("scaled_segment_dot", [x(), sx(), w(), sw, c], y("bf16"), "sm_90a", dot)).toBeUndefined();
    expect(deviceScaledSegmentRefusal("scaled_segment_dot", [x(), sx(), w(), sw, c], y("f32"), "sm_90a", dot)).toMatch(/f32 result/);
    expect(deviceScaledSegmentRefusal("scaled_segment_dot", [x(), sx(), w(), sw, c], y("bf16"), "sm_80", dot)).toMatch(/Hopper/);
    expect(deviceScaledSegmentRefusal("scaled_segment_dot", [x(), sx(), w(40), sw, c], y("bf16", 40), "sm_90a", dot)).toMatch(/N = 40/);
    expect(deviceScaledSegmentRefusal("scaled_segment_dot", [x(200), sx(200), w(), sw, c], y("bf16"), "sm_90a", dot)).toMatch(/K = 200/);
    expect(deviceScaledSegmentRefusal("scaled_segment_wgrad", [x(), sx(), y("bf16"), c], dw("bf16"), "sm_90a", wg)).toBeUndefined();
    expect(deviceScaledSegmentRefusal("scaled_segment_wgrad", [x(), sx(), y("bf16"), c], dw("f32"), "sm_90a", wg)).toMatch(/f32 result/);
    expect(deviceScaledSegmentRefusal("scaled_segment_wgrad", [x(270), sx(270), y("bf16"), c], dw("bf16", 270), "sm_90a", wg)).toMatch(/M = 270|not a multiple of 16/);
    expect(deviceScaledSegmentRefusal("segment_dot", [x(), sx(), w(), sw, c], y("bf16"), "sm_90a", dot)).toMatch(/not an FP8 segment op/);
  });
});
