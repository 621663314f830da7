// PinnedSnapshot (device -> pinned host copy of a rank's pieces) with RankSaver, on a stand-in for
// the addon's memory calls (host arrays addressed by pointer): two ranks in one process, met by an
// in-memory barrier, save their "device" bytes (f32 words, bf16 patterns) in the background; the
// checkpoint loads back bit-identically; the replicated tensor is written once; a device piece of the
// wrong shape is refused naming the tensor; pinned memory is reused and freed.
import { afterAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { NativeAddon } from "../../runtime/cuda/native-types.ts";
import type { DeviceTensor } from "../../runtime/cuda/memory.ts";
import type { TensorType } from "../../compiler/ir/types.ts";
import type { BarrierResult } from "../../runtime/launch/barrier.ts";
import { PinnedSnapshot } from "../../stdlib/checkpoint/device-snapshot.ts";
import { RankSaver, describe as describeState, load, readMetadata, type RankGroup } from "../../stdlib/checkpoint/index.ts";
import { regionOf } from "../../stdlib/checkpoint/geometry.ts";

const root = mkdtempSync(join(tmpdir(), "ckpt-pinned-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Device memory as host arrays; counts pinned allocations. */
function fakeAddon() {
  const mem = new Map<bigint, Uint8Array>();
  let next = 0x1000n;
  const stats = { hostAllocs: 0, hostFrees: 0, copies: 0 };
  const addon = {
    hostAlloc: (n: number) => (stats.hostAllocs++, new ArrayBuffer(n)),
    hostFree: () => void stats.hostFrees++,
    streamCreate: () => 7n,
    streamDestroy: () => undefined,
    streamSynchronize: () => undefined,
    memcpyDtoHAsync: (dst: Uint8Array, src: bigint, bytes: number) => (stats.copies++, dst.set(mem.get(src)!.subarray(0, bytes))),
  } as unknown as NativeAddon;
  const put = (t: TensorType, shape: number[], bytes: Uint8Array): DeviceTensor => {
    const ptr = (next += 0x10000n);
    mem.set(ptr, bytes);
    return { dtype: t.dtype, shape, ptr, bytes: bytes.byteLength };
  };
  return { addon, put, stats };
}

/** Every rank of a job in one process: the n-th wait of each meets the n-th of the others. */
function memoryGroups(world: number): RankGroup[] {
  const gens = new Map<number, { n: number; failures: BarrierResult["failures"]; value?: string; done: Promise<void>; open: () => void }>();
  return Array.from({ length: world }, (_, rank) => {
    let gen = 0;
    return {
      rank, world,
      async wait(o: { failure?: string; value?: string } = {}) {
        const g = ++gen;
        let e = gens.get(g);
        if (!e) {
          let open!: () => void;
          const done = new Promise<void>((r) => (open = r));
          gens.set(g, (e = { n: 0, failures: [], done, open }));
        }
        if (o.failure !== undefined) e.failures.push({ rank, message: o.failure });
        if (rank === 0) e.value = o.value;
        if (++e.n === world) e.open();
        await e.done;
        return { failures: [...e.failures].sort((a, b) => a.rank - b.rank), value: e.value };
      },
    };
  });
}

const MESH = { axes: ["dp"], sizes: [2] };
const TYPES: Record<string, TensorType> = {
  w: { dims: [{ name: "rows", size: 5 }, { name: "cols", size: 3 }], dtype: "f32", placements: ["S(rows)"] },
  m: { dims: [{ name: "rows", size: 5 }, { name: "cols", size: 3 }], dtype: "bf16", placements: ["S(rows)"] },
  norm: { dims: [{ name: "cols", size: 3 }], dtype: "f32", placements: ["R"] },
};
// global values: f32 w = i + 0.25, bf16 m = -(i + 1) / 8 (exact in bf16), norm = 2^-i
const globalOf = (name: string, i: number) => (name === "w" ? i + 0.25 : name === "m" ? -(i + 1) / 8 : 2 ** -i);

/** The device bytes of `rank`'s piece of `name` (bf16 as the top 16 bits of the f32 value). */
function deviceBytes(name: string, rank: number): { shape: number[]; bytes: Uint8Array } {
  const t = TYPES[name]!, r = regionOf(t, MESH, rank), cols = 3;
  const n = r.shape.reduce((a, b) => a * b, 1), f = new Float32Array(n);
  for (let i = 0; i < n; i++) f[i] = globalOf(name, t.dims.length === 2 ? (r.offset[0]! + Math.floor(i / cols)) * cols + (i % cols) : i);
  if (t.dtype === "f32") return { shape: r.shape, bytes: new Uint8Array(f.buffer) };
  const u = new Uint32Array(f.buffer), h = Uint16Array.from(u, (x) => x >>> 16);
  return { shape: r.shape, bytes: new Uint8Array(h.buffer) };
}

describe("PinnedSnapshot with RankSaver", () => {
  it("saves each rank's device bytes in the background; the checkpoint loads bit-identically", async () => {
    const dir = join(root, "ok"), groups = memoryGroups(2);
    const info = describeState({ mesh: MESH, step: 4, tensors: Object.fromEntries(Object.entries(TYPES).map(([n, type]) => [n, { type, pieces: [] }])) });
    const { addon, put, stats } = fakeAddon();
    const results = await Promise.all(groups.map(async (g) => {
      const device = Object.fromEntries(Object.keys(TYPES).map((n) => {
        const d = deviceBytes(n, g.rank);
        return [n, put(TYPES[n]!, d.shape, d.bytes)];
      }));
      const pinned = new PinnedSnapshot(addon), saver = new RankSaver(dir, g);
      const snap = pinned.take(info, g.rank, device);
      // rank 1 holds a copy of the replicated norm but does not write it
      expect(snap.pieces.map((p) => p.name)).toEqual(g.rank === 0 ? ["m", "norm", "w"] : ["m", "w"]);
      expect(pinned.lastCopy.bytes).toBe(g.rank === 0 ? 3 * 3 * 2 + 3 * 4 + 3 * 3 * 4 : 2 * 3 * 2 + 2 * 3 * 4);
      const h = await saver.saveAsync({ info, snapshot: snap });
      const res = await h.done;
      // the pinned buffer is kept for the next snapshot, and freed by dispose
      pinned.take(info, g.rank, device);
      pinned.dispose();
      return res;
    }));
    expect(results.map((r) => r.name)).toEqual(["step-4", "step-4"]);
    expect(stats.hostAllocs).toBe(2);
    expect(stats.hostFrees).toBe(2);
    const { meta } = await readMetadata(dir);
    expect(meta.tensors.norm!.pieces.map((p) => p.rank)).toEqual([0]);
    const ck = await load(dir, { mesh: { axes: ["d"], sizes: [1] }, tensors: Object.fromEntries(Object.entries(TYPES).map(([n, t]) => [n, { ...t, placements: ["R"] }])) });
    for (const n of Object.keys(TYPES)) expect(Array.from(ck.tensors[n]![0]!.data), n).toEqual(Array.from({ length: n === "norm" ? 3 : 15 }, (_, i) => globalOf(n, i)));
  });

  it("refuses a device piece whose shape is not the rank's region, naming the tensor", () => {
    const info = describeState({ mesh: MESH, step: 1, tensors: Object.fromEntries(Object.entries(TYPES).map(([n, type]) => [n, { type, pieces: [] }])) });
    const { addon, put } = fakeAddon();
    const device = Object.fromEntries(Object.keys(TYPES).map((n) => [n, put(TYPES[n]!, deviceBytes(n, 1).shape, deviceBytes(n, 1).bytes)]));
    expect(() => new PinnedSnapshot(addon).take(info, 0, device)).toThrow(/tensor 'm': rank 0's device piece is bf16\[2,3\]; the type says bf16\[3,3\]/);
  });
});
