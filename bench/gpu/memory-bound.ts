// On a GPU machine: shardts' fused memory-bound kernels at 256 MiB per tensor (bf16 32768 x 4096):
// RMSNorm(+residual), SwiGLU, softmax and cross-entropy, each the kernel the fusion pass makes from
// the plain program, in every emitter variant listed below (compiler/codegen/cuda/tuning.ts), timed
// with CUDA events (median of 30 re-launches), as GB/s against this run's device copy; each
// variant's output checked against a float64 reference on sampled rows. Then the PyTorch peers
// (bench/peers/memory_bound.py: eager and torch.compile) in the same job, and the ratio table.
//   (bundled by npm run gpu:pack; run there: bash bench/gpu/run.sh memory-bound)
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { compile } from "../../compiler/pipeline.ts";
import { copyBandwidth } from "./lib/copy-bandwidth.ts";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { native } from "../../runtime/cuda/native.ts";
import { tuning, tuningLabel, type EmitTuning } from "../../compiler/codegen/cuda/tuning.ts";
import { roundToBf16 as roundBf16 } from "../../compiler/numeric/bf16.ts";
import { Mesh, type AnyDTensor } from "../../stdlib/index.ts";
import { input, piecesOf } from "../../stdlib/program.ts";
import { add, exp, log, mul, silu, sub } from "../../stdlib/nn/ops-internal.ts";
import { max, rmsnorm, softmax, sum } from "../../stdlib/ops/reduce.ts";
import { gather } from "../../stdlib/ops/routing.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import type { DType } from "../../compiler/ir/types.ts";

const outDir = process.argv.includes("--out") ? process.argv[process.argv.indexOf("--out") + 1]! : ".";
const quick = process.argv.includes("--quick");
const R = quick ? 4096 : 32768, C = 4096, REPS = 30, CHECK_ROWS = 512;
const gpu = new CudaExecutor(native());
const a = native();
const device = a.deviceProperties(0).name;

const copy = copyBandwidth(gpu, REPS), copyGBps = copy.GBps;
const results: Record<string, unknown>[] = [{ device, kernel: "copy", impl: "shardts (cuMemcpyDtoD)", ...copy }];
console.log(JSON.stringify(results[0]));

let seed = 7;
const random = (len: number, f = (u: number) => u * 4 - 2) => {
  const out = new Float32Array(len);
  for (let i = 0; i < len; i++) out[i] = roundBf16(f((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32));
  return out;
};
type Feeds = Record<string, Float32Array | Int32Array>;
interface Case {
  build: (m: Mesh<"d">, f: Feeds) => AnyDTensor[];
  feeds: () => Feeds;
  /** float64 reference of output `o` at row r (all columns; one value for per-row outputs). */
  ref: (f: Feeds, o: number, r: number) => number[];
  variants: Partial<EmitTuning>[];
}
const inputs = new Map<string, AnyDTensor>();
const inp = (m: Mesh<"d">, name: string, dims: Record<string, number>, dtype: DType) => {
  const t = input(m, name, dims, dtype) as AnyDTensor;
  inputs.set(name, t);
  return t;
};
const row = (x: ArrayLike<number>, r: number) => Array.from({ length: C }, (_, c) => x[r * C + c]!);

const cases: Record<string, Case> = {
  rmsnorm_residual: {
    feeds: () => ({ x: random(R * C), res: random(R * C), w: random(C, (u) => u + 0.5) }),
    build: (m) => {
      const h = add(inp(m, "x", { r: R, c: C }, "bf16"), inp(m, "res", { r: R, c: C }, "bf16"));
      return [rmsnorm(h, inp(m, "w", { c: C }, "bf16"), "c") as AnyDTensor, h];
    },
    ref: (f, o, r) => {
      const h = row(f.x!, r).map((v, c) => roundBf16(v + f.res![r * C + c]!));
      if (o === 1) return h;
      const rms = Math.sqrt(h.reduce((s, v) => s + v * v, 0) / C + 1e-6);
      return h.map((v, c) => (v / rms) * f.w![c]!);
    },
    variants: [{}],
  },
  swiglu: {
    feeds: () => ({ g: random(R * C), u: random(R * C) }),
    build: (m) => [mul(silu(inp(m, "g", { r: R, c: C }, "bf16")), inp(m, "u", { r: R, c: C }, "bf16"))],
    ref: (f, _o, r) => row(f.g!, r).map((g, c) => (g / (1 + Math.exp(-g))) * f.u![r * C + c]!),
    variants: [{}],
  },
  softmax: {
    feeds: () => ({ x: random(R * C, (v) => v * 6 - 3) }),
    build: (m) => [softmax(inp(m, "x", { r: R, c: C }, "bf16"), "c") as AnyDTensor],
    ref: (f, _o, r) => {
      const x = row(f.x!, r), mx = Math.max(...x), e = x.map((v) => Math.exp(v - mx)), s = e.reduce((p, v) => p + v, 0);
      return e.map((v) => v / s);
    },
    variants: [{}, { keepExp: false }],
  },
  cross_entropy: {
    feeds: () => ({ x: random(R * C, (v) => v * 6 - 3), t: Int32Array.from(random(R, (v) => Math.floor(v * C))) }),
    build: (m) => {
      const x = inp(m, "x", { r: R, c: C }, "bf16"), mx = max(x, "c") as AnyDTensor, z = sub(x, mx);
      return [sub(log(sum(exp(z), "c") as AnyDTensor), gather(z, inp(m, "t", { r: R }, "i32"), "c") as AnyDTensor)];
    },
    ref: (f, _o, r) => {
      const x = row(f.x!, r), mx = Math.max(...x), s = x.reduce((p, v) => p + Math.exp(v - mx), 0);
      return [Math.log(s) - (x[f.t![r]!]! - mx)];
    },
    variants: [{}],
  },
};

const checkRows = Array.from({ length: CHECK_ROWS }, (_, i) => Math.floor((i * (R - 1)) / (CHECK_ROWS - 1)));
for (const [name, c] of Object.entries(cases)) {
  const mesh = Mesh.of({ d: 1 });
  const f = c.feeds();
  inputs.clear();
  const outs = c.build(mesh, f);
  const plan = compile(mesh.builder.graph, outs.map((o) => o.ref));
  const feeds = new Map<string, LocalTensor[]>(Object.entries(f).map(([k, v]) => [k, piecesOf(mesh.spec, inputs.get(k)!.type, v)]));
  for (const over of c.variants) {
    const t = tuning(over);
    gpu.tuning = t;
    const label = tuningLabel(t);
    try {
      const res = gpu.run(plan, feeds, [], { profile: REPS });
      let worst = 0, nanBad = 0;
      res.locals.forEach((pieces, o) => {
        const got = pieces[0]!.data, perRow = got.length === R;
        for (const r of checkRows) {
          const want = c.ref(f, o, r), scale = Math.max(...want.map(Math.abs)) || 1;
          want.forEach((w, k) => {
            const g = got[perRow ? r : r * C + k]!;
            if (Number.isNaN(g) !== Number.isNaN(w)) nanBad++;
            else if (!Number.isNaN(g)) worst = Math.max(worst, Math.abs(g - w) / scale);
          });
        }
      });
      const ms = res.timings.reduce((s, k) => s + k.ms, 0), bytes = res.timings.reduce((s, k) => s + k.bytes, 0);
      const r = { device, kernel: name, impl: "shardts", variant: label, kernels: res.timings.length, ms, bytes, GBps: bytes / ms / 1e6, ofCopy: bytes / ms / 1e6 / copyGBps, maxRelErr: worst, nanMismatch: nanBad, ok: worst < 1e-2 && nanBad === 0, detail: res.timings.map((k) => `${k.ops.join("+")}: ${k.ms.toFixed(3)} ms`) };
      results.push(r);
      console.log(JSON.stringify(r));
    } catch (e) {
      const r = { device, kernel: name, impl: "shardts", variant: label, error: (e as Error).message.slice(0, 2000) };
      results.push(r);
      console.log(JSON.stringify(r));
    }
  }
}
writeFileSync(join(outDir, "memory-bound.jsonl"), results.map((r) => JSON.stringify(r)).join("\n") + "\n");

// the PyTorch peers, same GPU, same job
const peerFile = join(outDir, "memory-bound-peer.jsonl");
const peerScript = ["bench/peers/memory_bound.py", join(import.meta.dirname ?? ".", "..", "bench", "peers", "memory_bound.py")].find((p) => existsSync(p));
const peers: Record<string, number> = {};
if (peerScript && !process.argv.includes("--no-peer")) {
  console.log(`running the PyTorch peer: python3 ${peerScript} --out ${peerFile}${quick ? " --quick" : ""}`);
  const p = spawnSync("python3", [peerScript, "--out", peerFile, ...(quick ? ["--quick"] : [])], { stdio: "inherit", env: { ...process.env, PYTHONUNBUFFERED: "1" } });
  if (p.status !== 0) console.log(`the PyTorch peer failed (exit ${p.status})`);
  if (existsSync(peerFile)) for (const l of readFileSync(peerFile, "utf8").trim().split("\n")) { const j = JSON.parse(l); peers[`${j.kernel}/${j.impl}`] = j.ms; }
} else console.log("no PyTorch peer run (bench/peers/memory_bound.py not found or --no-peer)");

const lines = [`device ${device}; copy ${copyGBps.toFixed(0)} GB/s (cuMemcpyDtoD)${peers["copy/torch"] ? `; torch copy_ ${(((2 * R * C * 2) * 2) / peers["copy/torch"] / 1e6).toFixed(0)} GB/s` : ""}`,
  `${"kernel".padEnd(17)} ${"variant".padEnd(34)} ${"ms".padStart(7)} ${"% copy".padStart(7)} ${"x eager".padStart(8)} ${"x compile".padStart(9)}  check`];
for (const r of results.slice(1) as { kernel: string; variant: string; ms?: number; ofCopy?: number; ok?: boolean; maxRelErr?: number; error?: string }[]) {
  if (r.error) { lines.push(`${r.kernel.padEnd(17)} ${r.variant.padEnd(34)} FAILED: ${r.error.split("\n")[0]}`); continue; }
  const e = peers[`${r.kernel}/torch-eager`], cpl = peers[`${r.kernel}/torch-compile`];
  lines.push(`${r.kernel.padEnd(17)} ${r.variant.padEnd(34)} ${r.ms!.toFixed(3).padStart(7)} ${(100 * r.ofCopy!).toFixed(1).padStart(6)}% ${(e ? (e / r.ms!).toFixed(2) : "-").padStart(8)} ${(cpl ? (cpl / r.ms!).toFixed(2) : "-").padStart(9)}  ${r.ok ? "ok" : "BAD"} ${r.maxRelErr!.toExponential(1)}`);
}
writeFileSync(join(outDir, "memory-bound.txt"), lines.join("\n") + "\n");
console.log("\n" + lines.join("\n"));
