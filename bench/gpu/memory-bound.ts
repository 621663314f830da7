// On a GPU machine: shardts' fused memory-bound kernels at 256 MiB per tensor (bf16 32768 x 4096):
// RMSNorm(+residual), SwiGLU, softmax and cross-entropy, each the kernel the fusion pass makes from
// the plain program, timed with CUDA events (median), as GB/s against this run's device copy.
// The PyTorch peers (bench/peers/memory_bound.py) run in the same job; bench/gpu/ratio.mjs joins them.
//   (bundled by npm run gpu:pack; run there: bash bench/gpu/run.sh memory-bound)
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { compile } from "../../compiler/pipeline.ts";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { native } from "../../runtime/cuda/native.ts";
import { empty } from "../../runtime/cuda/memory.ts";
import { Mesh, type AnyDTensor } from "../../stdlib/index.ts";
import { input, piecesOf } from "../../stdlib/program.ts";
import { add, exp, log, mul, silu, sub } from "../../stdlib/nn/ops-internal.ts";
import { max, rmsnorm, softmax, sum } from "../../stdlib/ops/reduce.ts";
import { gather } from "../../stdlib/ops/routing.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import type { DType } from "../../compiler/ir/types.ts";

const outDir = process.argv.includes("--out") ? process.argv[process.argv.indexOf("--out") + 1]! : ".";
const quick = process.argv.includes("--quick");
const R = quick ? 4096 : 32768, C = 4096, REPS = 30;
const gpu = new CudaExecutor(native());
const a = native();
const device = a.deviceProperties(0).name;

// device copy bandwidth: bytes read + written, 1 GiB buffers
const n = 2 ** 30;
const src = empty(gpu.mem, "i32", [n / 4]), dst = empty(gpu.mem, "i32", [n / 4]);
a.memsetD32(src.ptr, 0x3f800000, n / 4, gpu.stream);
const copyMs = gpu.timeLaunch(() => a.memcpyDtoDAsync(dst.ptr, src.ptr, n, gpu.stream), REPS);
const copyGBps = (2 * n) / copyMs / 1e6;
gpu.release(src);
gpu.release(dst);
const results: Record<string, unknown>[] = [{ device, kernel: "copy", impl: "shardts (cuMemcpyDtoD)", ms: copyMs, bytes: 2 * n, GBps: copyGBps }];
console.log(JSON.stringify(results[0]));

let seed = 7;
const random = (len: number, f = (u: number) => u * 4 - 2) => {
  const out = new Float32Array(len);
  for (let i = 0; i < len; i++) out[i] = f((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  return out;
};
const feed = (mesh: Mesh<"d">, name: string, dims: Record<string, number>, dtype: DType, data: ArrayLike<number>): [AnyDTensor, LocalTensor[]] => {
  const t = input(mesh, name, dims, dtype) as AnyDTensor;
  return [t, piecesOf(mesh.spec, t.type, data)];
};

const cases: Record<string, (m: Mesh<"d">) => { outs: AnyDTensor[]; feeds: Record<string, LocalTensor[]> }> = {
  rmsnorm_residual: (m) => {
    const [x, fx] = feed(m, "x", { r: R, c: C }, "bf16", random(R * C)), [res, fr] = feed(m, "res", { r: R, c: C }, "bf16", random(R * C));
    const [w, fw] = feed(m, "w", { c: C }, "bf16", random(C, (u) => u + 0.5));
    const h = add(x, res);
    return { outs: [rmsnorm(h, w, "c") as AnyDTensor, h], feeds: { x: fx, res: fr, w: fw } };
  },
  swiglu: (m) => {
    const [g, fg] = feed(m, "g", { r: R, c: C }, "bf16", random(R * C)), [u, fu] = feed(m, "u", { r: R, c: C }, "bf16", random(R * C));
    return { outs: [mul(silu(g), u)], feeds: { g: fg, u: fu } };
  },
  softmax: (m) => {
    const [x, fx] = feed(m, "x", { r: R, c: C }, "bf16", random(R * C, (v) => v * 6 - 3));
    return { outs: [softmax(x, "c") as AnyDTensor], feeds: { x: fx } };
  },
  cross_entropy: (m) => {
    const [x, fx] = feed(m, "x", { r: R, c: C }, "bf16", random(R * C, (v) => v * 6 - 3));
    const [t, ft] = feed(m, "t", { r: R }, "i32", Int32Array.from(random(R, (v) => Math.floor(v * C))));
    const mx = max(x, "c") as AnyDTensor, z = sub(x, mx);
    return { outs: [sub(log(sum(exp(z), "c") as AnyDTensor), gather(z, t, "c") as AnyDTensor)], feeds: { x: fx, t: ft } };
  },
};

for (const [name, make] of Object.entries(cases)) {
  const mesh = Mesh.of({ d: 1 });
  const { outs, feeds } = make(mesh);
  const plan = compile(mesh.builder.graph, outs.map((o) => o.ref));
  const res = gpu.run(plan, new Map(Object.entries(feeds)), [], { profile: REPS });
  // the kernels this program fused into (the workload is one kernel when fusion does its job)
  const ms = res.timings.reduce((s, k) => s + k.ms, 0), bytes = res.timings.reduce((s, k) => s + k.bytes, 0);
  const r = { device, kernel: name, impl: "shardts", kernels: res.timings.length, ms, bytes, GBps: bytes / ms / 1e6, ofCopy: bytes / ms / 1e6 / copyGBps, detail: res.timings.map((k) => `${k.ops.join("+")}: ${k.ms.toFixed(3)} ms`) };
  results.push(r);
  console.log(JSON.stringify(r));
}
writeFileSync(join(outDir, "memory-bound.jsonl"), results.map((r) => JSON.stringify(r)).join("\n") + "\n");
