// The CUDA executor's non-fused ops that take more than a line: contractions through cuBLASLt
// (dense) and cuBLAS's grouped GEMM (the segment contractions over host-read counts; bf16 ones on
// device-side counts with CudaExecutor.segmentCountsOnDevice: segment-device.ts), gather and
// scatter-add with their index checks, concat and split. Each takes the executor for its memory,
// stream and helpers, and returns buffers the executor owns.
import { launchRowGather } from "./row-gather.ts";
import type { Attrs, TensorType } from "../../compiler/ir/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import { numel } from "../../compiler/ir/types.ts";
import { stridesOf } from "../../compiler/ir/local.ts";
import { CompileError } from "../../compiler/errors.ts";
import { contractAttr, dotDims } from "../../compiler/ops/contraction.ts";
import { empty, type DeviceTensor } from "./memory.ts";
import { matmulPlans } from "./matmul-plans.ts";
import { dotProblems, runProblems, segmentDotOnWgmma, segmentPlacement, segments, wgradProblems } from "./segment-gemm.ts";
import { deviceSegmentContract } from "./segment-device.ts";
import { wgmmaSegmentDot } from "./bf16-segment.ts";
import * as K from "./kernels/sources.ts";
import * as SC from "./kernels/scatter-sources.ts";
import type { CudaExecutor } from "./executor.ts";

export function dot(ex: CudaExecutor, a: DeviceTensor, b: DeviceTensor, ta: TensorType, tb: TensorType, to: TensorType, shape: number[], attrs: Attrs): DeviceTensor {
  if (ta.dtype !== "f32" && ta.dtype !== "bf16") throw new CompileError(`the CUDA backend's dot takes f32 or bf16 here, got ${ta.dtype} (FP8 GEMMs are the FP8 issue's)`);
  const dd = dotDims(ta, tb, contractAttr(attrs));
  const nm = (t: TensorType) => t.dims.map((d) => d.name);
  const A = ex.reorder(a, nm(ta), [...dd.batch, ...dd.freeA, ...dd.contract]);
  const B = ex.reorder(b, nm(tb), [...dd.batch, ...dd.contract, ...dd.freeB]);
  const size = (t: DeviceTensor, order: string[], which: string[]) => which.reduce((p, n) => p * t.shape[order.indexOf(n)]!, 1);
  const oa = [...dd.batch, ...dd.freeA, ...dd.contract], ob = [...dd.batch, ...dd.contract, ...dd.freeB];
  const bt = size(A, oa, dd.batch), m = size(A, oa, dd.freeA), k = size(A, oa, dd.contract), n = size(B, ob, dd.freeB);
  const order = [...dd.batch, ...dd.freeA, ...dd.freeB];
  const C = empty(ex.mem, to.dtype, order.map((d) => shape[to.dims.findIndex((e) => e.name === d)]!));
  if (bt * m * n > 0) {
    if (k === 0) ex.addon.memsetD8(C.ptr, 0, numel(C.shape) * K.elemBytes(C.dtype), ex.stream);
    else matmulPlans(ex.addon).run({ dtype: ta.dtype, outDtype: to.dtype as "f32" | "bf16", transA: false, accumulate: false }, m, n, k, bt, A.ptr, B.ptr, C.ptr, ex.stream);
  }
  if (A !== a) ex.release(A);
  if (B !== b) ex.release(B);
  return ex.reorderOwned(C, order, nm(to));
}

export function segmentContract(ex: CudaExecutor, op: string, plan: Plan, ins: Extract<Plan["instrs"][number], { kind: "op" }>, r: number, x: DeviceTensor[], tIn: TensorType[], to: TensorType, shape: number[]): DeviceTensor {
  const [tx, tw, tc] = tIn as [TensorType, TensorType, TensorType];
  const nm = (t: TensorType) => t.dims.map((d) => d.name);
  // device-side counts (no host read, so capturable): bf16 on sm_90a; what its kernels refuse reads the counts below
  if (ex.segmentCountsOnDevice) {
    const y = deviceSegmentContract(ex, op, plan, ins, r, x, tIn, to, shape);
    if (y) return y;
  }
  const { rows, groups, batch, packed, first } = segmentPlacement(op, plan, ins, r, tIn);
  const C = ex.part("counts to host", () => ex.hostPiece(x[2]!, nm(tc), [...batch, groups]));
  const gC = C.shape[C.shape.length - 1]!, bt = gC ? C.data.length / gC : 0;
  const eb = K.elemBytes(tx.dtype), dtype = tx.dtype as "f32" | "bf16";
  if (op === "segment_dot") {
    const k = String(ins.attrs.contract);
    const nOut = nm(tw).filter((n) => n !== k && n !== groups);
    const X = ex.part("rows layout", () => ex.reorder(x[0]!, nm(tx), [...batch, rows.name, k]));
    const wSize = (d: string) => x[1]!.shape[tw.dims.findIndex((e) => e.name === d)]!;
    const R = X.shape[batch.length]!, KK = X.shape[batch.length + 1]!, N = nOut.reduce((p, d) => p * wSize(d), 1), gW = wSize(groups);
    const order = [...batch, rows.name, ...nOut], outShape = order.map((d) => shape[to.dims.findIndex((e) => e.name === d)]!);
    const segs = segments({ counts: C.data, bt, gC, first, groups: gW, packed, R });
    // bf16 on the generated grouped kernel (default); a problem it refuses takes the cuBLAS path below
    if (segmentDotOnWgmma(process.env.SHARDTS_SEGMENT_GEMM, dtype)) {
      const Yw = wgmmaSegmentDot(ex, { X, w: x[1]!, tw, groups, k, nOut, segs, bt, R, K: KK, N, E: gW, outShape: [bt, outShape[batch.length]!, N], outDtype: to.dtype });
      if (Yw) {
        if (X !== x[0]) ex.release(X);
        return ex.part("output layout", () => ex.reorderOwned({ ...Yw, shape: outShape }, order, nm(to)));
      }
    }
    const Wt = ex.part("weights layout", () => ex.reorder(x[1]!, nm(tw), [groups, k, ...nOut]));
    const Y = empty(ex.mem, to.dtype, outShape);
    if (numel(Y.shape)) ex.addon.memsetD8(Y.ptr, 0, numel(Y.shape) * K.elemBytes(Y.dtype), ex.stream);
    const problems = dotProblems(segs, { R, K: KK, N, x: X.ptr, w: Wt.ptr, y: Y.ptr, eb, ebo: K.elemBytes(Y.dtype) });
    ex.part("cuBLAS GEMMs", () => runProblems(ex.addon, { dtype, outDtype: Y.dtype as "f32" | "bf16", transA: false, accumulate: false, problems }, ex.stream));
    if (X !== x[0]) ex.release(X);
    if (Wt !== x[1]) ex.release(Wt);
    return ex.part("output layout", () => ex.reorderOwned(Y, order, nm(to)));
  }
  // segment_wgrad: out[g] = sum over the segment's rows of x^T gy, accumulated in f32
  const k = String(ins.attrs.k), n = String(ins.attrs.n);
  const [, tg] = tIn as [TensorType, TensorType];
  const X = ex.part("rows layout", () => ex.reorder(x[0]!, nm(tx), [...batch, rows.name, k]));
  const G = ex.part("gradient rows layout", () => ex.reorder(x[1]!, nm(tg), [...batch, rows.name, n]));
  const R = X.shape[batch.length]!, KK = X.shape[batch.length + 1]!, N = G.shape[batch.length + 1]!;
  const gOut = shape[0]!;
  const acc = empty(ex.mem, "f32", [gOut, KK, N]);
  if (numel(acc.shape)) ex.addon.memsetD8(acc.ptr, 0, numel(acc.shape) * 4, ex.stream);
  const segs = segments({ counts: C.data, bt, gC, first, groups: gOut, packed, R });
  const problems = wgradProblems(segs, { R, K: KK, N, x: X.ptr, gy: G.ptr, acc: acc.ptr, eb });
  ex.part("cuBLAS GEMMs", () => runProblems(ex.addon, { dtype, outDtype: "f32", transA: true, accumulate: true, problems }, ex.stream));
  if (X !== x[0]) ex.release(X);
  if (G !== x[1]) ex.release(G);
  return ex.part("cast", () => ex.castOwned(acc, to.dtype));
}

export function gather(ex: CudaExecutor, plan: Plan, ins: Extract<Plan["instrs"][number], { kind: "op" }>, r: number, x: DeviceTensor[], tIn: TensorType[], to: TensorType, shape: number[]): DeviceTensor {
  const [tx, ti] = tIn as [TensorType, TensorType];
  const dim = String(ins.attrs.dim), nm = (t: TensorType) => t.dims.map((d) => d.name);
  const batch = nm(tx).filter((n) => n !== dim && nm(ti).includes(n)), rest = nm(tx).filter((n) => n !== dim && !batch.includes(n));
  const other = nm(ti).filter((n) => !batch.includes(n));
  const X = ex.reorder(x[0]!, nm(tx), [...batch, dim, ...rest]), I = ex.reorder(x[1]!, nm(ti), [...batch, ...other]);
  const di = tx.dims.findIndex((d) => d.name === dim);
  const B = batch.reduce((p, n) => p * X.shape[[...batch, dim, ...rest].indexOf(n)]!, 1), rows = X.shape[batch.length]!;
  const J = B ? numel(I.shape) / B : 0, R = numel(X.shape.slice(batch.length + 1));
  const order = [...batch, ...other, ...rest];
  const out = empty(ex.mem, tx.dtype, order.map((d) => shape[to.dims.findIndex((e) => e.name === d)]!));
  const bad = ex.badFlag();
  launchRowGather(ex, { out, x: X, idx: I, dtype: tx.dtype, B, J, R, rows, off: plan.values[ins.inputs[0]!]!.boxes[r]!.offset[di]!, global: tx.dims[di]!.size, bad });
  ex.checkIndices(bad, "gather", dim, tx.dims[di]!.size);
  if (X !== x[0]) ex.release(X);
  if (I !== x[1]) ex.release(I);
  return ex.reorderOwned(out, order, nm(to));
}

export function scatterAdd(ex: CudaExecutor, x: DeviceTensor[], tIn: TensorType[], to: TensorType, shape: number[], attrs: Attrs): DeviceTensor {
  const [ts, ti] = tIn as [TensorType, TensorType];
  const nm = (t: TensorType) => t.dims.map((d) => d.name);
  const dims = typeof attrs.dim === "string" ? [attrs.dim] : (attrs.dim as string[]);
  const toDim = String(attrs.to), size = Number(attrs.size);
  const batch = nm(ti).filter((n) => !dims.includes(n)), rest = nm(ts).filter((n) => !nm(ti).includes(n));
  const S = ex.reorder(x[0]!, nm(ts), [...batch, ...dims, ...rest]), I = ex.reorder(x[1]!, nm(ti), [...batch, ...dims]);
  const B = batch.reduce((p, n) => p * S.shape[batch.indexOf(n)]!, 1), J = dims.reduce((p, n) => p * S.shape[batch.length + dims.indexOf(n)]!, 1);
  const R = numel(S.shape.slice(batch.length + dims.length));
  const order = [...batch, toDim, ...rest];
  const outShape = order.map((d) => shape[to.dims.findIndex((e) => e.name === d)]!);
  // rows of a warp's width or more: bucketed by target and summed a warp per target row (kernels/scatter-sources.ts)
  if (R >= SCATTER_ROWS_MIN && (to.dtype === "f32" || to.dtype === "bf16") && (ts.dtype === "f32" || ts.dtype === "bf16")) {
    const out = scatterByTarget(ex, S, I, { B, J, R, size, outDtype: to.dtype, outShape, dim: toDim });
    if (S !== x[0]) ex.release(S);
    if (I !== x[1]) ex.release(I);
    return ex.reorderOwned(out, order, nm(to));
  }
  const acc = empty(ex.mem, "f32", outShape);
  if (numel(acc.shape)) ex.addon.memsetD8(acc.ptr, 0, numel(acc.shape) * 4, ex.stream);
  const bad = ex.badFlag();
  // a warp per source row (kernels/sources.ts scatterAdd), 4 values a lane where the rows allow
  const vec = R % 4 === 0 && S.ptr % BigInt(4 * K.elemBytes(S.dtype)) === 0n && acc.ptr % 16n === 0n ? 1 : 0;
  if (B * J * R > 0) ex.launch1D(K.scatterAdd(ts.dtype), 32 * B * J, [["ptr", acc.ptr], ["ptr", S.ptr], ["ptr", I.ptr], ["i64", B], ["i64", J], ["i64", R], ["i64", size], ["ptr", bad.ptr], ["i32", vec]]);
  ex.checkIndices(bad, "scatter_add", toDim, size);
  if (S !== x[0]) ex.release(S);
  if (I !== x[1]) ex.release(I);
  return ex.reorderOwned(ex.castOwned(acc, to.dtype), order, nm(to));
}

/** Rows at least this wide take scatter_add by target (a warp per target row); narrower ones the atomic form. */
export const SCATTER_ROWS_MIN = 32;

/**
 * scatter_add of S [B][J][R] by I [B][J] into [B][size][R] of `outDtype`: the rows counted and bucketed by
 * target (count, scan, fill), then a warp per target row sums its rows (kernels/scatter-sources.ts).
 */
function scatterByTarget(ex: CudaExecutor, S: DeviceTensor, I: DeviceTensor, o: { B: number; J: number; R: number; size: number; outDtype: "f32" | "bf16"; outShape: number[]; dim: string }): DeviceTensor {
  const { B, J, R, size } = o, targets = B * size, rows = B * J;
  const out = empty(ex.mem, o.outDtype, o.outShape);
  if (targets * R === 0) return out;
  const cnt = empty(ex.mem, "i32", [targets + 1]), start = empty(ex.mem, "i32", [targets + 1]), list = empty(ex.mem, "i32", [Math.max(1, rows)]);
  const bad = ex.badFlag();
  ex.addon.memsetD8(cnt.ptr, 0, (targets + 1) * 4, ex.stream);
  ex.launch1D(SC.scatterCount(), rows, [["ptr", I.ptr], ["i64", B], ["i64", J], ["i64", size], ["ptr", cnt.ptr], ["ptr", bad.ptr]]);
  ex.launchGrid(SC.scatterScan(), 1, SC.SCATTER_SCAN_BLOCK, [["ptr", cnt.ptr], ["i64", targets], ["ptr", start.ptr]]);
  ex.addon.memsetD8(cnt.ptr, 0, (targets + 1) * 4, ex.stream); // now each target's fill cursor
  ex.launch1D(SC.scatterFill(), rows, [["ptr", I.ptr], ["i64", B], ["i64", J], ["i64", size], ["ptr", start.ptr], ["ptr", cnt.ptr], ["ptr", list.ptr]]);
  ex.checkIndices(bad, "scatter_add", o.dim, size);
  const V = 16 / K.elemBytes(S.dtype), vec = R % V === 0 && S.ptr % 16n === 0n && out.ptr % BigInt(V * K.elemBytes(o.outDtype)) === 0n ? 1 : 0;
  ex.launch1D(SC.scatterSum(S.dtype, o.outDtype), 32 * targets, [["ptr", out.ptr], ["ptr", S.ptr], ["ptr", start.ptr], ["ptr", list.ptr], ["i64", targets], ["i64", R], ["i32", vec]]);
  for (const t of [cnt, start, list]) ex.release(t);
  return out;
}

export function concatSplit(ex: CudaExecutor, op: string, x: DeviceTensor[], tIn: TensorType[], tOut: TensorType[], shapes: number[][], dim: string): DeviceTensor[] {
  const di = tIn[0]!.dims.findIndex((d) => d.name === dim);
  if (op === "concat") {
    const out = empty(ex.mem, x[0]!.dtype, shapes[0]!);
    const ost = stridesOf(out.shape);
    let at = 0;
    x.forEach((t) => {
      ex.copy(out, t, t.shape, stridesOf(t.shape), ost, at * ost[di]!);
      at += t.shape[di]!;
    });
    return [out];
  }
  const ist = stridesOf(x[0]!.shape);
  let at = 0;
  return tOut.map((_, o) => {
    const out = empty(ex.mem, x[0]!.dtype, shapes[o]!);
    // read the part [at, at + len) along dim: offset the source by at rows of that dim
    const src = { ...x[0]!, ptr: x[0]!.ptr + BigInt(at * ist[di]! * K.elemBytes(x[0]!.dtype)) };
    ex.copy(out, src, out.shape, ist, stridesOf(out.shape), 0);
    at += out.shape[di]!;
    return out;
  });
}
