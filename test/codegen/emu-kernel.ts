// Running one generated kernel on the CPU (test/codegen/emu): a g++ harness around its source that
// reads grid, block, input bytes and argument values from a job file and writes its results, and the
// encoding of pieces into those files and back. Shared by the row emulation tests.
import { join } from "node:path";
import type { CudaKernel } from "../../compiler/codegen/cuda/emit.ts";
import type { Launch } from "../../compiler/codegen/cuda/launch.ts";
import { storageType } from "../../compiler/codegen/cuda/ops.ts";
import type { KernelInstr } from "../../compiler/codegen/types.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { e4m3FromBits } from "../../compiler/numeric/fp8.ts";
import { EMU } from "./gxx.ts";

export const bytesOf = (dt: string) => (dt === "bf16" ? 2 : dt === "fp8e4m3" ? 1 : 4);
export function encode(t: LocalTensor): Buffer {
  if (t.dtype === "f32") return Buffer.from(new Float32Array(t.data).buffer);
  if (t.dtype === "i32") return Buffer.from(new Int32Array(t.data).buffer);
  if (t.dtype !== "bf16") throw new Error(`row-emulation: no encoding for ${t.dtype}`);
  const u = new Uint32Array(new Float32Array(t.data).buffer), o = new Uint16Array(u.length);
  for (let i = 0; i < u.length; i++) o[i] = u[i]! >>> 16;
  return Buffer.from(o.buffer);
}
export function decode(dt: string, b: Buffer, n: number): ArrayLike<number> {
  const ab = b.buffer.slice(b.byteOffset, b.byteOffset + b.length);
  if (dt === "f32") return new Float32Array(ab, 0, n);
  if (dt === "i32") return new Int32Array(ab, 0, n);
  if (dt === "fp8e4m3") return Float32Array.from(new Uint8Array(ab, 0, n), (b) => e4m3FromBits(b));
  const u = new Uint16Array(ab, 0, n), o = new Float32Array(n), ou = new Uint32Array(o.buffer);
  for (let i = 0; i < n; i++) ou[i] = u[i]! << 16;
  return o;
}

/** A program around the kernel: reads grid, block, buffers and argument values from a file, writes the results. */
export function harness(k: CudaKernel, spec: KernelInstr["spec"]): string {
  const I = k.launch.index === "u32" ? "unsigned int" : "unsigned long long";
  const nIn = spec.operands.length, nT = nIn + spec.results.length;
  const call = k.launch.params.map((p, j) => {
    if (p.k === "ptr") {
      const ts = p.tensor < nIn ? spec.operands[p.tensor]! : spec.results[p.tensor - nIn]!;
      return `(${p.tensor < nIn ? "const " : ""}${storageType(ts.dtype)}*)bufs[${p.tensor}]`;
    }
    return p.k === "vec" || (p.k === "size" && p.name === "ncol") ? `(int)vals[${j}]` : `(${I})vals[${j}]`;
  });
  return `#include "cuda-emu.h"
#include "${k.name}.cu"
int main(int, char** argv) {
  FILE* f = fopen(argv[1], "rb");
  long long h[3];
  if (fread(h, 8, 3, f) != 3) return 2;
  std::vector<void*> bufs(h[2]);
  std::vector<long long> sizes(h[2]);
  for (long long i = 0; i < h[2]; ++i) {
    long long b[2];
    if (fread(b, 8, 2, f) != 2) return 2;
    sizes[i] = b[0];
    bufs[i] = aligned_alloc(64, (b[0] + 127) / 64 * 64);
    if (b[1]) { if (fread(bufs[i], 1, b[0], f) != (size_t)b[0]) return 2; }
    else memset(bufs[i], 0xff, b[0]);  // NaN: a result the kernel does not write shows
  }
  long long na;
  if (fread(&na, 8, 1, f) != 1) return 2;
  std::vector<long long> vals(na);
  if (fread(vals.data(), 8, na, f) != (size_t)na) return 2;
  fclose(f);
  emu_launch(h[0], h[1], [&] { ${k.name}(${call.join(", ")}); });
  FILE* o = fopen(argv[2], "wb");
  for (int i = ${nIn}; i < ${nT}; ++i) fwrite(bufs[i], 1, sizes[i], o);
  fclose(o);
  return 0;
}
`;
}

/** g++ arguments that build `exe` from `${exe}.cpp` (the harness) and the kernel source beside it in `dir`. */
export const gxxArgs = (dir: string, exe: string): string[] =>
  ["-std=c++20", "-O1", "-pthread", "-w", `-I${EMU}`, `-I${join(EMU, "include")}`, `-I${dir}`, "-x", "c++", `${exe}.cpp`, "-o", exe];

/** The job file the harness reads: grid, block, the inputs' bytes, the outputs' sizes in bytes, the argument values. */
export function jobFile(l: Launch, inputs: LocalTensor[], outBytes: number[]): Buffer {
  const head = Buffer.alloc(24);
  [l.grid, l.block, inputs.length + outBytes.length].forEach((v, i) => head.writeBigInt64LE(BigInt(v), 8 * i));
  const parts: Buffer[] = [head];
  for (const t of inputs) {
    const b = encode(t), h = Buffer.alloc(16);
    h.writeBigInt64LE(BigInt(b.length), 0);
    h.writeBigInt64LE(1n, 8);
    parts.push(h, b);
  }
  for (const nb of outBytes) {
    const h = Buffer.alloc(16);
    h.writeBigInt64LE(BigInt(nb), 0);
    parts.push(h);
  }
  const vals = Buffer.alloc(8 + 8 * l.args.length);
  vals.writeBigInt64LE(BigInt(l.args.length), 0);
  l.args.forEach((a, j) => vals.writeBigInt64LE("value" in a ? BigInt(a.value) : 0n, 8 + 8 * j));
  parts.push(vals);
  return Buffer.concat(parts);
}
