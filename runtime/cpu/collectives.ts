// Exact simulation of the collective steps of a plan: every rank's piece is in this process, so a
// step reads the pieces of the ranks along its mesh axis and computes each one's result. Uneven
// sizes and segmented (data-dependent) dims are handled exactly.
import type { Plan, PlanValue } from "../../compiler/plan.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import type { Placement } from "../../compiler/ir/types.ts";
import { allocLocal } from "../../compiler/ir/local.ts";
import { coordsOf, groupAlong } from "../../compiler/ir/placement.ts";
import { roundData } from "../../compiler/ops/cpu-util.ts";
import { boxOf } from "../../compiler/passes/partition.ts";
import type { PlannedStep } from "../../compiler/passes/redistribute-plan.ts";
import { fromRowsView, rowsView, segRows, type GlobalTensor } from "./segments.ts";

type Counts = (slot: number) => GlobalTensor;

/** A value as some step sees it: its type with given placements, boxes and shapes per rank. */
function withPlacements(plan: Plan, v: PlanValue, placements: Placement[]): PlanValue {
  const t = { ...v.type, placements };
  const per = Array.from({ length: plan.world }, (_, r) => boxOf(t, plan.mesh, coordsOf(plan.mesh, r)));
  return { type: t, boxes: per.map((p) => p.box), shapes: per.map((p) => p.shape), segCounts: v.segCounts };
}

/** [outer, n, inner] view along `dim` in the value's own dim order. */
function view3(v: PlanValue, shape: number[], dim: string): [number, number, number] {
  const i = v.type.dims.findIndex((d) => d.name === dim);
  const prod = (xs: number[]) => xs.reduce((a, b) => a * b, 1);
  return [prod(shape.slice(0, i)), shape[i]!, prod(shape.slice(i + 1))];
}

function gather(plan: Plan, group: number[], pieces: LocalTensor[], inV: PlanValue, outV: PlanValue, dim: string, counts: Counts): LocalTensor[] {
  const isSeg = inV.boxes[group[0]!]!.seg[inV.type.dims.findIndex((d) => d.name === dim)] !== null;
  const r0 = group[0]!;
  const outShape = outV.shapes[r0]!;
  if (!isSeg) {
    const out = allocLocal(inV.type.dtype, outShape);
    const [outer, total, inner] = view3(outV, outShape, dim);
    let at = 0;
    for (const m of group) {
      const [, n] = view3(inV, pieces[m]!.shape, dim);
      for (let o = 0; o < outer; o++) out.data.set(pieces[m]!.data.subarray(o * n * inner, (o + 1) * n * inner), (o * total + at) * inner);
      at += n;
    }
    return group.map(() => out);
  }
  const cslot = inV.segCounts[dim]!, C = counts(cslot), G = inV.type.dims.find((d) => d.name === dim)!.segmented!.numGroups;
  const cType = plan.values[cslot]!.type;
  const views = group.map((m) => rowsView(pieces[m]!, inV, m, dim, cType));
  const v0 = views[0]!;
  const out = allocLocal(inV.type.dtype, v0.t.shape);
  for (let b = 0; b < v0.B; b++) {
    let at = 0;
    group.forEach((m, k) => {
      const s = inV.boxes[m]!.seg[inV.type.dims.findIndex((d) => d.name === dim)]!;
      const { len } = segRows(C, G, views[k]!.gBatch[b]!, s.firstGroup, s.numGroups);
      const src = b * v0.rows * v0.inner;
      out.data.set(views[k]!.t.data.subarray(src, src + len * v0.inner), (b * v0.rows + at) * v0.inner);
      at += len;
    });
  }
  const res = fromRowsView(out, v0, outV);
  return group.map(() => res);
}

function slice(plan: Plan, r: number, x: LocalTensor, inV: PlanValue, outV: PlanValue, dim: string, counts: Counts): LocalTensor {
  const di = outV.type.dims.findIndex((d) => d.name === dim);
  const sOut = outV.boxes[r]!.seg[di];
  const out = allocLocal(x.dtype, outV.shapes[r]!);
  if (!sOut) {
    const [outer, total, inner] = view3(inV, x.shape, dim);
    const [, n] = view3(outV, out.shape, dim);
    const off = outV.boxes[r]!.offset[di]! - inV.boxes[r]!.offset[di]!;
    for (let o = 0; o < outer; o++) out.data.set(x.data.subarray((o * total + off) * inner, (o * total + off + n) * inner), o * n * inner);
    return out;
  }
  const cslot = inV.segCounts[dim]!, C = counts(cslot), G = outV.type.dims[di]!.segmented!.numGroups;
  const view = rowsView(x, inV, r, dim, plan.values[cslot]!.type);
  const sIn = inV.boxes[r]!.seg[di] ?? { firstGroup: 0, numGroups: G };
  const res = allocLocal(x.dtype, view.t.shape);
  for (let b = 0; b < view.B; b++) {
    const skip = segRows(C, G, view.gBatch[b]!, sIn.firstGroup, sOut.firstGroup - sIn.firstGroup).len;
    const { len } = segRows(C, G, view.gBatch[b]!, sOut.firstGroup, sOut.numGroups);
    const src = (b * view.rows + skip) * view.inner;
    res.data.set(view.t.data.subarray(src, src + len * view.inner), b * view.rows * view.inner);
  }
  return fromRowsView(res, view, outV);
}

function reduce(group: number[], pieces: LocalTensor[], op: "sum" | "max"): LocalTensor {
  const first = pieces[group[0]!]!;
  const acc = new Float64Array(first.data.length).fill(op === "max" ? -Infinity : 0);
  for (const m of group) {
    const d = pieces[m]!.data;
    if (op === "sum") for (let i = 0; i < d.length; i++) acc[i]! += d[i]!;
    else for (let i = 0; i < d.length; i++) acc[i] = d[i]! > acc[i]! || d[i] !== d[i] ? d[i]! : acc[i]!;
  }
  const out = allocLocal(first.dtype, first.shape.slice());
  for (let i = 0; i < acc.length; i++) out.data[i] = acc[i]!;
  roundData(out.dtype, out.data);
  return out;
}

/** Runs one planned step for every rank; returns the new pieces. */
export function runStep(plan: Plan, step: PlannedStep, inSlot: number, outSlot: number, pieces: LocalTensor[], counts: Counts): LocalTensor[] {
  const inV = plan.values[inSlot]!, outV = plan.values[outSlot]!;
  const result = new Array<LocalTensor>(plan.world);
  const done = new Set<number>();
  // the value with this axis replicated: what a gather produces and a slice starts from
  const mid = () => withPlacements(plan, inV, inV.type.placements.map((p, a) => (a === step.axis ? "R" : p)));
  for (let r = 0; r < plan.world; r++) {
    if (done.has(r)) continue;
    const group = groupAlong(plan.mesh, r, step.axis);
    group.forEach((m) => done.add(m));
    let outs: LocalTensor[];
    switch (step.kind) {
      case "all_gather":
        outs = gather(plan, group, pieces, inV, outV, step.dim, counts);
        break;
      case "local_slice":
        outs = group.map((m) => slice(plan, m, pieces[m]!, inV, outV, step.dim, counts));
        break;
      case "all_reduce": {
        const red = reduce(group, pieces, step.reduce);
        outs = group.map(() => red);
        break;
      }
      case "reduce_scatter": {
        const red = reduce(group, pieces, step.reduce);
        const m = mid();
        outs = group.map((q) => slice(plan, q, red, m, outV, step.dim, counts));
        break;
      }
      case "all_to_all": {
        const m = mid();
        const full = gather(plan, group, pieces, inV, m, step.from, counts);
        outs = group.map((q, k) => slice(plan, q, full[k]!, m, outV, step.to, counts));
        break;
      }
      case "partialize":
        outs = group.map((m, k) => {
          if (step.reduce === "max" || k === 0) return pieces[m]!;
          return allocLocal(pieces[m]!.dtype, pieces[m]!.shape.slice());
        });
        break;
    }
    group.forEach((m, k) => (result[m] = outs[k]!));
  }
  return result;
}
