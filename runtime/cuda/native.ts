// Loading the native addon (native/, built by `npm install` or `npm run build:native`) and the typed
// surface over it. Requiring this module loads nothing; native() loads the addon on first use and
// the addon loads each CUDA library on first use (see native/src/loader.h for the search order).
//
//   import { native, cudaAvailable } from "./native.ts";
//   const gpu = cudaAvailable();            // never throws
//   if (gpu.ok) { const p = native().memAlloc(1024); ... }
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import type { DeviceProperties, DevicePtr, LibraryName, LibraryProbe, MatmulOptions, NativeAddon, Stream } from "./native-types.ts";

export * from "./native-types.ts";
export { packArgs, packArgsAt, f32ToBf16Bits, f32ToF16Bits, type KernelArg } from "./kernel-args.ts";

const ADDON_FILE = "shardts_native.node";

/** Where the addon is looked for, in order. */
export function addonCandidates(): string[] {
  const here = dirname(fileURLToPath(import.meta.url));
  const out: string[] = [];
  const override = process.env.SHARDTS_NATIVE_ADDON;
  if (override) out.push(resolve(override));
  // In the source tree (runtime/cuda/ -> native/build/...), and next to a bundle (.gpu/*.mjs).
  out.push(join(here, "..", "..", "native", "build", "Release", ADDON_FILE));
  out.push(join(here, "..", "..", "native", "build", "Debug", ADDON_FILE));
  out.push(join(here, ADDON_FILE));
  return [...new Set(out)];
}

function lastBuildSaid(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const status = join(here, "..", "..", "native", "build", "build-status.json");
  if (!existsSync(status)) return "no build has run (was npm install run with --ignore-scripts?)";
  try {
    const s = JSON.parse(readFileSync(status, "utf8")) as { ok: boolean; reason: string; log: string | null; when: string };
    if (s.ok) return `it succeeded (${s.when}), but the file is gone`;
    return `${s.reason}${s.log ? ` (log: ${s.log})` : ""}`;
  } catch (e) {
    return `unreadable status file ${status}: ${(e as Error).message}`;
  }
}

let cached: { addon: NativeAddon; path: string } | undefined;

/** Loads the addon, or throws an Error that says how to build it and what its last build said. */
export function native(): NativeAddon {
  return loadNative().addon;
}

export function loadNative(): { addon: NativeAddon; path: string } {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const candidates = addonCandidates();
  const path = candidates.find((p) => existsSync(p));
  if (!path) {
    throw new Error(
      `shardts: the native addon (${ADDON_FILE}) is not built, so the CUDA backend is unavailable. ` +
        `Looked for: ${candidates.join(", ")}. Run \`npm run build:native\`; the last build said: ${lastBuildSaid()}`,
    );
  }
  try {
    cached = { addon: require(path) as NativeAddon, path };
  } catch (e) {
    throw new Error(`shardts: the native addon ${path} exists but does not load: ${(e as Error).message}. Rebuild it with \`npm run build:native\`.`);
  }
  return cached;
}

/** The addon, or why it cannot be loaded; never throws. */
export function tryNative(): { ok: true; addon: NativeAddon; path: string } | { ok: false; reason: string } {
  try {
    return { ok: true, ...loadNative() };
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
}

export type CudaAvailability =
  | {
      ok: true;
      deviceCount: number;
      /** Device 0's properties. */
      device: DeviceProperties;
      driverVersion: number;
      /** The libcuda that was loaded. */
      libcuda: string;
    }
  | { ok: false; reason: string };

/** Whether CUDA can be used here, with the first device's properties, or why not. Never throws. */
export function cudaAvailable(): CudaAvailability {
  const loaded = tryNative();
  if (!loaded.ok) return { ok: false, reason: loaded.reason };
  const addon = loaded.addon;
  try {
    const lib = addon.probe("cuda");
    if (!lib.ok) return { ok: false, reason: lib.reason ?? "libcuda could not be loaded" };
    let count: number;
    try {
      count = addon.deviceCount();
    } catch (e) {
      return { ok: false, reason: `the CUDA driver (${lib.path}) found no usable GPU: ${(e as Error).message}` };
    }
    if (count < 1) return { ok: false, reason: `the CUDA driver (${lib.path}) reports no CUDA device` };
    return { ok: true, deviceCount: count, device: addon.deviceProperties(0), driverVersion: addon.driverVersion(), libcuda: lib.path ?? "" };
  } catch (e) {
    return { ok: false, reason: `CUDA check failed: ${(e as Error).message}` };
  }
}

/** Each CUDA library's load status (loads what can be loaded); never throws. */
export function libraryStatus(): Record<LibraryName, LibraryProbe | { ok: false; reason: string }> {
  const loaded = tryNative();
  const names: LibraryName[] = ["cuda", "nvrtc", "cublasLt", "nccl", "cublas"];
  const out = {} as Record<LibraryName, LibraryProbe | { ok: false; reason: string }>;
  for (const n of names) {
    if (!loaded.ok) out[n] = { ok: false, reason: loaded.reason };
    else {
      try {
        out[n] = loaded.addon.probe(n);
      } catch (e) {
        out[n] = { ok: false, reason: (e as Error).message };
      }
    }
  }
  return out;
}

/**
 * A matmul on row-major operands: D[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C[M,N], with
 * op(X) = transX ? Xᵀ : X. A is stored M×K (K×M when transA), B K×N (N×K when transB), C and D
 * M×N; leading dimensions default to the stored row length. Implemented as the column-major product
 * Dᵀ = op(B)ᵀ op(A)ᵀ, which reads the same memory.
 */
export interface RowMajorMatmul extends Omit<MatmulOptions, "m" | "n" | "k" | "lda" | "ldb" | "ldd"> {
  M: number;
  N: number;
  K: number;
  lda?: number;
  ldb?: number;
  ldd?: number;
  workspace?: DevicePtr;
  stream?: Stream;
}

/** The column-major problem cuBLASLt is asked for (see RowMajorMatmul). */
export function columnMajor(o: Omit<RowMajorMatmul, "stream">): MatmulOptions {
  const lda = o.lda ?? (o.transA ? o.M : o.K);
  const ldb = o.ldb ?? (o.transB ? o.K : o.N);
  const ldd = o.ldd ?? o.N;
  return {
    dtype: o.dtype, outDtype: o.outDtype, computeType: o.computeType,
    m: o.N, n: o.M, k: o.K,
    a: o.b, lda: ldb, transA: o.transB ?? false,
    b: o.a, ldb: lda, transB: o.transA ?? false,
    c: o.c, ldc: o.ldc ?? (o.c !== undefined ? ldd : undefined),
    d: o.d, ldd,
    alpha: o.alpha, beta: o.beta,
    batch: o.batch, strideA: o.strideB, strideB: o.strideA, strideC: o.strideC, strideD: o.strideD,
    workspaceBytes: o.workspace ? o.workspaceBytes : undefined,
  };
}

/**
 * One matmul, prepared and run at once: for one-off callers (checks, tests). Hot paths keep their
 * handles (runtime/cuda/matmul-plans.ts) so a call costs one positional native call.
 */
export function matmulRowMajor(addon: NativeAddon, o: RowMajorMatmul): void {
  const h = addon.cublasLtMatmulPrepare(columnMajor(o));
  addon.cublasLtMatmulRun(h, o.b, o.a, o.c ?? 0n, o.d, o.workspace ?? 0n, o.stream ?? 0n);
}
