// Fp8Gemm.prepare with a K-grouped configuration (kGrouped) on a simulated device: the tensor maps it
// encodes (A [M][P] and B [N][P] in 64-column boxes of the tile's rows with the 128-byte swizzle, D as
// [E][M][N] in 64 x 64 boxes), the parameter block (the five maps, sa, sb, d, blockExpert, M, N, K, E),
// the grid (min(E x tiles, SMs)), and what it refuses before launching anything.
import { describe, expect, it } from "vitest";
import { CompileError } from "../../compiler/errors.ts";
import { emitFp8Gemm } from "../../compiler/codegen/cuda/gemm/emit.ts";
import { defaultKGroupedConfig, kGroupedCandidates, type Fp8GemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { Fp8Gemm, type Fp8GemmBuffers } from "../../runtime/cuda/fp8-gemm.ts";
import { packArgs, type KernelArg } from "../../runtime/cuda/kernel-args.ts";
import type { NativeAddon, TensorMapOptions } from "../../runtime/cuda/native-types.ts";

/** An Fp8Gemm on a fake H200 whose kernels are emitted, not compiled, and whose launches are recorded. */
function fakeGemm() {
  const maps: TensorMapOptions[] = [];
  const launches: { grid: number[]; block: number[]; smem: number; params: Uint8Array }[] = [];
  const addon = {
    deviceProperties: () => ({ name: "fake H200", computeCapability: [9, 0], smCount: 132 }),
    tensorMapEncodeTiled: (o: TensorMapOptions) => {
      maps.push(o);
      return new Uint8Array(128).fill(maps.length);
    },
    launchKernel: (_fn: unknown, grid: number[], block: number[], smem: number, _stream: unknown, params: Uint8Array) => void launches.push({ grid, block, smem, params }),
  };
  class Emitted extends Fp8Gemm {
    override kernel(c: Fp8GemmConfig) {
      return { fn: 1n as never, kernel: emitFp8Gemm(c), compileMs: 0, cached: true, layout: null };
    }
  }
  return { g: new Emitted(addon as unknown as NativeAddon, 0n as never), maps, launches };
}

const bufs: Fp8GemmBuffers = { a: 0x10000n, b: 0x20000n, sa: 0n, sb: 0n, d: 0x30000n, blockExpert: 0x40000n };

describe("Fp8Gemm.prepare, K-grouped", () => {
  it("encodes A and B as [rows][P] in 64-column boxes, D as [E][M][N], and passes M, N, K, E after blockExpert", () => {
    const { g, maps, launches } = fakeGemm();
    const c = defaultKGroupedConfig(2816), s = { M: 2048, N: 2816, K: 64 * 800, experts: 64 };
    g.prepare(c, s, bufs)();
    expect(maps).toHaveLength(3);
    const at = (address: bigint) => maps.findIndex((m) => m.address === address);
    expect(maps[at(bufs.a)]).toMatchObject({ dtype: "bf16", dims: [51200, 2048], strides: [102400], box: [64, 128], swizzle: "128B", oobFill: "zero" });
    expect(maps[at(bufs.b)]).toMatchObject({ dtype: "bf16", dims: [51200, 2816], strides: [102400], box: [64, 256], swizzle: "128B", oobFill: "zero" });
    expect(maps[at(bufs.d)]).toMatchObject({ dtype: "bf16", dims: [2816, 2048, 64], strides: [5632, 2048 * 5632], box: [64, 64, 1], swizzle: "128B" });
    expect(launches).toHaveLength(1);
    const k = emitFp8Gemm(c);
    expect(launches[0]).toMatchObject({ grid: [132, 1, 1], block: [384, 1, 1], smem: k.smemBytes });
    // the fake's map i (in encoding order) is 128 bytes of i + 1
    const map = (address: bigint): KernelArg => ["bytes", new Uint8Array(128).fill(at(address) + 1), 64];
    const none: KernelArg = ["bytes", new Uint8Array(128), 64];
    const want = packArgs(map(bufs.a), map(bufs.b), none, map(bufs.d), none, ["ptr", 0n], ["ptr", 0n], ["ptr", bufs.d], ["ptr", bufs.blockExpert!], ["i32", 2048], ["i32", 2816], ["i32", 51200], ["i32", 64]);
    expect([...launches[0]!.params]).toEqual([...want]);
    // the kernel takes those parameters in that order
    expect(k.source).toContain("unsigned short* __restrict__ d,\n        const int* __restrict__ blockExpert,\n        int M, int N, int K, int E) {");
  });

  it("launches one CTA per tile when not persistent, and no D map with the plain epilogue", () => {
    const { g, maps, launches } = fakeGemm();
    g.prepare({ ...defaultKGroupedConfig(1408), persistent: false }, { M: 200, N: 320, K: 640, experts: 6 }, bufs)();
    expect(launches[0]!.grid).toEqual([6 * 2 * 3, 1, 1]);
    const plain = kGroupedCandidates().find((c) => !c.tmaStore)!;
    const before = maps.length;
    g.prepare(plain, { M: 200, N: 320, K: 640, experts: 6 }, bufs)();
    expect(maps.length - before).toBe(2);
  });

  it("refuses, before launching, what the kernel cannot take", () => {
    const { g, launches } = fakeGemm();
    const c = defaultKGroupedConfig(2816), s = { M: 2048, N: 2816, K: 51200, experts: 64 };
    expect(() => g.prepare(c, { ...s, K: 51200 + 16 }, bufs)).toThrow(/multiple of 64/);
    expect(() => g.prepare(c, { ...s, experts: undefined }, bufs)).toThrow(/experts >= 1/);
    expect(() => g.prepare(c, s, { ...bufs, blockExpert: undefined })).toThrow(/blockExpert must be given/);
    expect(() => g.prepare(c, { ...s, lda: 102400 }, bufs)).toThrow(CompileError);
    expect(launches).toHaveLength(0);
  });
});
