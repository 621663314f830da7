// What moves where in a redistribute step, as geometry: for a source rank k and a destination rank j,
// the regions of k's input piece that land in j's output piece. The rule is the CPU reference's
// (runtime/cpu/collectives.ts) written as box intersections: a dense dim moves the overlap of the
// two boxes; a segmented dim (MoE rows grouped by data-dependent counts, packed from row 0) moves,
// for each batch index of the counts, the rows of the groups both pieces hold.
import type { Plan, PlanValue } from "../../../compiler/plan.ts";
import { stridesOf } from "../../../compiler/ir/local.ts";
import type { GlobalTensor } from "../../cpu/assemble.ts";
import { segRows } from "../../cpu/segments.ts";

/** A strided region of a buffer, in elements. */
export interface View {
  buf: string;
  at: number;
  shape: number[];
  strides: number[];
}

export interface Transfer {
  src: View;
  dst: View;
}

export type Counts = (slot: number) => GlobalTensor;

export const numelOf = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** The whole of a row-major buffer. */
export const wholeView = (buf: string, shape: number[]): View => ({ buf, at: 0, shape: shape.slice(), strides: stridesOf(shape) });

/** True when the view is one run of consecutive elements starting at `at`. */
export function isContiguous(v: View): boolean {
  let expect = 1;
  for (let i = v.shape.length - 1; i >= 0; i--) {
    if (v.shape[i] === 0) return true;
    if (v.shape[i] === 1) continue;
    if (v.strides[i] !== expect) return false;
    expect *= v.shape[i]!;
  }
  return true;
}

/** The index of the dim of `v` that is treated as segmented between pieces `k` (in) and `j` (out), or -1. */
export function segDimOf(inV: PlanValue, outV: PlanValue, k: number, j: number): number {
  return inV.type.dims.findIndex((_, d) => inV.boxes[k]!.seg[d] || outV.boxes[j]!.seg[d]);
}

/** The regions of rank k's piece of `inV` (buffer `srcBuf`) that rank j's piece of `outV` (buffer `dstBuf`) holds. */
export function transfers(plan: Plan, inV: PlanValue, outV: PlanValue, k: number, j: number, counts: Counts, srcBuf = "in", dstBuf = "out"): Transfer[] {
  const dims = inV.type.dims;
  const sIn = inV.shapes[k]!, sOut = outV.shapes[j]!;
  const stIn = stridesOf(sIn), stOut = stridesOf(sOut);
  const bIn = inV.boxes[k]!, bOut = outV.boxes[j]!;
  const sd = segDimOf(inV, outV, k, j);
  // dense overlap per dim: [start in src, start in dst, length]
  const overlap = (d: number): [number, number, number] => {
    const lo = Math.max(bIn.offset[d]!, bOut.offset[d]!), hi = Math.min(bIn.offset[d]! + sIn[d]!, bOut.offset[d]! + sOut[d]!);
    return [lo - bIn.offset[d]!, lo - bOut.offset[d]!, Math.max(0, hi - lo)];
  };
  if (sd < 0) {
    const ov = dims.map((_, d) => overlap(d));
    if (ov.some(([, , n]) => n === 0)) return [];
    const view = (buf: string, st: number[], which: 0 | 1): View => ({ buf, at: ov.reduce((a, o, d) => a + o[which] * st[d]!, 0), shape: ov.map((o) => o[2]), strides: st });
    return [{ src: view(srcBuf, stIn, 0), dst: view(dstBuf, stOut, 1) }];
  }
  const seg = dims[sd]!.segmented!;
  const cSlot = inV.segCounts[dims[sd]!.name] ?? outV.segCounts[dims[sd]!.name]!;
  const cType = plan.values[cSlot]!.type, C = counts(cSlot), G = seg.numGroups;
  const gIn = bIn.seg[sd] ?? { firstGroup: 0, numGroups: G }, gOut = bOut.seg[sd] ?? { firstGroup: 0, numGroups: G };
  const g0 = Math.max(gIn.firstGroup, gOut.firstGroup), g1 = Math.min(gIn.firstGroup + gIn.numGroups, gOut.firstGroup + gOut.numGroups);
  if (g1 <= g0) return [];
  const batch = cType.dims.map((d) => d.name).filter((n) => n !== seg.groups);
  const bIdx = batch.map((n) => dims.findIndex((d) => d.name === n));
  const inner = dims.map((_, d) => d).filter((d) => d !== sd && !bIdx.includes(d));
  const ovB = bIdx.map(overlap), ovI = inner.map(overlap);
  if ([...ovB, ...ovI].some(([, , n]) => n === 0)) return [];
  const gStr = stridesOf(batch.map((n) => cType.dims.find((d) => d.name === n)!.size));
  const out: Transfer[] = [];
  const nB = numelOf(ovB.map((o) => o[2]));
  for (let b = 0; b < nB; b++) {
    // the b-th batch index of the overlap: local positions in src and dst, global index into counts
    let rem = b, atS = 0, atD = 0, gb = 0;
    for (let q = bIdx.length - 1; q >= 0; q--) {
      const [s0, d0, n] = ovB[q]!, i = rem % n;
      rem = Math.floor(rem / n);
      atS += (s0 + i) * stIn[bIdx[q]!]!;
      atD += (d0 + i) * stOut[bIdx[q]!]!;
      gb += (bIn.offset[bIdx[q]!]! + s0 + i) * gStr[q]!;
    }
    const len = segRows(C, G, gb, g0, g1 - g0).len;
    if (len === 0) continue;
    const srcRow = segRows(C, G, gb, gIn.firstGroup, g0 - gIn.firstGroup).len, dstRow = segRows(C, G, gb, gOut.firstGroup, g0 - gOut.firstGroup).len;
    const shape = [len, ...ovI.map((o) => o[2])];
    out.push({
      src: { buf: srcBuf, at: atS + srcRow * stIn[sd]! + ovI.reduce((a, o, q) => a + o[0] * stIn[inner[q]!]!, 0), shape, strides: [stIn[sd]!, ...inner.map((d) => stIn[d]!)] },
      dst: { buf: dstBuf, at: atD + dstRow * stOut[sd]! + ovI.reduce((a, o, q) => a + o[1] * stOut[inner[q]!]!, 0), shape, strides: [stOut[sd]!, ...inner.map((d) => stOut[d]!)] },
    });
  }
  return out;
}
