// The host C++ compiler the emulation tests run generated kernels with, and the emulation headers
// (test/codegen/emu: threads for lanes, barriers for __syncthreads, shuffles, fp8/bf16 conversions).
import { execFile, execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { promisify } from "node:util";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** "g++" when it runs here, else undefined (the tests that need it skip, saying so). */
export const GXX: string | undefined = (() => {
  try {
    execFileSync("g++", ["--version"], { stdio: "ignore" });
    return "g++";
  } catch {
    return undefined;
  }
})();

export const EMU = join(dirname(fileURLToPath(import.meta.url)), "emu");

/** Logs why `test` is skipped when there is no g++. */
export function noteIfNoGxx(test: string): void {
  if (!GXX) console.log(`test/codegen/${test}: skipped, no g++ on PATH`);
}

/** The CUDA compiler for the compile tests ($NVCC, nvcc on PATH, /usr/local/cuda/bin/nvcc), or undefined. */
export const NVCC: string | undefined = (() => {
  for (const c of [process.env.NVCC, "nvcc", "/usr/local/cuda/bin/nvcc"]) {
    if (!c) continue;
    try {
      execFileSync(c, ["--version"], { stdio: "ignore" });
      return c;
    } catch {
      // not this one
    }
  }
  return undefined;
})();

/** Logs why `test` is skipped when there is no nvcc. */
export function noteIfNoNvcc(test: string): void {
  if (!NVCC) console.log(`[codegen tier] skipping ${test}: nvcc not found ($NVCC, PATH, /usr/local/cuda/bin)`);
}

/** Reads one case's results from a program's output at byte `at`, checks them, returns where the next case's start. */
export type OutputCheck = (out: Buffer, at: number) => number;

/**
 * Builds `name` in `dir` from the emulation header, `kernels` (their source text and any helpers) and a
 * main() of `blocks` (each writes its case's results to the FILE* o), runs it, and hands the output to
 * `checks` in order, which must consume all of it.
 */
export async function runEmulated(dir: string, name: string, kernels: string, blocks: readonly string[], checks: readonly OutputCheck[]): Promise<void> {
  const exe = join(dir, name);
  writeFileSync(`${exe}.cpp`, `#include "cuda-emu.h"
${kernels}
int main(int, char** argv) {
  FILE* o = fopen(argv[1], "wb");
${blocks.join("\n")}
  fclose(o);
  return 0;
}
`);
  await promisify(execFile)(GXX!, ["-std=c++20", "-O1", "-pthread", "-w", `-I${EMU}`, `-I${join(EMU, "include")}`, "-x", "c++", `${exe}.cpp`, "-o", exe]);
  execFileSync(exe, [`${exe}.out`]);
  const out = readFileSync(`${exe}.out`);
  let at = 0;
  for (const check of checks) at = check(out, at);
  if (at !== out.length) throw new Error(`${name}: the checks read ${at} of the program's ${out.length} output bytes`);
}

/**
 * Builds and runs whole GEMM kernels on the CPU model of TMA / mbarrier / wgmma (emu/hopper-gemm-emu.h):
 * `build` writes `harness(kernel)` as `tag`.cpp in `dir` and compiles it; `output` runs it with its
 * arguments and returns its stdout, also when it exits non-zero (the harness prints why it failed).
 */
export function gemmModel<K>(dir: string, harness: (k: K) => string) {
  const run = promisify(execFile);
  return {
    build: async (k: K, tag: string): Promise<string> => {
      const exe = join(dir, tag);
      writeFileSync(`${exe}.cpp`, harness(k));
      await run(GXX!, ["-std=c++20", "-O1", "-pthread", "-w", `-I${EMU}`, `${exe}.cpp`, "-o", exe], { maxBuffer: 16 << 20 });
      return exe;
    },
    output: async (exe: string, args: number[]): Promise<string> => {
      try {
        return (await run(exe, args.map(String), { timeout: 300_000 })).stdout;
      } catch (e) {
        return String((e as { stdout?: string }).stdout ?? e);
      }
    },
  };
}
