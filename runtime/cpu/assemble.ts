// Reading a value back as one global tensor: every rank's piece is put where its box says; pieces
// that are Partial along an axis are summed (or maxed) as the placement says.
import type { Plan, PlanValue } from "../../compiler/plan.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { allocLocal, stridesOf } from "../../compiler/ir/local.ts";
import { CompileError } from "../../compiler/errors.ts";
import { coordsOf } from "../../compiler/ir/placement.ts";
import { roundData } from "../../compiler/ops/cpu-util.ts";
import { fromRowsView, rowsView, segRows, type GlobalTensor } from "./segments.ts";

export type { GlobalTensor };

export function assemble(plan: Plan, slot: number, locals: LocalTensor[], getCounts: (slot: number) => GlobalTensor): GlobalTensor {
  const v = plan.values[slot]!;
  const t = v.type;
  const hasSum = t.placements.includes("P(sum)"), hasMax = t.placements.includes("P(max)");
  if (hasSum && hasMax) throw new CompileError(`cannot read back a value that is Partial<sum> on one axis and Partial<max> on another: ${t.placements.join(", ")}`);
  const shape = t.dims.map((d) => d.size);
  const out = allocLocal(t.dtype, shape);
  const acc = hasSum || hasMax ? new Float64Array(out.data.length).fill(hasMax ? -Infinity : 0) : null;
  const gStr = stridesOf(shape);
  for (let r = 0; r < plan.world; r++) {
    // one copy of every replicated piece: the rank at coordinate 0 of each Replicate axis
    const c = coordsOf(plan.mesh, r);
    if (t.placements.some((p, a) => p === "R" && c[a] !== 0)) continue;
    const { piece, valid } = unpackSegments(plan, v, r, locals[r]!, getCounts);
    const box = v.boxes[r]!;
    const lShape = piece.shape, n = piece.data.length;
    if (n === 0) continue;
    const lStr = stridesOf(lShape);
    for (let i = 0; i < n; i++) {
      if (valid && !valid[i]) continue; // another rank's rows
      let g = 0;
      for (let d = 0; d < lShape.length; d++) g += (box.seg[d] ? 0 : box.offset[d]!) * gStr[d]! + (Math.floor(i / lStr[d]!) % lShape[d]!) * gStr[d]!;
      if (acc) acc[g] = hasMax ? Math.max(acc[g]!, piece.data[i]!) : acc[g]! + piece.data[i]!;
      else out.data[g] = piece.data[i]!;
    }
  }
  if (acc) {
    for (let i = 0; i < acc.length; i++) out.data[i] = acc[i]!;
    roundData(t.dtype, out.data);
  }
  return { dtype: t.dtype, shape, data: out.data };
}

/**
 * Moves a piece's packed segment rows to their global row positions (same shape: the bound) and
 * marks which elements are this rank's rows; pieces without a sharded segmented dim pass through.
 */
function unpackSegments(plan: Plan, v: PlanValue, r: number, x: LocalTensor, getCounts: (slot: number) => GlobalTensor): { piece: LocalTensor; valid?: Float32Array } {
  const box = v.boxes[r]!;
  const di = box.seg.findIndex((s) => s !== null);
  if (di < 0) return { piece: x };
  const dim = v.type.dims[di]!;
  const countsSlot = v.segCounts[dim.name]!;
  const counts = getCounts(countsSlot);
  const G = dim.segmented!.numGroups;
  const view = rowsView(x, v, r, dim.name, plan.values[countsSlot]!.type);
  const outT = allocLocal(x.dtype, view.t.shape);
  const mask = allocLocal("f32", view.t.shape);
  const s = box.seg[di]!;
  for (let b = 0; b < view.B; b++) {
    const { start, len } = segRows(counts, G, view.gBatch[b]!, s.firstGroup, s.numGroups);
    const src = (b * view.rows) * view.inner, dst = (b * view.rows + start) * view.inner;
    outT.data.set(view.t.data.subarray(src, src + len * view.inner), dst);
    mask.data.fill(1, dst, dst + len * view.inner);
  }
  return { piece: fromRowsView(outT, view, v), valid: fromRowsView(mask, view, v).data as Float32Array };
}
