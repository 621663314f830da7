// The NVLink MoE transport's host side without a GPU: the peer-window protocol (ipc.ts) on a fake
// addon and a scripted all-gather (refusals that name the cause and agree across ranks, allocation,
// IPC mapping of peers only, collective growth that unmaps before freeing, the size limit), the
// environment switches, and the native IPC functions' argument checks (made before any driver call).
import { describe, expect, it } from "vitest";
import { PeerWindow, RECORD_FIELDS, windowMaxBytes, type AllGather } from "../../runtime/cuda/ipc.ts";
import { NvlinkUnavailable } from "../../runtime/cuda/moe-nvlink-layout.ts";
import { moeSms, moeTransport } from "../../runtime/cuda/moe-nvlink.ts";
import { tryNative } from "../../runtime/cuda/native.ts";
import type { NativeAddon } from "../../runtime/cuda/native-types.ts";

/** Records what the window does with the driver; allocations are numbered pointers. */
function fakeAddon(peerAccess = true) {
  const log: string[] = [];
  let next = 0x1000n;
  const addon = {
    memAlloc: (b: number) => (log.push(`alloc ${b}`), (next += 0x100000n)),
    memFree: (p: bigint) => void log.push(`free ${p.toString(16)}`),
    memsetD8: (p: bigint, v: number, n: number) => void log.push(`memset ${p.toString(16)} ${v} ${n}`),
    memcpyHtoD: (p: bigint, src: ArrayBufferView) => void log.push(`upload ${p.toString(16)} ${Array.from(src as BigUint64Array).map((x) => x.toString(16)).join(",")}`),
    ctxSynchronize: () => void log.push("sync"),
    ipcGetMemHandle: (p: bigint) => Buffer.alloc(64, Number(p >> 20n) & 0xff),
    ipcOpenMemHandle: (h: Uint8Array) => (log.push(`open ${h[0]}`), 0xa000000n + BigInt(h[0]!)),
    ipcCloseMemHandle: (p: bigint) => void log.push(`close ${p.toString(16)}`),
    deviceCanAccessPeer: () => peerAccess,
  };
  return { addon: addon as unknown as NativeAddon, log };
}

/** W ranks whose records are this rank's, edited per peer by `edit` (the handle: a peer's own byte). */
function gatherOf(W: number, me: number, edit: (q: number, rec: Uint8Array, call: number) => void = () => {}): AllGather {
  let call = 0;
  return (mine) => {
    call++;
    return Array.from({ length: W }, (_, q) => {
      const r = Uint8Array.from(mine);
      if (q !== me) {
        new DataView(r.buffer).setInt32(RECORD_FIELDS.device, q, true);
        if (mine.subarray(0, 64).some((b) => b)) r.fill(0x40 + q, 0, 64);
        edit(q, r, call);
      }
      return r;
    });
  };
}

describe("MoE NVLink peer windows", () => {
  it("refuses, naming the cause, a group across nodes, without peer access, on one GPU, or with different SM budgets", () => {
    const cases: [(q: number, r: Uint8Array) => void, boolean, RegExp][] = [
      [(q, r) => q === 1 && (r[RECORD_FIELDS.node] ^= 1), true, /rank 1 .* another node/],
      [() => {}, false, /cannot access GPU 1's memory/],
      [(q, r) => new DataView(r.buffer).setInt32(RECORD_FIELDS.device, 0, true), true, /uses this rank's GPU 0 too/],
      [(q, r) => new DataView(r.buffer).setInt32(RECORD_FIELDS.blocks, 7, true), true, /SHARDTS_MOE_SMS \(20 here, 7 on rank 1\)/],
    ];
    for (const [edit, access, msg] of cases) {
      const { addon } = fakeAddon(access);
      expect(() => PeerWindow.create(addon, gatherOf(2, 0, (q, r, call) => call === 1 && edit(q, r)), 0, 2, 0, 20)).toThrow(msg);
    }
    // a peer that refused (its verdict in the second exchange) makes this rank refuse too
    const { addon } = fakeAddon();
    const e = (() => {
      try {
        PeerWindow.create(addon, gatherOf(3, 0, (q, r, call) => call === 2 && q === 2 && (r[0] = 1)), 0, 3, 0, 20);
      } catch (x) {
        return x;
      }
    })();
    expect(e).toBeInstanceOf(NvlinkUnavailable);
    expect((e as Error).message).toMatch(/rank 2 of the expert-axis group cannot use NVLink/);
  });

  it("maps peers' windows (not its own), grows collectively: unmap, meet, free, reallocate; refuses past the limit and while capturing", () => {
    const { addon, log } = fakeAddon();
    const w = PeerWindow.create(addon, gatherOf(3, 1), 1, 3, 1, 4);
    // the kernels' epoch counters: one u64 per block, zeroed once (never with a window's growth)
    expect(log.slice(-3)).toEqual([`alloc 32`, `memset ${w.epochs.toString(16)} 0 32`, "sync"]); // (the legacy stream's memset waited for)
    const L1 = w.ensure({ blocks: 4, countsCap: 100, lensCap: 30, rowsCap: 4096 });
    expect(log.filter((l) => l.startsWith("open"))).toEqual(["open 64", "open 66"]); // ranks 0 and 2, never itself
    const zeroed = log.findIndex((l) => l.startsWith(`memset ${w.base.toString(16)} 0 ${L1.bytes}`));
    expect(zeroed).toBeGreaterThan(0);
    expect(log[zeroed + 1]).toBe("sync"); // before the handle goes to the peers
    const table = log.find((l) => l.startsWith("upload"))!;
    expect(table.split(" ")[2]!.split(",")).toEqual(["a000040", w.base.toString(16), "a000042"]);
    log.length = 0;
    expect(w.ensure({ blocks: 4, countsCap: 10, lensCap: 3, rowsCap: 100 })).toBe(L1); // fits: nothing happens
    expect(log).toEqual([]);
    const old = w.base;
    const L2 = w.ensure({ blocks: 4, countsCap: 10, lensCap: 3, rowsCap: 1 << 20 });
    expect(L2.countsCap).toBe(100); // caps only grow
    expect(log.slice(0, 4)).toEqual(["sync", "close a000040", "close a000042", `free ${old.toString(16)}`]);
    expect(log.some((l) => l.startsWith(`memset ${w.epochs.toString(16)}`))).toBe(false);
    expect(() => w.ensure({ blocks: 4, countsCap: 0, lensCap: 0, rowsCap: 2 << 20 }, true)).toThrow(/must grow .* while a CUDA graph is being captured; run the plan once without capture first/);
    expect(w.ensure({ blocks: 4, countsCap: 0, lensCap: 0, rowsCap: 1 << 20 }, true)).toBe(L2); // sized already: fine while capturing
    expect(() => w.ensure({ blocks: 4, countsCap: 0, lensCap: 0, rowsCap: 2 ** 40 })).toThrow(/SHARDTS_MOE_WINDOW_MAX_BYTES=.*raise it, or use SHARDTS_MOE_TRANSPORT=nccl/);
  });

  it("reads its switches and says what a wrong value should be", () => {
    expect(moeTransport({})).toBe("nccl");
    expect(moeTransport({ SHARDTS_MOE_TRANSPORT: "nvlink" })).toBe("nvlink");
    expect(() => moeTransport({ SHARDTS_MOE_TRANSPORT: "ipc" })).toThrow(/use nccl .* or nvlink/);
    expect(moeSms(132, {})).toBe(48);
    expect(moeSms(16, { SHARDTS_MOE_SMS: "64" })).toBe(16);
    expect(() => moeSms(132, { SHARDTS_MOE_SMS: "0" })).toThrow(/positive whole number/);
    expect(windowMaxBytes({ SHARDTS_MOE_WINDOW_MAX_BYTES: "1024" })).toBe(1024);
    expect(() => windowMaxBytes({ SHARDTS_MOE_WINDOW_MAX_BYTES: "lots" })).toThrow(/whole number of bytes/);
  });
});

const loaded = tryNative();
describe.skipIf(!loaded.ok)("native IPC functions check their arguments before calling the driver", () => {
  const a = loaded.ok ? loaded.addon : (undefined as never);
  it("handles must be 64-byte buffers, pointers non-null, ordinals non-negative", () => {
    expect(() => a.ipcOpenMemHandle(new Uint8Array(63))).toThrow(/the handle has 63 bytes; an IPC handle has 64/);
    expect(() => a.ipcOpenMemHandle("x" as never)).toThrow(/must be a 64-byte Buffer/);
    expect(() => a.ipcGetMemHandle(0n)).toThrow(/ipcGetMemHandle: the pointer is null/);
    expect(() => a.ipcCloseMemHandle(0n)).toThrow(/ipcCloseMemHandle: the pointer is null/);
    expect(() => a.deviceCanAccessPeer(-1, 0)).toThrow(/ordinals must be >= 0/);
  });
});
