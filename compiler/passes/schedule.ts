// Schedule: reorders a (fused) plan's instructions so communication overlaps compute — with two
// micro-batches (LmConfig.microBatches), one chain's dispatch/combine runs on the communication
// stream while the other chain's attention and experts run on the compute stream. A pure pass: only
// the order changes (a topological order of the same instructions; `verifyOrder` checks one), and
// `lastUse` is recomputed.
//
// A list scheduler over two resources, simulating the rank-local CUDA runtime (schedule-cost.ts):
// a comm step is issued as soon as its inputs are issued (its start waits for the compute issued
// before it, so issuing it later only delays it); otherwise the instruction whose compute could
// start first is issued, ties going to host reads of counts and MoE exchanges (a sync is cheapest
// while the other chain's exchange is not yet in flight), then to program order. So an order with
// no communication, or whose communication never makes compute wait, comes out unchanged; where an
// instruction would wait for an exchange, the other chain's ready work is issued instead. Sources
// (inputs, constants) stay just before their first reader, and comm outputs issued ahead of their
// readers stay within a byte window (ScheduleOptions), so the order does not hold more memory.
//
// Composition with prefetch (compiler/passes/prefetch.ts): schedule first, prefetch after. The
// schedule issues each comm step right after its inputs; prefetch then only lifts FSDP gathers
// above their host-fed sources' places, within its byte window and never above a host read, which
// the schedule's timeline does not price (parameters are resident or uploaded off the streams).
import { CompileError } from "../errors.ts";
import { MOE_OPS } from "../ops/dispatch.ts";
import { lastUses, pieceBytes, readsOf, writesOf } from "../plan.ts";
import type { PlanValue } from "../plan.ts";
import { countsReadOnHost, DEFAULT_COST, instrCost, simulate, StreamSim, type AnyInstr, type CostModel, type Timeline } from "./schedule-cost.ts";

export interface Schedulable<I extends AnyInstr> {
  values: PlanValue[];
  instrs: I[];
  outputs: number[];
  lastUse: number[];
}

export interface ScheduleReport {
  /** The timeline of the order given and of the order returned (predicted, seconds). */
  before: Timeline;
  after: Timeline;
  /** Instructions whose position changed. */
  moved: number;
}

/** For each instruction, the instructions it depends on: producers of what it reads, and of the counts of segmented values it reads or writes. */
function dependencies<I extends AnyInstr>(values: PlanValue[], ins: readonly I[]): number[][] {
  const producer = values.map(() => -1);
  ins.forEach((x, i) => writesOf(x as never).forEach((s) => (producer[s] = i)));
  const counts = (s: number) => Object.values(values[s]!.segCounts);
  return ins.map((x, i) => {
    const slots = [...readsOf(x as never), ...[...readsOf(x as never), ...writesOf(x as never)].flatMap(counts)];
    return [...new Set(slots.map((s) => producer[s]!).filter((p) => p >= 0 && p !== i))];
  });
}

/**
 * Throws unless `order` holds each of `original`'s instructions once and every one comes after the
 * instructions producing what it reads (and the counts of its segmented values).
 */
export function verifyOrder<I extends AnyInstr>(values: PlanValue[], original: readonly I[], order: readonly I[]): void {
  const at = new Map<I, number>();
  order.forEach((x, k) => at.set(x, k));
  if (order.length !== original.length || at.size !== original.length || original.some((x) => !at.has(x)))
    throw new CompileError(`schedule: the new order has ${order.length} instructions (${at.size} distinct) for ${original.length}; a scheduler must permute the plan's instructions, not add or drop any`);
  const deps = dependencies(values, original);
  original.forEach((x, i) => {
    for (const d of deps[i]!)
      if (at.get(original[d]!)! > at.get(x)!)
        throw new CompileError(`schedule: instruction ${i} (${x.op ?? x.kind}) now runs before instruction ${d} (${original[d]!.op ?? original[d]!.kind}), which produces what it reads; the order must stay topological`);
  });
}

/** Whether the instruction is best issued at once: a comm step that reads no counts on the host. */
const eager = (values: PlanValue[], x: AnyInstr, read: Set<number>) => x.kind === "comm" && countsReadOnHost(values, x).every((c) => read.has(c));

/** The plan in an order that overlaps communication with compute (see the header). */
export interface ScheduleOptions {
  /**
   * The new order is kept only where the cost model predicts a step at least this fraction shorter
   * (default 0); otherwise the plan comes back as it was: a gain of a percent does not pay for the
   * memory that communication issued early holds.
   */
  minGain?: number;
  /**
   * Bytes of comm outputs issued ahead of their first reader at any time (default unbounded): a comm
   * step that would exceed it waits for compute instead, unless nothing else is ready. Issued as early
   * as their inputs allow, an FSDP step's parameter gathers (8 layers, d 512) peaked 19% higher
   * (bench/host/schedule-memory.ts); the pipeline passes prefetch's window.
   */
  windowBytes?: number;
}

export function schedule<I extends AnyInstr, P extends Schedulable<I>>(plan: P, model: CostModel = DEFAULT_COST, report?: ScheduleReport, opts: ScheduleOptions = {}): P {
  const { minGain = 0, windowBytes = Infinity } = opts;
  const ins = plan.instrs, n = ins.length, values = plan.values;
  if (!ins.some((x) => x.kind === "comm" || (x.kind === "op" && MOE_OPS.has(x.op!)))) return plan;
  const deps = dependencies(values, ins);
  const users: number[][] = ins.map(() => []);
  deps.forEach((ds, i) => ds.forEach((d) => users[d]!.push(i)));
  const waiting = deps.map((d) => d.length);
  const costs = ins.map((x) => instrCost(values, x, model));
  const sim = new StreamSim(values, model);
  const order: number[] = [];
  // sources (instructions that read nothing: inputs, host-made constants, factories) are not
  // scheduled on their own: each goes just before the first instruction that reads it, as in program
  // order, since a host-made value is uploaded where its instruction stands and would otherwise be
  // held from the step's start (an FSDP step's optimizer state: bench/host/schedule-memory.ts)
  const source = ins.map((x, i) => deps[i]!.length === 0 && readsOf(x as never).length === 0);
  const placed = ins.map(() => false);
  const place = (i: number) => {
    placed[i] = true;
    order.push(i);
    sim.issue(ins[i]!, costs[i]!);
  };
  const ready: number[] = [];
  ins.forEach((_, i) => {
    if (source[i]) for (const u of users[i]!) waiting[u]!--;
  });
  ins.forEach((_, i) => !source[i] && waiting[i] === 0 && ready.push(i));
  // comm outputs issued and not yet read by an issued instruction, with their bytes
  const ahead = new Map<number, number>();
  let aheadBytes = 0;
  const fits = (i: number) => {
    const x = ins[i]!;
    if (x.kind !== "comm" || aheadBytes === 0) return true;
    return aheadBytes + writesOf(x as never).reduce((a, s) => a + pieceBytes(values[s]!), 0) <= windowBytes;
  };
  while (ready.length) {
    const open = ready.some((i) => !fits(i)) && ready.some(fits) ? ready.filter(fits) : ready;
    let pick = open.filter((i) => eager(values, ins[i]!, sim.read)).reduce((a, i) => Math.min(a, i), Infinity);
    if (pick === Infinity) {
      let best: [number, number, number] = [Infinity, Infinity, Infinity];
      for (const i of open) {
        // at equal start, host reads and MoE exchanges first: they sync, or fill the comm stream
        const syncs = countsReadOnHost(values, ins[i]!, model.moeOnDevice === 1).some((c) => !sim.read.has(c)) || costs[i]!.comm > 0 ? 0 : 1;
        const key: [number, number, number] = [sim.start(ins[i]!, costs[i]!), syncs, i];
        if (key[0] < best[0] || (key[0] === best[0] && (key[1] < best[1] || (key[1] === best[1] && key[2] < best[2])))) (pick = i), (best = key);
      }
    }
    ready.splice(ready.indexOf(pick), 1);
    for (const s of readsOf(ins[pick]! as never)) if (ahead.has(s)) (aheadBytes -= ahead.get(s)!), ahead.delete(s);
    if (ins[pick]!.kind === "comm") for (const s of writesOf(ins[pick]! as never)) ahead.set(s, pieceBytes(values[s]!)), (aheadBytes += pieceBytes(values[s]!));
    for (const d of deps[pick]!) if (source[d] && !placed[d]) place(d);
    place(pick);
    for (const u of users[pick]!) if (--waiting[u]! === 0) ready.push(u);
  }
  ins.forEach((_, i) => !placed[i] && source[i] && place(i)); // sources nothing reads (plan outputs)
  if (order.length !== n) throw new CompileError(`schedule: ${n - order.length} instructions never became ready (the plan's dependencies form a cycle: a shardts bug)`);
  const instrs = order.map((i) => ins[i]!);
  verifyOrder(values, ins, instrs);
  const before = simulate(values, ins, model), after = simulate(values, instrs, model);
  const kept = after.step <= before.step * (1 - minGain);
  if (report) {
    report.before = before;
    report.after = kept ? after : before;
    report.moved = kept ? order.filter((i, k) => i !== k).length : 0;
  }
  if (!kept || order.every((i, k) => i === k)) return plan;
  return { ...plan, instrs, lastUse: lastUses(values, instrs as never, plan.outputs) };
}

/**
 * Overrides of the default cost model from `SHARDTS_SCHEDULE_COST` (`key=value,...`, keys of CostModel),
 * applied over `base` (the caller's defaults for its runtime, e.g. moeOnDevice for the NVLink transport).
 */
export function costFromEnv(spec: string | undefined, base: Partial<CostModel> = {}): CostModel {
  const m: CostModel = { ...DEFAULT_COST, ...base };
  for (const kv of (spec ?? "").split(",").filter(Boolean)) {
    const [k, v] = kv.split("=");
    if (!(k! in m) || !Number.isFinite(Number(v))) throw new CompileError(`SHARDTS_SCHEDULE_COST: '${kv}' is not key=number with key one of ${Object.keys(m).join(", ")}`);
    (m as unknown as Record<string, number>)[k!] = Number(v);
  }
  return m;
}
