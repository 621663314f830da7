// The native addon on a machine without a GPU (CI, developers): it is built and loads, it loads no
// CUDA library until asked, a missing libcuda is a clear report naming every path tried (or the
// override that was set), and CUDA calls without a driver throw instead of crashing the process.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

import { addonCandidates, cudaAvailable, libraryStatus, native, packArgs, packArgsAt, tryNative } from "../../runtime/cuda/native.ts";

const nativeTs = fileURLToPath(new URL("../../runtime/cuda/native.ts", import.meta.url));

/** Runs cudaAvailable() in a fresh Node process with extra environment variables. */
function cudaAvailableIn(env: Record<string, string>): { ok: boolean; reason?: string } {
  const script = `import(${JSON.stringify(nativeTs)}).then((m) => process.stdout.write(JSON.stringify(m.cudaAvailable())))`;
  const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    encoding: "utf8",
    env: { ...process.env, ...env },
  });
  if (r.status !== 0) throw new Error(`child failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout) as { ok: boolean; reason?: string };
}

const gpu = cudaAvailable();

describe("native addon", () => {
  it("is built and loads", () => {
    const loaded = tryNative();
    if (!loaded.ok) throw new Error(`${loaded.reason}\n(looked in ${addonCandidates().join(", ")})`);
    const info = loaded.addon.addonInfo();
    expect(info.napiVersion).toBe(8);
    for (const fn of ["memAlloc", "launchKernel", "nvrtcCompileProgram", "cublasLtMatmulPrepare", "cublasLtMatmulRun", "cublasLtMatmulFp8BlockScaled", "tensorMapEncodeTiled", "ncclAllReduce", "graphLaunch"]) {
      expect(typeof (loaded.addon as unknown as Record<string, unknown>)[fn]).toBe("function");
    }
  });

  it("cudaAvailable() never throws and explains itself", () => {
    expect(typeof gpu.ok).toBe("boolean");
    if (gpu.ok) expect(gpu.device.name.length).toBeGreaterThan(0);
    else expect(gpu.reason.length).toBeGreaterThan(20);
  });

  it.skipIf(gpu.ok)("without a driver, the reason lists every libcuda path tried and what to set", () => {
    if (gpu.ok) return;
    for (const path of ["/usr/local/cuda/lib64/libcuda.so.1", "/usr/local/cuda/targets/x86_64-linux/lib/libcuda.so.1", "libcuda.so.1 (loader path)"]) {
      expect(gpu.reason).toContain(path);
    }
    expect(gpu.reason).toContain("SHARDTS_LIBCUDA");
  });

  it("CUDA_HOME is searched first", () => {
    const r = cudaAvailableIn({ CUDA_HOME: "/opt/no-such-cuda", SHARDTS_LIBCUDA: "" });
    if (r.ok) return; // a GPU machine: libcuda was found elsewhere
    const lines = r.reason!.split("\n");
    const first = lines.findIndex((l) => l.startsWith("  ")); // the first candidate tried
    expect(lines[first]).toContain("/opt/no-such-cuda/lib64/libcuda.so.1: no such file");
  });

  it("SHARDTS_LIBCUDA overrides the search, and a wrong one is reported by name", () => {
    const r = cudaAvailableIn({ SHARDTS_LIBCUDA: "/nonexistent/libcuda.so.1" });
    expect(r.ok).toBe(false);
    expect(r.reason).toContain("/nonexistent/libcuda.so.1 (from SHARDTS_LIBCUDA): no such file");
    expect(r.reason).not.toContain("/usr/local/cuda/lib64/libcuda.so.1");
  });

  it("a file that is not a CUDA driver is refused with dlopen's reason", () => {
    const r = cudaAvailableIn({ SHARDTS_LIBCUDA: nativeTs });
    expect(r.ok).toBe(false);
    expect(r.reason).toContain(nativeTs);
    expect(r.reason).toMatch(/invalid ELF header|file too short|not an ELF/i);
  });

  it.skipIf(gpu.ok)("CUDA calls without a driver throw a clear error instead of crashing", () => {
    const addon = native();
    const calls: [string, () => unknown][] = [
      ["deviceCount", () => addon.deviceCount()],
      ["memAlloc", () => addon.memAlloc(1024)],
      ["memcpyHtoD", () => addon.memcpyHtoD(0n, new Float32Array(4))],
      ["launchKernel", () => addon.launchKernel(1n, 1, 1, 0, 0n, packArgs(["i32", 1]))],
      ["streamCreate", () => addon.streamCreate()],
      ["deviceProperties", () => addon.deviceProperties(0)],
      ["tensorMapEncodeTiled", () => addon.tensorMapEncodeTiled({ dtype: "u8", address: 0n, dims: [128, 64], strides: [128], box: [128, 64], swizzle: "128B" })],
      ["cublasLtMatmulFp8BlockScaled", () => addon.cublasLtMatmulFp8BlockScaled({ M: 128, N: 128, K: 128, a: 0n, b: 0n, sa: 0n, sb: 0n, d: 0n })],
    ];
    for (const [name, call] of calls) {
      let err: (Error & { code?: string; library?: string; tried?: string[] }) | undefined;
      try {
        call();
      } catch (e) {
        err = e as typeof err;
      }
      expect(err, name).toBeInstanceOf(Error);
      expect(err!.code, name).toBe("ERR_SHARDTS_LIBRARY_UNAVAILABLE");
      expect(err!.library, name).toBe("cuda");
      expect(err!.message, name).toMatch(/cannot load the CUDA driver library \(libcuda\.so\.1\)/);
      expect(err!.tried!.length, name).toBeGreaterThan(2);
    }
  });

  it("bad arguments are type errors, not crashes", () => {
    const addon = native();
    expect(() => addon.memFree("nope" as unknown as bigint)).toThrow(/ptr must be a bigint or a number/);
    expect(() => addon.memcpyDtoH(42 as unknown as Float32Array, 0n)).toThrow(/dst must be a TypedArray/);
    expect(() => addon.memAlloc(-1)).toThrow(/non-negative/);
    expect(() => addon.probe("cudnn" as never)).toThrow(/library must be/);
    expect(() => addon.launchKernel(1n, [1, 2, 3, 4] as never, 1, 0, 0n)).toThrow(/grid must have 1 to 3 dimensions/);
    expect(() => addon.nvrtcCreateProgram(42 as never)).toThrow(/source must be a string|cannot load NVRTC/);
  });

  it("the grouped GEMM checks its arguments before loading libcublas, naming the one at fault", () => {
    const g = native().cublasGroupedGemm;
    const dims = (m: number, n: number, k: number, lda: number, ldb: number, ldc: number) => new Int32Array([m, n, k, lda, ldb, ldc]);
    const call = (dt: string, d: unknown, p: unknown, transA = false) => () => g(dt as never, transA, false, d as never, p as never, 0, 0n);
    expect(call("f16", dims(2, 3, 4, 2, 4, 2), new BigUint64Array([16n, 32n, 48n]))).toThrow(/dtype must be 'f32' or 'bf16'/);
    expect(call("f32", [2, 3, 4, 2, 4, 2], new BigUint64Array(3))).toThrow(/dims must be an Int32Array/);
    expect(call("f32", dims(2, 3, 4, 2, 4, 2), [16n, 32n, 48n])).toThrow(/ptrs must be a BigUint64Array/);
    expect(call("f32", new Int32Array(12), new BigUint64Array(3))).toThrow(/6G entries and ptrs 3G/);
    expect(call("f32", dims(0, 3, 4, 2, 4, 2), new BigUint64Array([16n, 32n, 48n]))).toThrow(/problem 0 .*must be positive \(leave empty segments out\)/);
    // transA: A is stored k x m, so lda must cover k
    expect(call("f32", dims(2, 3, 4, 2, 4, 2), new BigUint64Array([16n, 32n, 48n]), true)).toThrow(/need lda >= 4, ldb >= 4, ldc >= 2; got 2, 4, 2/);
    expect(call("bf16", dims(2, 3, 4, 2, 4, 2), new BigUint64Array([16n, 0n, 48n]))).toThrow(/a null B pointer/);
    expect(() => (g as (...a: unknown[]) => void)("f32", false, false, dims(2, 3, 4, 2, 4, 2), new BigUint64Array(3), 0, 0n, 1)).toThrow(/takes 7 arguments/);
  });

  it("the prepared matmul checks its arguments before loading cuBLASLt, and a run needs a prepared handle", () => {
    const a = native();
    const ok = { dtype: "f32", m: 4, n: 4, k: 4, a: 256n, lda: 4, b: 256n, ldb: 4, d: 256n, ldd: 4 } as const;
    expect(() => a.cublasLtMatmulPrepare(42 as never)).toThrow(/options must be an object/);
    expect(() => a.cublasLtMatmulPrepare({ ...ok, dtype: "f64" as never })).toThrow(/dtype must be 'f32', 'bf16' or 'f16', got 'f64'/);
    expect(() => a.cublasLtMatmulPrepare({ ...ok, computeType: "f16" as never })).toThrow(/computeType must be 'f32' or 'tf32'/);
    expect(() => a.cublasLtMatmulPrepare({ ...ok, k: 0 })).toThrow(/must be positive \(got m=4 n=4 k=0 batch=1\); skip empty products/);
    expect(() => a.cublasLtMatmulPrepare({ ...ok, a: "x" as never })).toThrow(/a must be a bigint or a number/);
    const run = a.cublasLtMatmulRun as (...x: unknown[]) => void;
    expect(() => run(1, 0n, 0n, 0n, 0n, 0n)).toThrow(/takes 7 arguments, got 6/);
    expect(() => run("1", 0n, 0n, 0n, 0n, 0n, 0n)).toThrow(/handle must be the number cublasLtMatmulPrepare returned/);
    expect(() => run(1, -1, 0n, 0n, 0n, 0n, 0n)).toThrow(/a must be a non-negative integer/);
    if (!gpu.ok) {
      expect(() => run(1, 0n, 0n, 0n, 0n, 0n, 0n)).toThrow(/unknown handle 1; get one from cublasLtMatmulPrepare/);
      expect(() => a.cublasLtMatmulPrepare(ok)).toThrow(/cannot load the CUDA driver library/);
    }
  });

  it("each library's status is reported without throwing", () => {
    const status = libraryStatus();
    for (const name of ["cuda", "nvrtc", "cublasLt", "nccl", "cublas"] as const) {
      const s = status[name];
      expect(typeof s.ok).toBe("boolean");
      if (!s.ok) expect(s.reason).toMatch(/cannot load|not built/);
    }
  });

  it("packArgs lays kernel parameters out at their natural alignment", () => {
    const p = packArgs(["ptr", 0x1122334455667788n], ["f32", 1.5], ["ptr", 1n], ["i8", -1], ["f64", 2], ["bf16", 1], ["i32", 7]);
    // ptr 0..8, f32 8..12, pad, ptr 16..24, i8 24, pad, f64 32..40, bf16 40..42, pad, i32 44..48
    expect(p.byteLength).toBe(48);
    const v = new DataView(p.buffer);
    expect(v.getBigUint64(0, true)).toBe(0x1122334455667788n);
    expect(v.getFloat32(8, true)).toBe(1.5);
    expect(v.getBigUint64(16, true)).toBe(1n);
    expect(v.getInt8(24)).toBe(-1);
    expect(v.getFloat64(32, true)).toBe(2);
    expect(v.getUint16(40, true)).toBe(0x3f80);
    expect(v.getInt32(44, true)).toBe(7);
  });

  it("packArgsAt puts each argument where the device's parameter layout says (an over-aligned struct past offset 0)", () => {
    // as the H100 driver reported a kernel (CUtensorMap, CUtensorMap, ptr, i32): the maps start at 48
    const layout = [{ offset: 48, size: 128 }, { offset: 176, size: 128 }, { offset: 304, size: 8 }, { offset: 312, size: 4 }];
    const map = (b: number) => new Uint8Array(128).fill(b);
    const p = packArgsAt(layout, ["bytes", map(1), 64], ["bytes", map(2), 64], ["ptr", 5n], ["i32", 9]);
    expect(p.byteLength).toBe(316);
    expect(p[47]).toBe(0);
    expect(p[48]).toBe(1);
    expect(p[176]).toBe(2);
    const v = new DataView(p.buffer);
    expect(v.getBigUint64(304, true)).toBe(5n);
    expect(v.getInt32(312, true)).toBe(9);
    expect(() => packArgsAt(layout, ["bytes", map(1), 64])).toThrow(/takes 4 parameters, got 1/);
    expect(() => packArgsAt(layout, ["bytes", map(1), 64], ["bytes", map(2), 64], ["ptr", 5n], ["i64", 9])).toThrow(/argument 3 \(i64\) is 8 bytes; the kernel's parameter 3 is 4/);
  });
});
