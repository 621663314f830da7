// The checkpoint benchmark's bulk state: a few large tensors (bf16 and f32) sharded by rows over
// {dp: N}, whose values are a hash of (tensor, global element index), so any rank can rebuild any
// region — its own rows to put on its GPU, or another layout's region to check a resharded load.
import type { MeshSpec, TensorType } from "../../../compiler/ir/types.ts";
import type { LocalTensor } from "../../../compiler/ir/local.ts";
import type { CheckpointState } from "../../../stdlib/checkpoint/index.ts";
import type { NativeAddon } from "../../../runtime/cuda/native-types.ts";
import type { DeviceTensor } from "../../../runtime/cuda/memory.ts";
import type { Region } from "../../../stdlib/checkpoint/geometry.ts";

const COLS = 4096;

/** Types of the bulk state: 4 tensors of about `mibPerRank / 4` MiB per rank each. */
export function bulkTypes(world: number, mibPerRank: number, placement: "S(rows)" | "S(cols)" = "S(rows)"): Record<string, TensorType> {
  const out: Record<string, TensorType> = {};
  ["bf16", "f32", "bf16", "f32"].forEach((dtype, i) => {
    const rows = Math.max(1, Math.round(((mibPerRank / 4) * 2 ** 20) / (COLS * (dtype === "bf16" ? 2 : 4)))) * world;
    out[`bulk.${i}`] = { dims: [{ name: "rows", size: rows + (i % 2) }, { name: "cols", size: COLS }], dtype: dtype as "bf16" | "f32", placements: [placement] };
  });
  return out;
}

export const bulkMesh = (world: number): MeshSpec => ({ axes: ["dp"], sizes: [world] });

const hash = (t: number, i: number): number => {
  let h = Math.imul(t + 1, 0x9e3779b1) ^ i;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
};
/** f32 bits in ±[0.5, 2) (no NaN or infinity); bf16 keeps the top 16 of them. */
const bitsAt = (t: number, i: number) => ((hash(t, i) & 0x80ffffff) | 0x3f000000) >>> 0;

/** The region's device bytes (f32 words, or bf16 patterns) of bulk tensor `t`. */
export function regionBits(type: TensorType, t: number, region: Region): Uint32Array | Uint16Array {
  const cols = type.dims[1]!.size, [r0, c0] = region.offset as [number, number], [nr, nc] = region.shape as [number, number];
  const out = type.dtype === "bf16" ? new Uint16Array(nr * nc) : new Uint32Array(nr * nc);
  const shift = type.dtype === "bf16" ? 16 : 0;
  for (let r = 0; r < nr; r++) for (let c = 0; c < nc; c++) out[r * nc + c] = bitsAt(t, (r0 + r) * cols + c0 + c) >>> shift;
  return out;
}

/** Uploads this rank's region of every bulk tensor to the GPU. */
export function uploadBulk(addon: NativeAddon, types: Record<string, TensorType>, regions: Record<string, Region>): Record<string, DeviceTensor> {
  return Object.fromEntries(
    Object.entries(types).map(([name, type], t) => {
      const bits = regionBits(type, t, regions[name]!);
      const ptr = addon.memAlloc(Math.max(1, bits.byteLength));
      if (bits.byteLength) addon.memcpyHtoD(ptr, bits);
      return [name, { dtype: type.dtype, shape: regions[name]!.shape, ptr, bytes: bits.byteLength }];
    }),
  );
}

/** Index of the first element of a loaded piece that differs from the expected bits (-1 if none). */
export function firstMismatch(type: TensorType, t: number, region: Region, got: LocalTensor): number {
  const want = regionBits(type, t, region);
  const u32 = new Uint32Array(got.data.buffer, got.data.byteOffset, got.data.length);
  if (u32.length !== want.length) return 0;
  const shift = type.dtype === "bf16" ? 16 : 0;
  for (let i = 0; i < want.length; i++) if (u32[i] !== ((want[i]! << shift) >>> 0)) return i;
  return -1;
}

/** This rank's bulk pieces as host tensors (bf16 as float32 values), for the host-copy save path. */
export function hostBulk(types: Record<string, TensorType>, regions: Record<string, Region>, rank: number, world: number): CheckpointState["tensors"] {
  return Object.fromEntries(
    Object.entries(types).map(([name, type], t) => {
      const bits = regionBits(type, t, regions[name]!);
      const data = new Float32Array(bits.length), u32 = new Uint32Array(data.buffer);
      const shift = type.dtype === "bf16" ? 16 : 0;
      for (let i = 0; i < bits.length; i++) u32[i] = (bits[i]! << shift) >>> 0;
      const piece: LocalTensor = { dtype: type.dtype, shape: regions[name]!.shape, data };
      return [name, { type, pieces: Array.from({ length: world }, (_, r) => (r === rank ? piece : undefined)) }];
    }),
  );
}
