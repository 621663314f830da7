// The routed experts' FP8 ops on device-side counts (CudaExecutor.segmentCountsOnDevice, as the bf16
// segment contractions of segment-device.ts): nothing is read back to the host, so a MoE step with FP8
// experts can be captured in a CUDA graph. Both start from the row-run table the bf16 segment_dot plans
// on the device (segment-device.ts launchSegmentRuns: 4 int32 per 128-row block of a segment, expert-major,
// sized by the routing's upper bound rowRunCapacity, blocks past the segments expert -1):
// - scaled_segment_dot: the grouped FP8 GEMM over row runs (config rowRuns) reads X's e4m3 codes and writes
//   Y's bf16 rows where they are (no padded copy of either); A's 1×128 scales are laid out by block
//   (segmentRunScales: zero past a block's valid rows), so they still come by TMA. The plan kernel also
//   zeroes Y's rows no segment covers.
// - scaled_segment_wgrad: the table expanded to the padded row map (segmentRunBlocks: each segment its own
//   128-row blocks, so the 128×1 tiles restart at every segment, as on the CPU) and each expert's run of
//   blocks; x (codes, dequantized in registers) and dY gathered, quantized 128×1 and transposed by the
//   kernel the host path uses (x's side made once for the gate and up projections: shared-operands.ts),
//   then one K-grouped row-scaled FP8 GEMM for every expert (config kGrouped with bRows) writes dW in bf16.
// What these refuse (deviceScaledSegmentRefusal: an f32 output, another GPU, sizes the kernels refuse)
// returns undefined before anything is launched, and the caller reads the counts on the host
// (fp8-segment.ts).
import type { TensorType } from "../../compiler/ir/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import { numel } from "../../compiler/ir/types.ts";
import { defaultGemmConfig, defaultKGroupedRowScaledConfig, kGroupedProblem, shapeProblem } from "../../compiler/codegen/cuda/gemm/config.ts";
import { FP8_BLOCK, GROUPED_M_ALIGN } from "../../compiler/numeric/fp8-gemm.ts";
import { tilesName } from "../../compiler/ops/quantize.ts";
import { empty, type DeviceTensor } from "./memory.ts";
import { fp8GemmOf } from "./fp8-gemm.ts";
import { quantizeColumnsT } from "./fp8-segment.ts";
import { dimSizeOf, launchSegmentRuns, rowRunCapacity, type LocalShapes, type SegmentSizes } from "./segment-device.ts";
import { SEGMENT_PLAN_SMEM_INTS, segmentPlanInts, segmentRunBlocks, segmentRunScales } from "./kernels/segment-sources.ts";
import { codesIn, keepShared, laterSharers, takeShared, type SharedEntry } from "./shared-operands.ts";
import type { CudaExecutor } from "./executor.ts";

type OpInstr = Extract<Plan["instrs"][number], { kind: "op" }>;
const names = (t: TensorType) => t.dims.map((d) => d.name);

/** The operands' roles: where x, its scales, the counts sit among the inputs, and the local groups' dim on the weights (dot) or the output (wgrad). */
interface Roles {
  rows: string;
  groups: string;
  batch: string[];
  /** The contracted dim of x (dot) / dW's rows (wgrad). */
  k: string;
  /** The output columns: w's other dim (dot) / dY's (wgrad). */
  n: string;
  countsAt: number;
}

function rolesOf(op: string, tIn: readonly TensorType[], attrs: Record<string, unknown>): Roles {
  const tx = tIn[0]!, rowsDim = tx.dims.find((d) => d.segmented)!, groups = rowsDim.segmented!.groups;
  const countsAt = op === "scaled_segment_dot" ? 4 : 3;
  const batch = names(tIn[countsAt]!).filter((n) => n !== groups);
  if (op === "scaled_segment_dot") {
    const k = String(attrs.contract), n = names(tIn[2]!).find((d) => d !== k && d !== groups)!;
    return { rows: rowsDim.name, groups, batch, k, n, countsAt };
  }
  return { rows: rowsDim.name, groups, batch, k: String(attrs.k), n: String(attrs.n), countsAt };
}

/** A rank's sizes (K: x's width; N: the output's columns; E: the local groups). */
function sizesOf(op: string, tIn: readonly TensorType[], outType: TensorType, ro: Roles, local?: LocalShapes): SegmentSizes {
  const size = dimSizeOf(tIn, outType, local);
  const bt = ro.batch.reduce((p, n) => p * size(ro.countsAt, n), 1), R = size(0, ro.rows), K = size(0, ro.k);
  if (op === "scaled_segment_dot") return { bt, R, Rout: size(-1, ro.rows), K, N: size(2, ro.n), E: size(2, ro.groups) };
  // scaled_segment_wgrad: out [groups, k, n]
  return { bt, R, Rout: R, K, N: size(2, ro.n), E: size(-1, names(outType)[0]!) };
}

/**
 * Why `op` (scaled_segment_dot / scaled_segment_wgrad) cannot run on device-side counts, or undefined when
 * it can: from the types alone, or with `local` (this rank's input and output shapes) from the sizes a rank
 * runs, as the op checks before it launches anything.
 */
export function deviceScaledSegmentRefusal(op: string, inTypes: readonly TensorType[], outType: TensorType, arch: string, attrs: Record<string, unknown>, local?: LocalShapes): string | undefined {
  if (op !== "scaled_segment_dot" && op !== "scaled_segment_wgrad") return `${op} is not an FP8 segment op`;
  if (outType.dtype !== "bf16") return `an ${outType.dtype} result (device-side counts run the FP8 GEMMs, which write bf16; the f32 one dequantizes and reads its counts on the host)`;
  if (arch !== "sm_90a") return `${arch} (the generated FP8 kernels need Hopper, sm_90a)`;
  const ro = rolesOf(op, inTypes, attrs), s = sizesOf(op, inTypes, outType, ro, local);
  if (segmentPlanInts(s.bt, s.E) > SEGMENT_PLAN_SMEM_INTS) return `${s.bt} entries x ${s.E} groups: the plan's tables outgrow a block's shared memory (${SEGMENT_PLAN_SMEM_INTS} int32)`;
  if (s.bt * Math.max(s.R, s.Rout) >= 2 ** 31) return `${s.bt} x ${Math.max(s.R, s.Rout)} rows overflow the plan's 32-bit row indices`;
  const M = GROUPED_M_ALIGN * Math.max(1, rowRunCapacity(s.bt, s.R, s.E));
  if (op === "scaled_segment_dot") return shapeProblem({ M, N: s.N, K: s.K });
  // the K-grouped GEMM: dW's K rows x N, over the padded rows; its operands quantized by the host path's kernel
  return shapeProblem({ M: s.K, N: s.N, K: FP8_BLOCK }) ?? kGroupedProblem({ M: s.K, N: s.N, K: M, experts: s.E }, FP8_BLOCK);
}

/** The rank's local groups relative to its counts piece, and whether its rows are packed (as segment-gemm.ts segmentPlacement, for the FP8 ops' operand positions). */
function placement(op: string, plan: Plan, ins: OpInstr, r: number, tIn: readonly TensorType[], ro: Roles): { first: number; packed: boolean } {
  const box = (v: number) => plan.values[v]!.boxes[r]!;
  const cOff = box(ins.inputs[ro.countsAt]!).offset[tIn[ro.countsAt]!.dims.findIndex((d) => d.name === ro.groups)]!;
  const gOff = op === "scaled_segment_dot" ? box(ins.inputs[2]!).offset[tIn[2]!.dims.findIndex((d) => d.name === ro.groups)]! : box(ins.outputs[0]!).offset[0]!;
  const packed = box(ins.inputs[0]!).seg[tIn[0]!.dims.findIndex((d) => d.name === ro.rows)] !== null;
  return { first: gOff - cOff, packed };
}

/** scaled_segment_wgrad's x side, shared with a later one on the same rows and counts (shared-operands.ts). */
interface XSide extends SharedEntry { rowMap: DeviceTensor; be: DeviceTensor; q: DeviceTensor; s: DeviceTensor }

/** scaled_segment_wgrad's key for sharing its x side: x's codes and scales, the counts, the contracted dim. */
const sameRowsKey = (o: OpInstr): string => `${o.inputs[0]}:${o.inputs[1]}:${o.inputs[3]}:${String(o.attrs.k)}`;

/**
 * scaled_segment_dot / scaled_segment_wgrad on device-side counts, in the output's dims order, or undefined
 * (nothing launched) where deviceScaledSegmentRefusal refuses this rank's sizes.
 */
export function deviceScaledSegment(ex: CudaExecutor, plan: Plan, ins: OpInstr, r: number, x: DeviceTensor[], tIn: TensorType[], to: TensorType, shape: number[]): DeviceTensor | undefined {
  const op = ins.op, g = fp8GemmOf(ex), local = { inShapes: x.map((t) => t.shape), outShape: shape };
  if (deviceScaledSegmentRefusal(op, tIn, to, g.arch, ins.attrs, local) !== undefined) return undefined;
  const ro = rolesOf(op, tIn, ins.attrs), s = sizesOf(op, tIn, to, ro, local), { first, packed } = placement(op, plan, ins, r, tIn, ro);
  const owned: DeviceTensor[] = [];
  const mine = (t: DeviceTensor, of: DeviceTensor) => (t !== of && owned.push(t), t);
  const tc = tIn[ro.countsAt]!, gC = x[ro.countsAt]!.shape[tc.dims.findIndex((d) => d.name === ro.groups)]!;
  const counts = () => mine(ex.part("counts layout", () => ex.reorder(x[ro.countsAt]!, names(tc), [...ro.batch, ro.groups])), x[ro.countsAt]!);
  const X = () => mine(ex.part("rows layout", () => ex.reorder(x[0]!, names(tIn[0]!), [...ro.batch, ro.rows, ro.k])), x[0]!);
  const SX = () => mine(ex.part("rows layout", () => ex.reorder(x[1]!, names(tIn[1]!), [...ro.batch, ro.rows, tilesName(ro.k)])), x[1]!);
  const cap = rowRunCapacity(s.bt, s.R, s.E), P = GROUPED_M_ALIGN * cap, rowsA = s.bt * s.R;
  /** The row-run table, and with `y` Y's rows outside the segments zeroed. */
  const runTable = (y?: DeviceTensor) => {
    const runs = empty(ex.mem, "i32", [cap, 4]);
    owned.push(runs);
    ex.part("segment plan (device)", () => launchSegmentRuns(ex, { counts: counts(), bt: s.bt, gC, first, E: s.E, packed, R: s.R, runs, cap, y: y && { t: y, Rout: s.Rout, N: s.N } }));
    return runs;
  };
  let out: DeviceTensor;
  if (op === "scaled_segment_dot") {
    const order = [...ro.batch, ro.rows, ro.n], outShape = order.map((d) => shape[to.dims.findIndex((e) => e.name === d)]!);
    const Y = empty(ex.mem, "bf16", outShape);
    if (cap === 0 || s.bt * s.Rout === 0) {
      // no rows to plan (R = 0): Y is zeros
      if (numel(outShape)) ex.addon.memsetD8(Y.ptr, 0, numel(outShape) * 2, ex.stream);
    } else {
      const tw = tIn[2]!, tsw = tIn[3]!;
      const W = mine(ex.part("weights layout", () => codesIn(ex, ins.inputs[2], x[2]!, names(tw), [ro.groups, ro.n, ro.k])), x[2]!);
      const SW = mine(ex.part("weights layout", () => ex.reorder(x[3]!, names(tsw), [ro.groups, tilesName(ro.n), tilesName(ro.k)])), x[3]!);
      const A = X(), SA0 = SX(), KB = SA0.shape[SA0.shape.length - 1]!;
      const runs = runTable(Y);
      const SA = empty(ex.mem, "f32", [KB, P]);
      owned.push(SA);
      ex.part("scale plan (device)", () =>
        ex.launch1D(segmentRunScales(), KB * P, [["ptr", runs.ptr], ["i32", cap], ["ptr", SA0.ptr], ["i64", rowsA], ["i32", KB], ["ptr", SA.ptr]]));
      const problem = { M: P, N: s.N, K: s.K, experts: s.E, rowsA, rowsD: s.bt * s.Rout };
      const config = { ...defaultGemmConfig(true, { M: P, N: s.N }, g.gridSms()), rowRuns: true };
      ex.part("grouped FP8 GEMM", () => g.prepare(config, problem, { a: A.ptr, b: W.ptr, sa: SA.ptr, sb: SW.ptr, d: Y.ptr, blockExpert: runs.ptr })());
    }
    out = ex.part("output layout", () => ex.reorderOwned(Y, order, names(to)));
  } else {
    // dW [E][K][N] = Σ over each expert's padded rows of Xᵀ·dY, from the operands quantized 128x1 along them
    const D = empty(ex.mem, "bf16", [s.E, s.K, s.N]);
    if (cap === 0) {
      if (numel(D.shape)) ex.addon.memsetD8(D.ptr, 0, numel(D.shape) * 2, ex.stream);
    } else {
      const tg = tIn[2]!;
      const G = mine(ex.part("gradient rows layout", () => ex.reorder(x[2]!, names(tg), [...ro.batch, ro.rows, ro.n])), x[2]!);
      // x's side (the row map, the experts' blocks, x quantized 128x1 and transposed): an earlier
      // scaled_segment_wgrad on the same rows and counts may have left it (a SwiGLU's gate and up weights)
      const key = `scaled_segment_wgrad:${ins.inputs[0]}:${ins.inputs[1]}:${ins.inputs[3]}:${r}:${ro.k}`, from = [x[0]!, x[1]!, x[3]!];
      let xs = takeShared<XSide>(ex, key, from);
      if (!xs) {
        const A = X(), SA0 = SX();
        const runs = runTable();
        const rowMap = empty(ex.mem, "i32", [P]), be = empty(ex.mem, "i32", [s.E, 2]);
        ex.part("segment plan (device)", () => ex.launch1D(segmentRunBlocks(), Math.max(P, s.E), [["ptr", runs.ptr], ["i32", cap], ["i32", s.E], ["ptr", rowMap.ptr], ["ptr", be.ptr]]));
        const qx = ex.part("rows quantized 128x1", () => quantizeColumnsT(ex, A, SA0, rowsA, s.K, rowMap, P));
        xs = { from, made: [rowMap, be, qx.q, qx.s], rowMap, be, q: qx.q, s: qx.s };
      }
      if (laterSharers(plan, "scaled_segment_wgrad", sameRowsKey).has(ins)) keepShared(ex, key, xs);
      else owned.push(...xs.made);
      const { rowMap, be } = xs;
      const qg = ex.part("rows quantized 128x1", () => quantizeColumnsT(ex, G, undefined, rowsA, s.N, rowMap, P));
      owned.push(qg.q, qg.s);
      ex.part("K-grouped FP8 GEMM", () =>
        g.prepare(defaultKGroupedRowScaledConfig(), { M: s.K, N: s.N, K: P, experts: s.E }, { a: xs.q.ptr, b: qg.q.ptr, sa: xs.s.ptr, sb: qg.s.ptr, d: D.ptr, blockExpert: be.ptr })());
    }
    // D [E][K][N] is the output in its dims order, [groups, k, n]
    out = D;
  }
  for (const t of owned) ex.release(t);
  return out;
}
