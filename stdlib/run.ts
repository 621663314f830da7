// Evaluating traced tensors: compile the graph up to them, run the plan on a backend, read back.
import type { Stage } from "../compiler/pipeline.ts";
import type { Plan } from "../compiler/plan.ts";
import { compile } from "../compiler/pipeline.ts";
import { UsageError } from "../compiler/errors.ts";
import { runPlanCpu } from "../runtime/cpu/index.ts";
import type { AnyDTensor } from "./dtensor.ts";
import { GlobalValue } from "./value.ts";

export type Backend = "auto" | "cpu" | "cuda";
export const BACKENDS: readonly Backend[] = ["auto", "cpu", "cuda"];

export interface EvaluateOptions {
  backend?: Backend;
  dump?: (stage: Stage, text: string) => void;
  /** Receives the compiled plan (for summaries). */
  onPlan?: (plan: Plan) => void;
}

/** Which backend `auto` means on this machine; the CUDA backend does not exist yet. */
export function resolveBackend(b: Backend = "auto"): "cpu" {
  if (!BACKENDS.includes(b)) throw new UsageError(`unknown backend '${b}'; use one of ${BACKENDS.join(", ")}`);
  if (b === "cuda") throw new UsageError("the CUDA backend is not built yet; use --backend cpu (or auto, which picks cpu)");
  return "cpu";
}

export async function evaluate(tensors: readonly AnyDTensor[], opts: EvaluateOptions = {}): Promise<GlobalValue[]> {
  if (tensors.length === 0) return [];
  resolveBackend(opts.backend);
  const mesh = tensors[0]!.mesh;
  for (const t of tensors) if (t.mesh !== mesh) throw new UsageError("evaluate(): all tensors must come from one mesh");
  const plan = compile(mesh.builder.graph, tensors.map((t) => t.ref), { dump: opts.dump });
  opts.onPlan?.(plan);
  const res = runPlanCpu(plan);
  return res.outputs.map((g, i) => new GlobalValue(tensors[i]!.type.dims.map((d) => d.name), g!.shape, g!.dtype, g!.data));
}

/** The global value of one tensor. */
export async function read(t: AnyDTensor, opts: EvaluateOptions = {}): Promise<GlobalValue> {
  return (await evaluate([t], opts))[0]!;
}
