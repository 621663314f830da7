// Device memory for plan execution: a caching allocator (freed blocks are kept by size class and
// reused; every block is 256-byte aligned, so 16-byte vector paths always apply) with live and peak
// accounting for the memory report, and host <-> device conversion of pieces (bf16 travels as its
// 16-bit patterns; the CPU reference keeps bf16 as exactly representable float32 values).
import type { DType } from "../../compiler/ir/types.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { allocLocal } from "../../compiler/ir/local.ts";
import { numel } from "../../compiler/ir/types.ts";
import type { NativeAddon, Stream } from "./native-types.ts";
import { elemBytes } from "./kernels/sources.ts";
import { e4m3FromBits, e4m3ToBits, e5m2FromBits, e5m2ToBits } from "../../compiler/numeric/fp8.ts";

export interface DeviceTensor {
  dtype: DType;
  shape: number[];
  ptr: bigint;
  /** Size class actually held (for returning the block). */
  bytes: number;
}

/** The power of two at or above n (512 at least); by count of leading zeros where it fits 32 bits (every alloc asks). */
const sizeClass = (n: number) => (n <= 512 ? 512 : n <= 2 ** 31 ? 2 ** (32 - Math.clz32(n - 1)) : 2 ** Math.ceil(Math.log2(n)));

export class CachingAllocator {
  private free = new Map<number, bigint[]>();
  /** Every cached block, to catch a block released twice (it would later be handed to two tensors). */
  private cached = new Set<bigint>();
  live = 0;
  peak = 0;

  constructor(private readonly addon: NativeAddon) {}

  alloc(bytes: number): { ptr: bigint; bytes: number } {
    const cls = sizeClass(bytes);
    const list = this.free.get(cls);
    const ptr = list?.pop() ?? this.addon.memAlloc(cls);
    this.cached.delete(ptr);
    this.live += cls;
    this.peak = Math.max(this.peak, this.live);
    return { ptr, bytes: cls };
  }

  release(t: { ptr: bigint; bytes: number }): void {
    if (this.cached.has(t.ptr))
      throw new Error(`shardts internal error: device block 0x${t.ptr.toString(16)} (${t.bytes} B) released twice; two tensors would share it. Please report this with the plan that ran.`);
    this.cached.add(t.ptr);
    const list = this.free.get(t.bytes) ?? [];
    list.push(t.ptr);
    this.free.set(t.bytes, list);
    this.live -= t.bytes;
  }

  /** Frees every cached (released) block; blocks still in use are the caller's to free. */
  drain(): void {
    for (const list of this.free.values()) for (const p of list) this.addon.memFree(p);
    this.free.clear();
    this.cached.clear();
  }

}

export function empty(mem: CachingAllocator, dtype: DType, shape: number[]): DeviceTensor {
  const { ptr, bytes } = mem.alloc(numel(shape) * elemBytes(dtype));
  return { dtype, shape, ptr, bytes };
}

/** A piece's bytes as the device holds them (bf16 as its 16-bit patterns, FP8 as one code byte). */
export function hostBits(t: LocalTensor): ArrayBufferView {
  // FP8: one code byte per value (the value is representable, so the encoding is exact)
  if (t.dtype === "fp8e4m3" || t.dtype === "fp8e5m2") return Uint8Array.from(t.data, t.dtype === "fp8e4m3" ? (v) => e4m3ToBits(v) : (v) => e5m2ToBits(v));
  if (t.dtype !== "bf16") return t.data;
  const u32 = new Uint32Array((t.data as Float32Array).buffer, t.data.byteOffset, t.data.length);
  const out = new Uint16Array(t.data.length);
  for (let i = 0; i < out.length; i++) out[i] = u32[i]! >>> 16; // exact: the value is bf16-representable
  return out;
}

export function upload(addon: NativeAddon, mem: CachingAllocator, t: LocalTensor, stream: Stream): DeviceTensor {
  const d = empty(mem, t.dtype, t.shape);
  const bits = hostBits(t);
  if (bits.byteLength) addon.memcpyHtoDAsync(d.ptr, bits, bits.byteLength, stream);
  return d;
}

export function download(addon: NativeAddon, d: DeviceTensor, stream: Stream): LocalTensor {
  return downloadAll(addon, [d], stream)[0]!;
}

/**
 * Reads pieces back: every copy issued, then one wait for the stream, then the conversions (a
 * training step reads back every updated parameter and moment; a wait per piece was a driver call
 * each). The same copies in the same order as one download after another.
 */
export function downloadAll(addon: NativeAddon, ds: readonly DeviceTensor[], stream: Stream): LocalTensor[] {
  let issued = false;
  const finish = ds.map((d): (() => LocalTensor) => {
    const out = allocLocal(d.dtype, d.shape);
    const n = out.data.length;
    if (n === 0) return () => out;
    issued = true;
    if (d.dtype === "bf16") {
      const bits = new Uint16Array(n);
      addon.memcpyDtoHAsync(bits, d.ptr, n * 2, stream);
      return () => {
        const u32 = new Uint32Array((out.data as Float32Array).buffer);
        for (let i = 0; i < n; i++) u32[i] = bits[i]! << 16;
        return out;
      };
    }
    if (d.dtype === "fp8e4m3" || d.dtype === "fp8e5m2") {
      const bits = new Uint8Array(n);
      addon.memcpyDtoHAsync(bits, d.ptr, n, stream);
      return () => {
        const dec = d.dtype === "fp8e4m3" ? e4m3FromBits : e5m2FromBits;
        for (let i = 0; i < n; i++) out.data[i] = dec(bits[i]!);
        return out;
      };
    }
    addon.memcpyDtoHAsync(out.data, d.ptr, out.data.byteLength, stream);
    return () => out;
  });
  if (issued) addon.streamSynchronize(stream);
  return finish.map((f) => f());
}
