// Helpers for segmented dims (MoE rows grouped by data-dependent counts): a local piece holds, for
// each batch index, the rows of its groups packed from row 0 and zero padding after them.
import type { PlanValue } from "../../compiler/plan.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { stridesOf } from "../../compiler/ir/local.ts";
import { permuteTo } from "../../compiler/ops/cpu-util.ts";
import type { TensorType } from "../../compiler/ir/types.ts";

export interface GlobalTensor {
  dtype: LocalTensor["dtype"];
  shape: number[];
  data: LocalTensor["data"];
}

/** A [batch, rows, inner] view of a local piece whose `rows` dim is segmented. */
export interface RowsView {
  t: LocalTensor;
  order: string[];
  batchNames: string[];
  B: number;
  rows: number;
  inner: number;
  /** Global flat batch index (into counts) for each local batch index. */
  gBatch: number[];
}

export function rowsView(x: LocalTensor, v: PlanValue, rank: number, dim: string, countsType: TensorType): RowsView {
  const t = v.type;
  const groups = t.dims.find((d) => d.name === dim)!.segmented!.groups;
  const batchNames = countsType.dims.map((d) => d.name).filter((n) => n !== groups);
  const innerNames = t.dims.map((d) => d.name).filter((n) => n !== dim && !batchNames.includes(n));
  const order = [...batchNames, dim, ...innerNames];
  const p = permuteTo(x, t, order);
  const idx = (n: string) => t.dims.findIndex((d) => d.name === n);
  const bShape = batchNames.map((n) => x.shape[idx(n)]!);
  const B = bShape.reduce((a, b) => a * b, 1);
  const rows = x.shape[idx(dim)]!;
  const inner = innerNames.reduce((a, n) => a * x.shape[idx(n)]!, 1);
  const gShape = batchNames.map((n) => countsType.dims.find((d) => d.name === n)!.size);
  const gStr = stridesOf(gShape), lStr = stridesOf(bShape);
  const gBatch = Array.from({ length: B }, (_, b) => {
    let g = 0;
    batchNames.forEach((n, k) => {
      const li = Math.floor(b / lStr[k]!) % bShape[k]!;
      g += (v.boxes[rank]!.offset[idx(n)]! + li) * gStr[k]!;
    });
    return g;
  });
  return { t: p, order, batchNames, B, rows, inner, gBatch };
}

/** Turns a [batch, rows, inner]-ordered tensor back into the value's dim order. */
export function fromRowsView(data: LocalTensor, view: RowsView, v: PlanValue): LocalTensor {
  const t = v.type;
  const ordered = { ...t, dims: view.order.map((n) => t.dims.find((d) => d.name === n)!) };
  return permuteTo(data, ordered, t.dims.map((d) => d.name));
}

/** Rows held for groups [first, first+num) of batch index gb, given global counts [..., G]. */
export function segRows(counts: GlobalTensor, G: number, gb: number, first: number, num: number): { start: number; len: number } {
  let start = 0, len = 0;
  for (let g = 0; g < first; g++) start += counts.data[gb * G + g]!;
  for (let g = first; g < first + num; g++) len += counts.data[gb * G + g]!;
  return { start, len };
}
