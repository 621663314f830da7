// The NVLink MoE path's host side (runtime/cuda/moe-nvlink.ts) on a fake executor and addon, for a
// dispatch -> weighted combine plan with its gradients (so dispatch, combine with and without weights,
// keepK and the weighted redispatch all run) on rank 0 of ep=2: every launch's parameter bytes must
// match its kernel's C signature (arity and types, as the driver would read them), the window is
// made once and grown only when a bound needs it, a refusal (here: both ranks on one GPU) is said once
// and leaves every op to the NCCL path, a graph capture takes the ops once an eager run made their
// window and tables (and refuses before, saying so), and nvlink is never taken unless asked for.
import { afterEach, describe, expect, it, vi } from "vitest";
import { Mesh } from "../../stdlib/mesh.ts";
import type { AnyDTensor } from "../../stdlib/dtensor.ts";
import { fromGlobal } from "../../stdlib/ops/factories.ts";
import { moeCombine, moeDispatch } from "../../stdlib/ops/dispatch.ts";
import { redistribute } from "../../stdlib/ops/redistribute.ts";
import { sum } from "../../stdlib/ops/reduce.ts";
import { mul } from "../../stdlib/nn/ops-internal.ts";
import { grad } from "../../stdlib/autodiff.ts";
import { compile } from "../../compiler/pipeline.ts";
import { CachingAllocator, empty, type DeviceTensor } from "../../runtime/cuda/memory.ts";
import { MOE_OPS } from "../../compiler/ops/dispatch.ts";
import { MOE_SMS_DEFAULT, runMoeNvlink } from "../../runtime/cuda/moe-nvlink.ts";
import { RECORD_FIELDS } from "../../runtime/cuda/ipc.ts";
import type { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { paramLayout } from "../fakes/kernel-params.ts";

function fakeExecutor(device: (q: number) => number, capturing: () => number = () => 0) {
  const launches: { name: string; params: number; want: number; grid: number; stream: bigint }[] = [], log: string[] = [];
  const host = new Map<bigint, Uint8Array>();
  let next = 0x10000n, steps = 0;
  const addon = {
    memAlloc: (b: number) => ((next += BigInt(Math.ceil(b / 256) * 256 + 256)), log.push(`alloc ${b}`), next),
    memFree: () => {},
    memsetD8: () => {},
    memcpyHtoD: (p: bigint, src: ArrayBufferView) => {
      log.push("htod");
      host.set(p, new Uint8Array(src.buffer.slice(src.byteOffset, src.byteOffset + src.byteLength)));
    },
    memcpyDtoH: (dst: Uint8Array, p: bigint) => dst.set(host.get(p)!.subarray(0, dst.byteLength)),
    // the all-gather of ep=2 on rank 0: its record, then rank 1's (same node, its own device and handle)
    ncclAllGather: (send: bigint, recv: bigint, n: number) => {
      const mine = host.get(send)!, peer = Uint8Array.from(mine);
      new DataView(peer.buffer).setInt32(RECORD_FIELDS.device, device(1), true);
      if (mine.subarray(0, 64).some((b) => b)) peer.fill(0x41, 0, 64);
      const all = new Uint8Array(2 * n);
      all.set(mine, 0), all.set(peer, n), host.set(recv, all);
      return 0;
    },
    streamSynchronize: () => {},
    ctxSynchronize: () => void log.push("sync"),
    ipcGetMemHandle: () => Buffer.alloc(64, 0x40),
    ipcOpenMemHandle: () => (log.push("open"), 0xa0000000n),
    ipcCloseMemHandle: () => void log.push("close"),
    deviceCanAccessPeer: () => true,
    streamIsCapturing: () => capturing(),
    launchKernel: (fn: { name: string; source: string }, grid: number[], _b: number[], _s: number, stream: bigint, params: Uint8Array) =>
      void launches.push({ name: fn.name, params: params.byteLength, want: paramLayout(fn.source, fn.name).bytes, grid: grid[0]!, stream }),
  };
  const mem = new CachingAllocator(addon as never);
  const exe = {
    addon, mem, smCount: 132, stream: 0n,
    fn: (name: string, source: string) => ({ name, source }),
    reorder: (t: DeviceTensor, from: string[], order: string[]) => {
      if (from.join() !== order.join()) throw new Error(`unexpected reorder ${from} -> ${order}`);
      return t;
    },
    reorderOwned: (t: DeviceTensor) => t,
    release: () => {},
    launch1D: (k: { name: string; source: string }) => void launches.push({ name: k.name, params: 0, want: 0, grid: 1, stream: 0n }),
    commSpan: () => undefined,
    // the communication stream is 1n; compute waiting for a step is logged
    rankLocal: {
      rank: 0, localRank: device(0), comms: { axes: () => [1n] }, stream: () => 1n, beforeReads: () => {},
      onComm: (_slots: number[], _outs: DeviceTensor[], _in: DeviceTensor[], _rel: DeviceTensor[], issue: (cs: bigint) => void) => {
        const f = { id: ++steps };
        log.push(`comm ${f.id}`);
        issue(1n);
        return f;
      },
      waitFor: (f: { id: number }) => void log.push(`wait ${f.id}`),
    },
  };
  return { exe: exe as unknown as CudaExecutor, launches, log };
}

function plan() {
  const mesh = Mesh.of({ ep: 2 }), on = { ep: "S(b)" } as never, B = 4, S = 6, K = 2, D = 8, E = 5;
  const v = (n: number) => Array.from({ length: n }, (_, i) => ((i * 37) % 11) / 7 - 0.5);
  const x = fromGlobal(mesh, { b: B, s: S, d: D }, "f32", v(B * S * D), on) as AnyDTensor;
  const idx = fromGlobal(mesh, { b: B, s: S, k: K }, "i32", v(B * S * K).map((_, i) => i % E), on) as AnyDTensor;
  const w = fromGlobal(mesh, { b: B, s: S, k: K }, "f32", v(B * S * K), on) as AnyDTensor;
  const d = moeDispatch(x, idx, { axis: "ep", dim: "s", k: "k", rows: "rows", groups: "e", numGroups: E });
  const y = moeCombine(d.rows, d.perm, w, { axis: "ep", dim: "s", size: S, k: "k", numK: K });
  const loss = redistribute(sum(mul(y, x), ["b", "s", "d"]) as AnyDTensor, { ep: "R" } as never) as AnyDTensor;
  const g = grad(loss, { x, w });
  return compile(mesh.builder.graph, [y.ref, (g.x as AnyDTensor).ref, (g.w as AnyDTensor).ref]);
}

/** Runs the plan's MoE ops on rank 0 through runMoeNvlink (other instructions: outputs of the right shape). */
function runOps(exe: CudaExecutor, p = plan()) {
  const slots: (DeviceTensor[] | undefined)[] = [];
  const fill = (s: number) => ((slots[s] ??= [])[0] ??= empty(exe.mem, p.values[s]!.type.dtype, p.values[s]!.shapes[0]!));
  p.values.forEach((v, s) => v.type && p.instrs.every((i) => !(i.kind === "op" ? i.outputs : [i.output]).includes(s)) && fill(s));
  const taken: boolean[] = [], ops: string[] = [];
  for (const ins of p.instrs) {
    if (ins.kind === "op" && MOE_OPS.has(ins.op)) {
      ops.push(ins.op + (ins.inputs.length === 3 ? "+w" : "") + (ins.attrs.keepK ? "+keepK" : ""));
      const ok = runMoeNvlink(exe, p, ins, slots);
      taken.push(ok);
      for (const s of ins.outputs) if (!ok) fill(s);
    } else for (const s of ins.kind === "op" ? ins.outputs : [ins.output]) fill(s);
  }
  return { ops, taken };
}

afterEach(() => void (delete process.env.SHARDTS_MOE_TRANSPORT, delete process.env.SHARDTS_MOE_NVLINK_STREAM));

describe("the NVLink MoE path's host side", () => {
  it("launches every kernel with the bytes its signature reads, one window, epochs 1..n", () => {
    process.env.SHARDTS_MOE_TRANSPORT = "nvlink";
    const { exe, launches, log } = fakeExecutor((q) => q);
    const { ops, taken } = runOps(exe);
    expect(ops).toEqual(expect.arrayContaining(["moe_dispatch", "moe_combine+w", "moe_redispatch+w", "moe_combine", "moe_combine+keepK"]));
    expect(taken.every((t) => t)).toBe(true);
    const nvl = launches.filter((l) => l.name.startsWith("shardts_moe_nvl_"));
    expect(nvl.length).toBe(ops.length);
    for (const l of launches.filter((x) => x.want)) expect(l.params, l.name).toBe(l.want);
    expect(nvl.every((l) => l.grid === MOE_SMS_DEFAULT)).toBe(true); // SHARDTS_MOE_SMS default
    expect(log.filter((l) => l === "open")).toHaveLength(1); // the peer's window, mapped once (no growth past the first op here)
    expect(launches.some((l) => l.name.startsWith("shardts_moe_combine_f32_v"))).toBe(true); // the existing combine reads the window
  });

  it("runs the NVLink kernels on the communication stream, the route/invert/combine kernels on compute; a combine waits for its push", () => {
    process.env.SHARDTS_MOE_TRANSPORT = "nvlink";
    const { exe, launches, log } = fakeExecutor((q) => q);
    const { ops } = runOps(exe);
    const nvl = launches.filter((l) => l.name.startsWith("shardts_moe_nvl_"));
    expect(nvl.map((l) => l.stream)).toEqual(ops.map(() => 1n));
    expect(launches.filter((l) => !l.name.startsWith("shardts_moe_nvl_")).every((l) => l.stream === 0n)).toBe(true);
    // one step per op; each combine's compute waits for its own push (and only combines wait here: a
    // dispatch/redispatch's rows are waited for by their reader)
    const combines = ops.filter((o) => o.startsWith("moe_combine")).length;
    expect(log.filter((l) => l.startsWith("comm"))).toHaveLength(ops.length);
    expect(log.filter((l) => l.startsWith("wait"))).toHaveLength(combines);
    for (const w of log.filter((l) => l.startsWith("wait"))) expect(log.indexOf(w)).toBeGreaterThan(log.indexOf(`comm ${w.slice(5)}`));
  });

  it("SHARDTS_MOE_NVLINK_STREAM=compute keeps every kernel in line on the compute stream", () => {
    process.env.SHARDTS_MOE_TRANSPORT = "nvlink";
    process.env.SHARDTS_MOE_NVLINK_STREAM = "compute";
    const { exe, launches, log } = fakeExecutor((q) => q);
    runOps(exe);
    expect(launches.length).toBeGreaterThan(0);
    expect(launches.every((l) => l.stream === 0n)).toBe(true);
    expect(log.filter((l) => l.startsWith("comm") || l.startsWith("wait"))).toEqual([]);
    process.env.SHARDTS_MOE_NVLINK_STREAM = "side";
    expect(() => runOps(fakeExecutor((q) => q).exe)).toThrow(/SHARDTS_MOE_NVLINK_STREAM="side": use comm .* or compute/);
  });

  it("a refused group (both ranks on one GPU) is said once and every op runs on NCCL", () => {
    process.env.SHARDTS_MOE_TRANSPORT = "nvlink";
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    const { exe, launches } = fakeExecutor(() => 0);
    const { taken } = runOps(exe);
    expect(taken.every((t) => !t)).toBe(true);
    expect(warn).toHaveBeenCalledTimes(1);
    expect(String(warn.mock.calls[0]![0])).toMatch(/uses NCCL, not NVLink: rank 1 of the group uses this rank's GPU 0 too/);
    expect(launches.filter((l) => l.name.startsWith("shardts_moe_nvl_"))).toEqual([]);
    warn.mockRestore();
  });

  it("is captured once an eager run made its window and tables: no allocation, sync or exchange then", () => {
    process.env.SHARDTS_MOE_TRANSPORT = "nvlink";
    const cold = fakeExecutor((q) => q, () => 1);
    expect(() => runOps(cold.exe)).toThrow(/made on an op's first run, which a CUDA graph capture cannot hold; run the plan once without capture first/);
    let capturing = 0;
    const { exe, launches, log } = fakeExecutor((q) => q, () => capturing);
    const p = plan();
    runOps(exe, p);
    capturing = 1;
    const logged = log.length, launched = launches.length;
    const { ops, taken } = runOps(exe, p);
    expect(taken.every((t) => t)).toBe(true);
    // (the op outputs' blocks come from the fake's allocator, which never reuses: a capture's come from its pool)
    // no sync, copy to the device, handle exchange (the comm steps and waits are stream events, which a capture holds)
    expect(log.slice(logged).filter((l) => !/^(alloc|comm|wait) /.test(l))).toEqual([]);
    expect(launches.slice(launched).filter((l) => l.name.startsWith("shardts_moe_nvl_"))).toHaveLength(ops.length);
  });

  it("is not taken unless SHARDTS_MOE_TRANSPORT=nvlink", () => {
    const { exe, launches } = fakeExecutor((q) => q);
    expect(runOps(exe).taken.some((t) => t)).toBe(false);
    expect(launches).toEqual([]);
  });
});
