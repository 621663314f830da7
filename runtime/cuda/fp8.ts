// The CUDA executor's FP8 ops: quantize and dequantize through the kernels of
// kernels/fp8-sources.ts (128x1 and 128x128 in place by the register-tile kernel where it applies;
// otherwise the tiled dims moved last, [O, N, K] views), and scaled_dot through a
// FALLBACK — both operands dequantized to f32 and contracted by cuBLASLt's f32 GEMM — wherever the
// generated Hopper FP8 GEMM does not take the operands (fp8-scaled-dot.ts says which); it equals the
// CPU reference's promoted accumulation to f32 rounding, not bit for bit, and runs at f32 GEMM speed;
// scaled_dot_wgrad on the row-scaled GEMM (fp8-dot-wgrad.ts) or as its composition of the above.
import type { Attrs, TensorType } from "../../compiler/ir/types.ts";
import { numel } from "../../compiler/ir/types.ts";
import { CompileError } from "../../compiler/errors.ts";
import { tileSpec, tiledDimsOf, tilesName } from "../../compiler/ops/quantize.ts";
import { dotWgradDims, requantizedTypes } from "../../compiler/ops/scaled-dot-wgrad.ts";
import { scaledDotWgradGemm } from "./fp8-dot-wgrad.ts";
import { packArgs, type KernelArg } from "./native.ts";
import { empty, type DeviceTensor } from "./memory.ts";
import * as Q from "./kernels/fp8-sources.ts";
import type { CudaExecutor } from "./executor.ts";
import { formOf, scaledDotGemm } from "./fp8-scaled-dot.ts";
import { keepCodesT } from "./shared-operands.ts";
import { fp8GemmOf } from "./fp8-gemm.ts";
import type { Plan } from "../../compiler/plan.ts";
import { dot } from "./ops.ts";

export const FP8_OPS = new Set(["quantize", "dequantize", "scaled_dot", "scaled_dot_wgrad"]);
type OpInstr = Extract<Plan["instrs"][number], { kind: "op" }>;
const names = (t: TensorType) => t.dims.map((d) => d.name);

/** x's dims with the tiled ones last (in `tiled` order), and the [O, N, K] view with its tile height. */
function view(t: TensorType, shape: number[], tiled: string[]) {
  const order = [...names(t).filter((n) => !tiled.includes(n)), ...tiled];
  const size = (n: string) => shape[names(t).indexOf(n)]!;
  const K = size(tiled[tiled.length - 1]!), N = tiled.length === 2 ? size(tiled[0]!) : 1;
  return { order, O: numel(shape) / Math.max(1, N * K), N, K, tn: tiled.length === 2 ? 128 : 1 };
}
const scaleOrder = (order: string[], tiled: string[]) => order.map((n) => (tiled.includes(n) ? tilesName(n) : n));

/**
 * Quantize without moving the tiled dims: one tiled dim that is not innermost (128x1: [O, N, K] with
 * N tiled, per-column amax over 128 rows), or two that are the innermost pair, in either order (128x128), by
 * the register-tile kernel; undefined where it does not apply (K % VEC, alignment).
 */
function quantizeInPlace(ex: CudaExecutor, x: DeviceTensor, tx: TensorType, tiled: string[], codesT: boolean): DeviceTensor[] | undefined {
  const ns = names(tx), dt = x.dtype === "bf16" ? "bf16" : "f32", VEC = dt === "bf16" ? 8 : 4;
  const at = ns.indexOf(tiled[0]!), prod = (a: number, b: number) => x.shape.slice(a, b).reduce((p, n) => p * n, 1);
  let mode: "block" | "cols", O: number, N: number, K: number;
  if (tiled.length === 1 && at < ns.length - 1) [mode, O, N, K] = ["cols", prod(0, at), x.shape[at]!, prod(at + 1, ns.length)];
  // (128x128: a block is the same block whichever order `tiled` names its dims in, and the scales
  // keep x's dim order, so the innermost pair in either order is quantized where it lies)
  else if (tiled.length === 2 && ns.length >= 2 && tiled.includes(ns[ns.length - 2]!) && tiled.includes(ns[ns.length - 1]!)) {
    const b = ns.length - 2;
    [mode, O, N, K] = ["block", prod(0, b), x.shape[b]!, x.shape[b + 1]!];
  }
  else return undefined;
  if (K % VEC !== 0 || x.ptr % 16n !== 0n) return undefined;
  const q = empty(ex.mem, "fp8e4m3", [...x.shape]);
  const s = empty(ex.mem, "f32", x.shape.map((n, i) => (tiled.includes(ns[i]!) ? Math.ceil(n / 128) : n)));
  const tiles = O * Math.ceil(N / 128) * Math.ceil(K / 128);
  // the transposed codes too ([.., K, N]; 16-byte rows of N), where a consumer reads them that way
  const qT = codesT && mode === "block" && N % 16 === 0 ? empty(ex.mem, "fp8e4m3", [...x.shape.slice(0, -2), K, N]) : undefined;
  if (tiles > 0) {
    const k = Q.quantizeTiles(dt, mode, qT !== undefined);
    ex.addon.launchKernel(ex.fn(k.name, k.source), [tiles, 1, 1], [256, 1, 1], 0, ex.stream,
      packArgs(["ptr", q.ptr], ["ptr", s.ptr], ["ptr", x.ptr], ["i64", O], ["i32", N], ["i32", K], ...(qT ? [["ptr", qT.ptr] as KernelArg] : [])));
  }
  return qT ? [q, s, qT] : [q, s];
}

/**
 * Whether quantize `ins` should also write its codes with the last two dims swapped: a 128x128 quantize
 * of its value's innermost pair whose codes a later scaled_dot or scaled_segment_dot reads as B in that
 * swapped order (a weight's Fprop, when its Dgrad reads the codes as they are), so the consumer takes
 * them (shared-operands.ts codesIn) instead of transposing the codes every step. Once per plan.
 */
export function transposedCodesWanted(plan: Plan, ins: OpInstr): boolean {
  let byIns = wanted.get(plan);
  if (!byIns) wanted.set(plan, (byIns = new Map()));
  let w = byIns.get(ins);
  if (w === undefined) byIns.set(ins, (w = computeWanted(plan, ins)));
  return w;
}
const wanted = new WeakMap<Plan, Map<OpInstr, boolean>>();

function computeWanted(plan: Plan, ins: OpInstr): boolean {
  if (ins.op !== "quantize") return false;
  const tq = plan.values[ins.outputs[0]!]!.type, ns = names(tq), n = ns.length, { dims: tiled } = tileSpec("quantize", ins.attrs);
  if (n < 2 || tiled.length !== 2 || !tiled.includes(ns[n - 2]!) || !tiled.includes(ns[n - 1]!)) return false;
  const swapped = [...ns.slice(0, -2), ns[n - 1]!, ns[n - 2]!].join("\u0000");
  return plan.instrs.some((c) => c.kind === "op" && c.inputs[2] === ins.outputs[0] && bOrder(plan, c)?.join("\u0000") === swapped);
}

/** The dims order in which a scaled_dot / scaled_segment_dot reads its B codes (operand 2), if it is one. */
function bOrder(plan: Plan, c: OpInstr): string[] | undefined {
  const tIn = c.inputs.map((s) => plan.values[s]!.type);
  if (c.op === "scaled_segment_dot") {
    const groups = tIn[0]!.dims.find((d) => d.segmented)?.segmented?.groups, k = String(c.attrs.contract);
    const nDim = names(tIn[2]!).find((d) => d !== k && d !== groups);
    return groups && nDim ? [groups, nDim, k] : undefined;
  }
  if (c.op === "scaled_dot") {
    const f = formOf(tIn, plan.values[c.outputs[0]!]!.type, c.attrs.contract as string[]);
    return f && [f.N, ...f.kRest, f.K];
  }
  return undefined;
}

/**
 * 1x128 quantize of `tiles` whole contiguous tiles (K % 128 == 0, x 16-byte aligned) by the flat kernel,
 * `unroll` loads a lane in flight (bench/gpu/fp8-quant.ts times the choices); grid-stride over at most
 * 8 blocks an SM.
 */
export function quantizeFlatLaunch(ex: CudaExecutor, q: DeviceTensor, s: DeviceTensor, x: DeviceTensor, tiles: number, unroll = Q.FLAT_UNROLL): void {
  const dt = x.dtype === "bf16" ? "bf16" : "f32", k = Q.quantizeFlat(dt, unroll), perBlock = 8 * Q.flatTilesPerWarp(dt, unroll);
  ex.addon.launchKernel(ex.fn(k.name, k.source), [Math.min(Math.ceil(tiles / perBlock), ex.smCount * 8), 1, 1], [256, 1, 1], 0, ex.stream,
    packArgs(["ptr", q.ptr], ["ptr", s.ptr], ["ptr", x.ptr], ["i64", tiles]));
}

/** quantize: [codes, scales], and with `codesT` (transposedCodesWanted) the transposed codes third where the in-place kernel made them. */
export function quantizeCuda(ex: CudaExecutor, x: DeviceTensor, tx: TensorType, attrs: Attrs, codesT = false): DeviceTensor[] {
  const { dims: tiled } = tileSpec("quantize", attrs);
  const direct = quantizeInPlace(ex, x, tx, tiled, codesT);
  if (direct) return direct;
  const v = view(tx, x.shape, tiled);
  const X = ex.reorder(x, names(tx), v.order);
  const q = empty(ex.mem, "fp8e4m3", X.shape);
  const sShape = X.shape.map((n, i) => (tiled.includes(v.order[i]!) ? Math.ceil(n / 128) : n));
  const s = empty(ex.mem, "f32", sShape);
  const dt = x.dtype === "bf16" ? "bf16" : "f32";
  if (numel(X.shape) > 0) {
    if (v.tn === 1 && v.K % 128 === 0 && X.ptr % 16n === 0n) quantizeFlatLaunch(ex, q, s, X, v.O * (v.K / 128));
    else if (v.tn === 1) {
      const tiles = v.O * Math.ceil(v.K / 128);
      ex.addon.launchKernel(ex.fn(Q.quantizeRows(dt).name, Q.quantizeRows(dt).source), [Math.min(Math.ceil(tiles / 8), ex.smCount * 32), 1, 1], [256, 1, 1], 0, ex.stream,
        packArgs(["ptr", q.ptr], ["ptr", s.ptr], ["ptr", X.ptr], ["i64", v.O], ["i32", v.K]));
    } else {
      const tiles = v.O * Math.ceil(v.N / 128) * Math.ceil(v.K / 128);
      ex.addon.launchKernel(ex.fn(Q.quantizeBlocks(dt).name, Q.quantizeBlocks(dt).source), [tiles, 1, 1], [256, 1, 1], 0, ex.stream,
        packArgs(["ptr", q.ptr], ["ptr", s.ptr], ["ptr", X.ptr], ["i64", v.O], ["i32", v.N], ["i32", v.K]));
    }
  }
  if (X !== x) ex.release(X);
  const back = (t: DeviceTensor, from: string[], to: string[]) => {
    const o = ex.reorder(t, from, to);
    if (o !== t) ex.release(t);
    return o;
  };
  return [back(q, v.order, names(tx)), back(s, scaleOrder(v.order, tiled), tx.dims.map((d) => (tiled.includes(d.name) ? tilesName(d.name) : d.name)))];
}

export function dequantizeCuda(ex: CudaExecutor, q: DeviceTensor, s: DeviceTensor, tq: TensorType, ts: TensorType, out: "f32" | "bf16"): DeviceTensor {
  const tiled = tiledDimsOf("dequantize", tq, ts, "scales");
  if (tiled.length === 0 || tiled.length > 2) throw new CompileError(`the CUDA dequantize takes one or two tiled dims, got [${tiled.join(", ")}]`);
  const v = view(tq, q.shape, tiled);
  const Qd = ex.reorder(q, names(tq), v.order), S = ex.reorder(s, names(ts), scaleOrder(v.order, tiled));
  const y = empty(ex.mem, out, Qd.shape);
  const n = numel(Qd.shape);
  if (n > 0) {
    // 16 codes a thread where rows are whole 16-byte chunks (the scalar kernel otherwise)
    const vec = v.K % 16 === 0 && Qd.ptr % 16n === 0n && y.ptr % 16n === 0n;
    const k = vec ? Q.dequantizeVec(out) : Q.dequantize(out), threads = vec ? n / 16 : n;
    ex.addon.launchKernel(ex.fn(k.name, k.source), [Math.min(Math.ceil(threads / 256), ex.smCount * 8), 1, 1], [256, 1, 1], 0, ex.stream,
      packArgs(["ptr", y.ptr], ["ptr", Qd.ptr], ["ptr", S.ptr], ["i64", v.O], ["i32", v.N], ["i32", v.K], ["i32", v.tn]));
  }
  if (Qd !== q) ex.release(Qd);
  if (S !== s) ex.release(S);
  const o = ex.reorder(y, v.order, names(tq));
  if (o !== y) ex.release(y);
  return o;
}

/** Runs one FP8 op of a plan for rank `r` (the executor's one call into this file). */
export function runFp8(ex: CudaExecutor, plan: Plan, ins: OpInstr, r: number, x: DeviceTensor[], tIn: TensorType[], tOut: TensorType[], shape: number[]): DeviceTensor[] {
  const op = ins.op, attrs = ins.attrs;
  if (op === "quantize") {
    const [q, s, qT] = quantizeCuda(ex, x[0]!, tIn[0]!, attrs, fp8GemmOf(ex).supported && transposedCodesWanted(plan, ins));
    if (qT) keepCodesT(ex, ins.outputs[0]!, q!, qT);
    return [q!, s!];
  }
  if (op === "dequantize") return [dequantizeCuda(ex, x[0]!, x[1]!, tIn[0]!, tIn[1]!, tOut[0]!.dtype as "f32" | "bf16")];
  if (op === "scaled_dot_wgrad") return [scaledDotWgradGemm(ex, plan, ins, r, x, tIn, tOut[0]!, shape) ?? scaledDotWgradComposed(ex, x, tIn, tOut[0]!, shape, attrs)];
  return [scaledDotCuda(ex, x, tIn, tOut[0]!, shape, attrs.contract as string[], ins.inputs[2])];
}

/**
 * scaled_dot: the generated FP8 GEMM where the operands have its form (fp8-scaled-dot.ts), else the
 * labelled fallback (see the file header). `bSlot`: B's plan slot, if it has one.
 */
function scaledDotCuda(ex: CudaExecutor, x: DeviceTensor[], tIn: TensorType[], tOut: TensorType, shape: number[], contract: string[], bSlot?: number): DeviceTensor {
  const fast = scaledDotGemm(ex, x, tIn, tOut, shape, contract, bSlot);
  if (fast) return fast;
  const a = dequantizeCuda(ex, x[0]!, x[1]!, tIn[0]!, tIn[1]!, "f32"), b = dequantizeCuda(ex, x[2]!, x[3]!, tIn[2]!, tIn[3]!, "f32");
  // (cuBLASLt has no f32 x f32 -> bf16 GEMM: accumulate to f32, then round)
  const y32 = dot(ex, a, b, { ...tIn[0]!, dtype: "f32" }, { ...tIn[2]!, dtype: "f32" }, { ...tOut, dtype: "f32" }, shape, { contract });
  const y = ex.castOwned(y32, tOut.dtype);
  ex.release(a);
  ex.release(b);
  return y;
}

/**
 * scaled_dot_wgrad as the composition it stands for (compiler/ops/scaled-dot-wgrad.ts), where the
 * row-scaled GEMM path (fp8-dot-wgrad.ts) does not take it: a dequantized to f32, it and gy quantized
 * 128×1 along the tokens, scaled_dot over them.
 */
function scaledDotWgradComposed(ex: CudaExecutor, x: DeviceTensor[], tIn: TensorType[], tOut: TensorType, shape: number[], attrs: Attrs): DeviceTensor {
  const [ta, tsa, tg] = tIn as [TensorType, TensorType, TensorType];
  const { tok } = dotWgradDims(ta, tsa, tg, attrs);
  const tav: TensorType = { ...ta, dtype: "f32" }, tiling = { tiling: "128x1", dims: [tok] };
  const av = dequantizeCuda(ex, x[0]!, x[1]!, ta, tsa, "f32");
  const [qa, sa] = quantizeCuda(ex, av, tav, tiling);
  ex.release(av);
  const [qg, sg] = quantizeCuda(ex, x[2]!, tg, tiling);
  const y = scaledDotCuda(ex, [qa!, sa!, qg!, sg!], requantizedTypes(ta, tg, tok), tOut, shape, attrs.contract as string[]);
  for (const t of [qa!, sa!, qg!, sg!]) ex.release(t);
  return y;
}
