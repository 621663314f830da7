// The fused quantize epilogues for bench/gpu/fp8-quant.ts: SwiGLU → quantize (1x128, a map kernel)
// and RMSNorm(x + residual) → quantize (a row kernel, the sum also written) as the fusion pass makes
// them from the plain programs; SwiGLU also with the bf16 value written. (Should a plan keep a
// standalone quantize, its time is added from the standalone 1x128 kernel's and the kernels column says so.) Each is first run at a check size on the GPU and on the CPU backend (runPlanCpu) and
// compared bit for bit (e4m3 values, f32 scales; the bf16 value within 1e-2 where the producer uses
// exp, whose fast-math form may differ from the CPU in the last bit of bf16: then the bytes are also
// checked against the CPU quantization of the GPU's own bf16 value), then timed at full size.
import { compile } from "../../../compiler/pipeline.ts";
import { fuse } from "../../../compiler/codegen/fuse.ts";
import { countDiffers } from "./compare.ts";
import { quantizeValues } from "../../../compiler/ops/quantize.ts";
import { roundToBf16 } from "../../../compiler/numeric/bf16.ts";
import type { LocalTensor } from "../../../compiler/ir/local.ts";
import type { DType } from "../../../compiler/ir/types.ts";
import { Mesh, type AnyDTensor } from "../../../stdlib/index.ts";
import { input, piecesOf } from "../../../stdlib/program.ts";
import { add, mul, silu } from "../../../stdlib/nn/ops-internal.ts";
import { rmsnorm } from "../../../stdlib/ops/reduce.ts";
import { quantize } from "../../../stdlib/ops/quantize.ts";
import { runPlanCpu } from "../../../runtime/cpu/index.ts";
import type { CudaExecutor } from "../../../runtime/cuda/executor.ts";

export interface EpilogueResult {
  name: string;
  check: string;
  ok: boolean;
  kernels: string;
  ms?: number;
  bytes?: number;
}

type Build = (inp: (name: string, dims: Record<string, number>) => AnyDTensor, R: number, C: number) => AnyDTensor[];
export interface EpilogueCase {
  name: string;
  build: Build;
  /** Output index of the bf16 value quantized, where the program also returns it. */
  value?: number;
  /** false: checked only (a variant of a timed case). */
  timed?: boolean;
}

export const EPILOGUES: EpilogueCase[] = [
  { name: "swiglu_quantize", build: (inp, R, C) => { const h = mul(silu(inp("g", { r: R, c: C })), inp("u", { r: R, c: C })); const { q, scales } = quantize(h, "1x128", "c"); return [q, scales]; } },
  { name: "swiglu_quantize+h", value: 2, build: (inp, R, C) => { const h = mul(silu(inp("g", { r: R, c: C })), inp("u", { r: R, c: C })); const { q, scales } = quantize(h, "1x128", "c"); return [q, scales, h]; } },
  {
    name: "rmsnorm_residual_quantize",
    build: (inp, R, C) => {
      const h = add(inp("x", { r: R, c: C }), inp("res", { r: R, c: C }));
      const { q, scales } = quantize(rmsnorm(h, inp("w", { c: C }), "c") as AnyDTensor, "1x128", "c");
      return [q, scales, h];
    },
  },
  {
    // the same with the normed value also written: its bytes checked against the CPU quantization of the GPU's own value
    name: "rmsnorm_residual_quantize+y",
    value: 3,
    timed: false,
    build: (inp, R, C) => {
      const h = add(inp("x", { r: R, c: C }), inp("res", { r: R, c: C }));
      const y = rmsnorm(h, inp("w", { c: C }), "c") as AnyDTensor;
      const { q, scales } = quantize(y, "1x128", "c");
      return [q, scales, h, y];
    },
  },
];

let seed = 5;
const random = (len: number, f = (u: number) => u * 4 - 2) => {
  const out = new Float32Array(len);
  for (let i = 0; i < len; i++) out[i] = roundToBf16(f((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32));
  return out;
};

const big = new Map<number, Float32Array>();
export function prepare(c: EpilogueCase, R: number, C: number) {
  const mesh = Mesh.of({ d: 1 });
  const inputs = new Map<string, { t: AnyDTensor; len: number; f?: (u: number) => number }>();
  const inp = (name: string, dims: Record<string, number>) => {
    const t = input(mesh, name, dims, "bf16" as DType) as AnyDTensor;
    inputs.set(name, { t, len: Object.values(dims).reduce((a, b) => a * b, 1), f: name === "w" ? (u) => u + 0.5 : undefined });
    return t;
  };
  const outs = c.build(inp, R, C);
  const plan = compile(mesh.builder.graph, outs.map((o) => o.ref));
  // (timing sizes: one random buffer per length, shared by the inputs: generating 128M values takes seconds)
  const data = (len: number, f?: (u: number) => number) => {
    if (len < 2 ** 24 || f) return random(len, f);
    let b = big.get(len);
    if (!b) big.set(len, (b = random(len)));
    return b;
  };
  const feeds = new Map<string, LocalTensor[]>([...inputs].map(([k, v]) => [k, piecesOf(mesh.spec, v.t.type, data(v.len, v.f))]));
  return { plan, feeds };
}


/**
 * Whether a quantize is left as its own op after the CUDA executor's fusion pass (compiler/codegen/fuse.ts),
 * i.e. runs as the standalone kernel rather than in a fused kernel's epilogue. (Until the eighth session of
 * 2026-11-23 this asked the plan before fusion, which always has the quantize op, so the bench added a
 * standalone quantize's time and bytes that never ran to every epilogue: bench/NOTES.md.)
 */
export function standaloneQuantize(plan: ReturnType<typeof compile>): boolean {
  return fuse(plan).instrs.some((i) => i.kind === "op" && i.op === "quantize");
}

/** Bit-for-bit check at [R, C] on GPU vs CPU backend; a line saying what was compared. */
/**
 * `status`: "exact" where bytes and scales equal the CPU backend's; else how many differ (a producer
 * with exp or a row sum may differ from the CPU in the last bit of its bf16 value). `ok` is false
 * only where the kernel's bytes are not exactly the quantization of the bf16 value it computed
 * (checked where the program returns that value).
 */
export function checkEpilogue(gpu: CudaExecutor, c: EpilogueCase, R: number, C: number): { line: string; ok: boolean; status: string; kernels: string } {
  const { plan, feeds } = prepare(c, R, C);
  const g = gpu.run(plan, feeds, [], { profile: 1 });
  const kernels = g.timings.map((k) => k.ops.join("+")).join(", ") + (standaloneQuantize(plan) ? " + standalone quantize" : "");
  const cpu = runPlanCpu(plan, feeds).outputs;
  const got = g.locals.map((p) => p[0]!.data);
  const nq = countDiffers(got[0]!, cpu[0]!.data), ns = countDiffers(got[1]!, cpu[1]!.data);
  let line = `[${R}x${C}] vs CPU backend: e4m3 ${nq}/${got[0]!.length} differ, scales ${ns}/${got[1]!.length} differ`;
  let ok = true, status = nq === 0 && ns === 0 ? "exact" : `${nq} e4m3/${ns} scales differ`;
  if (got.length > 2) {
    let err = 0;
    const want = cpu[2]!.data;
    for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[2]![i]! - want[i]!) / Math.max(1, Math.abs(want[i]!)));
    line += `; bf16 value max rel. err ${err.toExponential(2)}, ${countDiffers(got[2]!, want)} elements differ`;
    if (err >= 1e-2) ok = false;
  }
  if (c.value !== undefined) {
    // the bytes must be exactly the quantization of the bf16 value the GPU computed
    const own = quantizeValues(Float32Array.from(got[c.value]!), [R, C], [false, true]);
    const oq = countDiffers(got[0]!, own.q), os = countDiffers(got[1]!, own.scales);
    line += `; vs CPU quantize of the GPU's bf16 value: e4m3 ${oq} differ, scales ${os} differ`;
    if (oq || os) ok = false;
    status += oq || os ? ", NOT the quantization of its own bf16" : status === "exact" ? "" : " (exact vs its own bf16)";
  }
  return { line, ok, status, kernels };
}

/** Kernel time (sum over the plan's fused kernels, median of `reps` re-launches each) and bytes they move. */
export function timeEpilogue(gpu: CudaExecutor, c: EpilogueCase, R: number, C: number, reps: number): { ms: number; bytes: number; detail: string } {
  const { plan, feeds } = prepare(c, R, C);
  const g = gpu.run(plan, feeds, [], { profile: reps, download: false });
  return {
    ms: g.timings.reduce((s, k) => s + k.ms, 0),
    bytes: g.timings.reduce((s, k) => s + k.bytes, 0),
    detail: g.timings.map((k) => `${k.ops.join("+")}: ${k.ms.toFixed(3)} ms, ${(k.bytes / 2 ** 20).toFixed(0)} MiB`).join("; "),
  };
}
