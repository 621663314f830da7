// The CUDA executor's non-fused ops that run on the device (runtime/cuda/executor.ts runs the
// host-made values itself): fills, contractions, routing, layout moves and the FP8 family, each for
// one rank's pieces. Buffers returned are the executor's to own.
import type { TensorType } from "../../compiler/ir/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import { numel } from "../../compiler/ir/types.ts";
import { stridesOf } from "../../compiler/ir/local.ts";
import { CompileError } from "../../compiler/errors.ts";
import { empty, type DeviceTensor } from "./memory.ts";
import * as K from "./kernels/sources.ts";
import * as M from "./kernels/moe-sources.ts";
import { concatSplit, dot, gather, scatterAdd, segmentContract } from "./ops.ts";
import { FP8_OPS, runFp8 } from "./fp8.ts";
import { scaledSegmentDotCuda, scaledSegmentWgradCuda } from "./fp8-segment.ts";
import { deviceScaledSegment } from "./fp8-segment-device.ts";
import type { CudaExecutor } from "./executor.ts";

type OpInstr = Extract<Plan["instrs"][number], { kind: "op" }>;
const names = (t: TensorType) => t.dims.map((d) => d.name);

export function deviceOp(ex: CudaExecutor, plan: Plan, ins: OpInstr, r: number, coords: number[], x: DeviceTensor[], tIn: TensorType[], tOut: TensorType[], outShape: (o: number) => number[]): DeviceTensor[] {
  const a = ins.attrs;
  switch (ins.op) {
    case "full":
    case "iota": {
      const out = empty(ex.mem, tOut[0]!.dtype, outShape(0));
      const holds = tOut[0]!.placements.every((p, ax) => p !== "P(sum)" || coords[ax] === 0);
      const di = ins.op === "iota" ? tOut[0]!.dims.findIndex((d) => d.name === a.dim) : -1;
      const st = stridesOf(out.shape);
      const off = di >= 0 ? plan.values[ins.outputs[0]!]!.boxes[r]!.offset[di]! : 0;
      ex.launch1D(K.fill(out.dtype), numel(out.shape), [["ptr", out.ptr], ["i64", numel(out.shape)], ["f32", holds ? Number(a.value ?? 0) : 0], ["i32", di >= 0 && holds ? 1 : 0], ["i64", di >= 0 ? st[di]! : 1], ["i64", di >= 0 ? Math.max(1, out.shape[di]!) : 1], ["i64", off]]);
      return [out];
    }
    case "dot":
      return [dot(ex, x[0]!, x[1]!, tIn[0]!, tIn[1]!, tOut[0]!, outShape(0), a)];
    case "segment_dot":
    case "segment_wgrad":
      return [segmentContract(ex, ins.op, plan, ins, r, x, tIn, tOut[0]!, outShape(0))];
    case "scaled_segment_dot":
    case "scaled_segment_wgrad": {
      // device-side counts (no host read, so capturable) where fp8-segment-device.ts takes the sizes
      const y = ex.segmentCountsOnDevice ? deviceScaledSegment(ex, plan, ins, r, x, tIn, tOut[0]!, outShape(0)) : undefined;
      if (y) return [y];
      return [(ins.op === "scaled_segment_dot" ? scaledSegmentDotCuda : scaledSegmentWgradCuda)(ex, plan, ins, r, x, tIn, tOut[0]!, outShape(0))];
    }
    case "gather":
      return [gather(ex, plan, ins, r, x, tIn, tOut[0]!, outShape(0))];
    case "scatter_add":
      return [scatterAdd(ex, x, tIn, tOut[0]!, outShape(0), a)];
    case "topk": {
      const dim = String(a.dim), k = Number(a.k), rest = names(tIn[0]!).filter((n) => n !== dim);
      const X = ex.reorder(x[0]!, names(tIn[0]!), [...rest, dim]);
      const n = X.shape[X.shape.length - 1]!, rows = n ? numel(X.shape) / n : 0;
      const vals = empty(ex.mem, X.dtype, [...X.shape.slice(0, -1), k]), inds = empty(ex.mem, "i32", vals.shape);
      ex.launch1D(K.topk(X.dtype), rows, [["ptr", vals.ptr], ["ptr", inds.ptr], ["ptr", X.ptr], ["i64", rows], ["i32", n], ["i32", k]]);
      if (X !== x[0]) ex.release(X);
      const kd = String(a.kDim), order = [...rest, kd];
      return [ex.reorderOwned(vals, order, names(tOut[0]!)), ex.reorderOwned(inds, order, names(tOut[1]!))];
    }
    case "sort_by_key": {
      const dim = String(a.dim), G = Number(a.numGroups), batch = names(tIn[0]!).filter((nm) => nm !== dim);
      const Kt = ex.reorder(x[0]!, names(tIn[0]!), [...batch, dim]);
      const n = Kt.shape[Kt.shape.length - 1]!, B = n ? numel(Kt.shape) / n : numel(Kt.shape.slice(0, -1));
      const perm = empty(ex.mem, "i32", outShape(0)), cnt = empty(ex.mem, "i32", outShape(1));
      if (G <= M.MOE_MAX_GROUPS) {
        // a block per row, its threads sorting 256 keys at a time (moe_dispatch's permute: the same
        // stable order and -1 padding); the one-thread-a-row kernel took 6.8 ms for one row of 49152
        // keys on an H200 (bench/results/2026-11-23-moe-graph-h200-trace.txt)
        if (B > 0) ex.launchGrid(M.moeRoute(), Math.min(B, ex.smCount * 8), M.MOE_ROUTE_BLOCK, [["ptr", cnt.ptr], ["ptr", perm.ptr], ["ptr", Kt.ptr], ["i64", B], ["i32", n], ["i32", G]]);
      } else {
        const start = empty(ex.mem, "i32", [B, G]);
        ex.launch1D(K.sortByKey(), B, [["ptr", perm.ptr], ["ptr", cnt.ptr], ["ptr", start.ptr], ["ptr", Kt.ptr], ["i64", B], ["i32", n], ["i32", G]]);
        ex.release(start);
      }
      if (Kt !== x[0]) ex.release(Kt);
      return [perm, cnt];
    }
    case "rename":
    case "unflatten": {
      const out = empty(ex.mem, x[0]!.dtype, outShape(0));
      if (out.bytes && numel(out.shape)) ex.addon.memcpyDtoDAsync(out.ptr, x[0]!.ptr, numel(out.shape) * K.elemBytes(out.dtype), ex.stream);
      return [out];
    }
    case "flatten": {
      const dims = a.dims as string[];
      const order = names(tIn[0]!).flatMap((nm) => (nm === dims[0] ? dims : dims.includes(nm) ? [] : [nm]));
      const X = ex.reorder(x[0]!, names(tIn[0]!), order);
      const out = empty(ex.mem, X.dtype, outShape(0));
      if (numel(out.shape)) ex.addon.memcpyDtoDAsync(out.ptr, X.ptr, numel(out.shape) * K.elemBytes(out.dtype), ex.stream);
      if (X !== x[0]) ex.release(X);
      return [out];
    }
    case "permute": {
      const X = ex.reorder(x[0]!, names(tIn[0]!), a.order as string[]);
      return [X === x[0] ? clone(ex, X) : X];
    }
    case "expand": {
      const shape = outShape(0), out = empty(ex.mem, x[0]!.dtype, shape);
      const ist = [...stridesOf(x[0]!.shape), ...shape.slice(x[0]!.shape.length).map(() => 0)];
      ex.copy(out, x[0]!, shape, ist, stridesOf(shape), 0);
      return [out];
    }
    case "concat":
    case "split":
      return concatSplit(ex, ins.op, x, tIn, tOut, ins.outputs.map((_, o) => outShape(o)), String(a.dim));
    default:
      if (FP8_OPS.has(ins.op)) return runFp8(ex, plan, ins, r, x, tIn, tOut, outShape(0));
      throw new CompileError(`the CUDA backend has no kernel for op '${ins.op}' here (the fusion pass leaves it unfused); this is a shardts bug — run with --backend cpu`);
  }
}

function clone(ex: CudaExecutor, t: DeviceTensor): DeviceTensor {
  const out = empty(ex.mem, t.dtype, t.shape);
  if (numel(t.shape)) ex.addon.memcpyDtoDAsync(out.ptr, t.ptr, numel(t.shape) * K.elemBytes(t.dtype), ex.stream);
  return out;
}
