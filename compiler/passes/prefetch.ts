// Prefetch: issues communication steps earlier than the program order places them, so that the
// runtime's communication stream moves data while the compute stream works on what comes before
// (FSDP's parameter all-gather of the next layers issued before the current layer's compute). A pure
// pass over a (fused) plan: only the order of instructions changes, and `lastUse` is recomputed.
//
// Each comm step moves back as far as its dependencies allow: after the instruction that produces its
// input (or the counts of a segmented input/output). A host-fed source of it (an `input` placeholder
// read by nothing before the step's old place) moves along, just before it, so a parameter's gather
// is not pinned behind its upload. A window bounds how far ahead data is fetched: the bytes of the
// comm outputs between a step's new and old places (its own included) stay within `windowBytes`;
// a step larger than the window alone stays where it is. Nor does a step move above a host read of
// routing counts written on the communication stream (the first segment contraction, segmented comm
// step or MoE op reading each counts value that a comm step or a MoE op's exchange wrote: the read
// waits for that writer, which the in-order comm stream runs after every step issued before it), so
// the gathers after it overlap the compute after it instead of holding it up. Counts written by
// compute are read after their writer alone (runtime/cuda/moe-counts.ts): no barrier there. Steps keep their relative
// order where they land at the same place. The runtime waits for a step only where its output is read
// (runtime/cuda/nccl/collectives.ts), so a prefetched gather runs while the compute before it does.
import { lastUses, pieceBytes, readsOf, writesOf, type PlanValue } from "../plan.ts";
import { MOE_OPS } from "../ops/dispatch.ts";
import { countsReadOnHost } from "./schedule-cost.ts";

/** What the pass needs of an instruction (a Plan's or a FusedPlan's). */
type AnyInstr = { kind: string; op?: string; inputs?: number[]; input?: number; outputs?: number[]; output?: number };

export interface Prefetchable<I extends AnyInstr> {
  values: PlanValue[];
  instrs: I[];
  outputs: number[];
  lastUse: number[];
}

/** Default window: 256 MiB of prefetched comm outputs per rank. */
export const DEFAULT_PREFETCH_BYTES = 256 * 2 ** 20;

/** Sources that depend on nothing and may move along with the step that reads them. */
const MOVABLE_SOURCE = new Set(["input"]);

export interface PrefetchReport {
  /** Per moved comm step: its old index and its new index. */
  moved: { from: number; to: number }[];
  /** Original indices of the host reads of comm-written counts no step moves above. */
  barriers?: number[];
}

/**
 * The plan with its comm steps issued early (see the header); `windowBytes` 0 leaves the order as it
 * is. `report`, when given, receives where each moved step went.
 */
export function prefetchComms<I extends AnyInstr, P extends Prefetchable<I>>(plan: P, windowBytes = DEFAULT_PREFETCH_BYTES, report?: PrefetchReport): P {
  const ins = plan.instrs, n = ins.length;
  if (windowBytes <= 0 || !ins.some((i) => i.kind === "comm")) return plan;
  const producer = plan.values.map(() => -1);
  const readers: number[][] = plan.values.map(() => []);
  ins.forEach((x, i) => {
    for (const s of writesOf(x as never)) producer[s] = i;
    for (const s of readsOf(x as never)) readers[s]!.push(i);
  });
  const countsOf = (s: number) => Object.values(plan.values[s]!.segCounts);
  // prefix sums of comm output bytes over the original order
  const prefix = new Array<number>(n + 1).fill(0);
  ins.forEach((x, i) => (prefix[i + 1] = prefix[i]! + (x.kind === "comm" ? pieceBytes(plan.values[x.output!]!) : 0)));

  // host reads of counts: per counts slot, the first instruction that needs it on the host; a barrier
  // where the counts come off the comm stream (a comm step's, or a MoE op's exchange: dispatch's own)
  const onComm = (c: number) => producer[c]! >= 0 && (ins[producer[c]!]!.kind === "comm" || MOE_OPS.has(ins[producer[c]!]!.op ?? ""));
  const seen = new Set<number>(), barrier = new Array<number>(n).fill(-1);
  let last = -1;
  ins.forEach((x, i) => {
    for (const c of countsReadOnHost(plan.values, x)) if (!seen.has(c)) (seen.add(c), onComm(c) && (last = i));
    barrier[i] = last; // the latest such host read at or before i
  });
  if (report) report.barriers = [...new Set(barrier.filter((b) => b >= 0))];

  // sort keys: [position, tie-break]; an instruction that stays keeps [i, 0]
  const key: [number, number][] = ins.map((_, i) => [i, 0]);
  const movedSource = new Set<number>();
  ins.forEach((x, j) => {
    if (x.kind !== "comm") return;
    const src = producer[x.input!]!;
    const srcIns = src >= 0 ? ins[src]! : undefined;
    // the source moves along when it reads nothing and no one else reads it before this step's old place
    const carry = srcIns !== undefined && srcIns.kind === "op" && MOVABLE_SOURCE.has(srcIns.op!) && readsOf(srcIns as never).length === 0
      && !movedSource.has(src) && writesOf(srcIns as never).every((s) => readers[s]!.every((r) => r === j || (r > j && ins[r]!.kind !== "comm")));
    // not above the latest host read of counts before it (nor its source with it)
    let dep = Math.max(carry ? -1 : src, j > 0 ? barrier[j - 1]! : -1);
    for (const s of [...countsOf(x.input!), ...countsOf(x.output!)]) dep = Math.max(dep, producer[s]!);
    // earliest place the window allows: the comm bytes in [p, j] stay within it
    let lo = dep + 1, hi = j;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (prefix[j + 1]! - prefix[mid]! <= windowBytes) hi = mid;
      else lo = mid + 1;
    }
    const to = lo;
    if (to >= j) return;
    key[j] = [to - 0.5, 2 * j + 1];
    if (carry) {
      key[src] = [to - 0.5, 2 * j];
      movedSource.add(src);
    }
    report?.moved.push({ from: j, to });
  });
  if (!report && !key.some(([p], i) => p !== i)) return plan;
  const order = ins.map((_, i) => i).sort((a, b) => key[a]![0] - key[b]![0] || key[a]![1] - key[b]![1]);
  const instrs = order.map((i) => ins[i]!);
  if (report) {
    const at = new Array<number>(n);
    order.forEach((i, k) => (at[i] = k));
    for (const m of report.moved) m.to = at[m.from]!;
  }
  return { ...plan, instrs, lastUse: lastUses(plan.values, instrs as never, plan.outputs) };
}
