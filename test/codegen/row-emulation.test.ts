// The generated row kernels run, as text, on the CPU: each is compiled by g++ with test/codegen/emu
// (threads for a block's lanes, barriers for __syncthreads and shuffles) and run on the inputs the
// fused plan's CPU run gives it, on the vector path and on the scalar one, with a grid as launch.ts
// gives it (few SMs, so blocks take many rows: the one-wave row split is exercised). Its outputs must
// match the KernelSpec interpreter within the CUDA backend's tolerances (f32 1e-5, bf16 1e-2
// relative to the largest value; NaN where the interpreter has NaN). Covers what compiling cannot:
// the online max-and-sum, picks taken from registers, kept bf16 values, -inf/NaN/+inf rows, rows
// past the vector width. Skipped, saying so, without g++.
import { describe, expect, it } from "vitest";
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Mesh, type AnyDTensor } from "../../stdlib/index.ts";
import { input, piecesOf } from "../../stdlib/program.ts";
import { add, exp, log, mul, neg, silu, sub } from "../../stdlib/nn/ops-internal.ts";
import { quantize } from "../../stdlib/ops/quantize.ts";
import { quantizeValues } from "../../compiler/ops/quantize.ts";
import { logSoftmax, max, rmsnorm, softmax, sum } from "../../stdlib/ops/reduce.ts";
import { gather } from "../../stdlib/ops/routing.ts";
import { compile } from "../../compiler/pipeline.ts";
import { fuse } from "../../compiler/codegen/fuse.ts";
import { emitCuda } from "../../compiler/codegen/cuda/emit.ts";
import { launchOf } from "../../compiler/codegen/cuda/launch.ts";
import type { KernelInstr } from "../../compiler/codegen/types.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import type { DType } from "../../compiler/ir/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import { runFusedCpu } from "./run-fused.ts";
import { tuning, tuningLabel, type EmitTuning } from "../../compiler/codegen/cuda/tuning.ts";
import { GXX, noteIfNoGxx } from "./gxx.ts";
import { bytesOf, decode, gxxArgs, harness, jobFile } from "./emu-kernel.ts";

/** The quantize epilogues' other forms (3 tiles a trip of 2 packs a lane, the row held in registers; 4 packs a lane); run for the quantize kernels only. */
const QUANT_OTHER: Partial<EmitTuning>[] = [{ quantUnroll: 3, quantPacks: 2, quantRowRegs: true }, { quantUnroll: 1, quantPacks: 4 }];

// the default emitter and every variant the memory-bound benchmark times (compiler/codegen/cuda/tuning.ts)
const TUNINGS: Partial<EmitTuning>[] = [{}, { keepExp: false }, { online: false }, { fast: false }, ...QUANT_OTHER];

noteIfNoGxx("row-emulation");

const TOL: Record<string, number> = { f32: 1e-5, bf16: 1e-2, i32: 0 };

let seed = 11;
const rnd = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;

type Feed = (name: string, dims: Record<string, number>, dtype: DType, f: (i: number) => number) => AnyDTensor;
interface Case {
  name: string;
  /** SMs launch.ts is told of (1: blocks take many rows). */
  sms: number;
  /** Quantize epilogue outputs: bit for bit against the interpreter, or against the quantization of the kernel's own bf16 value. */
  quant?: "exact" | "self";
  make: (feed: Feed) => AnyDTensor[];
}

/** Row r of C columns: -inf everywhere in row 1 (all -inf), a NaN in row 2, +inf in row 3, scattered -inf elsewhere. */
const special = (C: number, lo: number, hi: number) => (i: number) => {
  const r = Math.floor(i / C), c = i % C;
  if (r === 1) return -Infinity;
  if (r === 2 && c === 7) return NaN;
  if (r === 3 && c === 9) return Infinity;
  return c % 97 === 3 ? -Infinity : lo + (hi - lo) * rnd();
};
const softmaxes = (R: number, C: number, dt: DType, sms = 2): Case => ({
  name: `softmax, log_softmax, sum of exp: ${dt} ${R}x${C}`, sms,
  make: (feed) => {
    const x = feed("x", { r: R, c: C }, dt, special(C, -4, 4));
    return [softmax(x, "c") as AnyDTensor, logSoftmax(x, "c") as AnyDTensor, sum(exp(sub(x, max(x, "c") as AnyDTensor)), "c") as AnyDTensor];
  },
});
const crossEntropy = (R: number, C: number, dt: DType, sms = 2): Case => ({
  name: `cross-entropy (pick of x - max, and of log_softmax): ${dt} ${R}x${C}`, sms,
  make: (feed) => {
    const x = feed("x", { r: R, c: C }, dt, special(C, -6, 6));
    // padding (-1) and an out-of-range target among them
    const t = feed("t", { r: R }, "i32", (i) => (i === 4 ? -1 : i === 5 ? C + 5 : Math.floor(rnd() * C)));
    const z = sub(x, max(x, "c") as AnyDTensor);
    return [sub(log(sum(exp(z), "c") as AnyDTensor), gather(z, t, "c") as AnyDTensor), neg(gather(logSoftmax(x, "c") as AnyDTensor, t, "c") as AnyDTensor)];
  },
});
const rmsResidual = (R: number, C: number, dt: DType, sms = 2): Case => ({
  name: `rmsnorm of x + residual (both written): ${dt} ${R}x${C}`, sms,
  make: (feed) => {
    const h = add(feed("x", { r: R, c: C }, dt, () => rnd() * 4 - 2), feed("res", { r: R, c: C }, dt, () => rnd() * 4 - 2));
    return [rmsnorm(h, feed("w", { c: C }, dt, () => rnd() + 0.5), "c") as AnyDTensor, h];
  },
});

/**
 * Quantize epilogues (map kernels, 1x128 along the columns): a zero row (amax 0), a NaN and an Inf,
 * a short last tile (C % 128), the scalar path (C % VEC), the bf16 value also written, SwiGLU.
 * Bytes and scales must equal the interpreter's bit for bit where the producer is exact arithmetic
 * (add, mul); after SwiGLU or RMSNorm (whose exp or row sum may differ from the CPU's in the last
 * bit) the kernel's bytes must be exactly the quantization of the value it wrote.
 */
const quantCase = (R: number, C: number, dt: DType, swiglu: boolean, sms = 2): Case => ({
  name: `${swiglu ? "swiglu" : "x * y + b"} -> quantize 1x128${swiglu ? " (and the bf16 value)" : ""}: ${dt} ${R}x${C}`, sms, quant: swiglu ? "self" : "exact",
  make: (feed) => {
    const val = (i: number) => {
      const r = Math.floor(i / C), c = i % C;
      return r === 1 ? 0 : r === 2 && c === 5 ? NaN : r === 3 && c === C - 1 ? Infinity : (rnd() * 4 - 2) * (c % 128 === 7 ? 300 : 1);
    };
    const x = feed("x", { r: R, c: C }, dt, val), y = feed("y", { r: R, c: C }, dt, () => rnd() * 2 - 1);
    if (swiglu) {
      const h = mul(silu(x), y);
      const { q, scales } = quantize(h, "1x128", "c");
      return [q, scales, h];
    }
    const { q, scales } = quantize(add(mul(x, y), feed("b", { c: C }, dt, () => rnd())), "1x128", "c");
    return [q, scales];
  },
});

/** rmsnorm(x + residual) → quantize 1x128: a row kernel with the epilogue; the sum and (optionally) the normed value written too. */
const rmsQuant = (R: number, C: number, dt: DType, withValue: boolean, sms = 2): Case => ({
  name: `rmsnorm of x + residual -> quantize 1x128${withValue ? " (and the normed value)" : ""}: ${dt} ${R}x${C}`, sms, quant: withValue ? "self" : "exact",
  make: (feed) => {
    const val = (i: number) => {
      const r = Math.floor(i / C), c = i % C;
      return r === 1 ? 0 : r === 2 && c === 5 ? NaN : (rnd() * 4 - 2) * (c % 128 === 7 ? 30 : 1);
    };
    const h = add(feed("x", { r: R, c: C }, dt, val), feed("res", { r: R, c: C }, dt, () => (rnd() * 4 - 2) * 0.01));
    const y = rmsnorm(h, feed("w", { c: C }, dt, () => rnd() + 0.5), "c") as AnyDTensor;
    const { q, scales } = quantize(y, "1x128", "c");
    return withValue ? [q, scales, h, y] : [q, scales, h];
  },
});

const CASES: Case[] = [
  softmaxes(6, 4096, "bf16"), // a block a row, rows in registers
  softmaxes(40, 4096, "bf16", 1), // blocks take many rows
  softmaxes(5, 8192, "f32"),
  softmaxes(6, 70, "f32"), // a warp's lanes split over rows; no vector path (70 % 4)
  crossEntropy(6, 4096, "bf16"),
  crossEntropy(37, 4096, "bf16", 1),
  crossEntropy(6, 4100, "bf16"), // 4100 % 8: the scalar path, streaming
  crossEntropy(6, 1000, "bf16"), // a warp a row
  rmsResidual(5, 4096, "bf16"),
  rmsResidual(300, 256, "bf16", 1),
  quantCase(6, 384, "bf16", true),
  quantCase(40, 256, "bf16", false, 1),
  quantCase(5, 300, "bf16", false), // a short last tile; 300 % 8: the scalar path
  quantCase(5, 300, "f32", false), // 300 % 4 = 0: the vector path with a short last tile
  quantCase(4, 1000, "bf16", true),
  quantCase(600, 128, "bf16", false, 1), // 600 tiles on 8 blocks of 32 a trip (unroll 2; 48 with 3): the warps stride
  rmsQuant(6, 512, "bf16", true),
  rmsQuant(40, 256, "bf16", true, 1),
  rmsQuant(5, 300, "bf16", true), // a short last tile; the scalar path
  rmsQuant(5, 300, "f32", true), // the vector path with a short last tile
  rmsQuant(6, 384, "bf16", false), // the normed value is not written: bytes against the interpreter's
  rmsQuant(3, 2304, "bf16", true), // 18 tiles: the block's 16 groups take two steps
  rmsQuant(3, 2300, "bf16", true), // the same on the scalar path, a short last tile
  rmsQuant(3, 1300, "f32", true), // f32: 8 groups of 32 lanes, two steps
];

const same = (a: number, b: number) => Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b));

/** A quantize epilogue kernel's outputs: bytes and scales bit for bit; another (bf16) result within TOL. */
function checkQuant(label: string, mode: "exact" | "self", spec: KernelInstr["spec"], want: LocalTensor[], have: ArrayLike<number>[]): string[] {
  const bad: string[] = [];
  const { q, scales, node } = spec.quant!;
  let ref = { q: want[q]!.data as ArrayLike<number>, scales: want[scales]!.data as ArrayLike<number> };
  if (mode === "self") {
    // the kernel's own bf16 value: the result whose node is the quantized one
    const h = spec.results.findIndex((r, j) => j !== q && j !== scales && r.node === node);
    if (h < 0) return [`${label}: no bf16 result to check the bytes against`];
    const shape = want[q]!.shape;
    const r = quantizeValues(Float32Array.from(have[h]!), shape, shape.map((_, i) => i === shape.length - 1));
    ref = { q: r.q, scales: r.scales };
  }
  // every other result (the value quantized, a residual sum) within the dtype's tolerance
  spec.results.forEach((res, j) => {
    if (j === q || j === scales) return;
    let num = 0, den = 0;
    for (let i = 0; i < want[j]!.data.length; i++) {
      const a = have[j]![i]!, b = want[j]!.data[i]!;
      if (!Number.isFinite(b) || Number.isNaN(a)) {
        if (!same(a, b)) bad.push(`${label} out${j}[${i}]: ${a}, want ${b}`);
        continue;
      }
      num = Math.max(num, Math.abs(a - b));
      den = Math.max(den, Math.abs(b));
    }
    const err = den === 0 ? num : num / den;
    if (!(err <= TOL[res.dtype]!)) bad.push(`${label} out${j}: relative error ${err}`);
  });
  for (const [j, w] of [[q, ref.q], [scales, ref.scales]] as const)
    for (let i = 0; i < w.length; i++) if (!same(have[j]![i]!, w[i]!)) bad.push(`${label} out${j}[${i}]: ${have[j]![i]}, want ${w[i]} (bit for bit)`);
  return bad.slice(0, 5);
}

describe.skipIf(!GXX)("generated row kernels, run on a CPU emulation of the GPU", () => {
  it("match the interpreter on both paths, with -inf/NaN/+inf rows, picks and kept values", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-rowemu-"));
    const run = promisify(execFile);
    const built = new Map<string, Promise<unknown>>();
    const jobs: { label: string; exe: Promise<unknown>; run: () => string[] }[] = [];
    for (const c of CASES) {
      const mesh = Mesh.of({ d: 1 });
      const feeds = new Map<string, LocalTensor[]>();
      const feed: Feed = (name, dims, dtype, f) => {
        const t = input(mesh, name, dims, dtype) as AnyDTensor;
        feeds.set(name, piecesOf(mesh.spec, t.type, Array.from({ length: Object.values(dims).reduce((a, b) => a * b, 1) }, (_, i) => f(i))));
        return t;
      };
      const outs = c.make(feed);
      const plan = compile(mesh.builder.graph, outs.map((o) => o.ref));
      const fp = fuse(plan);
      for (const tune of TUNINGS) {
      const prog = emitCuda(fp, undefined, tuning(tune));
      runFusedCpu(fp, feeds, (k, rank, inputs, outputs) => {
        if (k.spec.kind !== "row" && !k.spec.quant) return;
        if (QUANT_OTHER.includes(tune) && !k.spec.quant) return;
        const kernel = prog.kernels[prog.kernelOf[k.id]!]!;
        const exe = join(dir, kernel.name);
        if (!built.has(kernel.name)) {
          writeFileSync(`${exe}.cu`, kernel.source);
          writeFileSync(`${exe}.cpp`, harness(kernel, k.spec));
          // compiled two at a time (the CI machines have two cores)
          const prev = [...built.values()].at(-2) ?? Promise.resolve();
          built.set(kernel.name, prev.catch(() => undefined).then(() => run(GXX!, gxxArgs(dir, exe))));
        }
        for (const aligned of [true, false]) {
          const l = launchOf(kernel, k, fp as unknown as Plan, rank, { smCount: c.sms, aligned });
          if (l.grid === 0) continue;
          const outDt = k.spec.results.map((r) => r.dtype);
          const outBytes = outputs.map((o, j) => o.data.length * bytesOf(outDt[j]!));
          const label = `${c.name} [${tuningLabel(tuning(tune))}]: ${kernel.name} (${l.vec ? "vector" : "scalar"} path, grid ${l.grid})`;
          const job = join(dir, `job${jobs.length}.bin`), out = join(dir, `out${jobs.length}.bin`);
          writeFileSync(job, jobFile(l, inputs, outBytes));
          jobs.push({
            label, exe: built.get(kernel.name)!,
            run: () => {
              execFileSync(exe, [job, out], { stdio: "inherit" });
              const got = readFileSync(out);
              const bad: string[] = [];
              if (k.spec.quant) return checkQuant(label, c.quant!, k.spec, outputs, outDt.map((dt, j) => decode(dt, got.subarray(outBytes.slice(0, j).reduce((a, b) => a + b, 0)), outputs[j]!.data.length)));
              let at = 0;
              outputs.forEach((want, j) => {
                const n = want.data.length, have = decode(outDt[j]!, got.subarray(at, at + outBytes[j]!), n);
                at += outBytes[j]!;
                let num = 0, den = 0;
                for (let i = 0; i < n; i++) {
                  const a = have[i]!, b = want.data[i]!;
                  if (Number.isNaN(a) || Number.isNaN(b) || !Number.isFinite(b)) {
                    if (!Object.is(a, b) && !(Number.isNaN(a) && Number.isNaN(b))) bad.push(`${label} out${j}[${i}]: ${a}, want ${b}`);
                    continue;
                  }
                  num = Math.max(num, Math.abs(a - b));
                  den = Math.max(den, Math.abs(b));
                }
                const err = den === 0 ? num : num / den;
                if (!(err <= TOL[outDt[j]!]!)) bad.push(`${label} out${j}: relative error ${err}`);
              });
              return bad;
            },
          });
        }
      });
      }
    }
    const failures: string[] = [];
    for (const j of jobs) {
      await j.exe;
      failures.push(...j.run());
    }
    expect(jobs.length).toBeGreaterThan(40);
    expect(jobs.filter((j) => j.label.includes("quantize") && j.label.includes("scalar")).length).toBeGreaterThan(0);
    expect(jobs.filter((j) => j.label.includes("quantize") && j.label.includes("vector")).length).toBeGreaterThan(0);
    expect(failures.slice(0, 10)).toEqual([]);
  }, 600_000);
});
