// The CUDA backend's caching allocator (runtime/cuda/memory.ts) on a stand-in for the addon's
// memAlloc / memFree: blocks are reused by size class, accounting follows, and a block released
// twice is an error at once (it would otherwise be handed to two live tensors: the MoE combine's
// weights were, 2026-11-22, and every op after them read aliased buffers).
import { describe, expect, it } from "vitest";
import { CachingAllocator } from "../../runtime/cuda/memory.ts";
import type { NativeAddon } from "../../runtime/cuda/native-types.ts";

function fakeAddon() {
  let next = 0x1000n;
  const freed: bigint[] = [];
  const addon = { memAlloc: (n: number) => ((next += BigInt(n)), next - BigInt(n)), memFree: (p: bigint) => void freed.push(p) };
  return { addon: addon as unknown as NativeAddon, freed };
}

describe("CachingAllocator", () => {
  it("reuses a released block of the same size class and keeps live/peak", () => {
    const { addon } = fakeAddon();
    const m = new CachingAllocator(addon);
    const a = m.alloc(1000), b = m.alloc(1000);
    expect(a.bytes).toBe(1024);
    expect(m.live).toBe(2048);
    m.release(a);
    expect(m.live).toBe(1024);
    expect(m.alloc(700).ptr).toBe(a.ptr); // same class (1024): the cached block
    expect(m.peak).toBe(2048);
    m.release(b);
  });

  it("size classes are the power of two at or above the request, 512 bytes at least, past 32 bits too", () => {
    const m = new CachingAllocator(fakeAddon().addon);
    const want = (n: number) => Math.max(512, 2 ** Math.ceil(Math.log2(Math.max(1, n))));
    for (const n of [0, 1, 511, 512, 513, 1023, 1024, 1025, 3 * 2 ** 20 + 1, 2 ** 31 - 1, 2 ** 31, 2 ** 31 + 1, 2 ** 33 + 5])
      expect(m.alloc(n).bytes, `${n} bytes`).toBe(want(n));
  });

  it("refuses a block released twice, saying so", () => {
    const { addon } = fakeAddon();
    const m = new CachingAllocator(addon);
    const a = m.alloc(4096);
    m.release(a);
    expect(() => m.release(a)).toThrow(/released twice/);
    // once handed out again it may be released again
    const again = m.alloc(4096);
    expect(again.ptr).toBe(a.ptr);
    expect(() => m.release(again)).not.toThrow();
  });

  it("drain frees every cached block and forgets them", () => {
    const { addon, freed } = fakeAddon();
    const m = new CachingAllocator(addon);
    const a = m.alloc(512), b = m.alloc(2048);
    m.release(a);
    m.release(b);
    m.drain();
    expect(freed.sort()).toEqual([a.ptr, b.ptr].sort());
    expect(m.alloc(512).ptr).not.toBe(a.ptr);
  });
});
