// SPMD partition: the global graph becomes one per-rank program. Ops run as themselves on local
// pieces (their CPU/CUDA implementations read their boxes); every `redistribute` becomes the
// planner's collective steps with intermediate values. Dead nodes are dropped.
import type { Dim, Graph, MeshSpec, Placement, TensorType, ValueRef } from "../ir/types.ts";
import type { Box } from "../ir/local.ts";
import type { Instr, Plan, PlanValue } from "../plan.ts";
import { lastUses } from "../plan.ts";
import type { TracedNode } from "../trace/builder.ts";
import { refKey } from "../ir/types.ts";
import { coordsOf, localRange, splitRange, worldSize, shardDim } from "../ir/placement.ts";
import { planRedistribute } from "./redistribute-plan.ts";

/** Where the rank at `coords` sits in each dim of `t`. */
export function boxOf(t: TensorType, mesh: MeshSpec, coords: readonly number[]): { box: Box; shape: number[] } {
  const offset: number[] = [], global: number[] = [], seg: Box["seg"] = [], shape: number[] = [];
  for (const d of t.dims) {
    global.push(d.size);
    if (d.segmented && t.placements.some((p) => shardDim(p) === d.name)) {
      let first = 0, num = d.segmented.numGroups;
      t.placements.forEach((p, a) => {
        if (shardDim(p) !== d.name) return;
        const [s, l] = splitRange(num, mesh.sizes[a]!, coords[a]!);
        first += s;
        num = l;
      });
      offset.push(0);
      seg.push({ firstGroup: first, numGroups: num });
      shape.push(d.size);
    } else {
      const [s, l] = localRange(d.size, d.name, t.placements, mesh, coords);
      offset.push(s);
      seg.push(null);
      shape.push(l);
    }
  }
  return { box: { offset, global, seg }, shape };
}

/** Nodes the outputs depend on, including the counts behind any segmented dim. */
function live(g: Graph, outputs: ValueRef[]): Set<number> {
  const keep = new Set<number>();
  const stack = outputs.map((v) => v.node);
  while (stack.length) {
    const id = stack.pop()!;
    if (keep.has(id)) continue;
    keep.add(id);
    const n = g.nodes[id]!;
    for (const v of n.inputs) stack.push(v.node);
    for (const t of n.outputs) for (const d of t.dims) if (d.segmented && d.segmented.counts.node !== id) stack.push(d.segmented.counts.node);
  }
  return keep;
}

export function partition(g: Graph, outputs: ValueRef[]): Plan {
  const mesh = g.mesh, world = worldSize(mesh);
  const coords = Array.from({ length: world }, (_, r) => coordsOf(mesh, r));
  const values: PlanValue[] = [];
  const instrs: Instr[] = [];
  const slotOf = new Map<string, number>();
  const segRefs: { slot: number; dims: Dim[] }[] = [];

  const newSlot = (t: TensorType): number => {
    const per = coords.map((c) => boxOf(t, mesh, c));
    values.push({ type: t, boxes: per.map((p) => p.box), shapes: per.map((p) => p.shape), segCounts: {} });
    segRefs.push({ slot: values.length - 1, dims: t.dims });
    return values.length - 1;
  };
  const slot = (v: ValueRef) => slotOf.get(refKey(v))!;

  const keep = live(g, outputs);
  for (const n of g.nodes as TracedNode[]) {
    if (!keep.has(n.id)) continue;
    if (n.op === "redistribute") {
      const inT = g.nodes[n.inputs[0]!.node]!.outputs[n.inputs[0]!.out]!;
      let cur = slot(n.inputs[0]!);
      for (const step of planRedistribute(inT, inT.placements, n.outputs[0]!.placements, mesh)) {
        const out = newSlot({ ...inT, placements: step.after as Placement[] });
        instrs.push({ kind: "comm", node: n.id, step, input: cur, output: out, site: n.site });
        cur = out;
      }
      slotOf.set(refKey({ node: n.id, out: 0 }), cur);
      continue;
    }
    const outs = n.outputs.map((t, k) => {
      const s = newSlot(t);
      slotOf.set(refKey({ node: n.id, out: k }), s);
      return s;
    });
    instrs.push({ kind: "op", node: n.id, op: n.op, attrs: n.attrs, inputs: n.inputs.map(slot), outputs: outs, payload: n.payload, site: n.site });
  }
  for (const { slot: s, dims } of segRefs)
    for (const d of dims) if (d.segmented) values[s]!.segCounts[d.name] = slot(d.segmented.counts);

  const outSlots = outputs.map(slot);
  return { mesh, world, values, instrs, outputs: outSlots, lastUse: lastUses(values, instrs, outSlots) };
}
