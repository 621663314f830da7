// Capturing a multi-GPU step rank-locally (runtime/cuda/graph.ts, CudaExecutor.capture): the EP MoE
// layer of multi-GPU stage 10 (forward and backward, ep=2, its all-reduces and its dispatch/combine
// over NVLink) captured as rank 0 of 2 on the native layer that does no device work
// (test/fakes/native-addon.ts). Between the capture's begin and end: the NCCL calls of every
// collective and the NVLink kernels' launches, and nothing that waits for the GPU or copies to the
// host (either would break a real capture); the comm stream is joined back before the end. A replay
// is one graph launch, timed by the watchdog as one collective; reading outputs gathers pieces over
// the world. And the refusals: the NCCL transport (its exchange is sized on the host), a mesh
// simulated on one GPU, a collective of a segmented value.
import { afterEach, describe, expect, it, vi } from "vitest";
import { notCapturable } from "../../runtime/cuda/graph.ts";
import { buildLayer, rankFeeds, type LayerSize } from "../../bench/gpu/lib/moe-layer-build.ts";
import { compile } from "../../compiler/pipeline.ts";
import { Mesh } from "../../stdlib/mesh.ts";
import type { AnyDTensor } from "../../stdlib/dtensor.ts";
import { fromGlobal } from "../../stdlib/ops/factories.ts";
import { moeDispatch } from "../../stdlib/ops/dispatch.ts";
import { redistribute } from "../../stdlib/ops/redistribute.ts";
import { useTempKernelCache } from "../fakes/kernel-cache.ts";
import { epRank0 } from "../fakes/ep-rank0.ts";

useTempKernelCache();
afterEach(() => void delete process.env.SHARDTS_MOE_TRANSPORT);

const Z: LayerSize = { T: 256, D: 256, F: 128, E: 4, K: 2, shared: 2 };

function rank0() {
  const calls: string[] = [], freed = new Set<bigint>(), freedUses: string[] = [];
  // a freed device pointer passed to a later launch, copy, memset or NCCL call (the fake never reuses addresses)
  const uses = (m: string, args: unknown[]) => {
    for (const a of args) {
      if (typeof a === "bigint" && freed.has(a)) freedUses.push(`${m} ${a.toString(16)}`);
      if (m === "launchKernel" && a instanceof Uint8Array) {
        const dv = new DataView(a.buffer, a.byteOffset, a.byteLength);
        for (let i = 0; i + 8 <= a.byteLength; i += 8) if (freed.has(dv.getBigUint64(i, true))) freedUses.push(`${m} ${dv.getBigUint64(i, true).toString(16)}`);
      }
    }
  };
  const { ex, rl } = epRank0((m, args) => {
    calls.push(m);
    if (m === "memFree") freed.add(args[0] as bigint);
    else if (m === "launchKernel" || m.startsWith("nccl") || m.startsWith("memcpy") || m.startsWith("memset")) uses(m, args);
  });
  return { ex, rl, calls, freedUses };
}

describe("a rank-local capture of the EP MoE layer (ep=2, NVLink transport)", () => {
  it("records the collectives and the NVLink kernels, and nothing that waits for the GPU", () => {
    process.env.SHARDTS_MOE_TRANSPORT = "nvlink";
    const { ex, rl, calls } = rank0();
    const layer = buildLayer(Z, 2);
    const warn = vi.spyOn(console, "warn");
    const step = ex.capture(layer.plan, rankFeeds(layer, Z, 0));
    expect(warn).not.toHaveBeenCalled(); // (a refused NVLink group says so once)
    warn.mockRestore();
    const begin = calls.indexOf("streamBeginCapture"), end = calls.indexOf("streamEndCapture");
    expect(begin).toBeGreaterThan(0);
    const inside = calls.slice(begin + 1, end);
    const allReduces = layer.plan.instrs.filter((i) => i.kind === "comm" && i.step.kind === "all_reduce").length;
    expect(allReduces).toBeGreaterThan(0);
    // every all-reduce of the plan, through one ncclIssue call each (the fused issue path)
    expect(inside.filter((m) => m === "ncclIssue").length).toBe(allReduces);
    for (const m of ["streamSynchronize", "eventSynchronize", "ctxSynchronize", "memcpyDtoH", "memcpyDtoHAsync", "memcpyHtoD", "ncclAllGather"]) expect(inside, m).not.toContain(m);
    // the comm stream joined back: the last thing before the end is compute waiting on an event
    expect(inside.lastIndexOf("streamWaitEvent")).toBeGreaterThan(inside.lastIndexOf("ncclIssue"));
    expect(rl.pending).toBe(0);

    calls.length = 0;
    step.replay();
    expect(calls.filter((m) => m === "graphLaunch")).toHaveLength(1);
    expect(calls).not.toContain("launchKernel"); // one launch: the graph
    expect(calls.filter((m) => m.startsWith("nccl"))).toEqual([]);
    calls.length = 0;
    const out = step.read([layer.outNames.indexOf("y")]);
    expect(out[layer.outNames.indexOf("y")]?.shape).toEqual([2, Z.T, Z.D]);
    expect(calls).toContain("ncclAllGather"); // the pieces gathered over the world
    step.destroy();
  });

  it("destroy() frees what the graph owns, not the resident inputs it read: an eager run after it uses no freed buffer", () => {
    process.env.SHARDTS_MOE_TRANSPORT = "nvlink";
    const { ex, freedUses } = rank0();
    const layer = buildLayer(Z, 2);
    for (const [name, pieces] of rankFeeds(layer, Z, 0)) ex.setResident(name, pieces);
    ex.run(layer.plan, undefined, [], { download: false });
    const step = ex.capture(layer.plan);
    step.replay();
    step.destroy();
    ex.run(layer.plan, undefined, [], { download: false });
    // (the first H200 x2 run of the EP layer's --graph: the traced eager run after destroy() read the
    // freed weights, CUDA_ERROR_ILLEGAL_ADDRESS)
    expect(freedUses).toEqual([]);
  });

  it("is refused on the NCCL transport, naming the op and what to set", () => {
    const { ex } = rank0();
    const layer = buildLayer(Z, 2);
    expect(() => ex.capture(layer.plan, rankFeeds(layer, Z, 0))).toThrow(/it holds moe_dispatch, whose token exchange would be sized by per-expert counts read on the host \(SHARDTS_MOE_TRANSPORT is not nvlink; under shardts launch with SHARDTS_MOE_TRANSPORT=nvlink/);
  });
});

describe("notCapturable for meshes of several ranks", () => {
  it("takes the EP layer rank-locally over NVLink, refuses it simulated on one GPU or over NCCL", () => {
    const plan = buildLayer(Z, 2).plan, nvlink = { SHARDTS_MOE_TRANSPORT: "nvlink" };
    expect(notCapturable(plan, "sm_90a", { rankLocal: true, env: nvlink })).toBeUndefined();
    expect(notCapturable(plan, "sm_90a", { rankLocal: false, env: nvlink })).toMatch(/moe_dispatch.*\(the mesh is simulated on one GPU;/);
    expect(notCapturable(plan, "sm_90a", { rankLocal: true, env: {} })).toMatch(/SHARDTS_MOE_TRANSPORT is not nvlink/);
  });

  it("refuses a collective of a segmented value (sized by counts read on the host)", () => {
    const mesh = Mesh.of({ ep: 2 }), on = { ep: "S(b)" } as never;
    const x = fromGlobal(mesh, { b: 2, s: 4, d: 8 }, "f32", new Array(64).fill(1), on) as AnyDTensor;
    const idx = fromGlobal(mesh, { b: 2, s: 4, k: 2 }, "i32", new Array(16).fill(0).map((_, i) => i % 4), on) as AnyDTensor;
    const d = moeDispatch(x, idx, { axis: "ep", dim: "s", k: "k", rows: "rows", groups: "e", numGroups: 4 });
    const plan = compile(mesh.builder.graph, [redistribute(d.rows, { ep: "R" } as never).ref]);
    expect(notCapturable(plan, "sm_90a", { rankLocal: true, env: { SHARDTS_MOE_TRANSPORT: "nvlink" } })).toMatch(/moves a value with a segmented dim \(.*rows.*\) between GPUs/);
  });
});
