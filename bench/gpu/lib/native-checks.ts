// The GPU checks of the native addon, as plain functions: test/gpu/native.test.ts runs them under
// vitest, and bench/gpu/native-check.ts runs them as a bundled Node script on a GPU machine (which has
// no node_modules). Each check throws on failure and returns a one-line summary of what it measured.
// Inputs are fresh seeded random data, never zeros; tolerances follow DESIGN.md (f32 < 1e-5
// relative, bf16 < 1e-2), with relative error = max |got - ref| / max |ref| over the output.
import { mulberry32 } from "../../../test/helpers/prng.ts";
import { relError } from "./compare.ts";
import {
  CaptureStatus,
  NcclDataType,
  NcclRedOp,
  f32ToBf16Bits,
  matmulRowMajor,
  packArgs,
  type DevicePtr,
  type KernelFunction,
  type Module,
  type NativeAddon,
  type Stream,
} from "../../../runtime/cuda/native.ts";

export interface NativeCheck {
  name: string;
  run(ctx: CheckContext): string;
}

const AXPB_SOURCE = `
extern "C" __global__ void axpb(float* __restrict__ y, const float* __restrict__ x, float a, float b, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + b;
}
`;

/** Shared state for one run of the checks: the addon, a stream, the compiled test kernel, allocations. */
export class CheckContext {
  private allocs: DevicePtr[] = [];
  private modules: Module[] = [];
  private streams: Stream[] = [];
  private kernel?: { fn: KernelFunction; arch: string; ptxFn: KernelFunction; module: Module };
  readonly rand: () => number;

  constructor(readonly addon: NativeAddon, seed = 20261122) {
    this.rand = mulberry32(seed);
  }

  alloc(bytes: number): DevicePtr {
    const p = this.addon.memAlloc(bytes);
    this.allocs.push(p);
    return p;
  }

  stream(): Stream {
    const s = this.addon.streamCreate();
    this.streams.push(s);
    return s;
  }

  randomF32(n: number, scale = 1): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = (this.rand() * 2 - 1) * scale;
    return out;
  }

  /** The compile target for this device: sm_XY, or the newest NVRTC arch below it. */
  arch(): string {
    const [maj, min] = this.addon.deviceProperties(0).computeCapability;
    const cc = maj * 10 + min;
    const supported = this.addon.nvrtcSupportedArchs().filter((a) => a <= cc);
    if (supported.length === 0) throw new Error(`NVRTC supports no architecture at or below sm_${cc}`);
    return `sm_${Math.max(...supported)}`;
  }

  /** axpb compiled by NVRTC to a CUBIN for this device, and to PTX (JIT-compiled by the driver). */
  axpb(): { fn: KernelFunction; arch: string; ptxFn: KernelFunction; module: Module } {
    if (this.kernel) return this.kernel;
    const a = this.addon;
    const arch = this.arch();
    const compile = (target: string) => {
      const prog = a.nvrtcCreateProgram(AXPB_SOURCE, "axpb.cu");
      try {
        const r = a.nvrtcCompileProgram(prog, [`--gpu-architecture=${target}`, "--std=c++17"]);
        if (!r.ok) throw new Error(`NVRTC failed to compile axpb for ${target}:\n${r.log}`);
        return target.startsWith("sm_") ? a.nvrtcGetCUBIN(prog) : a.nvrtcGetPTX(prog);
      } finally {
        a.nvrtcDestroyProgram(prog);
      }
    };
    const cubinMod = a.moduleLoadData(compile(arch));
    this.modules.push(cubinMod);
    const ptxMod = a.moduleLoadData(compile(arch.replace("sm_", "compute_")));
    this.modules.push(ptxMod);
    this.kernel = { fn: a.moduleGetFunction(cubinMod, "axpb"), arch, ptxFn: a.moduleGetFunction(ptxMod, "axpb"), module: cubinMod };
    return this.kernel;
  }

  launchAxpb(fn: KernelFunction, y: DevicePtr, x: DevicePtr, aVal: number, bVal: number, n: number, stream: Stream): void {
    const params = packArgs(["ptr", y], ["ptr", x], ["f32", aVal], ["f32", bVal], ["i32", n]);
    this.addon.launchKernel(fn, Math.ceil(n / 256), 256, 0, stream, params);
  }

  dispose(): void {
    const a = this.addon;
    try {
      a.ctxSynchronize();
    } catch {
      // a failed check may have left the context unusable; free what can be freed
    }
    for (const p of this.allocs.splice(0)) tryIt(() => a.memFree(p));
    for (const m of this.modules.splice(0)) tryIt(() => a.moduleUnload(m));
    for (const s of this.streams.splice(0)) tryIt(() => a.streamDestroy(s));
    this.kernel = undefined;
  }
}

function tryIt(f: () => void): void {
  try {
    f();
  } catch {
    // cleanup only
  }
}

function assert(cond: boolean, message: string): asserts cond {
  if (!cond) throw new Error(message);
}

function expectThrow(f: () => void, pattern: RegExp, what: string): string {
  try {
    f();
  } catch (e) {
    const msg = (e as Error).message;
    assert(pattern.test(msg), `${what}: the error did not match ${pattern}: ${msg}`);
    return msg.split("\n")[0]!;
  }
  throw new Error(`${what}: expected an error, got none`);
}


function bf16BitsToF32(bits: number): number {
  const u = new Uint32Array([bits << 16]);
  return new Float32Array(u.buffer)[0]!;
}

function toBf16(x: Float32Array): { bits: Uint16Array; values: Float64Array } {
  const bits = new Uint16Array(x.length);
  const values = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    bits[i] = f32ToBf16Bits(x[i]!);
    values[i] = bf16BitsToF32(bits[i]!);
  }
  return { bits, values };
}

/** Row-major reference D = op(A) op(B) (+ beta C) in float64, for `batch` strided batches. */
function refMatmul(
  A: ArrayLike<number>, B: ArrayLike<number>, M: number, N: number, K: number, transA: boolean, transB: boolean,
  batch = 1, C?: ArrayLike<number>, alpha = 1, beta = 0,
): Float64Array {
  const out = new Float64Array(batch * M * N);
  for (let t = 0; t < batch; t++) {
    const a0 = t * M * K, b0 = t * K * N, d0 = t * M * N;
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = transA ? A[a0 + k * M + i]! : A[a0 + i * K + k]!;
          const bv = transB ? B[b0 + j * K + k]! : B[b0 + k * N + j]!;
          s += av * bv;
        }
        out[d0 + i * N + j] = alpha * s + (C ? beta * C[d0 + i * N + j]! : 0);
      }
    }
  }
  return out;
}

const fmt = (x: number) => x.toExponential(2);

export const nativeChecks: NativeCheck[] = [
  {
    name: "device properties",
    run({ addon }) {
      const p = addon.deviceProperties(0);
      const mem = addon.memGetInfo();
      assert(p.smCount > 0 && p.totalMemory > 0 && p.warpSize === 32, `implausible properties: ${JSON.stringify(p)}`);
      return (
        `${p.name} (${p.arch}, ${p.smCount} SMs, ${(p.totalMemory / 2 ** 30).toFixed(1)} GiB, L2 ${(p.l2CacheBytes / 2 ** 20).toFixed(0)} MiB, ` +
        `smem/block optin ${p.sharedMemPerBlockOptin} B), driver CUDA ${Math.floor(p.driverVersion / 1000)}.${(p.driverVersion % 1000) / 10}, ` +
        `${addon.deviceCount()} device(s), ${(mem.free / 2 ** 30).toFixed(1)} GiB free`
      );
    },
  },
  {
    name: "alloc and copy round trip (HtoD, DtoD, DtoH, offsets)",
    run(ctx) {
      const a = ctx.addon;
      const n = (1 << 20) + 3;
      const x = ctx.randomF32(n, 100);
      const d1 = ctx.alloc(n * 4), d2 = ctx.alloc(n * 4);
      a.memcpyHtoD(d1, x);
      a.memcpyDtoD(d2, d1, n * 4);
      const back = new Float32Array(n);
      a.memcpyDtoH(back, d2);
      const same = Buffer.from(back.buffer).equals(Buffer.from(x.buffer));
      assert(same, "the data read back differs from the data written");
      // A sub-range at an offset, through a view with its own byteOffset.
      const view = new Float32Array(back.buffer, 400, 1000);
      view.fill(0);
      a.memcpyDtoH(view, d1 + 400n);
      for (let i = 0; i < 1000; i++) assert(view[i] === x[100 + i], `offset copy differs at ${i}`);
      return `${n} f32 (${(n * 4 / 2 ** 20).toFixed(1)} MiB) bit-identical after HtoD, DtoD, DtoH; offset view ok`;
    },
  },
  {
    name: "memset D8/D16/D32 (sync and async)",
    run(ctx) {
      const a = ctx.addon;
      const n = 4099;
      const d = ctx.alloc(n * 4);
      const s = ctx.stream();
      a.memcpyHtoD(d, ctx.randomF32(n));
      a.memsetD32(d, 0x3f800000, n); // 1.0f
      const f = new Float32Array(n);
      a.memcpyDtoH(f, d);
      assert(f.every((v) => v === 1), "memsetD32 did not write 1.0f everywhere");
      a.memsetD16(d, 0xbeef, n * 2, s);
      a.streamSynchronize(s);
      const h = new Uint16Array(n * 2);
      a.memcpyDtoH(h, d);
      assert(h.every((v) => v === 0xbeef), "async memsetD16 did not write 0xbeef everywhere");
      a.memsetD8(d + 1n, 0x5a, 5);
      const b = new Uint8Array(8);
      a.memcpyDtoH(b, d);
      // 0xbeef is stored little-endian (ef be ef be ...); bytes 1..5 become 0x5a.
      assert(b.join(",") === [0xef, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0xef, 0xbe].join(","), `memsetD8 at an offset wrote ${b.join(",")}`);
      return "D32 1.0f, async D16 0xbeef, D8 at a 1-byte offset: exact";
    },
  },
  {
    name: "pinned host memory, async copies on a stream",
    run(ctx) {
      const a = ctx.addon;
      const n = 1 << 20;
      const src = a.hostAlloc(n * 4);
      const dst = a.hostAlloc(n * 4);
      try {
        const x = new Float32Array(src);
        x.set(ctx.randomF32(n));
        const d = ctx.alloc(n * 4);
        const s = ctx.stream();
        a.memcpyHtoDAsync(d, x, undefined, s);
        a.memcpyDtoHAsync(new Float32Array(dst), d, undefined, s);
        a.streamSynchronize(s);
        assert(a.streamQuery(s), "streamQuery is false after streamSynchronize");
        assert(Buffer.from(dst).equals(Buffer.from(src)), "pinned round trip differs");
      } finally {
        a.hostFree(src);
        a.hostFree(dst);
      }
      assert(src.byteLength === 0, "hostFree did not detach the ArrayBuffer");
      return `${n * 4 / 2 ** 20} MiB pinned -> device -> pinned, bit-identical; hostFree detaches`;
    },
  },
  {
    name: "NVRTC compile (CUBIN and PTX) and kernel launch: y = a*x + b",
    run(ctx) {
      const a = ctx.addon;
      const [maj, min] = a.nvrtcVersion();
      const k = ctx.axpb();
      const n = 100_003;
      const x = ctx.randomF32(n, 10);
      const dx = ctx.alloc(n * 4), dy = ctx.alloc(n * 4);
      a.memcpyHtoD(dx, x);
      let worst = 0;
      for (const [label, fn] of [["cubin", k.fn], ["ptx", k.ptxFn]] as const) {
        a.memsetD32(dy, 0x7fc00000, n); // NaN, so an unwritten element fails
        ctx.launchAxpb(fn, dy, dx, 1.75, -0.5, n, 0n);
        a.ctxSynchronize();
        const y = new Float32Array(n);
        a.memcpyDtoH(y, dy);
        for (let i = 0; i < n; i++) {
          const ref = Math.fround(1.75 * x[i]! - 0.5);
          const err = Math.abs(y[i]! - ref) / Math.max(1, Math.abs(ref));
          assert(err <= 1e-6, `${label}: y[${i}] = ${y[i]}, expected ${ref}`);
          worst = Math.max(worst, err);
        }
      }
      const attrs = a.funcGetAttributes(k.fn);
      const failed = a.nvrtcCreateProgram("__global__ void broken() { undeclared(); }", "broken.cu");
      const r = a.nvrtcCompileProgram(failed, [`--gpu-architecture=${k.arch}`]);
      a.nvrtcDestroyProgram(failed);
      assert(!r.ok && /undeclared/.test(r.log), `a compile error should give ok: false and a log naming it, got ${JSON.stringify(r)}`);
      return `NVRTC ${maj}.${min}, ${k.arch}: CUBIN and PTX kernels match JS on ${n} elements (max rel err ${fmt(worst)}), ${attrs.numRegs} regs; compile error reported with its log`;
    },
  },
  {
    name: "events: timing 100 launches",
    run(ctx) {
      const a = ctx.addon;
      const k = ctx.axpb();
      const n = 1 << 22;
      const dx = ctx.alloc(n * 4), dy = ctx.alloc(n * 4);
      a.memcpyHtoD(dx, ctx.randomF32(n));
      const s = ctx.stream();
      const e0 = a.eventCreate(), e1 = a.eventCreate();
      try {
        ctx.launchAxpb(k.fn, dy, dx, 2, 1, n, s); // warm-up
        a.eventRecord(e0, s);
        for (let i = 0; i < 100; i++) ctx.launchAxpb(k.fn, dy, dx, 2, 1, n, s);
        a.eventRecord(e1, s);
        a.eventSynchronize(e1);
        assert(a.eventQuery(e1), "eventQuery is false after eventSynchronize");
        const ms = a.eventElapsedTime(e0, e1);
        assert(ms > 0 && Number.isFinite(ms), `elapsed time ${ms} ms`);
        const gbps = (100 * n * 8) / (ms / 1000) / 1e9;
        return `100 launches over ${n} f32 in ${ms.toFixed(3)} ms (${(ms * 10).toFixed(1)} us each, ${gbps.toFixed(0)} GB/s read+write)`;
      } finally {
        a.eventDestroy(e0);
        a.eventDestroy(e1);
      }
    },
  },
  {
    name: "graph capture and replay",
    run(ctx) {
      const a = ctx.addon;
      const k = ctx.axpb();
      const n = 65_537;
      const dx = ctx.alloc(n * 4), dy = ctx.alloc(n * 4), dz = ctx.alloc(n * 4);
      const s = ctx.stream();
      a.streamBeginCapture(s);
      assert(a.streamIsCapturing(s) === CaptureStatus.active, "the stream is not capturing");
      ctx.launchAxpb(k.fn, dy, dx, 3, -1, n, s); //  y = 3x - 1
      ctx.launchAxpb(k.fn, dz, dy, 0.5, 2, n, s); // z = y/2 + 2
      const graph = a.streamEndCapture(s);
      const nodes = a.graphNodeCount(graph);
      const exec = a.graphInstantiate(graph);
      try {
        a.graphUpload(exec, s);
        for (let round = 0; round < 2; round++) {
          const x = ctx.randomF32(n, 4); // the graph reads x at replay time
          a.memcpyHtoD(dx, x);
          a.memsetD32(dz, 0x7fc00000, n);
          a.graphLaunch(exec, s);
          a.streamSynchronize(s);
          const z = new Float32Array(n);
          a.memcpyDtoH(z, dz);
          for (let i = 0; i < n; i++) {
            const ref = Math.fround(0.5 * Math.fround(3 * x[i]! - 1) + 2);
            assert(Math.abs(z[i]! - ref) <= 1e-6 * Math.max(1, Math.abs(ref)), `replay ${round}: z[${i}] = ${z[i]}, expected ${ref}`);
          }
        }
        const e0 = a.eventCreate(), e1 = a.eventCreate();
        a.eventRecord(e0, s);
        for (let i = 0; i < 200; i++) a.graphLaunch(exec, s);
        a.eventRecord(e1, s);
        a.eventSynchronize(e1);
        const ms = a.eventElapsedTime(e0, e1);
        a.eventDestroy(e0);
        a.eventDestroy(e1);
        return `${nodes} kernel nodes captured, instantiated, replayed twice on new inputs (exact); 200 replays in ${ms.toFixed(3)} ms`;
      } finally {
        a.graphExecDestroy(exec);
        a.graphDestroy(graph);
      }
    },
  },
  {
    name: "cuBLASLt f32 GEMM vs float64 reference",
    run(ctx) {
      const a = ctx.addon;
      const wsBytes = 32 << 20;
      const ws = ctx.alloc(wsBytes);
      const results: string[] = [];
      const cases: { M: number; N: number; K: number; tA: boolean; tB: boolean; batch: number; beta: number }[] = [
        { M: 257, N: 129, K: 320, tA: false, tB: false, batch: 1, beta: 0 },
        { M: 128, N: 96, K: 200, tA: true, tB: false, batch: 1, beta: 0 },
        { M: 64, N: 80, K: 144, tA: false, tB: true, batch: 3, beta: 0.5 },
      ];
      let worst = 0;
      for (const c of cases) {
        const A = ctx.randomF32(c.batch * c.M * c.K), B = ctx.randomF32(c.batch * c.K * c.N), C = ctx.randomF32(c.batch * c.M * c.N);
        const dA = ctx.alloc(A.byteLength), dB = ctx.alloc(B.byteLength), dC = ctx.alloc(C.byteLength), dD = ctx.alloc(C.byteLength);
        a.memcpyHtoD(dA, A);
        a.memcpyHtoD(dB, B);
        a.memcpyHtoD(dC, C);
        matmulRowMajor(a, {
          dtype: "f32", M: c.M, N: c.N, K: c.K, a: dA, b: dB, c: dC, d: dD, transA: c.tA, transB: c.tB, alpha: 1, beta: c.beta,
          batch: c.batch, strideA: c.M * c.K, strideB: c.K * c.N, strideC: c.M * c.N, strideD: c.M * c.N, workspace: ws, workspaceBytes: wsBytes,
        });
        a.ctxSynchronize();
        const D = new Float32Array(c.batch * c.M * c.N);
        a.memcpyDtoH(D, dD);
        const ref = refMatmul(A, B, c.M, c.N, c.K, c.tA, c.tB, c.batch, C, 1, c.beta);
        const err = relError(D, ref);
        worst = Math.max(worst, err);
        results.push(`${c.tA ? "T" : "N"}${c.tB ? "T" : "N"} ${c.batch}x${c.M}x${c.N}x${c.K}${c.beta ? " beta" : ""} ${fmt(err)}`);
        assert(err < 1e-5, `f32 GEMM ${results.at(-1)}: relative error ${err} >= 1e-5`);
      }
      return `rel err (max |d-ref| / max |ref|): ${results.join("; ")} (limit 1e-5)`;
    },
  },
  {
    name: "cuBLASLt bf16 GEMM vs float64 reference",
    run(ctx) {
      const a = ctx.addon;
      const wsBytes = 32 << 20;
      const ws = ctx.alloc(wsBytes);
      const results: string[] = [];
      const cases = [
        { M: 256, N: 192, K: 512, tA: false, tB: false, batch: 1 },
        { M: 128, N: 256, K: 384, tA: false, tB: true, batch: 2 },
      ];
      for (const c of cases) {
        const A = toBf16(ctx.randomF32(c.batch * c.M * c.K)), B = toBf16(ctx.randomF32(c.batch * c.K * c.N));
        const dA = ctx.alloc(A.bits.byteLength), dB = ctx.alloc(B.bits.byteLength), dD = ctx.alloc(c.batch * c.M * c.N * 2);
        a.memcpyHtoD(dA, A.bits);
        a.memcpyHtoD(dB, B.bits);
        matmulRowMajor(a, {
          dtype: "bf16", M: c.M, N: c.N, K: c.K, a: dA, b: dB, d: dD, transA: c.tA, transB: c.tB,
          batch: c.batch, strideA: c.M * c.K, strideB: c.K * c.N, strideD: c.M * c.N, workspace: ws, workspaceBytes: wsBytes,
        });
        a.ctxSynchronize();
        const Dbits = new Uint16Array(c.batch * c.M * c.N);
        a.memcpyDtoH(Dbits, dD);
        const D = Array.from(Dbits, bf16BitsToF32);
        const ref = refMatmul(A.values, B.values, c.M, c.N, c.K, c.tA, c.tB, c.batch);
        const err = relError(D, ref);
        results.push(`${c.tA ? "T" : "N"}${c.tB ? "T" : "N"} ${c.batch}x${c.M}x${c.N}x${c.K} ${fmt(err)}`);
        assert(err < 1e-2, `bf16 GEMM ${results.at(-1)}: relative error ${err} >= 1e-2`);
      }
      return `cuBLASLt ${a.cublasLtVersion()}, bf16 in/out, f32 accumulate; rel err: ${results.join("; ")} (limit 1e-2)`;
    },
  },
  {
    name: "NCCL: version, unique id, 1-rank communicator and collectives",
    run(ctx) {
      const a = ctx.addon;
      const v = a.ncclVersion();
      const id = a.ncclGetUniqueId();
      assert(id.byteLength === 128, `unique id is ${id.byteLength} bytes`);
      const comm = a.ncclCommInitRank(1, id, 0);
      try {
        const info = a.ncclCommInfo(comm);
        assert(info.count === 1 && info.rank === 0, `comm info ${JSON.stringify(info)}`);
        const n = 10_007;
        const x = ctx.randomF32(n);
        const d = ctx.alloc(n * 4), r = ctx.alloc(n * 4);
        const s = ctx.stream();
        const check = (what: string) => {
          const out = new Float32Array(n);
          a.memcpyDtoH(out, r);
          assert(Buffer.from(out.buffer).equals(Buffer.from(x.buffer)), `${what} on one rank changed the data`);
          a.memsetD32(r, 0, n);
        };
        a.memcpyHtoD(d, x);
        a.ncclAllReduce(d, r, n, NcclDataType.f32, NcclRedOp.sum, comm, s);
        a.streamSynchronize(s);
        check("all-reduce");
        a.ncclAllGather(d, r, n, NcclDataType.f32, comm, s);
        a.streamSynchronize(s);
        check("all-gather");
        a.ncclReduceScatter(d, r, n, NcclDataType.f32, NcclRedOp.sum, comm, s);
        a.streamSynchronize(s);
        check("reduce-scatter");
        a.ncclGroupStart();
        a.ncclSend(d, n, NcclDataType.f32, 0, comm, s);
        a.ncclRecv(r, n, NcclDataType.f32, 0, comm, s);
        a.ncclGroupEnd();
        a.streamSynchronize(s);
        check("send/recv to self");
        const asyncErr = a.ncclCommGetAsyncError(comm);
        assert(asyncErr === 0, `ncclCommGetAsyncError = ${asyncErr}`);
      } finally {
        a.ncclCommDestroy(comm);
      }
      return `NCCL ${Math.floor(v / 10000)}.${Math.floor((v % 10000) / 100)}.${v % 100}: all-reduce, all-gather, reduce-scatter, grouped send/recv on 1 rank exact; no async error`;
    },
  },
  {
    name: "failed calls throw clear errors",
    run(ctx) {
      const a = ctx.addon;
      const oom = expectThrow(() => a.memAlloc(2 ** 50), /cuMemAlloc_v2\(\d+ bytes\) failed: CUDA_ERROR_OUT_OF_MEMORY/, "a 1 PiB allocation");
      const k = ctx.axpb();
      const prog = a.nvrtcCreateProgram(AXPB_SOURCE, "axpb.cu");
      let badOpt: string;
      try {
        // NVRTC reports an unknown option as NVRTC_ERROR_INVALID_OPTION (thrown); accept a failed compile with a log too.
        const r = a.nvrtcCompileProgram(prog, ["--no-such-option"]);
        assert(!r.ok && /no-such-option/.test(r.log), `a bad NVRTC option was accepted: ${JSON.stringify(r)}`);
        badOpt = `bad option: ok false, log: ${r.log.split("\n")[0]}`;
      } catch (e) {
        const msg = (e as Error).message;
        assert(/nvrtcCompileProgram[\s\S]*NVRTC_ERROR_INVALID_OPTION/.test(msg), `a bad NVRTC option threw an unexpected error: ${msg}`);
        badOpt = msg.replace(/\s+/g, " ");
      } finally {
        a.nvrtcDestroyProgram(prog);
      }
      const missing = expectThrow(() => a.moduleGetFunction(k.module, "no_such_kernel"), /cuModuleGetFunction\('no_such_kernel'\) failed: CUDA_ERROR_NOT_FOUND/, "a missing kernel");
      return [oom, badOpt, missing].join(" | ");
    },
  },
  {
    // Last: if the driver could not check the parameter block, a wrong one would corrupt the context.
    name: "a wrongly packed argument buffer is refused before launch",
    run(ctx) {
      const a = ctx.addon;
      if (a.driverVersion() < 12040) return "skipped: the driver is older than CUDA 12.4 (no cuFuncGetParamInfo)";
      const k = ctx.axpb();
      const tooSmall = packArgs(["ptr", 0n], ["ptr", 0n], ["f32", 1]);
      return expectThrow(() => a.launchKernel(k.fn, 1, 32, 0, 0n, tooSmall), /parameters take 28 bytes/, "a short argument buffer");
    },
  },
];

export interface CheckResult {
  name: string;
  ok: boolean;
  ms: number;
  detail?: string;
  error?: string;
}

/** Runs every check in order (a failure does not stop the rest). */
export function runNativeChecks(addon: NativeAddon, log: (line: string) => void = () => {}): CheckResult[] {
  const ctx = new CheckContext(addon);
  const results: CheckResult[] = [];
  try {
    for (const check of nativeChecks) {
      const t0 = performance.now();
      try {
        const detail = check.run(ctx);
        results.push({ name: check.name, ok: true, ms: performance.now() - t0, detail });
        log(`PASS  ${check.name} (${(performance.now() - t0).toFixed(0)} ms): ${detail}`);
      } catch (e) {
        const error = (e as Error).stack ?? String(e);
        results.push({ name: check.name, ok: false, ms: performance.now() - t0, error });
        log(`FAIL  ${check.name}: ${error}`);
      }
    }
  } finally {
    ctx.dispose();
  }
  return results;
}
