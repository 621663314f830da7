// A CPU interpreter of kernel instructions: evaluates a KernelSpec's expression DAG on typed arrays,
// through the same axes, strides and column/row split the generated kernel uses, with every op
// node computed by the registry's CPU reference. Running a fused plan with it and comparing to the
// unfused plan checks the fusion itself (what was grouped, inlined, decomposed and written) without
// a GPU; the CUDA text is checked by compilation and, on a GPU, against this.
import type { DType, TensorType } from "../ir/types.ts";
import type { LocalTensor } from "../ir/local.ts";
import type { Plan } from "../plan.ts";
import type { CpuCtx } from "../ops/registry.ts";
import type { KernelInstr } from "./types.ts";
import { allocLocal } from "../ir/local.ts";
import { numel } from "../ir/types.ts";
import { getOp } from "../ops/index.ts";
import { forEachStrided, roundData } from "../ops/cpu-util.ts";
import { geometry } from "./geometry.ts";
import { quantizeValues } from "../ops/quantize.ts";

/** A node's value over named iteration dims ("a0".. for a map kernel; "r", "c" for rows and columns). */
interface Val {
  t: LocalTensor;
  type: TensorType;
}

const val = (dtype: DType, dims: [string, number][], data?: ArrayLike<number>): Val => {
  const t = allocLocal(dtype, dims.map(([, s]) => s));
  if (data) t.data.set(data);
  return { t, type: { dims: dims.map(([name, size]) => ({ name, size })), dtype, placements: [] } };
};

/** Reads a tensor's elements over `shape` with per-axis strides, into a row-major array. */
function gatherStrided(src: LocalTensor, shape: number[], strides: number[]): number[] {
  const out = new Array<number>(numel(shape));
  forEachStrided(shape, [strides], (o, offs) => (out[o] = src.data[offs[0]!]!));
  return out;
}

/** An op node over the union of its arguments' dims, kept in the iteration order `order`. */
function applyOp(op: string, args: Val[], dtype: DType, order: [string, number][]): Val {
  const out = val(dtype, order.filter(([nm]) => args.some((a) => a.type.dims.some((d) => d.name === nm))));
  const ctx = { inTypes: args.map((a) => a.type), outTypes: [out.type], outShapes: [out.t.shape], inBoxes: [], outBoxes: [], coords: [], rank: 0 } as unknown as CpuCtx;
  out.t = getOp(op).cpu(args.map((a) => a.t), op === "cast" ? { dtype } : {}, ctx)[0]!;
  return out;
}

/** One rank's kernel: inputs in `k.inputs` order; returns the results in `k.outputs` order. */
export function interpretKernel(k: KernelInstr, plan: Pick<Plan, "values">, rank: number, inputs: LocalTensor[]): LocalTensor[] {
  const { spec } = k;
  const g = geometry(k, plan, rank);
  const row = spec.kind === "row";
  // a split kernel: the axis before the columns counts parts of `chunk` columns; only the
  // reductions' partials walk it (one value per part), the rest is the unsplit row kernel
  const cut = spec.split ? g.sizes.length - 2 : -1;
  const drop = <T>(a: T[]) => a.filter((_, i) => i !== cut);
  const sizes = drop(g.sizes);
  const outer = row ? sizes.slice(0, -1) : sizes;
  const rows = numel(outer), ncol = row ? sizes[sizes.length - 1]! : 1;
  const parts = spec.split ? g.sizes[cut]! : 1, chunk = spec.split?.chunk ?? ncol;
  // the iteration space as named dims: map kernels keep their axes; row kernels flatten the outer ones
  const full: [string, number][] = row ? [["r", rows], ["c", ncol]] : sizes.map((s, i) => [`a${i}`, s]);
  const perRow: [string, number][] = row ? [["r", rows]] : full;
  const perPart: [string, number][] = spec.split ? [["r", rows], ["p", parts]] : perRow;

  const vals: Val[] = [];
  for (const n of spec.nodes) {
    if (n.k === "load") {
      const st = drop(g.strides[n.operand]!);
      vals.push(n.col || !row ? val(n.dtype, full, gatherStrided(inputs[n.operand]!, sizes, st)) : val(n.dtype, perRow, gatherStrided(inputs[n.operand]!, outer, st.slice(0, -1))));
    } else if (n.k === "const") vals.push(val(n.dtype, [], [n.value]));
    else if (n.k === "op") vals.push(applyOp(n.op, n.args.map((a) => vals[a]!), n.dtype, full));
    else if (n.k === "reduce") {
      const x = vals[n.arg]!, out = val(n.dtype, perPart);
      const along = x.type.dims.some((d) => d.name === "c"), rowed = x.type.dims.some((d) => d.name === "r");
      for (let r = 0; r < rows; r++)
        for (let p = 0; p < parts; p++) {
          let acc = n.fn === "sum" ? 0 : -Infinity;
          for (let c = p * chunk; c < Math.min(ncol, (p + 1) * chunk); c++) {
            const v = x.t.data[(rowed ? r * (along ? ncol : 1) : 0) + (along ? c : 0)]!;
            acc = n.fn === "sum" ? acc + v : v > acc || v !== v ? v : acc;
          }
          out.t.data[r * parts + p] = Math.fround(acc);
        }
      roundData(n.dtype, out.t.data);
      vals.push(out);
    } else {
      const x = vals[n.arg]!, idx = vals[n.index]!, out = val(n.dtype, perRow);
      const along = x.type.dims.some((d) => d.name === "c"), rowed = x.type.dims.some((d) => d.name === "r");
      for (let r = 0; r < rows; r++) {
        const i = idx.t.data[idx.type.dims.length ? r : 0]!;
        out.t.data[r] = i === -1 ? 0 : i < 0 || i >= ncol ? NaN : x.t.data[(rowed ? r * (along ? ncol : 1) : 0) + (along ? i : 0)]!;
      }
      vals.push(out);
    }
  }

  // a quantize epilogue: its value over the whole space, quantized in 1x128 tiles along the innermost axis
  const q = spec.quant && (() => {
    const v = vals[spec.quant!.node]!, names = full.map(([nm]) => nm), flat = new Float32Array(numel(g.sizes));
    const vStr = names.map((nm) => {
      const i = v.type.dims.findIndex((d) => d.name === nm);
      return i < 0 ? 0 : v.type.dims.slice(i + 1).reduce((p, d) => p * d.size, 1);
    });
    forEachStrided(g.sizes, [vStr], (o, offs) => (flat[o] = v.t.data[offs[0]!]!));
    return quantizeValues(flat, g.sizes, g.sizes.map((_, i) => i === g.sizes.length - 1));
  })();

  return spec.results.map((res, j) => {
    const slot = k.outputs[j]!;
    const out = allocLocal(res.dtype, plan.values[slot]!.shapes[rank]!);
    const st = g.strides[spec.operands.length + j]!;
    if (q && (j === spec.quant!.q || j === spec.quant!.scales)) {
      const [data, shape] = j === spec.quant!.q ? [q.q, g.sizes] : [q.scales, q.scaleShape];
      forEachStrided(shape, [st], (o, offs) => (out.data[offs[0]!] = data[o]!));
      return out;
    }
    const covers = !row || res.axes[res.axes.length - 1] !== "none";
    const shape = covers ? sizes : g.sizes.slice(0, -1);
    const v = vals[res.node]!;
    // the node may lack some of the result's dims (a broadcast value): index it by the dims it has
    const flatDims = covers ? full : perPart;
    const names = flatDims.map(([nm]) => nm);
    const vStr = names.map((nm) => {
      const i = v.type.dims.findIndex((d) => d.name === nm);
      return i < 0 ? 0 : v.type.dims.slice(i + 1).reduce((p, d) => p * d.size, 1);
    });
    const pos = new Array<number>(numel(shape));
    forEachStrided(flatDims.map(([, s]) => s), [vStr], (o, offs) => (pos[o] = offs[0]!));
    forEachStrided(shape, [covers ? drop(st) : st.slice(0, -1)], (o, offs) => (out.data[offs[0]!] = v.t.data[pos[o]!]!));
    return out;
  });
}
