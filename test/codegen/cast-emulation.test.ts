// The four-a-thread f32 -> bf16 cast (runtime/cuda/kernels/sources.ts castF32ToBf16x4) runs, as text, on
// the CPU emulation of test/codegen/emu next to the element-a-thread cast it replaces, on the same
// values (random, ties to even, subnormals, ±0, ±inf, NaN): the bf16 bits must be equal, every one.
// Skipped, saying so, without g++.
import { describe, expect, it } from "vitest";
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { castF32ToBf16x4, castFromF32 } from "../../runtime/cuda/kernels/sources.ts";
import { mulberry32 } from "../helpers/prng.ts";
import { GXX, EMU, noteIfNoGxx } from "./gxx.ts";

noteIfNoGxx("cast-emulation");

describe.skipIf(!GXX)("f32 -> bf16 cast, four values a thread, run on a CPU emulation of the GPU", () => {
  it("gives the element-a-thread kernel's bits", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-castemu-"));
    const r = mulberry32(5), n = 4 * 700;
    const bits = new Uint32Array(n);
    for (let i = 0; i < n; i++) bits[i] = (r() * 2 ** 32) >>> 0;
    // ties (low 16 bits 0x8000, odd and even bf16), subnormals, zeros, infinities, NaNs
    [0x3f808000, 0x3f818000, 0x00008000, 0x00000001, 0x80000000, 0, 0x7f800000, 0xff800000, 0x7fc00001, 0x7f800001, 0x7f7fffff, 0x3f7fffff].forEach((b, i) => (bits[i] = b));
    writeFileSync(join(dir, "in.bin"), Buffer.from(bits.buffer));
    const x4 = castF32ToBf16x4(), one = castFromF32("bf16"), exe = join(dir, "cast");
    writeFileSync(`${exe}.cpp`, `#include "cuda-emu.h"
${one.source}
${x4.source.slice(x4.source.indexOf("__device__ __forceinline__ unsigned shardts_bf16_bits"))}
int main(int, char** argv) {
  const long long n = ${n};
  float* in = (float*)aligned_alloc(64, n * 4);
  FILE* f = fopen(argv[1], "rb"); if (fread(in, 4, n, f) != (size_t)n) return 2; fclose(f);
  __nv_bfloat16* a = (__nv_bfloat16*)aligned_alloc(64, n * 2);
  uint2* b = (uint2*)aligned_alloc(64, n * 2);
  emu_launch(3, 64, [&] { ${one.name}(a, in, n); });
  emu_launch(2, 64, [&] { ${x4.name}(b, (const float4*)in, n / 4); });
  FILE* o = fopen(argv[2], "wb"); fwrite(a, 2, n, o); fwrite(b, 2, n, o); fclose(o);
  return 0;
}
`);
    await promisify(execFile)(GXX!, ["-std=c++20", "-O1", "-pthread", "-w", `-I${EMU}`, `-I${join(EMU, "include")}`, "-x", "c++", `${exe}.cpp`, "-o", exe]);
    execFileSync(exe, [join(dir, "in.bin"), join(dir, "out.bin")]);
    const out = readFileSync(join(dir, "out.bin"));
    const one16 = new Uint16Array(out.buffer.slice(out.byteOffset, out.byteOffset + 2 * n));
    const x416 = new Uint16Array(out.buffer.slice(out.byteOffset + 2 * n, out.byteOffset + 4 * n));
    expect(one16[0]).toBe(0x3f80); // a tie rounds to the even neighbour
    expect(one16[1]).toBe(0x3f82);
    expect(Array.from(x416).findIndex((v, i) => v !== one16[i])).toBe(-1);
  }, 120_000);
});
