// The CPU reference backend: runs a plan for every rank of the mesh in one process. Ops run rank by
// rank on local pieces; collective steps see all ranks' pieces at once and are simulated exactly.
import type { Plan } from "../../compiler/plan.ts";
import { readsOf } from "../../compiler/plan.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import type { CpuCtx } from "../../compiler/ops/registry.ts";
import { getOp } from "../../compiler/ops/index.ts";
import { coordsOf } from "../../compiler/ir/placement.ts";
import { CompileError, ShardtsError, UsageError } from "../../compiler/errors.ts";
import { assemble, type GlobalTensor } from "./assemble.ts";
import { runStep } from "./collectives.ts";
import { pieceOf } from "./pieces.ts";

export interface CpuRunResult {
  /** Each output read back as one global tensor (only those asked for; the others are undefined). */
  outputs: (GlobalTensor | undefined)[];
  /** Each output's per-rank pieces. */
  locals: LocalTensor[][];
}

/** What an op's CPU reference is told about rank r's pieces (the CUDA backend uses it for factories). */
export function cpuCtx(plan: Plan, ins: Extract<Plan["instrs"][number], { kind: "op" }>, r: number, coords: number[], feeds?: ReadonlyMap<string, LocalTensor[]>): CpuCtx {
  return {
    inTypes: ins.inputs.map((s) => plan.values[s]!.type),
    outTypes: ins.outputs.map((s) => plan.values[s]!.type),
    inBoxes: ins.inputs.map((s) => plan.values[s]!.boxes[r]!),
    outBoxes: ins.outputs.map((s) => plan.values[s]!.boxes[r]!),
    outShapes: ins.outputs.map((s) => plan.values[s]!.shapes[r]!),
    coords,
    rank: r,
    payload: ins.payload,
    feeds,
  };
}

/** Runs the plan; `feeds` gives each `input` placeholder's pieces, one per rank, by name. */
/**
 * `opts.ranks`: compute only these ranks' pieces (the others are holes in `locals`; nothing is read
 * back), for plans whose ranks are independent: no comm steps and no whole-tensor ops (a process of
 * a rank-local job initialising its own parameters).
 */
export function runPlanCpu(plan: Plan, feeds?: ReadonlyMap<string, LocalTensor[]>, read?: readonly number[], opts: { ranks?: readonly number[] } = {}): CpuRunResult {
  const only = opts.ranks;
  if (only) {
    const bad = plan.instrs.find((i) => i.kind === "comm" || getOp(i.op).global);
    if (bad) throw new UsageError(`runPlanCpu(): computing some ranks only needs ranks that do not exchange data; this plan has ${bad.kind === "comm" ? "a comm step" : `'${bad.op}', which reads every rank`}`);
    if (only.some((r) => !Number.isInteger(r) || r < 0 || r >= plan.world)) throw new UsageError(`runPlanCpu(): ranks [${only.join(", ")}] are not ranks of a world of ${plan.world}`);
    if (read?.length) throw new UsageError("runPlanCpu(): reading outputs back needs every rank's pieces; give ranks or read, not both");
  }
  const rankList = only ?? Array.from({ length: plan.world }, (_, r) => r);
  const slots: (LocalTensor[] | undefined)[] = new Array(plan.values.length);
  const coords = Array.from({ length: plan.world }, (_, r) => coordsOf(plan.mesh, r));
  const countsCache = new Map<number, GlobalTensor>();
  const counts = (s: number): GlobalTensor => {
    let c = countsCache.get(s);
    if (!c) {
      c = assemble(plan, s, slots[s]!, counts);
      countsCache.set(s, c);
    }
    return c;
  };
  plan.instrs.forEach((ins, i) => {
    try {
      if (ins.kind === "comm") {
        slots[ins.output] = runStep(plan, ins.step, ins.input, ins.output, slots[ins.input]!, counts);
      } else if (getOp(ins.op).global) {
        runGlobalOp(plan, ins, (s) => slots[s]!, counts).forEach((per, k) => (slots[ins.outputs[k]!] = per));
      } else {
        const def = getOp(ins.op);
        const per: LocalTensor[][] = ins.outputs.map(() => new Array<LocalTensor>(plan.world));
        for (const r of rankList) {
          const ctx = cpuCtx(plan, ins, r, coords[r]!, feeds);
          const outs = def.cpu(ins.inputs.map((s) => slots[s]![r]!), ins.attrs, ctx);
          outs.forEach((o, k) => (per[k]![r] = o));
        }
        ins.outputs.forEach((s, k) => (slots[s] = per[k]));
      }
    } catch (e) {
      if (e instanceof ShardtsError && ins.site && !e.site) {
        const E = e.constructor as new (m: string, s?: string) => ShardtsError;
        throw new E(e.message, ins.site);
      }
      throw e;
    }
    // free what nothing reads any more
    for (const s of readsOf(ins)) if (plan.lastUse[s] === i && !countsCache.has(s)) slots[s] = undefined;
  });
  const wanted = new Set(only ? [] : (read ?? plan.outputs.map((_, i) => i)));
  return {
    outputs: plan.outputs.map((s, i) => (wanted.has(i) ? assemble(plan, s, slots[s]!, counts) : undefined)),
    locals: plan.outputs.map((s) => slots[s]!),
  };
}

/**
 * An op that reads every rank's pieces (it has a `global` reference): whole inputs in, each output
 * cut into the ranks' pieces. The CUDA backend's simulated mesh runs these ops through here too.
 */
export function runGlobalOp(plan: Plan, ins: Extract<Plan["instrs"][number], { kind: "op" }>, pieces: (slot: number) => LocalTensor[], counts: (s: number) => GlobalTensor): LocalTensor[][] {
  const def = getOp(ins.op);
  const inputs = ins.inputs.map((s) => assemble(plan, s, pieces(s), counts));
  const outs = def.global!(inputs, ins.attrs, ins.inputs.map((s) => plan.values[s]!.type), ins.outputs.map((s) => plan.values[s]!.type));
  outs.forEach((o, k) => {
    const want = plan.values[ins.outputs[k]!]!.type.dims.map((d) => d.size);
    if (o.shape.join() !== want.join()) throw new CompileError(`${ins.op}'s global reference returned output ${k} as [${o.shape.join(", ")}], its type says [${want.join(", ")}]; this is a shardts bug`);
  });
  // an output's segments may be counted by another output of the same op (dispatch's counts)
  const own = new Map(ins.outputs.map((s, k) => [s, outs[k]!]));
  const cnt = (s: number) => own.get(s) ?? counts(s);
  return ins.outputs.map((s, k) => Array.from({ length: plan.world }, (_, r) => pieceOf(plan, s, outs[k]!, r, cnt)));
}
