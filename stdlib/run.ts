// Evaluating traced tensors: compile the graph up to them, run the plan on a backend, read back.
import type { Stage } from "../compiler/pipeline.ts";
import type { Plan } from "../compiler/plan.ts";
import { compile } from "../compiler/pipeline.ts";
import { UsageError } from "../compiler/errors.ts";
import { runPlanCpu, type CpuRunResult } from "../runtime/cpu/index.ts";
import type { LocalTensor } from "../compiler/ir/local.ts";
import { cudaAvailable, native } from "../runtime/cuda/native.ts";
import { inDistJob, joinJob, type JoinedJob } from "../runtime/cuda/nccl/setup.ts";
import { CudaExecutor } from "../runtime/cuda/executor.ts";
import type { TraceEvent } from "../runtime/cuda/trace.ts";
import type { AnyDTensor } from "./dtensor.ts";
import { GlobalValue } from "./value.ts";

export type Backend = "auto" | "cpu" | "cuda";
export const BACKENDS: readonly Backend[] = ["auto", "cpu", "cuda"];

export interface EvaluateOptions {
  backend?: Backend;
  dump?: (stage: Stage, text: string) => void;
  /** Receives the compiled plan (for summaries). */
  onPlan?: (plan: Plan) => void;
  /** Receives what the backend reports about the run (the CUDA backend: kernels, compile times, peak memory). */
  onStats?: (stats: Record<string, number>, backend: "cpu" | "cuda") => void;
  /** CUDA backend: filled with the run's timeline (runtime/cuda/trace.ts). */
  trace?: TraceEvent[];
}

let gpuProbe: ReturnType<typeof cudaAvailable> | undefined;

/** Which backend to use: `auto` is CUDA when a GPU and the native addon are usable, else the CPU. */
export function resolveBackend(b: Backend = "auto"): "cpu" | "cuda" {
  if (!BACKENDS.includes(b)) throw new UsageError(`unknown backend '${b}'; use one of ${BACKENDS.join(", ")}`);
  if (b === "cpu") return "cpu";
  // whether this process has a GPU does not change: probe the driver once
  const gpu = (gpuProbe ??= cudaAvailable());
  if (gpu.ok) return "cuda";
  if (b === "cuda") throw new UsageError(`--backend cuda: no usable GPU: ${gpu.reason}`);
  return "cpu";
}

let cuda: CudaExecutor | undefined;
let job: JoinedJob | undefined;
/** The process's CUDA executor (one device, created on first use; in a multi-GPU job, GPU LOCAL_RANK running its rank only). */
export const cudaExecutor = (): CudaExecutor => {
  if (cuda) return cuda;
  cuda = new CudaExecutor(native(), job?.env.localRank ?? 0);
  if (job) (cuda.rankLocal = job.rankLocal).exec = cuda;
  return cuda;
};

/**
 * In a process started as one rank of a job (shardts launch, torchrun, srun: WORLD_SIZE > 1) with a
 * usable GPU: joins the job (NCCL world communicator, watchdog), so CUDA plans whose mesh has
 * WORLD_SIZE ranks run rank-local with NCCL. Returns the job (call close() at the end), or undefined.
 */
export async function joinGpuJob(backend: Backend = "auto"): Promise<JoinedJob | undefined> {
  if (job || !inDistJob() || backend === "cpu" || resolveBackend(backend) !== "cuda") return job;
  job = await joinJob();
  return job;
}
/** This process's rank in a joined GPU job (0 otherwise). */
export const jobRank = (): number => job?.env.rank ?? 0;

/** Runs a compiled plan on the chosen backend. `carry` (CUDA): outputs kept on the device as the plan's next inputs (runtime/cuda/carried.ts). */
export function runPlan(plan: Plan, backend: "cpu" | "cuda", feeds?: ReadonlyMap<string, LocalTensor[]>, read?: readonly number[], trace?: TraceEvent[], carry?: ReadonlyMap<number, string>): CpuRunResult {
  return backend === "cuda" ? cudaExecutor().run(plan, feeds, read, { trace, carry }) : runPlanCpu(plan, feeds, read);
}

export async function evaluate(tensors: readonly AnyDTensor[], opts: EvaluateOptions = {}): Promise<GlobalValue[]> {
  if (tensors.length === 0) return [];
  const backend = resolveBackend(opts.backend);
  const mesh = tensors[0]!.mesh;
  for (const t of tensors) if (t.mesh !== mesh) throw new UsageError("evaluate(): all tensors must come from one mesh");
  const plan = compile(mesh.builder.graph, tensors.map((t) => t.ref), { dump: opts.dump });
  opts.onPlan?.(plan);
  const res = runPlan(plan, backend, undefined, undefined, opts.trace);
  if ("stats" in res) opts.onStats?.((res as { stats: Record<string, number> }).stats, backend);
  return res.outputs.map((g, i) => new GlobalValue(tensors[i]!.type.dims.map((d) => d.name), g!.shape, g!.dtype, g!.data));
}

/** The global value of one tensor. */
export async function read(t: AnyDTensor, opts: EvaluateOptions = {}): Promise<GlobalValue> {
  return (await evaluate([t], opts))[0]!;
}
