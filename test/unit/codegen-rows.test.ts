// The shape of the generated row kernels for the memory-bound patterns (bench/gpu/memory-bound.ts):
// rows up to 16K columns held in registers on the vector path, softmax's max and sum of exp in one
// online pass, cross-entropy's target logit taken from the registers of that pass, and the launch
// rule that keeps the grid to one wave. Text only (no compiler); test/codegen compiles these kernels
// and runs them on a CPU emulation.
import { describe, expect, it } from "vitest";
import { Mesh, type AnyDTensor } from "../../stdlib/index.ts";
import { input } from "../../stdlib/program.ts";
import { add, exp, log, sub } from "../../stdlib/nn/ops-internal.ts";
import { max, rmsnorm, softmax, sum } from "../../stdlib/ops/reduce.ts";
import { gather } from "../../stdlib/ops/routing.ts";
import { compile } from "../../compiler/pipeline.ts";
import { fuse } from "../../compiler/codegen/fuse.ts";
import { emitCuda, type CudaKernel } from "../../compiler/codegen/cuda/emit.ts";
import type { DType } from "../../compiler/ir/types.ts";
import { tuning, type EmitTuning } from "../../compiler/codegen/cuda/tuning.ts";

function kernelOf(make: (m: Mesh<"d">) => AnyDTensor[], tune: Partial<EmitTuning> = {}): CudaKernel {
  const mesh = Mesh.of({ d: 1 });
  const outs = make(mesh);
  const prog = emitCuda(fuse(compile(mesh.builder.graph, outs.map((o) => o.ref))), undefined, tuning(tune));
  expect(prog.kernels).toHaveLength(1);
  return prog.kernels[0]!;
}
const softmaxOf = (R: number, C: number, dt: DType, tune: Partial<EmitTuning> = {}) => kernelOf((m) => [softmax(input(m, "x", { r: R, c: C }, dt) as AnyDTensor, "c") as AnyDTensor], tune);
const crossEntropyOf = (R: number, C: number, dt: DType) =>
  kernelOf((m) => {
    const x = input(m, "x", { r: R, c: C }, dt) as AnyDTensor, t = input(m, "t", { r: R }, "i32") as AnyDTensor;
    const z = sub(x, max(x, "c") as AnyDTensor);
    return [sub(log(sum(exp(z), "c") as AnyDTensor), gather(z, t, "c") as AnyDTensor)];
  });
/** The vector path's function (what a 16-byte aligned launch runs). */
const vecPath = (k: CudaKernel) => {
  const from = k.source.indexOf(`void ${k.name}_vec(`);
  expect(from).toBeGreaterThan(0);
  return k.source.slice(from, k.source.indexOf(`void ${k.name}_any(`));
};
const passes = (text: string) => [...text.matchAll(/\/\/ pass \d+: (.*)/g)].map((m) => m[1]);

describe("row kernels for memory-bound patterns", () => {
  it("keep rows of up to 8192 columns (bf16 and f32) in registers, a block a row, capped for 1024 threads an SM", () => {
    for (const dt of ["bf16", "f32"] as DType[])
      for (const C of [4096, 8192]) {
        for (const k of [softmaxOf(256, C, dt), crossEntropyOf(256, C, dt)]) {
          const r = k.launch;
          expect(r.chunks, `${k.name} ${dt} ${C}`).toBeGreaterThan(0);
          expect(r.chunks * r.vec * r.rowThreads).toBeGreaterThanOrEqual(C);
          expect(r.vec * (dt === "bf16" ? 2 : 4)).toBe(16);
          expect(r.block).toBe(r.rowThreads);
          expect(k.source).toContain(`__launch_bounds__(${r.block}, ${1024 / r.block})`);
          // the grid is one wave (launch.ts sizes it from the compiled kernel); blocks stride over the rows
          expect(k.source).toContain("const unsigned nb = gridDim.x;");
        }
      }
  });

  it("softmax: max and sum of exp in one online pass keeping each exp, then the output pass rescales them", () => {
    const k = softmaxOf(32768, 4096, "bf16");
    // the kept exps are f32 (8 registers a vector): 512 threads of one vector each
    expect([k.launch.rowThreads, k.launch.chunks]).toEqual([512, 1]);
    const v = vecPath(k);
    expect(passes(v)).toEqual(["max and sum of exp (softmax), online", "write the results"]);
    const [first, second] = v.split("// pass 2");
    expect(first!.match(/sh_ld_raw</g)).toHaveLength(1); // the row is read once, in pass 1
    expect(first).toContain("m3[c] = mx;"); // each vector's running max, kept with its exps
    expect(second).not.toContain("sh_ld_raw");
    expect(second).toContain("sh_exp2((m3[c] - v1) * SH_LOG2E)"); // one exp per vector to rescale
    expect(second).toContain("(c3[c * VEC + e] * f3)");
    // without keepExp the output pass recomputes exp from the kept bf16 row
    const plain = vecPath(softmaxOf(32768, 4096, "bf16", { keepExp: false }));
    expect(plain.split("// pass 2")[1]).toContain("sh_launder(r0[c])");
    expect(v).toContain("sh_group_online<32>");
    expect(v).not.toContain("expf("); // exp(x - max) as exp2, the division as a product with 1/sum
    expect(v).toContain("rs4 = 1.0f / v4");
  });

  it("cross-entropy: one pass over the row; the target logit comes from its registers", () => {
    const k = crossEntropyOf(32768, 4096, "bf16");
    const v = vecPath(k);
    expect(passes(v)).toEqual(["max and sum of exp (max), online; picks in0 at its column"]);
    expect(v.match(/sh_ld_raw</g)).toHaveLength(1);
    expect(v).toContain("read from registers");
    expect(v).not.toMatch(/p0\[col\]/); // no second read of the picked column
    // on the scalar path too: it streams the row once
    const any = k.source.slice(k.source.indexOf(`void ${k.name}_any(`));
    expect(passes(any)).toHaveLength(1);
    expect(any).toContain("read from registers");
  });

  it("rmsnorm with a residual keeps the bf16 sum (as stored) for the output pass", () => {
    const k = kernelOf((m) => {
      const h = add(input(m, "x", { r: 32768, c: 4096 }, "bf16") as AnyDTensor, input(m, "res", { r: 32768, c: 4096 }, "bf16") as AnyDTensor);
      return [rmsnorm(h, input(m, "w", { c: 4096 }, "bf16") as AnyDTensor, "c") as AnyDTensor, h];
    });
    expect(k.launch.chunks).toBeGreaterThan(0);
    const v = vecPath(k);
    expect(v).toMatch(/sh_pack<__nv_bfloat16, VEC> r2\[\d\];\s+\/\/ add: kept for a later pass \(bf16, as stored\)/);
    expect(v.split("// pass 2")[1]).not.toMatch(/sh_ld_raw<V, VEC, T>\(p[01],/); // x and the residual are not read again
  });

  it("rows too long for registers are streamed, still in two passes for softmax", () => {
    const k = softmaxOf(64, 65536, "bf16");
    expect(k.launch.chunks).toBe(0);
    expect(passes(vecPath(k))).toEqual(["max and sum of exp (softmax), online", "write the results"]);
  });
});

describe("residentBlocks (the one-wave grid of row kernels)", () => {
  const h100 = { regsPerSM: 65536, threadsPerSM: 2048, smemPerSM: 233472, maxBlocksPerSM: 32 };
  it("counts registers per warp in units of 256, and the thread and block limits", async () => {
    const { residentBlocks } = await import("../../compiler/codegen/cuda/launch.ts");
    expect(residentBlocks(128, 40, 1024, h100)).toBe(12); // 40 regs -> 1280 per warp, 5120 per block
    expect(residentBlocks(128, 64, 1024, h100)).toBe(8);
    expect(residentBlocks(256, 32, 0, h100)).toBe(8); // 2048 threads
    expect(residentBlocks(32, 16, 0, h100)).toBe(32); // the block limit
    expect(residentBlocks(1024, 64, 0, h100)).toBe(1);
    expect(residentBlocks(128, 32, 100_000, h100)).toBe(2); // shared memory
  });
});
