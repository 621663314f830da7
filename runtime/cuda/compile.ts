// NVRTC compilation with a disk cache. The cache key is the source's hash with the architecture, the
// NVRTC version and the driver version, so a driver or toolkit change recompiles. A failed compile
// is a CompileError carrying NVRTC's log, the source with line numbers and a one-line repro.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { CompileError } from "../../compiler/errors.ts";
import type { NativeAddon } from "./native-types.ts";

export interface CompiledKernel {
  cubin: Uint8Array;
  /** Whether it came from the disk cache. */
  cached: boolean;
  ms: number;
  key: string;
}

export const cacheDir = (): string => process.env.SHARDTS_CACHE_DIR ?? join(homedir(), ".cache", "shardts");

/** `compute_90a`-style target for a device's compute capability (Hopper gets the `a` features). */
export function archFor(major: number, minor: number): string {
  return `sm_${major}${minor}${major === 9 && minor === 0 ? "a" : ""}`;
}

function includeDirs(): string[] {
  const roots = [process.env.CUDA_HOME, process.env.CUDA_PATH, "/usr/local/cuda"].filter((x): x is string => !!x);
  return roots.map((r) => join(r, "include")).filter((d) => existsSync(d));
}

export function numbered(source: string): string {
  return source.split("\n").map((l, i) => `${String(i + 1).padStart(4)} | ${l}`).join("\n");
}

export function compileCuda(addon: NativeAddon, name: string, source: string, arch: string, extraOptions: string[] = []): CompiledKernel {
  const t0 = performance.now();
  const [nvMaj, nvMin] = addon.nvrtcVersion();
  const options = [`--gpu-architecture=${arch}`, "--std=c++17", "-default-device", ...includeDirs().map((d) => `--include-path=${d}`), ...extraOptions];
  const key = createHash("sha256").update(JSON.stringify([source, arch, nvMaj, nvMin, addon.driverVersion(), extraOptions])).digest("hex");
  const dir = cacheDir(), file = join(dir, `${key}.cubin`);
  if (existsSync(file)) return { cubin: new Uint8Array(readFileSync(file)), cached: true, ms: performance.now() - t0, key };

  const prog = addon.nvrtcCreateProgram(source, `${name}.cu`);
  try {
    const { ok, log } = addon.nvrtcCompileProgram(prog, options);
    if (!ok) {
      const repro = `nvcc -gencode=arch=${arch.replace("sm_", "compute_")},code=${arch} -cubin ${name}.cu   # the source is below; save it as ${name}.cu`;
      throw new CompileError(`NVRTC could not compile kernel '${name}' for ${arch}:\n${log.trim()}\n\nsource:\n${numbered(source)}\n\nrepro: ${repro}`);
    }
    const cubin = addon.nvrtcGetCUBIN(prog);
    // written aside and renamed, so a crash never leaves a torn cache entry
    mkdirSync(dir, { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, cubin);
    renameSync(tmp, file);
    return { cubin, cached: false, ms: performance.now() - t0, key };
  } finally {
    addon.nvrtcDestroyProgram(prog);
  }
}
