// The host C++ compiler the emulation tests run generated kernels with, and the emulation headers
// (test/codegen/emu: threads for lanes, barriers for __syncthreads, shuffles, fp8/bf16 conversions).
import { execFileSync } from "node:child_process";
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
