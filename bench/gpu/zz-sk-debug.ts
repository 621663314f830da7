// One-off (deleted after its run): where stream-K's time goes. The _sk kernel as emitted, and patched:
// nofix (a cut part stores its own sums as if whole: wrong values, the K loop's cost alone), nocut
// (skSlots > 0 read as false: every tile whole, the same code otherwise). Times only.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { emitFp8Gemm } from "../../compiler/codegen/cuda/gemm/emit.ts";
import { configName, type Fp8GemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { native } from "../../runtime/cuda/native.ts";
import { Fp8Gemm, type Fp8GemmBuffers } from "../../runtime/cuda/fp8-gemm.ts";
import { compileCuda } from "../../runtime/cuda/compile.ts";
import { rotated } from "../../runtime/cuda/gemm-inputs.ts";
import { timeMedian } from "../../runtime/cuda/gemm-tune.ts";
import { makeProblem, usefulFlops, type DenseCase } from "./lib/fp8-gemm-data.ts";

const outDir = process.argv.includes("--out") ? process.argv[process.argv.indexOf("--out") + 1]! : ".";
const a = native(), stream = a.streamCreate();
const base: Fp8GemmConfig = { consumers: 2, blockN: 256, stages: 3, persistent: true, grouped: false, chunked: true, tmaStore: true, groupM: 16, stmatrix: true };
const sk: Fp8GemmConfig = { ...base, streamK: true };
const lines: string[] = [];
const log = (s: string) => (console.log(s), lines.push(s));
const patches: [string, (s: string) => string][] = [
  ["sk", (s) => s],
  ["nofix", (s) => s.replace("if (kbBegin != 0 || kbEnd != KB) {", "if (false) {")],
  ["nocut", (s) => s.replace(/skSlots > 0, tile, kbBegin, kbEnd/g, "false, tile, kbBegin, kbEnd")],
];
const cases: DenseCase[] = [
  { kind: "dense", name: "4096x7168x2048", M: 4096, N: 7168, K: 2048, timed: true },
  { kind: "dense", name: "4096x2048x7168", M: 4096, N: 2048, K: 7168, timed: true },
  { kind: "dense", name: "8192x8192x8192", M: 8192, N: 8192, K: 8192, timed: true },
];
for (const c of cases) {
  const p = makeProblem(c, 77);
  const allocs: bigint[] = [];
  const alloc = (n: number) => (allocs.push(a.memAlloc(Math.max(n, 256))), allocs[allocs.length - 1]!);
  const put = (h: ArrayBufferView) => { const d = alloc(h.byteLength); a.memcpyHtoD(d, h); return d; };
  const shape = { M: c.M, N: c.N, K: c.K };
  const bufs: Fp8GemmBuffers = { a: put(p.a), b: put(p.b), sa: put(p.sa), sb: put(p.sb), d: alloc(c.M * c.N * 2) };
  const sets = rotated(a, bufs, p, alloc);
  for (const [tag, patch] of [["plain", (s: string) => s] as [string, (s: string) => string], ...patches]) {
    const g = new Fp8Gemm(a, stream);
    const cfg = tag === "plain" ? base : sk;
    if (tag !== "plain") {
      const k = emitFp8Gemm(cfg), src = patch(k.source);
      if (tag !== "sk" && src === k.source) throw new Error(`patch ${tag} did not apply`);
      const fn = a.moduleGetFunction(a.moduleLoadData(compileCuda(a, k.name, src, g.arch).cubin), k.name);
      a.funcSetMaxDynamicSharedMemory(fn, k.smemBytes);
      (g as unknown as { fns: Map<string, unknown> }).fns.set(configName(cfg), { fn, kernel: { ...k, source: src }, compileMs: 0, cached: false, layout: a.funcGetParamLayout(fn) });
      const ws = g.streamKWorkspace(cfg, shape);
      for (const s of sets) if (ws.slots > 0) { s.skWork = s.skWork ?? alloc(ws.workBytes); s.skFlags = s.skFlags ?? alloc(ws.flagBytes); }
      if (ws.slots > 0) a.memsetD32(sets[0]!.skFlags!, 0, ws.flagBytes / 4, stream);
      for (const s of sets) { s.skWork = sets[0]!.skWork; s.skFlags = sets[0]!.skFlags; }
    }
    const runs = sets.map((b) => g.prepare(cfg, shape, b));
    const ms = timeMedian(g, (i) => runs[i % runs.length]!(), 20);
    log(`${c.name.padEnd(16)} ${tag.padEnd(6)} ${ms.toFixed(4)} ms  ${(usefulFlops(c) / ms / 1e9).toFixed(0)} TFLOP/s`);
  }
  a.streamSynchronize(stream);
  for (const d of allocs) a.memFree(d);
}
writeFileSync(join(outDir, "sk-debug.txt"), lines.join("\n") + "\n");
