// The routed experts' FP8 ops on CUDA (compiler/ops/scaled-segment.ts), over counts read on the host
// (as segment_dot's cuBLASLt loop in ops.ts):
//   scaled_segment_dot → the generated grouped FP8 GEMM (compiler/codegen/cuda/gemm/, Fp8Gemm's public
//     API). The rank's segments are laid out group-major, each padded with zero rows to a multiple of
//     GROUPED_M_ALIGN (128), so every 128-row block belongs to one expert (blockExpert; never -1 here).
//     A and its 1×128 scales are gathered into that layout (FP8 codes moved as int32 words), the GEMM
//     writes bf16 rows, and a second gather drops the padding on the way out (rows outside every
//     segment come out 0, as on the CPU).
//   scaled_segment_wgrad → x (the forward's e4m3 codes and 1×128 scales) and dY each gathered into the
//     same padded layout, quantized 128×1 along the rows (the tiles restart at every segment, as the
//     CPU reference's) and transposed to K-major by one kernel (x dequantized in registers), then per
//     expert the row-scaled FP8 GEMM (both operands scaled per column and 128-row block: X^T and dY^T
//     with the expert's padded rows as K, each expert a column range), its launches prepared once per
//     executor and buffers (Fp8Gemm.prepare keeps them). An f32 result, a non-Hopper GPU or widths the kernels refuse take the
//     dequantize + one cuBLASLt f32 GEMM per expert path instead (exact FP8 operands, f32 sums).
// A shape the grouped kernel cannot take (shapeProblem), an f32 output or a non-Hopper GPU is a
// CompileError naming why.
import type { TensorType } from "../../compiler/ir/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import { numel } from "../../compiler/ir/types.ts";
import { CompileError } from "../../compiler/errors.ts";
import { defaultRowScaledConfig, shapeProblem } from "../../compiler/codegen/cuda/gemm/config.ts";
import { GROUPED_M_ALIGN } from "../../compiler/numeric/fp8-gemm.ts";
import { scaledSegDims, segmentRuns } from "../../compiler/ops/scaled-segment.ts";
import { tilesName } from "../../compiler/ops/quantize.ts";
import { empty, type DeviceTensor } from "./memory.ts";
import { matmulPlans } from "./matmul-plans.ts";
import { fp8GemmOf } from "./fp8-gemm.ts";
import { gatherRows, i32, paddedLayout, paddedLayoutOf } from "./padded-segments.ts";
import { dequantizeCuda, quantizeCuda } from "./fp8.ts";
import { gemmConfigFor } from "./gemm-tune.ts";
import * as K from "./kernels/sources.ts";
import * as Q from "./kernels/fp8-sources.ts";
import type { CudaExecutor } from "./executor.ts";
import { codesIn } from "./shared-operands.ts";

/** The row-scaled (Wgrad) kernel; the grouped one is gemmConfigFor's choice for each launch's shape (tuned, else the default). */
const ROW_SCALED = defaultRowScaledConfig();
// the f32 fallback Wgrad: A (the dequantized activations) stored [tokens][KK], so transposed
const F32_TRANS_A = { dtype: "f32", outDtype: "f32", transA: true, accumulate: false } as const;
type OpInstr = Extract<Plan["instrs"][number], { kind: "op" }>;
const names = (t: TensorType) => t.dims.map((d) => d.name);

/** The rank's segments: counts read on the host, as segment_dot's loop does, and their padded layout. */
function runsOf(ex: CudaExecutor, plan: Plan, ins: OpInstr, r: number, x: DeviceTensor[], tIn: TensorType[], countsAt: number, firstGroup: number, nGroups: number, rowsDim: string, R: number) {
  const tc = tIn[countsAt]!, tx = tIn[0]!, groups = tx.dims.find((d) => d.segmented)!.segmented!.groups;
  const batch = names(tc).filter((n) => n !== groups);
  const C = ex.hostPiece(x[countsAt]!, names(tc), [...batch, groups]);
  const gC = C.shape[C.shape.length - 1]!, bt = gC ? C.data.length / gC : 0;
  const cOff = plan.values[ins.inputs[countsAt]!]!.boxes[r]!.offset[tc.dims.findIndex((d) => d.name === groups)]!;
  const packed = plan.values[ins.inputs[0]!]!.boxes[r]!.seg[names(tx).indexOf(rowsDim)] !== null;
  /** The padded layout of these runs with `Rout` output rows an entry, shared by the run's segment ops on this counts piece. */
  const layout = (Rout: number) =>
    paddedLayoutOf(C, [cOff, firstGroup, nGroups, R, packed ? 1 : 0, Rout], () => paddedLayout(segmentRuns(C.data, bt, gC, cOff, firstGroup, nGroups, R, packed), nGroups, bt, R, Rout));
  return { layout, bt, batch };
}

export function scaledSegmentDotCuda(ex: CudaExecutor, plan: Plan, ins: OpInstr, r: number, x: DeviceTensor[], tIn: TensorType[], to: TensorType, shape: number[]): DeviceTensor {
  const [tx, tsx, tw, tsw, tc] = tIn as [TensorType, TensorType, TensorType, TensorType, TensorType];
  const sd = scaledSegDims(tx, tsx, tw, tsw, tc, ins.attrs);
  if (to.dtype !== "bf16") throw new CompileError(`scaled_segment_dot on CUDA writes bf16 (the grouped FP8 GEMM's output); this one asks for ${to.dtype}: use out "bf16"`);
  const g = fp8GemmOf(ex);
  if (!g.supported) throw new CompileError(`scaled_segment_dot needs the grouped FP8 GEMM, which runs on Hopper (sm_90a); this GPU is ${g.device.name} (${g.arch})`);
  const X = ex.reorder(x[0]!, names(tx), [...sd.batch, sd.rows.name, sd.k]);
  const W = codesIn(ex, ins.inputs[2], x[2]!, names(tw), [sd.groups, sd.nOut, sd.k]);
  const SW = ex.reorder(x[3]!, names(tsw), [sd.groups, tilesName(sd.nOut), tilesName(sd.k)]);
  const R = X.shape[sd.batch.length]!, KK = X.shape[sd.batch.length + 1]!, N = W.shape[1]!, gW = W.shape[0]!;
  const wOff = plan.values[ins.inputs[2]!]!.boxes[r]!.offset[tw.dims.findIndex((d) => d.name === sd.groups)]!;
  const { layout, bt } = runsOf(ex, plan, ins, r, x, tIn, 4, wOff, gW, sd.rows.name, R);
  const order = [...sd.batch, sd.rows.name, sd.nOut];
  const outShape = order.map((d) => shape[to.dims.findIndex((e) => e.name === d)]!);
  const Rout = outShape[sd.batch.length]!;
  const lay = layout(Rout);
  const M = lay.rowMap.length;
  const temps: DeviceTensor[] = [];
  let Y: DeviceTensor;
  if (M === 0 || N === 0) {
    Y = empty(ex.mem, "bf16", outShape);
    if (numel(outShape)) ex.addon.memsetD8(Y.ptr, 0, numel(outShape) * 2, ex.stream);
  } else {
    const why = shapeProblem({ M, N, K: KK });
    if (why) throw new CompileError(`scaled_segment_dot ${M}x${N}x${KK} (padded rows x ${sd.nOut} x ${sd.k}) does not fit the grouped FP8 GEMM: ${why}`);
    const rowMap = i32(ex, lay.rowMap), blockExpert = i32(ex, lay.blockGroup);
    // A: the FP8 codes as int32 words (K is a multiple of 16), padding rows zero
    const A = gatherRows(ex, { ...X, dtype: "i32" }, bt * R, KK / 4, "i32", rowMap, M);
    // A's scales: [rows, K/128] gathered (padding scale 0), then [K/128][M] as the kernel reads them
    const SX = ex.reorder(x[1]!, names(tsx), [...sd.batch, sd.rows.name, tilesName(sd.k)]);
    const KB = SX.shape[SX.shape.length - 1]!;
    const SAr = gatherRows(ex, SX, bt * R, KB, "f32", rowMap, M);
    const SA = ex.reorder(SAr, ["m", "kb"], ["kb", "m"]);
    const D = empty(ex.mem, "bf16", [M, N]);
    g.prepare(gemmConfigFor(g, { M, N, K: KK, experts: gW }, true), { M, N, K: KK, experts: gW }, { a: A.ptr, b: W.ptr, sa: SA.ptr, sb: SW.ptr, d: D.ptr, blockExpert: blockExpert.ptr })();
    // back to the rank's rows: padding dropped, rows outside every segment 0
    const outIdx = i32(ex, lay.outMap);
    Y = gatherRows(ex, D, M, N, "bf16", outIdx, bt * Rout);
    Y = { ...Y, shape: outShape };
    temps.push(rowMap, blockExpert, A, SAr, SA, D, outIdx, ...(SX !== x[1] ? [SX] : []));
  }
  for (const t of new Set(temps)) ex.release(t);
  for (const [t, orig] of [[X, x[0]], [W, x[2]], [SW, x[3]]] as const) if (t !== orig) ex.release(t);
  return ex.reorderOwned(Y, order, names(to));
}

/**
 * Rows of x (`rows` × `width`; e4m3 codes with their 1×128 scales `xs`, or bf16 / f32) gathered by
 * `rowMap` into the padded layout (or, given `{ run }`, runs of that many consecutive rows each padded to
 * whole 128-row blocks: no map in memory), quantized 128×1 along its M rows and transposed in one kernel:
 * codes [width][M], scales [M/128][width] (kernels/fp8-sources.ts wgradColumns).
 */
export function quantizeColumnsT(ex: CudaExecutor, x: DeviceTensor, xs: DeviceTensor | undefined, rows: number, width: number, rowMap: DeviceTensor | { run: number }, M: number) {
  const src = xs ? "fp8" : (x.dtype as "bf16" | "f32");
  const q = empty(ex.mem, "fp8e4m3", [width, M]), s = empty(ex.mem, "f32", [M / GROUPED_M_ALIGN, width]);
  const vec = (width * K.elemBytes(x.dtype)) % 16 === 0 && x.ptr % 16n === 0n ? 1 : 0;
  const k = Q.wgradColumns(src), map = "run" in rowMap ? 0n : rowMap.ptr, run = "run" in rowMap ? rowMap.run : 0;
  ex.launchGrid(k, Q.wgradGrid(src, M, width), 256,
    [["ptr", q.ptr], ["ptr", s.ptr], ["ptr", x.ptr], ["ptr", xs?.ptr ?? 0n], ["ptr", map], ["i64", rows], ["i32", width], ["i64", M], ["i32", vec], ["i64", run]]);
  return { q, s };
}

export function scaledSegmentWgradCuda(ex: CudaExecutor, plan: Plan, ins: OpInstr, r: number, x: DeviceTensor[], tIn: TensorType[], to: TensorType, shape: number[]): DeviceTensor {
  const [tx, tsx, tg] = tIn as [TensorType, TensorType, TensorType];
  const rows = tx.dims.find((d) => d.segmented)!, k = String(ins.attrs.k), n = String(ins.attrs.n);
  const groups = rows.segmented!.groups;
  const batch = names(tIn[3]!).filter((nm) => nm !== groups);
  const X = ex.reorder(x[0]!, names(tx), [...batch, rows.name, k]), G = ex.reorder(x[2]!, names(tg), [...batch, rows.name, n]);
  const SX = ex.reorder(x[1]!, names(tsx), [...batch, rows.name, tilesName(k)]);
  const R = X.shape[batch.length]!, KK = X.shape[batch.length + 1]!, N = G.shape[batch.length + 1]!;
  const gOut = shape[0]!, outOff = plan.values[ins.outputs[0]!]!.boxes[r]!.offset[0]!;
  const { layout, bt } = runsOf(ex, plan, ins, r, x, tIn, 3, outOff, gOut, rows.name, R);
  // (output rows as many as the input's, as the dots on these counts have: their layout, outMap unused here)
  const lay = layout(R);
  const M = lay.rowMap.length;
  const g = fp8GemmOf(ex);
  const onGemm = to.dtype === "bf16" && g.supported && shapeProblem({ M: KK, N, K: GROUPED_M_ALIGN }) === undefined;
  const out = empty(ex.mem, onGemm ? "bf16" : "f32", [gOut, KK, N]);
  if (numel(out.shape)) ex.addon.memsetD8(out.ptr, 0, numel(out.shape) * K.elemBytes(out.dtype), ex.stream);
  if (M > 0 && KK > 0 && N > 0) {
    const rowMap = i32(ex, lay.rowMap);
    if (onGemm) {
      // per expert: dW_g = X_g^T G_g on the row-scaled FP8 GEMM (A = X^T, B = G^T, K = the expert's padded
      // rows). Both operands gathered, quantized 128x1 and transposed to [width][M] by one kernel each
      // (x's codes dequantized in registers: no f32 rows); each expert a column range (row stride M)
      const qx = quantizeColumnsT(ex, X, SX, bt * R, KK, rowMap, M), qg = quantizeColumnsT(ex, G, undefined, bt * R, N, rowMap, M);
      lay.range.forEach(([p0, p1], grp) => {
        if (p1 <= p0) return;
        const kb0 = p0 / GROUPED_M_ALIGN;
        g.prepare(ROW_SCALED, { M: KK, N, K: p1 - p0, lda: M, ldb: M }, {
          a: qx.q.ptr + BigInt(p0), b: qg.q.ptr + BigInt(p0), sa: qx.s.ptr + BigInt(kb0 * KK * 4), sb: qg.s.ptr + BigInt(kb0 * N * 4), d: out.ptr + BigInt(grp * KK * N * 2),
        })();
      });
      for (const t of [qx.q, qx.s, qg.q, qg.s]) ex.release(t);
    } else {
      // an f32 result, or no Hopper: x dequantized, both operands gathered and quantized 128x1 along the
      // rows, dequantized again (exact FP8 operands) and one cuBLASLt f32 GEMM per expert
      const xd = dequantizeCuda(ex, { ...X, shape: [bt * R, KK] }, { ...SX, shape: [bt * R, SX.shape[SX.shape.length - 1]!] }, { dims: [{ name: "r", size: bt * R }, { name: "c", size: KK }], dtype: "fp8e4m3", placements: [] },
        { dims: [{ name: "r", size: bt * R }, { name: tilesName("c"), size: SX.shape[SX.shape.length - 1]! }], dtype: "f32", placements: [] }, "f32");
      const quantRows = (t: DeviceTensor, width: number) => {
        const P = gatherRows(ex, t, bt * R, width, t.dtype as "f32" | "bf16", rowMap, M);
        const pt: TensorType = { dims: [{ name: "p", size: M }, { name: "c", size: width }], dtype: P.dtype, placements: [] };
        const [q, sc] = quantizeCuda(ex, P, pt, { tiling: "128x1", dims: ["p"] });
        ex.release(P);
        const d = dequantizeCuda(ex, q!, sc!, { ...pt, dtype: "fp8e4m3" }, { ...pt, dims: [{ name: tilesName("p"), size: M / 128 }, pt.dims[1]!], dtype: "f32" }, "f32");
        for (const o of [q!, sc!]) ex.release(o);
        return d;
      };
      const Xd = quantRows(xd, KK), Gd = quantRows(G, N);
      ex.release(xd);
      lay.range.forEach(([p0, p1], grp) => {
        if (p1 > p0)
          matmulPlans(ex.addon).run(F32_TRANS_A, KK, N, p1 - p0, 1, Xd.ptr + BigInt(p0 * KK * 4), Gd.ptr + BigInt(p0 * N * 4), out.ptr + BigInt(grp * KK * N * 4), ex.stream);
      });
      for (const t of [Xd, Gd]) ex.release(t);
    }
    ex.release(rowMap);
  }
  for (const [t, orig] of [[X, x[0]], [SX, x[1]], [G, x[2]]] as const) if (t !== orig) ex.release(t);
  // the GEMM wrote bf16 already (castOwned reads f32)
  return out.dtype === to.dtype ? out : ex.castOwned(out, to.dtype);
}
