// A native layer that does no device work: every NativeAddon method answers at once (handles are
// fresh bigints, NVRTC "compiles" to an empty image, NCCL calls succeed), so the CUDA executor and
// RankLocal's host path (runtime/cuda/nccl/collectives.ts) run on the CPU. The unit tests use it for
// per-call counts; bench/host/ for the host overhead of a collective and of a whole training step.
// Live events are tracked so a test sees leaks. Reads of device memory answer what `read` writes
// (zeros by default), except a buffer last filled by memsetD32 (the executor's index-check flags),
// which reads back its fill value, so an index check passes as it would on a GPU. Every library
// probes as loaded unless `missing` names it (libcublas missing: the segment GEMMs' cuBLASLt loop).
// NCCL calls answer what `ncclStatus` says (0 by default); a failing status throws the error
// native/src/nccl.cc's `check` throws. ncclIssue does what native/src/nccl.cc's `Issue` does, call by
// call: the spy sees each record, wait and NCCL call it makes after the ncclIssue itself, so a
// recorded sequence compares with the separate calls' (`calls` counts the one native call).
import type { DeviceProperties, LibraryName, MatmulOptions, NativeAddon } from "../../runtime/cuda/native-types.ts";
import type { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { CachingAllocator } from "../../runtime/cuda/memory.ts";

export interface FakeAddon {
  addon: NativeAddon;
  /** Calls per method name since the last reset. */
  calls: Map<string, number>;
  /** Events created and not destroyed. */
  liveEvents: Set<bigint>;
  /** The options a cublasLtMatmulPrepare handle was made from (handles count from 1). */
  matmulProblem(handle: number): MatmulOptions;
  /** The kernel name a moduleGetFunction handle was got for. */
  kernelName(fn: unknown): string | undefined;
  reset(): void;
}

export interface FakeOptions {
  /** Fills the host buffer of a device-to-host copy (default: left as it is, zeros for a fresh array). */
  read?: (dst: ArrayBufferView | ArrayBuffer) => void;
  /** Sees every call with its arguments (argument buffers the caller reuses must be copied). */
  spy?: (method: string, args: unknown[]) => void;
  /** What a flag buffer (filled by memsetD32) reads back, given its fill (default: the fill: no index flagged). */
  flag?: (fill: number) => number;
  /** Libraries that probe as not loadable. */
  missing?: LibraryName[];
  /** What an NCCL collective, send, recv or group call answers (0 ncclSuccess, 7 ncclInProgress, else it throws). */
  ncclStatus?: (method: string, args: unknown[]) => number;
}

const NCCL_RESULT = ["ncclSuccess", "ncclUnhandledCudaError", "ncclSystemError", "ncclInternalError", "ncclInvalidArgument", "ncclInvalidUsage", "ncclRemoteError", "ncclInProgress", "ncclTimeout"];
/** The error native/src/nccl.cc's `check` throws for a failing status (the fake's ncclGetErrorString says "fake NCCL error"). */
function ncclError(call: string, code: number): Error {
  const codeName = NCCL_RESULT[code] ?? "ncclUnknownResult";
  return Object.assign(new Error(`${call} failed: ${codeName} (${code}): fake NCCL error`), { library: "nccl", call, code, codeName });
}
/** The call name native/src/nccl.cc gives an NCCL entry point in its errors. */
const ncclCallName = (method: string, args: unknown[]) => (method === "ncclSend" || method === "ncclRecv" ? `${method}(peer ${String(args[3])})` : method);
const ISSUE_METHOD = ["ncclAllGather", "ncclReduceScatter", "ncclAllReduce", "ncclSend", "ncclRecv", "ncclGroupStart", "ncclGroupEnd"];
const NCCL_BYTES = [1, 1, 4, 4, 8, 8, 2, 4, 8, 2, 1, 1];

/** An H200's figures, so launch geometry (grids, resident blocks) is what the GPU run computes. */
const H200: DeviceProperties = {
  ordinal: 0, name: "fake H200 (no device)", computeCapability: [9, 0], arch: "sm_90", smCount: 132, totalMemory: 150e9,
  l2CacheBytes: 60 << 20, persistingL2CacheMaxBytes: null, sharedMemPerBlock: 49152, sharedMemPerBlockOptin: 232448,
  sharedMemPerSM: 233472, totalConstantMemory: 65536, registersPerBlock: 65536, maxThreadsPerBlock: 1024, maxThreadsPerSM: 2048,
  maxBlocksPerSM: 32, warpSize: 32, clockRateKHz: null, memoryClockRateKHz: null, memoryBusWidthBits: null, asyncEngineCount: null,
  eccEnabled: true, integrated: false, cooperativeLaunch: true, pciBusId: "0000:00:00.0",
  // 0: kernel cache keys (runtime/cuda/compile.ts) never match a real driver's
  driverVersion: 0,
};

export function fakeAddon(opts: FakeOptions = {}): FakeAddon {
  const liveEvents = new Set<bigint>();
  const matmuls: MatmulOptions[] = [];
  const flags = new Map<bigint, number>();
  const kernels = new Map<bigint, string>();
  // device memory and NVRTC programs count apart from other handles: whether a kernel came from the
  // disk cache (no program made) changes neither the buffers nor the functions a run gets
  let next = 0x1000n, mem = 0x7f0000000000n, programs = 0n, capturing = 0;
  const handle = () => ++next;
  const readBack = (dst: unknown, src: unknown) => {
    const v = flags.get(src as bigint);
    if (v === undefined) return opts.read?.(dst as ArrayBufferView);
    flags.delete(src as bigint);
    new Int32Array((dst as ArrayBufferView).buffer, (dst as ArrayBufferView).byteOffset, 1)[0] = (opts.flag ? opts.flag(v | 0) : v) | 0;
  };
  const answers: Record<string, (...a: unknown[]) => unknown> = {
    eventCreate: () => (liveEvents.add(++next), next),
    eventDestroy: (e) => {
      if (!liveEvents.delete(e as bigint)) throw new Error(`fake addon: eventDestroy of an unknown event ${String(e)}`);
    },
    streamCreate: handle,
    memAlloc: () => (mem += 0x100000n),
    // page-locked host memory: an ordinary ArrayBuffer
    hostAlloc: (n) => new ArrayBuffer(Number(n)),
    memsetD32: (p, v) => void flags.set(p as bigint, v as number),
    memsetD8: (p) => void flags.delete(p as bigint),
    memcpyDtoH: (dst, src) => readBack(dst, src),
    memcpyDtoHAsync: (dst, src) => readBack(dst, src),
    probe: (lib) =>
      opts.missing?.includes(lib as LibraryName)
        ? { ok: false, library: lib, reason: `fake addon: ${String(lib)} is missing`, tried: [] }
        : { ok: true, library: lib, path: `fake ${String(lib)}`, version: "0", tried: [] },
    deviceProperties: () => H200,
    driverVersion: () => 0,
    nvrtcVersion: () => [0, 0],
    nvrtcCreateProgram: () => ++programs,
    nvrtcCompileProgram: () => ({ ok: true, log: "" }),
    nvrtcGetCUBIN: () => new Uint8Array(0),
    moduleLoadData: handle,
    moduleGetFunction: (_m, name) => (kernels.set(++next, String(name)), next),
    funcGetAttributes: () => ({ maxThreadsPerBlock: 1024, sharedSizeBytes: 0, constSizeBytes: 0, localSizeBytes: 0, numRegs: 32, ptxVersion: 90, binaryVersion: 90, maxDynamicSharedSizeBytes: 0 }),
    funcGetParamLayout: () => null,
    // an opaque CUtensorMap (the generated GEMMs' launches pack it by value) holding its global address
    // in its first 8 bytes, so a scan of a launch's parameters finds the buffers it reads through TMA
    tensorMapEncodeTiled: (o) => {
      const m = new Uint8Array(128);
      new DataView(m.buffer).setBigUint64(0, BigInt((o as { address: bigint }).address), true);
      return m;
    },
    // a copy: the caller may reuse its options object
    cublasLtMatmulPrepare: (o) => matmuls.push({ ...(o as MatmulOptions) }),
    cublasLtMatmulRun: (h) => {
      if (!matmuls[(h as number) - 1]) throw new Error(`fake addon: cublasLtMatmulRun with an unknown handle ${String(h)}`);
    },
    // stream capture: the stream answers "active" (1) between begin and end, as the driver's does
    streamBeginCapture: () => void (capturing = 1),
    streamEndCapture: () => ((capturing = 0), handle()),
    streamIsCapturing: () => capturing,
    graphInstantiate: handle,
    ncclCommGetAsyncError: () => 0,
    // CUDA IPC (the MoE NVLink windows): every pair of devices has peer access; handles are 64 zero bytes
    deviceCanAccessPeer: () => true,
    ipcGetMemHandle: () => new Uint8Array(64),
    ipcOpenMemHandle: () => (mem += 0x100000n),
  };
  const nccl = (method: string, args: unknown[]) => {
    const r = opts.ncclStatus?.(method, args) ?? 0;
    if (r !== 0 && r !== 7) throw ncclError(ncclCallName(method, args), r);
    return r;
  };
  for (const m of ISSUE_METHOD) answers[m] = (...args) => nccl(m, args);
  answers.ncclGroupStart = () => void nccl("ncclGroupStart", []);
  // native/src/nccl.cc `Issue`, its argument checks included
  answers.ncclIssue = (comm, compute, cs, start, done, o, p, k, dtype, first) => {
    const ops = o as Int32Array, ptrs = p as BigUint64Array, counts = k as Float64Array, n = ops.length / 4, eb = BigInt(NCCL_BYTES[dtype as number] ?? 0);
    if (!(ops instanceof Int32Array) || !(ptrs instanceof BigUint64Array) || !(counts instanceof Float64Array)) throw new TypeError("fake addon: ncclIssue: ops, ptrs, counts must be an Int32Array, a BigUint64Array, a Float64Array");
    if (!eb || !Number.isInteger(n) || counts.length !== 3 * n || !Number.isInteger(first) || (first as number) < 0 || (first as number) > n) throw new RangeError("fake addon: ncclIssue: bad dtype, array lengths or first");
    for (let i = 0; i < n; i++) {
      const [op, a, b] = ops.subarray(4 * i, 4 * i + 3), two = op! <= 2;
      if (op! < 0 || op! > 6) throw new RangeError(`fake addon: ncclIssue: call ${i}: unknown op ${op}`);
      if (op! >= 5) continue;
      if (!(a! >= 0 && a! < ptrs.length && (!two || (b! >= 0 && b! < ptrs.length)))) throw new RangeError(`fake addon: ncclIssue: call ${i}: a buffer index outside ptrs`);
      if (!ptrs[a!] || (two && !ptrs[b!])) throw new RangeError(`fake addon: ncclIssue: call ${i}: a null buffer pointer`);
      for (let j = 0; j < (two ? 3 : 2); j++) if (!Number.isSafeInteger(counts[3 * i + j]!) || counts[3 * i + j]! < 0) throw new RangeError(`fake addon: ncclIssue: call ${i}: bad count or offset`);
    }
    const made = (method: string, args: unknown[]) => opts.spy?.(method, args);
    if (first === 0) (made("eventRecord", [start, compute]), made("streamWaitEvent", [cs, start]));
    const at = (i: number, j: number) => ptrs[ops[4 * i + j]!]! + BigInt(counts[3 * i + j]!) * eb;
    for (let i = first as number; i < n; i++) {
      const op = ops[4 * i]!, count = counts[3 * i]!, method = ISSUE_METHOD[op]!;
      const args =
        op <= 2 ? [at(i, 1), at(i, 2), count, dtype, ...(op === 0 ? [] : [ops[4 * i + 3]]), comm, cs]
        : op <= 4 ? [at(i, 1), count, dtype, ops[4 * i + 3], comm, cs]
        : [];
      made(method, args);
      if (nccl(method, args) === 7) return i;
    }
    made("eventRecord", [done, cs]);
    return n;
  };
  // one function per method, made on first use (a fresh closure per access would be most of the cost timed)
  const counters = new Map<string, { n: number }>();
  const fns = new Map<string, (...a: unknown[]) => unknown>();
  const addon = new Proxy({}, {
    get: (_, name: string) => {
      let fn = fns.get(name);
      if (!fn) {
        const c = { n: 0 }, f = answers[name], dflt = name.startsWith("nccl") ? 0 : undefined;
        counters.set(name, c);
        const spy = opts.spy;
        fn = f ? (...args: unknown[]) => (c.n++, f(...args)) : () => (c.n++, dflt);
        if (spy) {
          const inner = fn;
          fn = (...args: unknown[]) => (spy(name, args), inner(...args));
        }
        fns.set(name, fn);
      }
      return fn;
    },
  }) as NativeAddon;
  const calls = new Map<string, number>();
  const snapshot = () => {
    calls.clear();
    for (const [k, c] of counters) if (c.n) calls.set(k, c.n);
    return calls;
  };
  return {
    addon, liveEvents,
    matmulProblem: (h) => {
      const o = matmuls[h - 1];
      if (!o) throw new Error(`fake addon: no cublasLtMatmulPrepare handle ${h}`);
      return o;
    },
    kernelName: (fn) => kernels.get(fn as bigint),
    get calls() { return snapshot(); },
    reset: () => counters.forEach((c) => (c.n = 0)),
  };
}

/** The parts of a CudaExecutor that RankLocal uses, over the fake addon. */
export function fakeExecutor(addon: NativeAddon): CudaExecutor {
  const mem = new CachingAllocator(addon);
  return {
    addon, mem, stream: addon.streamCreate(0),
    release: (t: { ptr: bigint; bytes: number } | undefined) => t && mem.release(t),
    copyStrided: () => addon.launchKernel(0n as never, [1, 1, 1], [1, 1, 1], 0, 0n as never, new Uint8Array(0) as never),
  } as unknown as CudaExecutor;
}
