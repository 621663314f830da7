// The NVLink MoE kernels on the communication stream (runtime/cuda/moe-nvlink.ts, SHARDTS_MOE_NVLINK_STREAM):
// the EP MoE layer of multi-GPU stage 10 (forward and backward, ep=2) run eagerly as rank 0 of 2 on the
// fake native layer, every native call fed to a happens-before model of the streams
// (test/fakes/stream-order.ts). What must hold: each NVLink kernel runs on the communication stream; no
// launch on another stream reads a dispatch/redispatch's rows before it is ordered after the kernel that
// writes them; no block an NVLink kernel reads is handed to other work before that kernel is done; and
// compute does run beside the kernels (some compute launch is issued after one and not ordered after it).
import { afterEach, describe, expect, it } from "vitest";
import { buildLayer, rankFeeds, type LayerSize } from "../../bench/gpu/lib/moe-layer-build.ts";
import { moeNvlPush } from "../../runtime/cuda/kernels/moe-nvlink-sources.ts";
import { MOE_OPS } from "../../compiler/ops/dispatch.ts";
import { combinesAfter } from "../../runtime/cuda/executor.ts";
import { useTempKernelCache } from "../fakes/kernel-cache.ts";
import { epRank0 } from "../fakes/ep-rank0.ts";
import { StreamOrder, type Launch } from "../fakes/stream-order.ts";
import { paramLayout } from "../fakes/kernel-params.ts";

useTempKernelCache();
afterEach(() => void (delete process.env.SHARDTS_MOE_TRANSPORT, delete process.env.SHARDTS_MOE_NVLINK_STREAM));

const Z: LayerSize = { T: 256, D: 256, F: 128, E: 4, K: 2, shared: 2 };
const NVL = "shardts_moe_nvl_";

/** The buffers a push kernel (dispatch, redispatch) writes: its `out` and `outCounts` parameters. */
function pushWrites(a: Launch): bigint[] {
  if (!a.name.startsWith(NVL) || a.name.includes("combine") || !a.params) return [];
  const k = moeNvlPush({ redispatch: false, V: 4 }), at = paramLayout(k.source, k.name).offsets;
  const v = new DataView(a.params.buffer, a.params.byteOffset, a.params.byteLength);
  return ["out", "outCounts"].map((p) => v.getBigUint64(at.get(p)!, true)).filter((p) => p !== 0n);
}

/**
 * Every NVLink kernel stores into this rank's window (its peers push into it) and a combine's kernel on
 * compute reads its rows there (the combine kernels' second pointer): the writes of an NVLink launch are
 * those rows and, for dispatch/redispatch, its outputs; the rows join its pointers, so a combine's read is
 * checked against every NVLink kernel, the next op's included.
 */
function windowWrites(order: StreamOrder): (a: Launch) => bigint[] {
  const combine = order.launches.find((l) => /^shardts_moe_combine_/.test(l.name))!;
  const rows = combine.ptrs[1]!;
  for (const l of order.launches) if (l.name.startsWith(NVL)) l.ptrs.push(rows);
  return (a) => (a.name.startsWith(NVL) ? [rows, ...pushWrites(a)] : []);
}

function runLayer(mutate?: (rl: ReturnType<typeof epRank0>["rl"], ex: ReturnType<typeof epRank0>["ex"], plan: ReturnType<typeof buildLayer>["plan"]) => void, fp8 = false) {
  process.env.SHARDTS_MOE_TRANSPORT = "nvlink";
  let order: StreamOrder | undefined;
  const { ex, rl, f } = epRank0((m, a) => order?.see(m, a));
  order = new StreamOrder((fn) => f.kernelName(fn));
  const release = ex.mem.release.bind(ex.mem);
  ex.mem.release = (t) => (order!.released(t.ptr), release(t));
  const layer = buildLayer(Z, 2, { fp8 });
  mutate?.(rl, ex, layer.plan);
  ex.run(layer.plan, rankFeeds(layer, Z, 0), [], { download: false });
  return { order, comm: rl.stream(), layer };
}

describe("the NVLink MoE kernels beside compute (EP layer, rank 0 of ep=2, eager)", () => {
  it("run on the communication stream, every use across streams ordered, compute running beside them", () => {
    const { order, comm, layer } = runLayer();
    const nvl = order.launches.filter((l) => l.name.startsWith(NVL));
    const moeOps = layer.plan.instrs.filter((i) => i.kind === "op" && MOE_OPS.has(i.op)).length;
    expect(moeOps).toBe(5); // dispatch, the weighted combine; backward: the weighted redispatch, two combines
    expect(nvl).toHaveLength(moeOps);
    expect(nvl.every((l) => l.stream === comm)).toBe(true);
    expect(order.launches.filter((l) => l.name.startsWith("shardts_moe_") && !l.name.startsWith(NVL)).every((l) => l.stream !== comm)).toBe(true);
    expect(order.hazards((a) => a.stream === comm, windowWrites(order))).toEqual([]);
    // the point of it: some compute is issued after an NVLink kernel and may run while it does
    const beside = nvl.filter((a) => order.launches.some((b) => b.stream !== comm && b.at > a.at && !order.after(b, a)));
    expect(beside.length).toBeGreaterThan(0);
  });

  it("the same with FP8 experts (their GEMMs plan on device counts beside the exchanges)", () => {
    const { order, comm, layer } = runLayer(undefined, true);
    const moeOps = layer.plan.instrs.filter((i) => i.kind === "op" && MOE_OPS.has(i.op)).length;
    expect(order.launches.filter((l) => l.name.startsWith(NVL) && l.stream === comm)).toHaveLength(moeOps);
    expect(order.launches.some((l) => /fp8|scaled|quant/i.test(l.name))).toBe(true);
    expect(order.hazards((a) => a.stream === comm, windowWrites(order))).toEqual([]);
  });

  it("the model finds the race when compute does not wait for the rows (mutation: beforeReads a no-op)", () => {
    const { order, comm } = runLayer((rl) => (rl.beforeReads = () => {}));
    expect(order.hazards((a) => a.stream === comm, pushWrites).some((h) => /reads what is still being written/.test(h))).toBe(true);
  });

  it("the model finds the window race of a combine pushed early past another MoE op (mutation: every combine early)", () => {
    const { order, comm } = runLayer((_rl, ex, plan) => {
      const l = (ex as unknown as { lowered(p: typeof plan): { nvlCombinesAfter: Map<number, number[]>; combinesAfter: Map<number, number[]> } }).lowered(plan);
      expect(l.combinesAfter.size).toBeGreaterThan(l.nvlCombinesAfter.size); // (the layer has such a combine)
      l.nvlCombinesAfter = l.combinesAfter;
    });
    const races = order.hazards((a) => a.stream === comm, windowWrites(order));
    expect(races.some((h) => /reads what is still being written: shardts_moe_combine_/.test(h))).toBe(true);
  });

  it("SHARDTS_MOE_NVLINK_STREAM=compute runs them in line on the compute stream", () => {
    process.env.SHARDTS_MOE_NVLINK_STREAM = "compute";
    const { order, comm } = runLayer();
    const nvl = order.launches.filter((l) => l.name.startsWith(NVL));
    expect(nvl).toHaveLength(5);
    expect(nvl.some((l) => l.stream === comm)).toBe(false);
  });
});

describe("combinesAfter", () => {
  const op = (o: string, inputs: number[], outputs: number[]) => ({ kind: "op", op: o, inputs, outputs, attrs: {} }) as never;
  const instrs = [op("mul", [0], [1]), op("moe_dispatch", [9], [5]), op("moe_combine", [1, 2], [3]), op("add", [3], [4]), op("moe_combine", [4, 2], [6])];
  it("maps each combine to its rows' writer; alone: none with another MoE op between", () => {
    expect([...combinesAfter({ instrs })]).toEqual([[0, [2]], [3, [4]]]);
    expect([...combinesAfter({ instrs }, true)]).toEqual([[3, [4]]]);
  });
});
