// Redundant experts, the host-side plan (DeepSeek-V3's EPLB idea): from the observed per-expert load
// and a number of extra physical slots, decide how many replicas each expert gets and which slot on
// which expert-axis rank holds each replica. Pure functions of their arguments (deterministic, ties
// broken by index), so a re-plan is reproducible from the loads alone. The MoE block reads the result
// as program inputs (stdlib/nn/moe.ts), so re-planning never recompiles.
import { UsageError } from "../../compiler/errors.ts";

/** Slots per rank when `slots` are split over `ranks`: the first ranks one larger, as Shard splits. */
export function slotsPerRank(slots: number, ranks: number): number[] {
  return Array.from({ length: ranks }, (_, r) => Math.floor(slots / ranks) + (r < slots % ranks ? 1 : 0));
}

function checkLoad(load: ArrayLike<number>, what: string): void {
  if (load.length < 1) throw new UsageError(`${what}: the load has no experts`);
  for (let e = 0; e < load.length; e++)
    if (!Number.isFinite(load[e]!) || load[e]! < 0) throw new UsageError(`${what}: load of expert ${e} is ${load[e]}; loads are token counts (finite, >= 0)`);
}

/**
 * Replicas per expert: one each, then each of the `extra` slots goes to the expert with the highest
 * load per replica (ties: fewer replicas first, then the lower index, so an all-zero load spreads the
 * extra slots round-robin from expert 0).
 */
export function replicaCounts(load: ArrayLike<number>, extra: number): Int32Array {
  checkLoad(load, "replicaCounts()");
  if (!Number.isSafeInteger(extra) || extra < 0) throw new UsageError(`redundant expert slots must be a non-negative integer, got ${extra}`);
  const count = new Int32Array(load.length).fill(1);
  for (let r = 0; r < extra; r++) {
    let best = 0;
    for (let e = 1; e < load.length; e++) {
      const pe = load[e]! / count[e]!, pb = load[best]! / count[best]!;
      if (pe > pb || (pe === pb && count[e]! < count[best]!)) best = e;
    }
    count[best]!++;
  }
  return count;
}

/**
 * The replica map: for each physical slot (E + extra of them, laid out in `ranks` contiguous blocks
 * of `slotsPerRank`) the logical expert it holds. Balanced packing: replicas, heaviest first (each
 * carries its expert's load divided by the expert's replica count), go to the least-loaded rank that
 * has room, preferring a rank that does not hold that expert yet (a second copy on the same rank
 * evens nothing across ranks). Within a rank, slots are ordered by expert.
 */
export function planReplicas(load: ArrayLike<number>, extra: number, ranks: number): Int32Array {
  if (!Number.isSafeInteger(ranks) || ranks < 1) throw new UsageError(`planReplicas(): ranks must be a positive integer, got ${ranks}`);
  const count = replicaCounts(load, extra);
  const items: { e: number; w: number }[] = [];
  count.forEach((c, e) => { for (let j = 0; j < c; j++) items.push({ e, w: load[e]! / c }); });
  items.sort((a, b) => b.w - a.w || a.e - b.e);
  const cap = slotsPerRank(items.length, ranks);
  const held: number[][] = Array.from({ length: ranks }, () => []);
  const rankLoad = new Float64Array(ranks);
  for (const it of items) {
    let best = -1;
    for (const avoidCopies of [true, false]) {
      for (let r = 0; r < ranks; r++) {
        if (held[r]!.length >= cap[r]! || (avoidCopies && held[r]!.includes(it.e))) continue;
        if (best < 0 || rankLoad[r]! < rankLoad[best]! || (rankLoad[r] === rankLoad[best] && held[r]!.length < held[best]!.length)) best = r;
      }
      if (best >= 0) break;
    }
    held[best]!.push(it.e);
    rankLoad[best]! += it.w;
  }
  return Int32Array.from(held.flatMap((h) => h.sort((a, b) => a - b)));
}

/**
 * What the router reads: `count[e]` replicas of expert e, whose slots are `table[e * maxReplicas + j]`
 * for j < count[e] (padded with the expert's first slot; never read). `maxReplicas` = extra + 1 is the
 * static bound, so the table's shape does not change with the plan.
 */
export function replicaTables(slotExpert: ArrayLike<number>, experts: number): { table: Int32Array; count: Int32Array; maxReplicas: number } {
  const maxReplicas = slotExpert.length - experts + 1;
  if (maxReplicas < 1) throw new UsageError(`replica map has ${slotExpert.length} slots for ${experts} experts; it needs at least one slot per expert`);
  const count = new Int32Array(experts), table = new Int32Array(experts * maxReplicas);
  for (let s = 0; s < slotExpert.length; s++) {
    const e = slotExpert[s]!;
    if (!Number.isInteger(e) || e < 0 || e >= experts) throw new UsageError(`replica map: slot ${s} holds expert ${e}, not one of 0..${experts - 1}`);
    table[e * maxReplicas + count[e]!] = s;
    count[e]!++;
  }
  for (let e = 0; e < experts; e++) {
    if (count[e] === 0) throw new UsageError(`replica map: expert ${e} has no slot; every expert needs at least one`);
    for (let j = count[e]!; j < maxReplicas; j++) table[e * maxReplicas + j] = table[e * maxReplicas]!;
  }
  return { table, count, maxReplicas };
}

/** Tokens per expert-axis rank from tokens per slot (the slots laid out as `slotsPerRank`). */
export function rankLoads(slotLoad: ArrayLike<number>, ranks: number): number[] {
  const out: number[] = [];
  let s = 0;
  for (const n of slotsPerRank(slotLoad.length, ranks)) {
    let acc = 0;
    for (let i = 0; i < n; i++) acc += slotLoad[s++]!;
    out.push(acc);
  }
  return out;
}

/** The load each slot would get if its expert's tokens were split evenly over the expert's replicas. */
export function expectedSlotLoad(load: ArrayLike<number>, slotExpert: ArrayLike<number>): Float64Array {
  const { count } = replicaTables(slotExpert, load.length);
  return Float64Array.from(slotExpert, (e) => load[e]! / count[e]!);
}
