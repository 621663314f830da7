// Fusion: groups maximal chains of elementwise ops, broadcasts and row reductions of a Plan into
// kernel instructions. A pure pass: the Plan is not changed; the result is a FusedPlan whose values
// are the Plan's slots (those only read inside a kernel become `internal`).
//
// Walking the plan in order, each fusible instruction joins the groups of the instructions that
// produce its inputs, one at a time, when (1) no path leaves the merged set and comes back (that
// would be a cycle between kernels) and (2) buildGroup accepts the merged set as one kernel. What
// joins no group and can be a kernel alone starts one. A `full` that every rank holds whole is
// inlined as a literal. Dots, routing, factories and communication stay as they are. A row kernel
// over few, long rows becomes two (split.ts), with a slot of partials between them.
import type { Instr, Plan } from "../plan.ts";
import { lastUses, readsOf as reads, writesOf as writes } from "../plan.ts";
import type { FusedInstr, FusedPlan, KernelInstr } from "./types.ts";
import { isFp8 } from "../ir/types.ts";
import { roundToBf16, roundToE4M3, roundToE5M2 } from "../numeric/index.ts";
import { buildGroup, fusible, type BuiltGroup, type GroupCtx } from "./spec.ts";
import { splitRows } from "./split.ts";


/** The literal a `full` stands for on every rank, rounded as the CPU fills it; undefined where a Partial<sum> leaves zeros on some ranks. */
function fullValue(ins: Instr, plan: Plan): number | undefined {
  if (ins.kind !== "op" || ins.op !== "full") return undefined;
  const t = plan.values[ins.outputs[0]!]!.type;
  if (t.placements.includes("P(sum)")) return undefined;
  const v = Number(ins.attrs.value);
  if (t.dtype === "i32") return v | 0;
  if (t.dtype === "bf16") return roundToBf16(v);
  if (isFp8(t.dtype)) return t.dtype === "fp8e4m3" ? roundToE4M3(v) : roundToE5M2(v);
  return Math.fround(v);
}

export function fuse(plan: Plan): FusedPlan {
  const n = plan.instrs.length;
  const producer = plan.values.map(() => -1);
  const consumers: number[][] = plan.values.map(() => []);
  plan.instrs.forEach((ins, i) => {
    for (const s of writes(ins)) producer[s] = i;
    for (const s of reads(ins)) consumers[s]!.push(i);
  });
  const pinned = new Set(plan.outputs);
  for (const v of plan.values) for (const c of Object.values(v.segCounts)) pinned.add(c);
  const consts = plan.instrs.map((ins) => fullValue(ins, plan));
  const ctx: GroupCtx = {
    plan,
    producer,
    escapes: (s, members) => pinned.has(s) || consumers[s]!.some((c) => !members.has(c)),
    constOf: (s) => (producer[s]! >= 0 ? consts[producer[s]!] : undefined),
  };

  // groups by id; groupOf[i] is the group of instruction i (-1: none)
  const groupOf = new Array<number>(n).fill(-1);
  const groups = new Map<number, { members: number[]; built: BuiltGroup }>();
  const unitOf = (j: number) => (groupOf[j]! >= 0 ? groups.get(groupOf[j]!)!.members : [j]);

  /** Whether some input of `set` from outside it depends on `set` (merging would make a cycle). */
  const cyclic = (set: Set<number>, min: number): boolean => {
    const seen = new Set<number>();
    const stack: number[] = [];
    for (const m of set) for (const s of reads(plan.instrs[m]!)) {
      const p = producer[s]!;
      if (p >= 0 && !set.has(p) && ctx.constOf(s) === undefined) stack.push(p);
    }
    while (stack.length) {
      const j = stack.pop()!;
      if (set.has(j)) return true;
      if (seen.has(j)) continue;
      const unit = unitOf(j);
      for (const u of unit) seen.add(u);
      // nothing before the set's first member can depend on it
      if (unit[unit.length - 1]! < min) continue;
      for (const u of unit) for (const s of reads(plan.instrs[u]!)) if (producer[s]! >= 0 && !unit.includes(producer[s]!)) stack.push(producer[s]!);
    }
    return false;
  };

  let nextId = 0;
  for (let i = 0; i < n; i++) {
    const ins = plan.instrs[i]!;
    if (ins.kind !== "op" || consts[i] !== undefined || !fusible(ins, plan)) continue;
    let members = [i];
    let built: BuiltGroup | undefined;
    const absorbed: number[] = [];
    const cands = [...new Set(ins.inputs.map((s) => (producer[s]! >= 0 ? groupOf[producer[s]!]! : -1)).filter((g) => g >= 0))];
    for (const g of cands) {
      const trial = [...groups.get(g)!.members, ...members].sort((a, b) => a - b);
      const set = new Set(trial);
      if (cyclic(set, trial[0]!)) continue;
      const b = buildGroup(ctx, trial);
      if (!("spec" in b)) continue;
      members = trial;
      built = b;
      absorbed.push(g);
    }
    if (!built) {
      if (ins.op === "gather" || ins.op === "quantize") continue;
      const b = buildGroup(ctx, members);
      if (!("spec" in b)) continue;
      built = b;
    }
    for (const g of absorbed) groups.delete(g);
    const id = nextId++;
    groups.set(id, { members, built });
    for (const m of members) groupOf[m] = id;
  }
  return emit(plan, groups, groupOf, consumers, pinned, consts);
}

/**
 * Orders kernels and the remaining instructions topologically, each as early as its original
 * position allows (a kernel sits at its last member; a value it writes may have been read by an
 * instruction that came between its members, which then moves after it).
 */
function emit(
  plan: Plan, groups: Map<number, { members: number[]; built: BuiltGroup }>, groupOf: number[],
  consumers: number[][], pinned: Set<number>, consts: (number | undefined)[],
): FusedPlan {
  type Unit = { at: number; instr: FusedInstr; deps: Set<number>; users: number[] };
  const units: Unit[] = [];
  const internal: number[] = [];
  // few, long rows are reduced by two kernels, through slots of partials added after the plan's
  const values = [...plan.values];
  for (const [, g] of [...groups].sort((a, b) => a[1].members[0]! - b[1].members[0]!)) {
    const fuses = g.members.map((m) => {
      const ins = plan.instrs[m] as Extract<Instr, { kind: "op" }>;
      return ins.site === undefined ? { node: ins.node, op: ins.op } : { node: ins.node, op: ins.op, site: ins.site };
    });
    for (const m of g.members) for (const s of writes(plan.instrs[m]!)) if (!g.built.outputs.includes(s)) internal.push(s);
    const split = splitRows(g.built, plan, values.length);
    if (split) values.push(...split.values);
    const stages = split ? split.stages : [g.built];
    // each stage fuses the ops whose values it computes (the first: those that compute none, expands, too)
    const computes = stages.map((b) => new Set(b.spec.nodes.flatMap((n) => (n.k === "op" || n.k === "reduce" ? [n.ir] : []))));
    stages.forEach(({ spec, inputs, outputs, axes }, k) => {
      const mine = stages.length === 1 ? fuses : fuses.filter((f) => computes[k]!.has(f.node) || (k === 0 && !computes[1]!.has(f.node)));
      const instr: KernelInstr = { kind: "kernel", id: -1, spec, inputs, outputs, axes, fuses: mine };
      units.push({ at: g.members[g.members.length - 1]!, instr, deps: new Set(), users: [] });
    });
  }
  plan.instrs.forEach((ins, i) => {
    if (groupOf[i]! >= 0) return;
    // a literal inlined into every kernel that reads it is not needed any more
    if (consts[i] !== undefined && !pinned.has(ins.kind === "op" ? ins.outputs[0]! : -1) && consumers[writes(ins)[0]!]!.every((c) => groupOf[c]! >= 0)) return;
    units.push({ at: i, instr: ins, deps: new Set(), users: [] });
  });
  const producer = new Map<number, number>();
  units.forEach((u, k) => writes(u.instr).forEach((s) => producer.set(s, k)));
  units.forEach((u, k) => {
    for (const s of reads(u.instr)) {
      const p = producer.get(s);
      if (p !== undefined && p !== k && !u.deps.has(p)) {
        u.deps.add(p);
        units[p]!.users.push(k);
      }
    }
  });

  // Kahn's algorithm, smallest original position first (a binary heap keyed by `at`)
  const heap: number[] = [];
  const less = (a: number, b: number) => units[heap[a]!]!.at < units[heap[b]!]!.at;
  const swap = (a: number, b: number) => ([heap[a], heap[b]] = [heap[b]!, heap[a]!]);
  const push = (k: number) => {
    heap.push(k);
    for (let i = heap.length - 1; i > 0 && less(i, (i - 1) >> 1); i = (i - 1) >> 1) swap(i, (i - 1) >> 1);
  };
  const pop = () => {
    const top = heap[0]!;
    const last = heap.pop()!;
    if (heap.length) {
      heap[0] = last;
      for (let i = 0; ; ) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < heap.length && less(l, m)) m = l;
        if (r < heap.length && less(r, m)) m = r;
        if (m === i) break;
        swap(i, m);
        i = m;
      }
    }
    return top;
  };
  const waiting = units.map((u) => u.deps.size);
  units.forEach((_, k) => waiting[k] === 0 && push(k));
  const instrs: FusedInstr[] = [];
  let kernels = 0;
  while (heap.length) {
    const k = pop();
    const ins = units[k]!.instr;
    instrs.push(ins.kind === "kernel" ? { ...ins, id: kernels++ } : ins);
    for (const u of units[k]!.users) if (--waiting[u]! === 0) push(u);
  }
  if (instrs.length !== units.length) throw new Error("fuse: kernel groups form a cycle (a bug in the cycle check)");

  return { mesh: plan.mesh, world: plan.world, values, instrs, outputs: plan.outputs, lastUse: lastUses(values, instrs, plan.outputs), internal: internal.sort((a, b) => a - b) };
}
