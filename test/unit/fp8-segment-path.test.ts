// The routed experts' FP8 ops (runtime/cuda/fp8-segment.ts) through the executor over the fake native
// layer, by the kernels they launch: the expert weights' codes moved K-major by the tiled
// transpose (not the element-a-thread strided copy), the rows moved into the padded layout and back
// a warp per row, the Wgrad's operands gathered, quantized and transposed by one kernel each (x from
// its codes: no dequantize), its per-expert GEMM launches prepared once per executor and buffers,
// and the padded layout built once per run for all the segment ops on one counts piece (the same
// host array uploaded by each): the counts read on the host (SHARDTS_SEGMENT_COUNTS=host; the device
// path is test/unit/fp8-segment-device.test.ts's). Not
// numerics (the fake does no device work): test/codegen/fp8-kernels-emulation.test.ts runs the
// kernels, bench/gpu/cuda-ops-check.ts the ops on a GPU.
import { namingLaunches } from "../fakes/kernel-names.ts";
import { describe, expect, it } from "vitest";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { paddedLayout, paddedLayoutOf } from "../../runtime/cuda/padded-segments.ts";
import { compile } from "../../compiler/pipeline.ts";
import { DTensor, Mesh, fromGlobal, type AnyDTensor } from "../../stdlib/index.ts";
import { quantize } from "../../stdlib/ops/quantize.ts";
import { fakeAddon } from "../fakes/native-addon.ts";
import { useTempKernelCache } from "../fakes/kernel-cache.ts";

const raw = (name: string, ins: AnyDTensor[], attrs: Record<string, unknown>) => ins[0]!.mesh.builder.add(name, ins.map((t) => t.ref), attrs as never).map((r) => new DTensor(ins[0]!.mesh, r) as AnyDTensor);
const T = (m: Mesh<"d">, dims: Record<string, number>) => fromGlobal(m, dims, "bf16", Array.from({ length: Object.values(dims).reduce((a, b) => a * b, 1) }, (_, i) => (i % 7) - 3)) as AnyDTensor;
// every i32 read answers these counts ([3][5]: skewed, with empty experts; each entry's sum <= 24)
const COUNTS = [5, 0, 9, 0, 3, 12, 1, 7, 0, 2];
const PADDED_ROWS = 10 * 128; // (the reads repeat COUNTS over the 15 counts: 10 non-empty segments, one 128-row block each)

/** Two scaled_segment_dots (weights [e, k, n]: moved to [e, n, k]) and a scaled_segment_wgrad on one counts piece. */
function plan(wgradOut = "bf16") {
  const m = Mesh.of({ d: 1 });
  const [perm, counts] = raw("sort_by_key", [fromGlobal(m, { g: 3, s: 24 }, "i32", Array.from({ length: 72 }, (_, i) => (i * 7) % 5)) as AnyDTensor], { dim: "s", rows: "rows", groups: "e", numGroups: 5 });
  const x = raw("gather", [T(m, { g: 3, s: 24, k: 64 }), perm!], { dim: "s" })[0]!;
  const gy = raw("gather", [T(m, { g: 3, s: 24, n: 48 }), perm!], { dim: "s" })[0]!;
  const qx = quantize(x as never, "1x128", "k") as { q: AnyDTensor; scales: AnyDTensor };
  const dots = [1, 2].map(() => {
    const qw = quantize(T(m, { e: 5, k: 64, n: 48 }) as never, "128x128", ["n", "k"]) as { q: AnyDTensor; scales: AnyDTensor };
    return raw("scaled_segment_dot", [qx.q, qx.scales, qw.q, qw.scales, counts!], { contract: "k", out: "bf16" })[0]!;
  });
  const dw = raw("scaled_segment_wgrad", [qx.q, qx.scales, gy, counts!], { k: "k", n: "n", out: wgradOut })[0]!;
  return compile(m.builder.graph, [...dots, dw].map((t) => t.ref));
}

function run(times = 1, wgradOut = "bf16") {
  const uploads: Int32Array[] = [], maps: number[] = [];
  const f = fakeAddon({
    read: (dst) => void (dst instanceof Int32Array && dst.forEach((_, i) => (dst[i] = COUNTS[i % COUNTS.length]!))),
    spy: (method, args) => {
      if (method === "memcpyHtoDAsync" && args[1] instanceof Int32Array) uploads.push(args[1]);
      if (method === "tensorMapEncodeTiled") maps[maps.length - 1]!++;
    },
  });
  const { addon, order } = namingLaunches(f.addon);
  const ex = new CudaExecutor(addon, 0), p = plan(wgradOut);
  // the host-count path (device counts: test/unit/fp8-segment-device.test.ts)
  ex.segmentCountsOnDevice = false;
  for (let i = 0; i < times; i++) {
    maps.push(0);
    ex.run(p, undefined, undefined, { download: false });
  }
  return { order, uploads, maps, count: (n: string) => order.filter((o) => o === n).length };
}

describe("scaled_segment_dot and scaled_segment_wgrad on CUDA: the moves around the grouped GEMM (fake native layer)", () => {
  useTempKernelCache();
  it("takes the weights' codes K-major from their quantize: no transpose and no element-a-thread copy of codes", () => {
    const r = run();
    expect(r.count("shardts_copy_fp8e4m3")).toBe(0);
    // each dot's weight [e, k, n] is read [e, n, k]: its 128x128 quantize writes those codes too (fp8.ts
    // transposedCodesWanted), as the Wgrad's operands come out transposed from theirs
    expect(r.count("shardts_quant_tiles_block_t_bf16")).toBe(2);
    expect(r.count("shardts_transpose_wide_e1")).toBe(0);
  });
  it("moves rows into the padded layout and back a warp per row, 16 bytes a lane (codes, bf16 outputs)", () => {
    const r = run();
    expect([r.count("shardts_gather_i32"), r.count("shardts_gather_bf16")]).toEqual([0, 0]);
    // per dot: codes in, bf16 out; and the plan's own two gathers of x and dY by perm
    expect(r.count("shardts_gather_rows_w16")).toBe(2 * 2 + 2);
  });
  it("Wgrad: x's codes and dY each gathered, quantized 128x1 and transposed by one kernel; nothing dequantized or requantized apart", () => {
    const r = run();
    expect([r.count("shardts_wgrad_cols_fp8"), r.count("shardts_wgrad_cols_bf16")]).toEqual([1, 1]);
    expect(r.order.filter((o) => /dequant|quant_tiles_cols|quant_rows/.test(o))).toEqual(
      // (the plan's own quantize of x for the dots, 1x128 along k)
      ["shardts_quant_rows_bf16"],
    );
    // one row-scaled GEMM per expert with rows (expert 3 has none in any batch entry)
    expect(r.order.filter((o) => o.endsWith("_br")).length).toBe(4);
  });
  it("Wgrad: a second run on the same executor encodes no new tensor maps for its per-expert GEMMs", () => {
    const r = run(2);
    // first run: the dots' grouped GEMMs (4 maps each: A, B, A's scales, D) and 4 experts' row-scaled ones (and B's row scales)
    expect(r.maps[0]).toBe(2 * 4 + 4 * 5);
    // second: the dots' only (every GEMM launch is kept by Fp8Gemm.prepare, but the dots' buffers are new addresses in the
    // second run, before the allocator's pool settles, so theirs are new keys)
    expect(r.maps[1]).toBe(2 * 4);
  });
  it("Wgrad with an f32 result: the labelled fallback (x dequantized, rows gathered and quantized 128x1, cuBLASLt per expert)", () => {
    const r = run(1, "f32");
    expect(r.order.filter((o) => o.endsWith("_br") || o.startsWith("shardts_wgrad_cols"))).toEqual([]);
    expect(r.order.filter((o) => o.startsWith("shardts_dequant")).length).toBe(3);
    expect(r.order.filter((o) => o.startsWith("shardts_quant_tiles_cols")).length).toBe(2);
  });
  it("builds the padded layout once per run: every segment op uploads the same row map", () => {
    const maps = run().uploads.filter((u) => u.length === PADDED_ROWS);
    expect(maps.length).toBe(3);
    expect(new Set(maps).size).toBe(1);
  });
  it("paddedLayoutOf: one layout per counts object and key; a new run's counts piece gets its own", () => {
    const runs = [{ t: 0, g: 1, row: 0, m: 5, out: 0 }], make = () => paddedLayout(runs, 2, 1, 8, 8);
    const c1 = {}, c2 = {};
    const a = paddedLayoutOf(c1, [0, 1], make);
    expect(paddedLayoutOf(c1, [0, 1], make)).toBe(a);
    expect(paddedLayoutOf(c1, [0, 2], make)).not.toBe(a);
    expect(paddedLayoutOf(c2, [0, 1], make)).not.toBe(a);
    expect(Array.from(a.blockGroup)).toEqual([1]);
    expect(a.range).toEqual([[0, 0], [0, 128]]);
  });
});
