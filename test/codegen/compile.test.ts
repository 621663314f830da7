// Every kernel generated for the representative programs (programs.ts) compiles for sm_90a with the
// machine's nvcc, with no warnings, no local-memory spills and no stack frame (per-thread row caches
// stay in registers). One .cu per program (the guarded prelude lets kernels share a file), compiled
// two at a time. Register counts and compile times are printed. Skipped, saying so, without nvcc.
import { afterAll, describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import { mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { emitCuda } from "../../compiler/codegen/cuda/emit.ts";
import { dumpCuda } from "../../compiler/codegen/dump.ts";
import { PROGRAMS } from "./programs.ts";
import { tuning, tuningLabel, type EmitTuning } from "../../compiler/codegen/cuda/tuning.ts";
import { NVCC, noteIfNoNvcc } from "./gxx.ts";

// (not the occupancy knob: a tighter register cap spills in some kernels; the benchmark times it on softmax alone)
const TUNED: Partial<EmitTuning>[] = [{ keepExp: false }, { online: false }, { fast: false }];

noteIfNoNvcc("compile.test.ts");

interface Compiled {
  seconds: number;
  log: string;
  kernels: Map<string, { regs: number; stack: number; spillStores: number; spillLoads: number }>;
}

function nvcc(file: string): Promise<Compiled> {
  const t0 = performance.now();
  const args = ["-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-Xptxas", "-v", "-o", file.replace(/\.cu$/, ".cubin"), file];
  return new Promise((resolve, reject) =>
    execFile(NVCC!, args, { maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const log = stdout + stderr;
      if (err) return reject(new Error(`nvcc ${args.join(" ")} failed:\n${log}`));
      const kernels: Compiled["kernels"] = new Map();
      let cur = "";
      for (const line of log.split("\n")) {
        const entry = /Compiling entry function '(\w+)'/.exec(line);
        if (entry) kernels.set((cur = entry[1]!), { regs: -1, stack: -1, spillStores: -1, spillLoads: -1 });
        const props = /(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/.exec(line);
        if (props && cur) Object.assign(kernels.get(cur)!, { stack: +props[1]!, spillStores: +props[2]!, spillLoads: +props[3]! });
        const regs = /Used (\d+) registers/.exec(line);
        if (regs && cur) kernels.get(cur)!.regs = +regs[1]!;
      }
      resolve({ seconds: (performance.now() - t0) / 1000, log, kernels });
    }),
  );
}

/** Runs the jobs with at most `n` at once (the CI machines have two cores). */
async function pool<T>(jobs: (() => Promise<T>)[], n: number): Promise<T[]> {
  const out: T[] = new Array(jobs.length);
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < jobs.length) {
      const i = next++;
      out[i] = await jobs[i]!();
    }
  }));
  return out;
}

describe.skipIf(!NVCC)("generated kernels compile for sm_90a", () => {
  const dir = mkdtempSync(join(tmpdir(), "shardts-codegen-"));
  const report: string[] = [];
  // every program with the default emitter, and the row and fused programs with each variant the
  // memory-bound benchmark times (compiler/codegen/cuda/tuning.ts)
  const built = [
    ...PROGRAMS.map((p) => ({ name: p.name, prog: emitCuda(p.build().fp) })),
    ...PROGRAMS.filter((p) => ["rows-bf16-1000", "rows-f32-4096", "fused-bf16"].includes(p.name)).flatMap((p) =>
      TUNED.map((t) => ({ name: `${p.name} [${tuningLabel(tuning(t))}]`.replace(/[^\w.-]+/g, "_"), prog: emitCuda(p.build().fp, undefined, tuning(t)) })),
    ),
  ];

  it("every program's kernels compile without warnings, spills or stack", async () => {
    const t0 = performance.now();
    const files = built.map(({ name, prog }) => {
      const file = join(dir, `${name}.cu`);
      writeFileSync(file, prog.kernels.map((k) => k.source).join("\n"));
      return file;
    });
    // and one dumped kernel alone: a kernel's source needs nothing but the CUDA headers
    const dumped = dumpCuda(join(dir, "dump"), built.find((b) => b.name === "fused-bf16")!.prog);
    const single = dumped.find((f) => f.endsWith(".cu"))!;
    const results = await pool([...files, single].map((f) => () => nvcc(f)), 2);
    const wall = (performance.now() - t0) / 1000;
    let total = 0;
    built.forEach(({ name, prog }, i) => {
      const r = results[i]!;
      expect(r.log, `${name}: nvcc warnings`).not.toMatch(/warning/i);
      const names = prog.kernels.map((k) => k.name);
      expect([...r.kernels.keys()].sort(), name).toEqual([...names].sort());
      for (const [k, s] of r.kernels) {
        expect(s.spillStores + s.spillLoads, `${k}: spills`).toBe(0);
        expect(s.stack, `${k}: stack frame (local memory)`).toBe(0);
        expect(s.regs).toBeGreaterThan(0);
      }
      total += names.length;
      const regs = [...r.kernels.values()].map((s) => s.regs);
      report.push(`${name.padEnd(22)} ${String(names.length).padStart(3)} kernels  ${r.seconds.toFixed(1).padStart(5)} s  registers ${Math.min(...regs)}..${Math.max(...regs)}`);
      for (const k of prog.kernels) report.push(`    ${k.name.padEnd(60)} ${String(r.kernels.get(k.name)!.regs).padStart(3)} regs  ${k.launch.kind === "row" ? `row: ${k.launch.rowThreads} threads/row, vec ${k.launch.vec}, ${k.launch.chunks ? `${k.launch.chunks} chunk(s) in registers` : "rereads rows"}` : `map: vec ${k.launch.vec}`}`);
    });
    expect(results[results.length - 1]!.kernels.size).toBe(1);
    expect(readdirSync(join(dir, "dump"))).toContain("kernels.json");
    report.unshift(`nvcc sm_90a: ${total} kernels in ${built.length} files (+1 dumped kernel alone), ${wall.toFixed(1)} s wall on 2 parallel jobs`);
  }, 300_000);

  afterAll(() => console.log(report.join("\n")));
});
