// `shardts run FILE.ts`: build the model on the requested mesh, compile, run, print the outputs and
// a sharding summary, and check the result against the same model on one device.
import { resolve } from "node:path";
import { existsSync } from "node:fs";
import { pathToFileURL } from "node:url";
import type { Plan } from "../../compiler/plan.ts";
import { STAGES, type Stage } from "../../compiler/pipeline.ts";
import { fuse } from "../../compiler/codegen/fuse.ts";
import { emitCuda } from "../../compiler/codegen/cuda/emit.ts";
import { dumpCuda } from "../../compiler/codegen/dump.ts";
import { writeChromeTrace, type TraceEvent } from "../../runtime/cuda/trace.ts";
import { fmtPlacements } from "../../compiler/ir/placement.ts";
import { fmtStep } from "../../compiler/passes/redistribute-plan.ts";
import { ShardtsError, UsageError } from "../../compiler/errors.ts";
import { parseMeshArg } from "../mesh.ts";
import { buildOn, isMainDef, isModelDef, meshFor, singleDevice, type MainDef, type ModelDef } from "../model.ts";
import { evaluate, jobRank, resolveBackend, type Backend } from "../run.ts";
import { maxRelDiff, type GlobalValue } from "../value.ts";
import { MAX_CPU_RANKS } from "../mesh.ts";

export const RUN_HELP = `usage: shardts run FILE.ts [--mesh dp=2,ep=2] [--backend auto|cuda|cpu] [--no-verify] [--dump STAGE] [--trace FILE]
       shardts run SCRIPT.ts [script options]

Builds the model that FILE.ts exports (export default defineModel(mesh, build)), compiles it for the
mesh, runs it and prints each output with its placements and a summary of the collectives. A file
that exports defineMain(...) (a script, e.g. examples/train-moe-lm.ts) is run with the arguments
after its name; \`shardts run SCRIPT.ts --help\` prints its options.

  --mesh AXIS=N,...   mesh sizes (axis names must be the model's, in order); default: the model's
  --backend B         auto (default: CUDA when a GPU is usable, else CPU), cuda or cpu
  --no-verify         skip the check against the same model on one device (every axis 1) on the CPU reference
  --dump STAGE        print an intermediate: ${STAGES.join(", ")}
  --dump-cuda DIR     write the CUDA source of every kernel the plan fuses into DIR
  --trace FILE        CUDA backend: write the run's timeline (every kernel, GEMM, op and collective,
                      timed by CUDA events) as Chrome trace JSON, for https://ui.perfetto.dev or chrome://tracing
`;

const TOLERANCE: Record<string, number> = { f32: 1e-4, bf16: 2e-2, i32: 0, fp8e4m3: 0.13, fp8e5m2: 0.26 };

export async function loadRunnable(file: string): Promise<ModelDef | MainDef> {
  const path = resolve(file);
  const pre = registered.get(path);
  if (pre) return pre;
  if (!existsSync(path)) throw new UsageError(`shardts run: no such file: ${file}`);
  let mod: { default?: unknown };
  try {
    mod = (await import(pathToFileURL(path).href)) as { default?: unknown };
  } catch (e) {
    if (e instanceof ShardtsError) throw e;
    throw new UsageError(`could not load ${file}: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
  }
  if (!isModelDef(mod.default) && !isMainDef(mod.default))
    throw new UsageError(`${file} must export default defineModel({ axis: size, ... }, (mesh) => ({ name: tensor, ... })) or defineMain(async ({ args }) => { ... })`);
  return mod.default;
}

export function summarizePlan(plan: Plan): string[] {
  const ops = plan.instrs.filter((i) => i.kind === "op").length;
  const comm = new Map<string, number>();
  for (const i of plan.instrs) {
    // MoE dispatch/combine ops move rows over their axis themselves: one collective step each
    const k = i.kind === "comm" ? fmtStep(i.step, plan.mesh).replace(/\(.*\)$/, "") : typeof i.attrs.axis === "string" && i.op.startsWith("moe_") ? `${i.op}[${i.attrs.axis}]` : undefined;
    if (k) comm.set(k, (comm.get(k) ?? 0) + 1);
  }
  const list = [...comm].map(([k, n]) => `${k} ×${n}`).join(", ");
  return [`  ${ops} ops, ${[...comm.values()].reduce((a, b) => a + b, 0)} collective steps${list ? `: ${list}` : ""}`];
}

/** Pre-loaded runnables by path, for bundles that cannot import TypeScript at run time (the GPU harness). */
const registered = new Map<string, ModelDef | MainDef>();
export const registerRunnable = (file: string, def: ModelDef | MainDef) => registered.set(resolve(file), def);

export async function runCommand(file: string, opts: { mesh?: string; backend?: string; verify: boolean; dump?: string; dumpCuda?: string; trace?: string }, log: (s: string) => void, def?: ModelDef): Promise<number> {
  const backend = resolveBackend((opts.backend ?? "auto") as Backend);
  if (opts.trace !== undefined && backend !== "cuda") throw new UsageError(`--trace records CUDA events: it needs the CUDA backend (this run uses ${backend}; pass --backend cuda on a GPU machine)`);
  if (opts.dump !== undefined && !STAGES.includes(opts.dump as Stage)) throw new UsageError(`--dump takes one of ${STAGES.join(", ")}; got '${opts.dump}'`);
  def ??= (await loadRunnable(file)) as ModelDef;
  const sizes = meshFor(def, opts.mesh ? parseMeshArg(opts.mesh) : undefined);
  const ranks = Object.values(sizes).reduce((a, b) => a * b, 1);
  if (ranks > MAX_CPU_RANKS) throw new UsageError(`the CPU backend simulates at most ${MAX_CPU_RANKS} ranks; --mesh asks for ${ranks}`);
  const meshText = Object.entries(sizes).map(([a, n]) => `${a}=${n}`).join(", ");
  log(`shardts run ${file}  mesh (${meshText})  backend ${backend}${def.description ? `\n  ${def.description}` : ""}`);

  const t0 = performance.now();
  const { outputs } = buildOn(def, sizes);
  let plan: Plan | undefined;
  let stats: Record<string, number> | undefined;
  let trace: TraceEvent[] | undefined;
  const names = Object.keys(outputs);
  const values = await evaluate(names.map((n) => outputs[n]!), {
    backend: opts.backend as Backend,
    onPlan: (p) => (plan = p),
    onStats: (st) => (stats = st),
    trace: opts.trace !== undefined ? (trace = []) : undefined,
    dump: (stage, text) => stage === opts.dump && log(`--- ${stage} ---\n${text}`),
  });
  const ms = performance.now() - t0;
  log("outputs");
  names.forEach((n, i) => log(`  ${n}  ${fmtPlacements(outputs[n]!.type.placements)}  ${values[i]!.toString()}`));
  log(`sharding summary (${ranks} ranks, ${ms.toFixed(0)} ms)`);
  for (const l of summarizePlan(plan!)) log(l);
  if (stats) log(`  CUDA: ${stats.kernels} launches; ${stats.compiled} kernels compiled (${((stats.compileMs ?? 0) / 1000).toFixed(2)} s), ${stats.cacheHits} from the cache; peak device memory ${((stats.peakBytes ?? 0) / 2 ** 20).toFixed(1)} MiB`);
  if (opts.trace !== undefined && trace) {
    writeChromeTrace(opts.trace, trace, jobRank(), `shardts run ${file}`);
    log(`  wrote ${trace.length} trace events to ${opts.trace} (open in https://ui.perfetto.dev or chrome://tracing)`);
  }
  if (opts.dumpCuda) {
    const written = dumpCuda(opts.dumpCuda, emitCuda(fuse(plan!)));
    log(`  wrote ${written.length - 1} CUDA kernel source(s) and kernels.json to ${opts.dumpCuda}`);
  }

  if (!opts.verify) return 0;
  const ref = buildOn(def, singleDevice(def));
  // the reference is always the CPU backend's semantics on one device
  const refValues = await evaluate(names.map((n) => ref.outputs[n]!), { backend: "cpu" });
  let ok = true;
  log(`check against the unsharded run (every axis 1) on the CPU reference`);
  names.forEach((n, i) => {
    const d = maxRelDiff(values[i]!, refValues[i]! as GlobalValue);
    const tol = TOLERANCE[values[i]!.dtype] ?? 0;
    const pass = d <= tol;
    ok &&= pass;
    log(`  ${n}  max rel diff ${d === 0 ? "0" : d.toExponential(2)}  ${pass ? "ok" : `FAIL (tolerance ${tol})`}`);
  });
  return ok ? 0 : 1;
}
