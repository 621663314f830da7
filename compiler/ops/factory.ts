// Factory family: nodes with no inputs whose placement is given, not derived. Each rank produces
// only its own piece, and every value depends on its GLOBAL position only, so the same program
// gives the same numbers on any mesh.
import type { Attrs, Dim, DType, Placement, TensorType } from "../ir/types.ts";
import type { Box, LocalData } from "../ir/local.ts";
import { DTYPES, numel } from "../ir/types.ts";
import { DTypeError, ShapeError, ShardingError, UsageError } from "../errors.ts";
import { isPlacement, shardDim } from "../ir/placement.ts";
import { msgShardNoDim } from "../messages.ts";
import { defineOps, type OpDef, type CpuCtx } from "./registry.ts";
import { newOut, roundData } from "./cpu-util.ts";
import { stridesOf } from "../ir/local.ts";
import { fillRandom } from "../numeric/index.ts";

export function factoryDims(attrs: Attrs): Dim[] {
  const dims = attrs.dims as [string, number][];
  if (!Array.isArray(dims)) throw new ShapeError(`expected attrs.dims as [name, size] pairs, got ${JSON.stringify(dims)}`);
  const seen = new Set<string>();
  return dims.map(([name, size]) => {
    if (typeof name !== "string" || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new ShapeError(`dim name ${JSON.stringify(name)} must be an identifier`);
    if (seen.has(name)) throw new ShapeError(`dim '${name}' appears twice; dim names must be unique`);
    seen.add(name);
    if (!Number.isInteger(size) || size < 0) throw new ShapeError(`dim '${name}' has size ${size}; sizes must be non-negative integers`);
    return { name, size };
  });
}

function factoryShape(attrs: Attrs): { dims: Dim[]; dtype: DType }[] {
  const dtype = attrs.dtype as DType;
  if (!DTYPES.includes(dtype)) throw new DTypeError(`unknown dtype ${JSON.stringify(dtype)}; use one of ${DTYPES.join(", ")}`);
  return [{ dims: factoryDims(attrs), dtype }];
}

function factoryShard(_p: Placement[], ctx: { attrs: Attrs; axisIndex: number; axis: string; outputs: { dims: Dim[] }[] }): Placement[] {
  const p = (ctx.attrs.placements as Placement[])[ctx.axisIndex];
  if (!isPlacement(p)) throw new ShardingError(`mesh axis '${ctx.axis}': ${JSON.stringify(p)} is not a placement; use Replicate, Shard("dim"), Partial("sum") or Partial("max")`);
  const d = shardDim(p);
  if (d !== undefined && !ctx.outputs[0]!.dims.some((x) => x.name === d)) throw new ShardingError(msgShardNoDim(ctx.axis, d));
  return [p];
}

/** True on the one rank (per Partial<sum> axis group) that holds the value; the others hold zeros. */
function holdsPartialSum(ctx: CpuCtx): boolean {
  return ctx.outTypes[0]!.placements.every((p, a) => p !== "P(sum)" || ctx.coords[a] === 0);
}

/** Copies the box [offset, offset+shape) of a row-major global array. */
export function sliceBox(src: LocalData, global: number[], box: Box, shape: number[], dst: LocalData): void {
  const gs = stridesOf(global), n = numel(shape);
  if (n === 0) return;
  const nd = shape.length;
  const inner = nd ? shape[nd - 1]! : 1;
  const idx = new Array<number>(nd).fill(0);
  for (let o = 0; o < n; o += inner) {
    let g = 0;
    for (let d = 0; d < nd; d++) g += (box.offset[d]! + idx[d]!) * gs[d]!;
    dst.set(src.subarray(g, g + inner), o);
    for (let d = nd - 2; d >= 0; d--) {
      if (++idx[d]! < shape[d]!) break;
      idx[d] = 0;
    }
  }
}

function def(name: string, cpu: OpDef["cpu"], extraShape?: (t: { dims: Dim[]; dtype: DType }, attrs: Attrs) => void): OpDef {
  return {
    name,
    family: "factory",
    args: [],
    shape: (_in, attrs) => {
      const s = factoryShape(attrs);
      extraShape?.(s[0]!, attrs);
      return s;
    },
    shard: factoryShard,
    cpu,
  };
}

const constant = def("constant", (_i, _a, ctx) => {
  const t = ctx.outTypes[0]!, out = newOut(t.dtype, ctx.outShapes[0]!);
  if (holdsPartialSum(ctx)) sliceBox(ctx.payload as LocalData, t.dims.map((d) => d.size), ctx.outBoxes[0]!, out.shape, out.data);
  return [out];
});

const fromLocal = def("from_local", (_i, _a, ctx) => {
  const data = (ctx.payload as LocalData[])[ctx.rank]!;
  const out = newOut(ctx.outTypes[0]!.dtype, ctx.outShapes[0]!);
  out.data.set(data);
  roundData(out.dtype, out.data);
  return [out];
});

const random = def(
  "random",
  (_i, attrs, ctx) => {
    const t: TensorType = ctx.outTypes[0]!, out = newOut(t.dtype, ctx.outShapes[0]!);
    if (holdsPartialSum(ctx)) {
      const opts = { mean: Number(attrs.mean ?? 0), std: Number(attrs.std ?? 1), low: Number(attrs.low ?? 0), high: Number(attrs.high ?? 1) };
      fillRandom(attrs.dist as "normal" | "uniform", Number(attrs.seed), t.dims.map((d) => d.size), ctx.outBoxes[0]!.offset, out.shape, out.data as Float32Array, opts);
      roundData(t.dtype, out.data);
    }
    return [out];
  },
  (t, attrs) => {
    if (t.dtype === "i32") throw new DTypeError("random tensors are floating point; use f32 or bf16 and cast");
    if (attrs.dist !== "normal" && attrs.dist !== "uniform") throw new ShapeError(`unknown distribution ${JSON.stringify(attrs.dist)}`);
    if (!Number.isInteger(attrs.seed)) throw new ShapeError(`random seed must be an integer, got ${JSON.stringify(attrs.seed)}`);
  },
);

const full = def("full", (_i, attrs, ctx) => {
  const out = newOut(ctx.outTypes[0]!.dtype, ctx.outShapes[0]!);
  if (holdsPartialSum(ctx)) out.data.fill(Number(attrs.value));
  roundData(out.dtype, out.data);
  return [out];
});

/** Values count 0, 1, 2, ... along `dim` (the global index), constant along the others. */
const iota = def(
  "iota",
  (_i, attrs, ctx) => {
    const t = ctx.outTypes[0]!, shape = ctx.outShapes[0]!, out = newOut(t.dtype, shape);
    const di = t.dims.findIndex((d) => d.name === attrs.dim), st = stridesOf(shape), off = ctx.outBoxes[0]!.offset[di]!;
    if (holdsPartialSum(ctx)) for (let i = 0; i < out.data.length; i++) out.data[i] = off + (Math.floor(i / st[di]!) % shape[di]!);
    return [out];
  },
  (t, attrs) => {
    if (!t.dims.some((d) => d.name === attrs.dim)) throw new ShapeError(`iota() counts along '${String(attrs.dim)}' but the dims are [${t.dims.map((d) => d.name).join(", ")}]`);
  },
);

/** A value supplied at run time (parameters, optimizer state, a batch), one piece per rank. */
const input = def("input", (_i, attrs, ctx) => {
  const name = String(attrs.name);
  const piece = ctx.feeds?.get(name)?.[ctx.rank];
  if (!piece) throw new UsageError(`no value was fed for input '${name}'`);
  const want = ctx.outShapes[0]!;
  if (piece.dtype !== ctx.outTypes[0]!.dtype || piece.shape.join() !== want.join())
    throw new ShapeError(`input '${name}' on rank ${ctx.rank} must be ${ctx.outTypes[0]!.dtype}[${want.join(", ")}], got ${piece.dtype}[${piece.shape.join(", ")}]`);
  return [piece];
});

defineOps([constant, fromLocal, full, input, iota, random]);
