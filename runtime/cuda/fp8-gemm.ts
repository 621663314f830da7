// Running the generated FP8 block-scaled GEMM kernels (compiler/codegen/cuda/gemm/) and the cuBLASLt
// fallback on device buffers laid out as compiler/numeric/fp8-gemm.ts describes. A bf16 configuration
// (ab: "bf16") runs through the same prepare on bf16 A and B with no scales (sa and sb ignored).
//
// A configuration with MN-major B (bMnMajor) takes b = B [E][K][N] bf16 (dense: [K][N]), N contiguous, as
// segment_dot's weights are; D = A·B. Its map is 3-D [E][K][N] with 64 x 64 boxes (the kernel loads
// blockN/64 of them a stage).
//
// A K-grouped configuration (kGrouped: the MoE weight gradient, one launch for every expert) takes the
// shape { M, N, K, experts: E } with K = P, the padded columns: a = A [M][P], b = B [N][P] (bf16, or
// e4m3 with row-scaled B: sa [P/128][M] and sb [P/128][N] f32; P contiguous in both), d = D [E·M][N] bf16,
// blockExpert = int32 [E][2] (expert e's first K block of P, 64 columns bf16 or 128 e4m3, its block count);
// D[e·M + m][n] = Σ over e's columns of A[m][p]·B[n][p], zeros where e has none. D is stored through a
// 3-D map [E][M][N], so M need not be a multiple of the tile's 128 rows.
//
// A row-run configuration (rowRuns) takes blockExpert = int32 [blocks][4] (expert, A's row, D's row, valid
// rows; bf16-segment.ts rowRunTable) with M = 128 x blocks and rowsA / rowsD the rows A and D hold; e4m3
// takes sa [KB][M] in the blocks' layout (kernels/segment-sources.ts segmentRunScales).
//
//   const g = new Fp8Gemm(addon, stream);
//   const run = g.prepare(config, { M, N, K }, { a, b, sa, sb, d });   // compiles once, encodes the TMA maps
//   run();                                                             // one launch, nothing allocated
import { emitFp8Gemm, type Fp8GemmKernel } from "../../compiler/codegen/cuda/gemm/emit.ts";
import { bBoxRows, blockM, configName, geometryOf, isBf16, kBlock, kGroupedProblem, shapeProblem, type Fp8GemmConfig, type Fp8GemmShape } from "../../compiler/codegen/cuda/gemm/config.ts";
import { FP8_BLOCK, GROUPED_M_ALIGN } from "../../compiler/numeric/fp8-gemm.ts";
import { CompileError } from "../../compiler/errors.ts";
import { archFor, compileCuda } from "./compile.ts";
import { packArgs, packArgsAt, type KernelArg } from "./kernel-args.ts";
import type { DevicePtr, DeviceProperties, KernelFunction, NativeAddon, Stream } from "./native-types.ts";

export interface Fp8GemmBuffers {
  /** M×K e4m3 (bf16 configurations: bf16). */
  a: DevicePtr;
  /** N×K e4m3 (grouped: E×N×K; bf16 configurations: bf16; bMnMajor: K×N, grouped E×K×N). */
  b: DevicePtr;
  /** [ceil(K/128)][M] f32 (bf16 configurations: unused, 0n). */
  sa: DevicePtr;
  /** [ceil(N/128)][ceil(K/128)] f32 (grouped: per expert); with a bRows configuration [ceil(K/128)][N]. */
  sb: DevicePtr;
  /** M×N bf16. */
  d: DevicePtr;
  /**
   * Grouped: int32 expert of each 128-row block of A (-1: padding), M/128 entries; row runs: 4 int32 per
   * block (expert, A row, D row, rows); K-grouped: 2 int32 per expert (first 64-column block, blocks).
   */
  blockExpert?: DevicePtr;
  /** A traced configuration's timeline (config trace): traceWords(tiles, grid) u64 (compiler/codegen/cuda/gemm/trace.ts). */
  trace?: DevicePtr;
}

/**
 * Prepared launches an Fp8Gemm keeps (prepare's memo, least recently used dropped first): the bound the routed
 * Wgrad's per-expert launches were kept under before the memo moved here, far above a step's GEMMs.
 */
const PREPARED_MAX = 4096;
/**
 * configName of each configuration object prepare is given, built once per object (configurations are
 * values nobody mutates: the defaults and the tuned choices are the same objects every step).
 */
const configNames = new WeakMap<Fp8GemmConfig, string>();
const nameOf = (c: Fp8GemmConfig): string => {
  let n = configNames.get(c);
  if (n === undefined) configNames.set(c, (n = configName(c)));
  return n;
};

export interface Fp8GemmProblemShape extends Fp8GemmShape {
  /** Grouped: the number of experts (B holds experts × N rows). */
  experts?: number;
  /** Row strides of A and B in bytes (default K · element bytes: contiguous); multiples of 16 (TMA), at least that. */
  lda?: number;
  ldb?: number;
  /** Row runs (config rowRuns): the rows A and D hold (M is 128 x the run blocks, not their rows). */
  rowsA?: number;
  rowsD?: number;
}

/**
 * The SMs a persistent generated GEMM spreads over: all but SHARDTS_GEMM_RESERVED_SMS (default 0). A
 * persistent kernel strides its tiles over a fixed grid, so CTAs that wait for SMs an NCCL kernel holds
 * finish their share late; leaving SMs to the communication kernels (as DeepGEMM's set_num_sms does)
 * lets a GEMM and an exchange run side by side. `byDefault` applies when the variable is unset: the
 * executor's rank-local multi-GPU runs reserve MULTI_RANK_RESERVED_SMS (fp8GemmOf).
 */
export function gemmSms(smCount: number, env: string | undefined = process.env.SHARDTS_GEMM_RESERVED_SMS, byDefault = 0): number {
  if (env === undefined || env === "") return smCount - byDefault;
  const r = Number(env);
  if (!Number.isInteger(r) || r < 0 || r >= smCount) throw new RangeError(`SHARDTS_GEMM_RESERVED_SMS=${env}: give a whole number of SMs from 0 to ${smCount - 1}`);
  return smCount - r;
}

/**
 * SMs the generated GEMMs leave to NCCL by default when a process runs one rank of several: on the FP8 EP
 * layer (2x H200) 16 and 32 gave 16.7 / 16.6 ms against 17.9 / 19.4 ms with none (the shared experts'
 * GEMMs beside the dispatch's exchange); bf16 13.09 / 13.34 against 13.07 / 13.08
 * (bench/results/2026-11-23-moe-layer-ep-h200x2.txt, runs 9 and 10).
 */
export const MULTI_RANK_RESERVED_SMS = 16;

export class Fp8Gemm {
  /** SMs left to communication when SHARDTS_GEMM_RESERVED_SMS is unset (set by fp8GemmOf for multi-rank executors). */
  reservedSms = 0;
  readonly device: DeviceProperties;
  readonly arch: string;
  private fns = new Map<string, { fn: KernelFunction; kernel: Fp8GemmKernel; compileMs: number; cached: boolean; layout: { offset: number; size: number }[] | null }>();

  constructor(readonly addon: NativeAddon, readonly stream: Stream, ordinal = 0) {
    this.device = addon.deviceProperties(ordinal);
    this.arch = archFor(...this.device.computeCapability);
  }

  /** Whether this GPU runs the generated kernels (Hopper sm_90a: wgmma and TMA). */
  get supported(): boolean {
    return this.arch === "sm_90a";
  }

  /**
   * Holds the stream for `cycles` SM clocks (one thread spinning on clock64): a timing loop launches it
   * first, so the host enqueues every timed launch while the GPU waits, and the GPU then runs them back
   * to back; each pair of events then times a kernel, not the host's launch between two of them.
   */
  spin(cycles: number): void {
    if (!this.spinFn) {
      const src = `extern "C" __global__ void sh_spin(long long cycles) {\n  const long long t0 = clock64();\n  while (clock64() - t0 < cycles) {}\n}\n`;
      this.spinFn = this.addon.moduleGetFunction(this.addon.moduleLoadData(compileCuda(this.addon, "sh_spin", src, this.arch).cubin), "sh_spin");
    }
    this.addon.launchKernel(this.spinFn, [1, 1, 1], [1, 1, 1], 0, this.stream, packArgs(["i64", cycles]));
  }
  private spinFn?: KernelFunction;

  /** SMs a persistent GEMM's grid spreads over: the device's, less those left to communication. */
  gridSms(): number {
    return gemmSms(this.device.smCount, process.env.SHARDTS_GEMM_RESERVED_SMS, this.reservedSms);
  }

  /**
   * The compiled, loaded kernel for a configuration (NVRTC, disk-cached), with its dynamic smem allowed.
   * Looked up by the configuration's name, so a launch of a loaded kernel does not emit its source again.
   */
  kernel(c: Fp8GemmConfig): { fn: KernelFunction; kernel: Fp8GemmKernel; compileMs: number; cached: boolean; layout: { offset: number; size: number }[] | null } {
    let got = this.fns.get(configName(c));
    if (!got) {
      const k = emitFp8Gemm(c);
      if (!this.supported) throw new CompileError(`FP8 GEMM kernel ${k.name} needs a Hopper GPU (sm_90a); this is ${this.device.name} (${this.arch}): use the cuBLASLt fallback`);
      const compiled = compileCuda(this.addon, k.name, k.source, this.arch);
      const fn = this.addon.moduleGetFunction(this.addon.moduleLoadData(compiled.cubin), k.name);
      this.addon.funcSetMaxDynamicSharedMemory(fn, k.smemBytes);
      // the device's parameter offsets, read once per kernel (packArgsAt places the tensor maps by them)
      got = { fn, kernel: k, compileMs: compiled.ms, cached: compiled.cached, layout: this.addon.funcGetParamLayout(fn) };
      this.fns.set(k.name, got);
    }
    return got;
  }

  /**
   * A launch of `c` on these buffers: the tensor maps and the parameter block are built once here.
   * Where M % 4 != 0 the scale rows cannot come by TMA (their stride is no multiple of 16 bytes): the
   * same configuration then runs with A's scales loaded from global memory (globalScales, name `_gs`).
   */
  prepare(config: Fp8GemmConfig, s: Fp8GemmProblemShape, bufs: Fp8GemmBuffers): () => void {
    // a training step asks for the same launches on the same buffers every step (the allocator hands the
    // same addresses back): the tensor maps and parameters are a pure function of this key, so they are
    // built once (13 tensor-map encodes and ~40 us of JS a step for an FP8 Linear's three GEMMs, eager;
    // one launch per expert and layer for the routed Wgrad)
    const key = `${nameOf(config)}|${s.M},${s.N},${s.K},${s.experts ?? ""},${s.lda ?? ""},${s.ldb ?? ""},${s.rowsA ?? ""},${s.rowsD ?? ""}|${bufs.a},${bufs.b},${bufs.sa},${bufs.sb},${bufs.d},${bufs.blockExpert ?? ""},${bufs.trace ?? ""}|${this.gridSms()}`;
    const hit = this.prepared.get(key);
    if (hit) {
      this.prepared.delete(key); // most recently used last
      this.prepared.set(key, hit);
      return hit;
    }
    const run = config.kGrouped ? this.prepareKGrouped(config, s, bufs) : this.build(config, s, bufs);
    this.prepared.set(key, run);
    if (this.prepared.size > PREPARED_MAX) this.prepared.delete(this.prepared.keys().next().value!);
    return run;
  }
  /** Prepared launches by what they are built from (prepare), least recently used first. */
  private prepared = new Map<string, () => void>();

  /** A launch of a dense or M-grouped configuration, built (prepare keeps it). */
  private build(config: Fp8GemmConfig, s: Fp8GemmProblemShape, bufs: Fp8GemmBuffers): () => void {
    const bf16 = isBf16(config), what = bf16 ? "bf16 GEMM" : "FP8 GEMM", eb = bf16 ? 2 : 1;
    const why = shapeProblem(s);
    if (why) throw new CompileError(`${what} ${s.M}x${s.N}x${s.K}: ${why}; use the cuBLASLt fallback${bf16 ? "" : " (Fp8Gemm.prepareCublasLt)"}`);
    if (config.grouped !== (s.experts !== undefined)) throw new CompileError(`${what}: config ${config.grouped ? "is" : "is not"} grouped but the problem ${s.experts !== undefined ? "has" : "has no"} experts`);
    if (config.grouped && (s.M % GROUPED_M_ALIGN !== 0 || bufs.blockExpert === undefined))
      throw new CompileError(`grouped ${what}: M (${s.M}) must be a multiple of ${GROUPED_M_ALIGN} and blockExpert given (one int32 per ${GROUPED_M_ALIGN} rows)`);
    if (config.trace && bufs.trace === undefined) throw new CompileError(`${what}: a traced configuration (trace) writes its timeline to bufs.trace: give a buffer of traceWords(tiles, grid) u64`);
    if (config.rowRuns && !(s.rowsA! > 0 && s.rowsD! > 0)) throw new CompileError(`${what} over row runs: the problem must say the rows A and D hold (rowsA, rowsD)`);
    const rowsA = config.rowRuns ? s.rowsA! : s.M, rowsD = config.rowRuns ? s.rowsD! : s.M;
    const c: Fp8GemmConfig = s.M % 4 !== 0 && !config.globalScales && !bf16 ? { ...config, globalScales: true } : config;
    const { fn, kernel, layout } = this.kernel(c);
    const g = geometryOf(c, s, this.gridSms());
    const rowsB = s.N * (s.experts ?? 1), KB = Math.ceil(s.K / FP8_BLOCK);
    const enc = this.addon.tensorMapEncodeTiled.bind(this.addon);
    if (c.bMnMajor && s.ldb !== undefined) throw new CompileError(`${what} with MN-major B (bMnMajor): B is a contiguous [E][K][N] (no ldb)`);
    const lda = s.lda ?? s.K * eb, ldb = s.ldb ?? s.K * eb;
    if (lda < s.K * eb || ldb < s.K * eb || lda % 16 !== 0 || ldb % 16 !== 0)
      throw new CompileError(`${what} ${s.M}x${s.N}x${s.K}: row strides lda ${lda} / ldb ${ldb} must be >= K·${eb} and multiples of 16 bytes`);
    // A and B: one 128-byte row of K (128 e4m3 or 64 bf16) per box row, the 128-byte swizzle wgmma reads
    const map = (address: DevicePtr, rows: number, boxRows: number, ld: number) =>
      enc({ dtype: bf16 ? "bf16" : "u8", address, dims: [s.K, rows], strides: [ld], box: [kBlock(c), boxRows], swizzle: "128B", l2Promotion: "256B", oobFill: "zero" });
    // MN-major B (bMnMajor): [E][K][N] through a 3-D map, boxes of 64 N columns (128 bytes, the swizzle's
    // span) x 64 K rows, so a K block past an expert's K reads zeros rather than the next expert's rows
    const mapB = c.bMnMajor
      ? enc({ dtype: "bf16", address: bufs.b, dims: [s.N, s.K, s.experts ?? 1], strides: [s.N * 2, s.K * s.N * 2], box: [64, kBlock(c), 1], swizzle: "128B", l2Promotion: "256B", oobFill: "zero" })
      : map(bufs.b, rowsB, bBoxRows(c), ldb);
    const unused = new Uint8Array(128);
    // A's scales, [KB][M] f32: one BLOCK_M run of a K block's row per stage
    const mapSA = c.globalScales || bf16 ? unused : enc({ dtype: "f32", address: bufs.sa, dims: [s.M, KB], strides: [s.M * 4], box: [blockM(c), 1], oobFill: "zero" });
    // D, M x N bf16: 64 x 64 boxes with the 128-byte swizzle the staging buffer is written in
    const mapD = c.tmaStore ? enc({ dtype: "bf16", address: bufs.d, dims: [s.N, rowsD], strides: [s.N * 2], box: [64, 64], swizzle: "128B", oobFill: "zero" }) : unused;
    // B's row scales (bRows: [KB][N] f32): one BLOCK_N run of a K block's row per stage
    const mapSB = c.bRows ? enc({ dtype: "f32", address: bufs.sb, dims: [s.N, KB], strides: [s.N * 4], box: [c.blockN, 1], oobFill: "zero" }) : unused;
    // the tensor maps are 64-byte aligned: the device's parameter block may start them past offset 0,
    // so the arguments go where the driver says (packArgs's C ABI offsets where it cannot say)
    const params = (layout ? (...x: KernelArg[]) => packArgsAt(layout, ...x) : packArgs)(
      ["bytes", map(bufs.a, rowsA, blockM(c), lda), 64],
      ["bytes", mapB, 64],
      ["bytes", mapSA, 64],
      ["bytes", mapD, 64],
      ["bytes", mapSB, 64],
      ["ptr", bufs.sa],
      ["ptr", bufs.sb],
      ["ptr", bufs.d],
      ...(c.grouped ? [["ptr", bufs.blockExpert!] as ["ptr", bigint]] : []),
      ["i32", s.M],
      ["i32", s.N],
      ["i32", s.K],
      ...(c.trace ? [["ptr", bufs.trace!] as ["ptr", bigint]] : []),
    );
    const a = this.addon, stream = this.stream;
    return () => a.launchKernel(fn, [g.grid, 1, 1], [kernel.threads, 1, 1], kernel.smemBytes, stream, params);
  }

  /**
   * A K-grouped launch (prepare with a kGrouped configuration): the maps of A [M][P] and B [N][P] with
   * K-block boxes (64 bf16 / 128 e4m3 columns) of BLOCK_M and BLOCK_N rows, of D as [E][M][N] for the TMA
   * store, and with e4m3 (row-scaled B) of the scales sa [P/128][M] and sb [P/128][N].
   */
  private prepareKGrouped(c: Fp8GemmConfig, s: Fp8GemmProblemShape, bufs: Fp8GemmBuffers): () => void {
    const bf16 = isBf16(c), what = `K-grouped ${bf16 ? "bf16" : "FP8 row-scaled"} GEMM`, KBLK = kBlock(c);
    const why = kGroupedProblem(s, KBLK);
    if (why) throw new CompileError(`${what} ${s.M}x${s.N}x${s.K} over ${s.experts} experts: ${why}`);
    if (bufs.blockExpert === undefined) throw new CompileError(`${what}: blockExpert must be given (2 int32 per expert: first ${KBLK}-column block, blocks)`);
    if (s.lda !== undefined || s.ldb !== undefined || s.rowsA !== undefined || s.rowsD !== undefined)
      throw new CompileError(`${what}: A and B are contiguous [M][P] and [N][P] (no lda, ldb, rowsA or rowsD)`);
    const E = s.experts!, eb = bf16 ? 2 : 1, KB = s.K / KBLK;
    const { fn, kernel, layout } = this.kernel(c);
    const g = geometryOf(c, s, this.gridSms());
    const enc = this.addon.tensorMapEncodeTiled.bind(this.addon);
    const map = (address: DevicePtr, rows: number, boxRows: number) =>
      enc({ dtype: bf16 ? "bf16" : "u8", address, dims: [s.K, rows], strides: [s.K * eb], box: [KBLK, boxRows], swizzle: "128B", l2Promotion: "256B", oobFill: "zero" });
    const unused = new Uint8Array(128);
    // e4m3: the scales of each 128-column block of P, for A's M rows and B's N rows: one tile's run a stage
    const scales = (address: DevicePtr, rows: number, boxRows: number) => (bf16 ? unused : enc({ dtype: "f32", address, dims: [rows, KB], strides: [rows * 4], box: [boxRows, 1], oobFill: "zero" }));
    // D as [E][M][N]: a tile's rows past M fall outside its expert's block and are clipped
    const mapD = c.tmaStore ? enc({ dtype: "bf16", address: bufs.d, dims: [s.N, s.M, E], strides: [s.N * 2, s.M * s.N * 2], box: [64, 64, 1], swizzle: "128B", oobFill: "zero" }) : unused;
    const params = (layout ? (...x: KernelArg[]) => packArgsAt(layout, ...x) : packArgs)(
      ["bytes", map(bufs.a, s.M, blockM(c)), 64],
      ["bytes", map(bufs.b, s.N, c.blockN), 64],
      ["bytes", scales(bufs.sa, s.M, blockM(c)), 64],
      ["bytes", mapD, 64],
      ["bytes", scales(bufs.sb, s.N, c.blockN), 64],
      ["ptr", bufs.sa],
      ["ptr", bufs.sb],
      ["ptr", bufs.d],
      ["ptr", bufs.blockExpert],
      ["i32", s.M],
      ["i32", s.N],
      ["i32", s.K],
      ["i32", E],
    );
    const a = this.addon, stream = this.stream;
    return () => a.launchKernel(fn, [g.grid, 1, 1], [kernel.threads, 1, 1], kernel.smemBytes, stream, params);
  }

  /**
   * The cuBLASLt block-scaled fallback on the same (dense) buffers. cuBLASLt reads B's 128x128 scales
   * with their K-block rows padded to a multiple of 4 (it misread ours wherever ceil(K/128) % 4 != 0:
   * bench/results/2026-11-22-fp8-gemm-h100-v2.txt), so those go through a padded copy made here once;
   * it refuses M % 4 != 0 (A's scale rows are then no multiple of 16 bytes), which is said up front.
   * `release()` frees the copy.
   */
  prepareCublasLt(s: Fp8GemmShape, bufs: Fp8GemmBuffers, workspace?: { ptr: DevicePtr; bytes: number }): (() => void) & { release(): void } {
    if (s.M % 4 !== 0) throw new CompileError(`cuBLASLt block-scaled FP8 GEMM ${s.M}x${s.N}x${s.K}: M must be a multiple of 4 (its 1x128 scale rows need 16-byte strides); pad M or use the generated kernels`);
    const a = this.addon, stream = this.stream;
    const KB = Math.ceil(s.K / FP8_BLOCK), NB = Math.ceil(s.N / FP8_BLOCK), KB4 = Math.ceil(KB / 4) * 4;
    let sb = bufs.sb, padded: DevicePtr | undefined;
    if (KB4 !== KB) {
      padded = a.memAlloc(NB * KB4 * 4);
      a.memsetD8(padded, 0, NB * KB4 * 4, stream);
      for (let nb = 0; nb < NB; nb++) a.memcpyDtoDAsync(padded + BigInt(nb * KB4 * 4), bufs.sb + BigInt(nb * KB * 4), KB * 4, stream);
      sb = padded;
    }
    const o = { M: s.M, N: s.N, K: s.K, a: bufs.a, b: bufs.b, sa: bufs.sa, sb, d: bufs.d, workspace: workspace?.ptr, workspaceBytes: workspace?.bytes, stream };
    const run = () => a.cublasLtMatmulFp8BlockScaled(o);
    return Object.assign(run, { release: () => padded !== undefined && a.memFree(padded) });
  }
}

const perExecutor = new WeakMap<object, Fp8Gemm>();

/**
 * The Fp8Gemm of an executor, made on first use: one per executor, so every op that runs an FP8 GEMM
 * on it (scaled_dot, the segment contractions) shares its loaded kernels and device properties.
 */
export function fp8GemmOf(ex: { readonly addon: NativeAddon; readonly stream: Stream; readonly rankLocal?: { readonly worldSize: number } }): Fp8Gemm {
  let g = perExecutor.get(ex);
  if (!g) perExecutor.set(ex, (g = new Fp8Gemm(ex.addon, ex.stream)));
  g.reservedSms = (ex.rankLocal?.worldSize ?? 1) > 1 ? MULTI_RANK_RESERVED_SMS : 0;
  return g;
}
