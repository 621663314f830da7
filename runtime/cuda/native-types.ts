// The types of the native addon's functions (native/src/*.cc), exactly as the addon exports them.
//
// Conventions: device pointers and every opaque handle are bigint (0n is the null pointer and, for a
// stream, the legacy default stream); byte sizes and counts are numbers (bigint accepted). Every
// failing CUDA / NVRTC / cuBLASLt / NCCL call throws a CudaApiError; a library that cannot be loaded
// throws a LibraryUnavailableError listing every path tried. Nothing is loaded until first use.

/** A device address (CUdeviceptr). Arithmetic is plain bigint arithmetic. */
export type DevicePtr = bigint;
/** Opaque handles. Distinct names for readability; all are bigint at run time. */
export type Stream = bigint;
export type Event = bigint;
export type Module = bigint;
export type KernelFunction = bigint;
export type Graph = bigint;
export type GraphExec = bigint;
export type NvrtcProgram = bigint;
export type NcclComm = bigint;

/** Host memory accepted by the copy functions. */
export type HostBuffer = ArrayBufferView | ArrayBuffer;
/** Sizes: numbers, or bigint. */
export type Size = number | bigint;
/** Grid and block dimensions: x, or [x], [x, y], [x, y, z]. */
export type Dim3 = number | [number] | [number, number] | [number, number, number];

/** "cublas" (libcublas) is optional: only its grouped GEMM is used, and cuBLASLt stands in without it. */
export type LibraryName = "cuda" | "nvrtc" | "cublasLt" | "nccl" | "cublas";

export interface LibraryProbe {
  ok: boolean;
  library: LibraryName;
  /** The file loaded (when ok). */
  path?: string;
  /** "12.8", "13.0", "2.27.3"... (when ok). */
  version?: string;
  /** The whole error message, with every candidate and why it was refused (when not ok). */
  reason?: string;
  /** "candidate: why it was refused", one per candidate tried before the one that loaded. */
  tried: string[];
}

/** A failed library call. */
export interface CudaApiError extends Error {
  library: LibraryName;
  /** The call, e.g. "cuMemAlloc_v2(1024 bytes)". */
  call: string;
  code: number;
  /** e.g. "CUDA_ERROR_OUT_OF_MEMORY", "NVRTC_ERROR_INVALID_OPTION", "CUBLAS_STATUS_NOT_SUPPORTED", "ncclInvalidArgument". */
  codeName: string;
}

/** A library that could not be loaded. */
export interface LibraryUnavailableError extends Error {
  code: "ERR_SHARDTS_LIBRARY_UNAVAILABLE";
  library: LibraryName;
  tried: string[];
}

export interface DeviceProperties {
  ordinal: number;
  name: string;
  computeCapability: [number, number];
  /** "sm_90" for compute capability 9.0. */
  arch: string;
  smCount: number;
  totalMemory: number;
  l2CacheBytes: number;
  persistingL2CacheMaxBytes: number | null;
  sharedMemPerBlock: number;
  sharedMemPerBlockOptin: number;
  sharedMemPerSM: number;
  totalConstantMemory: number;
  registersPerBlock: number;
  maxThreadsPerBlock: number;
  maxThreadsPerSM: number;
  maxBlocksPerSM: number | null;
  warpSize: number;
  clockRateKHz: number | null;
  memoryClockRateKHz: number | null;
  memoryBusWidthBits: number | null;
  asyncEngineCount: number | null;
  eccEnabled: boolean;
  integrated: boolean;
  cooperativeLaunch: boolean;
  pciBusId: string;
  uuid?: string;
  /** cuDriverGetVersion: 12080 for CUDA 12.8, 13000 for 13.0. */
  driverVersion: number;
}

export interface FunctionAttributes {
  maxThreadsPerBlock: number;
  sharedSizeBytes: number;
  constSizeBytes: number;
  localSizeBytes: number;
  numRegs: number;
  ptxVersion: number;
  binaryVersion: number;
  maxDynamicSharedSizeBytes: number;
}

export type MatmulDtype = "f32" | "bf16" | "f16";

/**
 * A cuBLASLt matmul problem for cublasLtMatmulPrepare, column-major BLAS terms, for each of `batch`
 * strided batches:
 *   D[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C[m,n],   op(X) = transX ? Xᵀ : X.
 * A is stored (transA ? k×m : m×k) with leading dimension lda, B (transB ? n×k : k×n) with ldb, C and
 * D m×n with ldc and ldd. Strides are in elements. The pointers are read for their alignment only
 * (each run passes its own). For row-major operands see matmulRowMajor in runtime/cuda/native.ts.
 */
export interface MatmulOptions {
  /** The type of A and B. */
  dtype: MatmulDtype;
  /** The type of C and D (default: dtype). */
  outDtype?: MatmulDtype;
  /** Accumulation: "f32" (default, exact f32) or "tf32" (faster, f32 inputs rounded to tf32). */
  computeType?: "f32" | "tf32";
  transA?: boolean;
  transB?: boolean;
  m: number;
  n: number;
  k: number;
  a: DevicePtr;
  lda: number;
  b: DevicePtr;
  ldb: number;
  /** Default: d (then ldc defaults to ldd). */
  c?: DevicePtr;
  ldc?: number;
  d: DevicePtr;
  ldd: number;
  alpha?: number;
  beta?: number;
  batch?: number;
  strideA?: number;
  strideB?: number;
  strideC?: number;
  strideD?: number;
  /** Scratch memory the algorithm may use (none by default; 32 MiB lets it pick the fastest); every run must pass that much. */
  workspaceBytes?: number;
}

/** A prepared matmul: a small integer, valid in this process on the device it was prepared on. */
export type MatmulHandle = number & { readonly __matmulHandle: unique symbol };

/**
 * The block-scaled FP8 GEMM (DeepSeek-V3 scheme) on row-major operands, through cuBLASLt 12.9+:
 *   D[M,N] (bf16) = Σ_kb sa[kb][m] · sb[n/128][kb] · Σ_{k in kb} A[m,k] · B[n,k]
 * A is M×K e4m3 (K contiguous) with f32 scales per 1×128 tile laid out [ceil(K/128)][M] (M
 * contiguous: cuBLASLt's VEC128_32F, "outer-dim-major"); B is N×K e4m3 with f32 scales per
 * 128×128 block laid out [ceil(N/128)][ceil(K/128)] (BLK128x128_32F). The layouts are those of
 * compiler/numeric/fp8-gemm.ts. N and K must be multiples of 16. The fallback for the generated
 * kernels (compiler/codegen/cuda/gemm/): non-Hopper GPUs and shapes they refuse.
 */
export interface Fp8BlockScaledMatmulOptions {
  M: number;
  N: number;
  K: number;
  a: DevicePtr;
  b: DevicePtr;
  sa: DevicePtr;
  sb: DevicePtr;
  d: DevicePtr;
  /** Scratch memory for the algorithm (32 MiB lets it pick the fastest). */
  workspace?: DevicePtr;
  workspaceBytes?: number;
  stream?: Stream;
}

/**
 * A TMA descriptor (cuTensorMapEncodeTiled) for a tiled view of global memory. Dimensions run
 * innermost first: dims[0] is the contiguous one. The result is the 128-byte CUtensorMap, passed
 * to a kernel by value: packArgs(["bytes", map, 64], ...) for a `const __grid_constant__` parameter.
 */
export interface TensorMapOptions {
  dtype: "u8" | "u16" | "u32" | "i32" | "f16" | "f32" | "bf16";
  /** Global address (16-byte aligned). */
  address: DevicePtr;
  /** Sizes in elements, innermost first (1 to 5 entries). */
  dims: number[];
  /** Byte strides of dims[1..]: dims.length - 1 entries, each a multiple of 16. */
  strides: number[];
  /** The box one load brings, in elements per dim (each <= 256; box[0] × element size <= the swizzle width). */
  box: number[];
  /** Traversal strides per dim (default all 1). */
  elementStrides?: number[];
  /** Shared-memory swizzle of the box (default "none"). */
  swizzle?: "none" | "32B" | "64B" | "128B";
  l2Promotion?: "none" | "64B" | "128B" | "256B";
  /** Out-of-bounds elements read as zero (default) or NaN. */
  oobFill?: "zero" | "nan";
}

/** NCCL's ncclDataType_t. */
export const NcclDataType = {
  i8: 0,
  u8: 1,
  i32: 2,
  u32: 3,
  i64: 4,
  u64: 5,
  f16: 6,
  f32: 7,
  f64: 8,
  bf16: 9,
  f8e4m3: 10,
  f8e5m2: 11,
} as const;
export type NcclDataTypeName = keyof typeof NcclDataType;

/** NCCL's ncclRedOp_t. */
export const NcclRedOp = { sum: 0, prod: 1, max: 2, min: 3, avg: 4 } as const;
export type NcclRedOpName = keyof typeof NcclRedOp;

/** ncclIssue's op codes (native/src/nccl.cc `IssueOp`). */
export const NcclIssueOp = { all_gather: 0, reduce_scatter: 1, all_reduce: 2, send: 3, recv: 4, group_start: 5, group_end: 6 } as const;

/** cuStreamCreate flags. */
export const StreamFlags = { default: 0, nonBlocking: 1 } as const;
/** cuEventCreate flags. */
export const EventFlags = { default: 0, blockingSync: 1, disableTiming: 2 } as const;
/** cuStreamBeginCapture modes. */
export const CaptureMode = { global: 0, threadLocal: 1, relaxed: 2 } as const;
/** cuStreamIsCapturing results. */
export const CaptureStatus = { none: 0, active: 1, invalidated: 2 } as const;
/** cuMemHostAlloc flags. */
export const HostAllocFlags = { portable: 1, deviceMap: 2, writeCombined: 4 } as const;

/** The addon's exports. */
export interface NativeAddon {
  addonInfo(): { napiVersion: number; built: string; compiler: string };
  /** Loads (or reports) a library without throwing. */
  probe(library: LibraryName): LibraryProbe;

  // driver: devices and contexts
  driverVersion(): number;
  init(): void;
  deviceCount(): number;
  deviceProperties(ordinal?: number): DeviceProperties;
  /** Makes the device's primary context current on this thread (device 0 is used until this is called). */
  setDevice(ordinal: number): void;
  getDevice(): number;
  ctxSynchronize(): void;
  memGetInfo(): { free: number; total: number };

  // memory
  memAlloc(bytes: Size): DevicePtr;
  memFree(ptr: DevicePtr): void;
  /** Copies `bytes` (default: all of src) from host to device. */
  memcpyHtoD(dst: DevicePtr, src: HostBuffer, bytes?: Size): void;
  memcpyHtoDAsync(dst: DevicePtr, src: HostBuffer, bytes: Size | undefined, stream: Stream): void;
  /** Copies `bytes` (default: all of dst) from device to host. */
  memcpyDtoH(dst: HostBuffer, src: DevicePtr, bytes?: Size): void;
  memcpyDtoHAsync(dst: HostBuffer, src: DevicePtr, bytes: Size | undefined, stream: Stream): void;
  memcpyDtoD(dst: DevicePtr, src: DevicePtr, bytes: Size): void;
  memcpyDtoDAsync(dst: DevicePtr, src: DevicePtr, bytes: Size, stream: Stream): void;
  /** Fills `count` elements of 1, 2 or 4 bytes; with a stream (0n included) it is asynchronous. */
  memsetD8(ptr: DevicePtr, value: number, count: Size, stream?: Stream): void;
  memsetD16(ptr: DevicePtr, value: number, count: Size, stream?: Stream): void;
  memsetD32(ptr: DevicePtr, value: number, count: Size, stream?: Stream): void;
  /** Page-locked host memory as an ArrayBuffer (truly asynchronous copies need it). */
  hostAlloc(bytes: Size, flags?: number): ArrayBuffer;
  /** Frees it now and detaches the ArrayBuffer (otherwise it is freed when collected). */
  hostFree(buffer: ArrayBuffer): void;

  // modules and launches
  /** Loads PTX (string or bytes), a CUBIN or a fatbin; a JIT failure's log is in the error. */
  moduleLoadData(image: string | HostBuffer): Module;
  moduleUnload(module: Module): void;
  moduleGetFunction(module: Module, name: string): KernelFunction;
  funcSetMaxDynamicSharedMemory(fn: KernelFunction, bytes: number): void;
  funcGetAttributes(fn: KernelFunction): FunctionAttributes;
  /** Each parameter's offset and size in the device's parameter block (null before CUDA 12.4); pack with packArgsAt. */
  funcGetParamLayout(fn: KernelFunction): { offset: number; size: number }[] | null;
  /** `params` is the packed parameter block (see packArgs in runtime/cuda/kernel-args.ts). */
  launchKernel(fn: KernelFunction, grid: Dim3, block: Dim3, sharedMemBytes: number, stream: Stream, params?: HostBuffer): void;

  // streams and events
  streamCreate(flags?: number): Stream;
  streamDestroy(stream: Stream): void;
  streamSynchronize(stream: Stream): void;
  /** True when all its work is done. */
  streamQuery(stream: Stream): boolean;
  streamWaitEvent(stream: Stream, event: Event): void;
  eventCreate(flags?: number): Event;
  eventDestroy(event: Event): void;
  eventRecord(event: Event, stream: Stream): void;
  eventSynchronize(event: Event): void;
  eventQuery(event: Event): boolean;
  /** Milliseconds between two recorded events. */
  eventElapsedTime(start: Event, end: Event): number;

  // graphs
  streamBeginCapture(stream: Stream, mode?: number): void;
  streamEndCapture(stream: Stream): Graph;
  streamIsCapturing(stream: Stream): number;
  graphInstantiate(graph: Graph, flags?: Size): GraphExec;
  graphUpload(exec: GraphExec, stream: Stream): void;
  graphLaunch(exec: GraphExec, stream: Stream): void;
  graphExecDestroy(exec: GraphExec): void;
  graphDestroy(graph: Graph): void;
  graphNodeCount(graph: Graph): number;

  // NVRTC
  nvrtcVersion(): [number, number];
  nvrtcSupportedArchs(): number[];
  nvrtcCreateProgram(source: string, name?: string, headerSources?: string[], headerNames?: string[]): NvrtcProgram;
  nvrtcDestroyProgram(program: NvrtcProgram): void;
  nvrtcAddNameExpression(program: NvrtcProgram, nameExpression: string): void;
  nvrtcGetLoweredName(program: NvrtcProgram, nameExpression: string): string;
  /** A compile error in the source is { ok: false, log }; other failures (a bad option...) throw. */
  nvrtcCompileProgram(program: NvrtcProgram, options?: string[]): { ok: boolean; log: string };
  nvrtcGetProgramLog(program: NvrtcProgram): string;
  nvrtcGetPTX(program: NvrtcProgram): string;
  /** Only for programs compiled for a real architecture (--gpu-architecture=sm_XX). */
  nvrtcGetCUBIN(program: NvrtcProgram): Uint8Array;

  // cuBLASLt
  cublasLtVersion(): number;
  /**
   * Validates the problem, builds (or finds) its plan and returns a handle for cublasLtMatmulRun; the
   * same problem, alignment and alpha/beta give the same handle.
   */
  cublasLtMatmulPrepare(options: MatmulOptions): MatmulHandle;
  /**
   * Runs a prepared matmul: positional arguments only, so a call reads no object and builds no
   * string. c 0n means d. Pointers aligned differently from the prepare's get that alignment's plan.
   */
  cublasLtMatmulRun(handle: MatmulHandle, a: DevicePtr, b: DevicePtr, c: DevicePtr, d: DevicePtr, workspace: DevicePtr, stream: Stream): void;
  /** The block-scaled FP8 GEMM (see Fp8BlockScaledMatmulOptions); the one cuBLASLt FP8 entry point. */
  cublasLtMatmulFp8BlockScaled(options: Fp8BlockScaledMatmulOptions): void;

  // cuBLAS (native/src/cublas.cc)
  /**
   * cublasGemmGroupedBatchedEx over G problems, column-major BLAS terms as in MatmulOptions, alpha 1:
   *   C_i[m_i,n_i] = op(A_i) op(B_i) + beta * C_i    (C has A's type; f32 or bf16, accumulated in f32)
   * `dims`: 6G entries by field: m[0..G), n[0..G), k, lda, ldb, ldc. `ptrs`: 3G: the A pointers, then
   * B, then C (the C_i must not overlap). Empty problems are refused: leave them out. Checks its
   * arguments before loading libcublas (probe("cublas") says whether it can be loaded).
   */
  cublasGroupedGemm(dtype: "f32" | "bf16", transA: boolean, transB: boolean, dims: Int32Array, ptrs: BigUint64Array, beta: number, stream: Stream): void;

  // TMA
  /** The 128-byte CUtensorMap (see TensorMapOptions); throws on a driver without it (before CUDA 12.0). */
  tensorMapEncodeTiled(options: TensorMapOptions): Uint8Array;

  // NCCL (dtype and op are NcclDataType / NcclRedOp values). Calls on a communicator answer 0, or 7
  // (ncclInProgress) on a non-blocking one (NCCL_COMM_BLOCKING=0): then poll ncclCommGetAsyncError.
  ncclVersion(): number;
  /** 128 bytes to hand to every rank. */
  ncclGetUniqueId(): Uint8Array;
  /** On the current device; blocks until all `nranks` ranks have joined (non-blocking: poll its async error). */
  ncclCommInitRank(nranks: number, uniqueId: Uint8Array, rank: number): NcclComm;
  ncclCommInitAll(devices: number[]): NcclComm[];
  /** Collective over `comm`: ranks with one colour form a communicator, ordered by key; null for a negative colour. */
  ncclCommSplit(comm: NcclComm, color: number, key: number): NcclComm | null;
  ncclCommDestroy(comm: NcclComm): number;
  ncclCommAbort(comm: NcclComm): number;
  /** 0 (ncclSuccess), 7 (ncclInProgress) or an error code. */
  ncclCommGetAsyncError(comm: NcclComm): number;
  ncclCommInfo(comm: NcclComm): { count: number; rank: number; device: number };
  ncclAllReduce(send: DevicePtr, recv: DevicePtr, count: Size, dtype: number, op: number, comm: NcclComm, stream: Stream): number;
  ncclAllGather(send: DevicePtr, recv: DevicePtr, sendCount: Size, dtype: number, comm: NcclComm, stream: Stream): number;
  ncclReduceScatter(send: DevicePtr, recv: DevicePtr, recvCount: Size, dtype: number, op: number, comm: NcclComm, stream: Stream): number;
  ncclBroadcast(send: DevicePtr, recv: DevicePtr, count: Size, dtype: number, root: number, comm: NcclComm, stream: Stream): number;
  ncclSend(buffer: DevicePtr, count: Size, dtype: number, peer: number, comm: NcclComm, stream: Stream): number;
  ncclRecv(buffer: DevicePtr, count: Size, dtype: number, peer: number, comm: NcclComm, stream: Stream): number;
  ncclGroupStart(): void;
  ncclGroupEnd(): number;
  /**
   * One comm step in one call: records `startEvent` on `computeStream` and makes `commStream` wait on
   * it (when `first` is 0), issues calls `first`.. in order on `commStream`, records `doneEvent` there.
   * `ops`: 4 per call, [op (NcclIssueOp), buffer a, buffer b, reduce op (NcclRedOp) or peer]; `ptrs`:
   * the buffers' base pointers; `counts`: 3 per call, [count, element offset in a, in b]; collectives
   * send from a into b, send/recv use a. Returns the number of calls when all were issued, else the
   * index of the one that answered ncclInProgress (nothing after it issued, `doneEvent` not recorded:
   * poll, then call again with `first` one past it). A failing call throws what its own entry point does.
   */
  ncclIssue(comm: NcclComm, computeStream: Stream, commStream: Stream, startEvent: Event, doneEvent: Event, ops: Int32Array, ptrs: BigUint64Array, counts: Float64Array, dtype: number, first: number): number;

  // CUDA IPC (native/src/ipc.cc; the intranode MoE transport, runtime/cuda/ipc.ts)
  /** 64 bytes naming the cuMemAlloc allocation that starts at `ptr`, for peer processes on this node. */
  ipcGetMemHandle(ptr: DevicePtr): Buffer;
  /** Maps a peer process's allocation (peer access enabled lazily); not for this process's own handles. */
  ipcOpenMemHandle(handle: Uint8Array): DevicePtr;
  ipcCloseMemHandle(ptr: DevicePtr): void;
  /** Whether kernels on device `ordinal` can load and store device `peerOrdinal`'s memory directly. */
  deviceCanAccessPeer(ordinal: number, peerOrdinal: number): boolean;
}
