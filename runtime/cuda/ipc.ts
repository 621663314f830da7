// Peer windows for the intranode MoE transport: every rank of an expert-axis group allocates one
// receive window (flags, counts, lens, rows: moe-nvlink-layout.ts windowLayout), exports it as a
// CUDA IPC handle, and maps every peer's, so the NVLink kernels store straight into peers' memory.
// A window is kept across steps (until the process ends, which unmaps and frees it) and grows (collectively: every rank runs the same plan, so every rank
// asks for the same sizes at the same op) when an op needs more.
//
// Handles travel by an all-gather over the group (`AllGather`: on GPUs an NCCL all-gather on the
// axis communicator). Not the rendezvous store: MoE ops run inside the executor's synchronous loop,
// and the store's client is asynchronous; the communicator already spans exactly the group, and
// its order of calls is the plan's, the same on every rank. The first exchange also carries each
// rank's node identity and device, so a group spanning nodes, or devices without peer access, is
// refused (NvlinkUnavailable) before any handle is opened.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { UsageError } from "../../compiler/errors.ts";
import type { NativeAddon, NcclComm, Stream } from "./native-types.ts";
import { NcclDataType } from "./native-types.ts";
import { NvlinkUnavailable, windowLayout, type WindowLayout } from "./moe-nvlink-layout.ts";
import { waitComm } from "./nccl/communicators.ts";

/** One record per group rank, by coordinate on the axis; every rank passes a record of one size. */
export type AllGather = (mine: Uint8Array) => Uint8Array[];

/** A rank's record in the exchanges: handle (64 B) | node id (32 B) | device i32 | blocks i32 | unused. */
export const RECORD_FIELDS = { bytes: 128, node: 64, device: 96, blocks: 100 } as const;
const { bytes: RECORD, node: NODE, device: DEVICE, blocks: BLOCKS } = RECORD_FIELDS;

/** This machine's identity: host name and boot id (two containers on one host share neither by chance). */
export function nodeId(): Uint8Array {
  let boot = "";
  try {
    boot = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    // not Linux: the host name alone
  }
  return createHash("sha256").update(`${hostname()}\0${boot}`).digest();
}

/** An all-gather of equal-size records over `comm` (W ranks), staged through device memory. */
export function ncclAllGather(addon: NativeAddon, comm: NcclComm, stream: Stream, W: number, timeoutMs: number): AllGather {
  return (mine) => {
    const buf = addon.memAlloc(mine.byteLength * (W + 1)), recv = buf + BigInt(mine.byteLength);
    try {
      addon.memcpyHtoD(buf, mine);
      const rc = addon.ncclAllGather(buf, recv, mine.byteLength, NcclDataType.u8, comm, stream);
      if (rc !== 0 && rc !== 7) throw new NvlinkUnavailable(`the peer-window exchange (ncclAllGather) failed with NCCL error ${rc}`);
      if (rc === 7) waitComm(addon, comm, "the MoE peer-window exchange (ncclAllGather)", Date.now() + timeoutMs);
      addon.streamSynchronize(stream);
      const all = new Uint8Array(mine.byteLength * W);
      addon.memcpyDtoH(all, recv);
      return Array.from({ length: W }, (_, q) => all.subarray(q * mine.byteLength, (q + 1) * mine.byteLength));
    } finally {
      addon.memFree(buf);
    }
  };
}

/** Largest window a rank allocates (SHARDTS_MOE_WINDOW_MAX_BYTES, default 16 GiB). */
export function windowMaxBytes(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.SHARDTS_MOE_WINDOW_MAX_BYTES;
  if (v === undefined || v === "") return 16 * 2 ** 30;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`SHARDTS_MOE_WINDOW_MAX_BYTES=${JSON.stringify(v)} must be a positive whole number of bytes`);
  return n;
}

export interface WindowNeed {
  blocks: number;
  countsCap: number;
  lensCap: number;
  rowsCap: number;
}

export class PeerWindow {
  layout?: WindowLayout;
  /** This rank's window, and the device array of every group rank's window as mapped here (u64 each). */
  base = 0n;
  peersTable = 0n;
  private mapped: bigint[] = [];
  /**
   * The ops run on this group so far, one u64 per kernel block, on the device (the kernels count them:
   * moe-nvlink-sources.ts "Epochs"); zeroed once, never reset, kept when the window grows.
   */
  readonly epochs: bigint;

  private constructor(private readonly addon: NativeAddon, private readonly gather: AllGather, readonly me: number, readonly W: number, private readonly blocks: number) {
    this.epochs = addon.memAlloc(8 * blocks);
    addon.memsetD8(this.epochs, 0, 8 * blocks);
    addon.ctxSynchronize(); // (the legacy stream's memset, done before a kernel on the non-blocking comm stream reads them)
  }

  /**
   * Checks that the group can use NVLink (one node, peer access between every pair, one SM budget)
   * and returns an empty window; throws NvlinkUnavailable saying why not.
   */
  static create(addon: NativeAddon, gather: AllGather, me: number, W: number, device: number, blocks: number): PeerWindow {
    const rec = new Uint8Array(RECORD), dv = new DataView(rec.buffer);
    rec.set(nodeId(), NODE);
    dv.setInt32(DEVICE, device, true);
    dv.setInt32(BLOCKS, blocks, true);
    const all = gather(rec);
    const node = (r: Uint8Array) => Buffer.from(r.subarray(NODE, NODE + 32)).toString("hex");
    const int = (r: Uint8Array, at: number) => new DataView(r.buffer, r.byteOffset, r.byteLength).getInt32(at, true);
    const why = (): string | undefined => {
      for (const [q, r] of all.entries()) {
        if (node(r) !== node(rec)) return `rank ${q} of the expert-axis group is on another node; the NVLink transport works within one node`;
        if (int(r, BLOCKS) !== blocks) return `ranks disagree on SHARDTS_MOE_SMS (${blocks} here, ${int(r, BLOCKS)} on rank ${q}); set the same value on every rank`;
        if (q !== me && int(r, DEVICE) === device) return `rank ${q} of the group uses this rank's GPU ${device} too`;
        if (q !== me && !addon.deviceCanAccessPeer(device, int(r, DEVICE))) return `GPU ${device} cannot access GPU ${int(r, DEVICE)}'s memory (no peer access between them)`;
      }
      return undefined;
    };
    // peer access may be one-sided: every rank learns every verdict, so all take the same path
    const mine = why(), verdicts = gather(Uint8Array.from({ length: RECORD }, (_, i) => (i === 0 && mine ? 1 : 0)));
    const refused = verdicts.findIndex((v) => v[0] === 1);
    if (refused >= 0) throw new NvlinkUnavailable(mine ?? `rank ${refused} of the expert-axis group cannot use NVLink (its log says why)`);
    return new PeerWindow(addon, gather, me, W, blocks);
  }

  /**
   * The layout, after growing the window (collectively) where `need` exceeds it. Growing synchronizes
   * and exchanges handles, which a stream capture cannot hold (`capturing`): a capture's warm-up run
   * sizes the window first.
   */
  ensure(need: WindowNeed, capturing = false): WindowLayout {
    const l = this.layout;
    if (need.blocks !== this.blocks) throw new Error(`shardts internal error: a peer window made for ${this.blocks} blocks was asked for ${need.blocks}`);
    if (l && need.countsCap <= l.countsCap && need.lensCap <= l.lensCap && need.rowsCap <= l.rowsCap) return l;
    if (capturing)
      throw new UsageError(`the MoE NVLink window must grow (rows bound ${need.rowsCap} B, has ${l?.rowsCap ?? 0}) while a CUDA graph is being captured; run the plan once without capture first (CudaExecutor.capture does)`);
    const next = windowLayout(this.W, this.blocks, Math.max(need.countsCap, l?.countsCap ?? 0), Math.max(need.lensCap, l?.lensCap ?? 0), Math.max(need.rowsCap, l?.rowsCap ?? 0));
    const max = windowMaxBytes();
    if (next.bytes > max)
      throw new UsageError(`the MoE NVLink window needs ${next.bytes} bytes per GPU (rows bound ${next.rowsCap} B), above SHARDTS_MOE_WINDOW_MAX_BYTES=${max}; raise it, or use SHARDTS_MOE_TRANSPORT=nccl`);
    // every kernel that reads or writes the old windows has finished on this rank; the first gather
    // then says so for every rank, so no peer still stores into the window freed next
    this.addon.ctxSynchronize();
    this.unmap();
    this.gather(new Uint8Array(RECORD));
    if (this.base) this.addon.memFree(this.base);
    this.base = this.addon.memAlloc(next.bytes);
    // zero flags: epochs start above 0, so no stale flag passes for a new op's. (cuMemsetD8 runs on the
    // legacy stream and returns before it is done; neither the non-blocking comm stream nor a peer's kernels
    // wait for it: the synchronize makes the zeros land before any of them can store a flag here.)
    this.addon.memsetD8(this.base, 0, next.bytes);
    this.addon.ctxSynchronize();
    const rec = new Uint8Array(RECORD);
    rec.set(this.addon.ipcGetMemHandle(this.base), 0);
    const all = this.gather(rec);
    this.mapped = all.map((r, q) => (q === this.me ? this.base : this.addon.ipcOpenMemHandle(r.subarray(0, 64))));
    if (!this.peersTable) this.peersTable = this.addon.memAlloc(8 * this.W);
    this.addon.memcpyHtoD(this.peersTable, BigUint64Array.from(this.mapped));
    this.layout = next;
    return next;
  }

  private unmap(): void {
    this.mapped.forEach((p, q) => q !== this.me && this.addon.ipcCloseMemHandle(p));
    this.mapped = [];
  }
}
