// The inverse of `assemble`: cuts a global tensor into rank r's piece as the plan's box says. A dim
// sharded by data-dependent segments holds, per batch index, the rows of the rank's groups packed
// from row 0 (zeros after); the global tensor holds every group's rows packed in group order.
// Partial placements get one valid decomposition of the whole value.
import type { Plan } from "../../compiler/plan.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { allocLocal, stridesOf } from "../../compiler/ir/local.ts";
import { coordsOf } from "../../compiler/ir/placement.ts";
import { forEachStrided } from "../../compiler/ops/cpu-util.ts";
import { fromRowsView, rowsView, segRows, type GlobalTensor } from "./segments.ts";

export function pieceOf(plan: Plan, slot: number, g: GlobalTensor, r: number, getCounts: (slot: number) => GlobalTensor): LocalTensor {
  const v = plan.values[slot]!, box = v.boxes[r]!, shape = v.shapes[r]!;
  // a Partial<sum> axis: the whole value on its first rank, zeros on the others (as `partialize`);
  // a Partial<max> axis: the whole value everywhere
  const c = coordsOf(plan.mesh, r);
  if (v.type.placements.some((p, a) => p === "P(sum)" && c[a] !== 0)) return allocLocal(g.dtype, shape);
  // the box of every plain dim; a segment-sharded dim keeps its whole bound here
  const out = allocLocal(g.dtype, shape);
  const gStr = stridesOf(g.shape);
  const base = box.offset.reduce((a, o, d) => a + (box.seg[d] ? 0 : o) * gStr[d]!, 0);
  const src = g.data, dst = out.data;
  forEachStrided(shape, [gStr], (o, offs) => {
    dst[o] = src[base + offs[0]!]!;
  });
  const di = box.seg.findIndex((s) => s !== null);
  if (di < 0) return out;
  const dim = v.type.dims[di]!, cslot = v.segCounts[dim.name]!, counts = getCounts(cslot), G = dim.segmented!.numGroups;
  const view = rowsView(out, v, r, dim.name, plan.values[cslot]!.type);
  const packed = allocLocal(g.dtype, view.t.shape);
  const s = box.seg[di]!;
  for (let b = 0; b < view.B; b++) {
    const { start, len } = segRows(counts, G, view.gBatch[b]!, s.firstGroup, s.numGroups);
    const from = (b * view.rows + start) * view.inner;
    packed.data.set(view.t.data.subarray(from, from + len * view.inner), b * view.rows * view.inner);
  }
  return fromRowsView(packed, view, v);
}
