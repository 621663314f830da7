// Reduce family: sum/mean/max over named dims, and row reductions that need a whole dim (softmax,
// log-softmax, rmsnorm). Reducing over a sharded dim yields a Partial; row reductions over a sharded
// dim are errors (they are not linear).
import type { Attrs, Placement, TensorType } from "../ir/types.ts";
import type { LocalTensor } from "../ir/local.ts";
import { ShapeError, ShardingError } from "../errors.ts";
import { isPartial, shardDim } from "../ir/placement.ts";
import { msgNonlinear, msgWholeDim } from "../messages.ts";
import { defineOps, type OpDef, type ShardCtx } from "./registry.ts";
import { findDim, needDim, needFloat, noFp8, wholeDimRule } from "./rules.ts";
import { newOut, permuteTo, roundData } from "./cpu-util.ts";
import type { GradRule } from "../autodiff/types.ts";

export const dimsAttr = (attrs: Attrs): string[] => {
  const d = attrs.dims;
  if (!Array.isArray(d) || d.length === 0 || !d.every((x) => typeof x === "string")) throw new ShapeError(`expected attrs.dims to be a non-empty list of dim names, got ${JSON.stringify(d)}`);
  return d as string[];
};

/** Moves the reduced dims last, so each output element reduces one contiguous row. */
function rows(x: LocalTensor, t: TensorType, reduced: string[]): { data: LocalTensor["data"]; outer: number; inner: number } {
  const keep = t.dims.map((d) => d.name).filter((n) => !reduced.includes(n));
  const p = permuteTo(x, t, [...keep, ...reduced]);
  const inner = reduced.reduce((a, n) => a * x.shape[t.dims.findIndex((d) => d.name === n)]!, 1);
  return { data: p.data, outer: inner === 0 ? 0 : p.data.length / inner, inner };
}

const REDUCERS = {
  sum: { partial: "P(sum)" as Placement, init: 0, step: (acc: number, v: number) => acc + v },
  mean: { partial: "P(sum)" as Placement, init: 0, step: (acc: number, v: number) => acc + v },
  max: { partial: "P(max)" as Placement, init: -Infinity, step: (acc: number, v: number) => (v > acc || v !== v ? v : acc) },
};

function reduceRule(name: keyof typeof REDUCERS) {
  return ([p]: Placement[], ctx: ShardCtx): Placement[] => {
    const r = REDUCERS[name];
    const dims = dimsAttr(ctx.attrs);
    if (isPartial(p!)) {
      if (p === r.partial) return [p];
      throw new ShardingError(msgNonlinear(name, ctx.axis, p!));
    }
    const d = shardDim(p!);
    if (d !== undefined && dims.includes(d)) return [r.partial];
    return [p!];
  };
}

const reductions: OpDef[] = (Object.keys(REDUCERS) as (keyof typeof REDUCERS)[]).map((name) => ({
  name,
  family: "reduce",
  args: ["x"],
  shape: ([x], attrs) => {
    noFp8(name, x!);
    const dims = dimsAttr(attrs);
    for (const d of dims) needDim(name, x!, d);
    if (name === "mean") needFloat(name, x!);
    return [{ dims: x!.dims.filter((d) => !dims.includes(d.name)), dtype: x!.dtype }];
  },
  shard: reduceRule(name),
  cpu: ([x], attrs, ctx) => {
    const r = REDUCERS[name];
    const dims = dimsAttr(attrs);
    const { data, outer, inner } = rows(x!, ctx.inTypes[0]!, dims);
    const out = newOut(ctx.outTypes[0]!.dtype, ctx.outShapes[0]!);
    // mean divides the local sum by the GLOBAL count, so the Partial<sum> of the pieces is the mean
    const count = dims.reduce((a, n) => a * findDim(ctx.inTypes[0]!, n)!.size, 1);
    for (let o = 0; o < outer; o++) {
      let acc = r.init;
      for (let i = o * inner, e = i + inner; i < e; i++) acc = r.step(acc, data[i]!);
      out.data[o] = name === "mean" ? acc / count : acc;
    }
    roundData(out.dtype, out.data);
    return [out];
  },
  grad: ({ b, x, y, gy, inTypes, attrs }) => {
    const t = inTypes[0]!;
    if (t.dtype === "i32") return [null];
    const g = b.expandTo(gy[0]!, t);
    if (name === "sum") return [g];
    if (name === "mean") {
      const count = dimsAttr(attrs).reduce((a, n) => a * findDim(t, n)!.size, 1);
      return [b.div(g, b.scalar(count, t.dtype))];
    }
    // max: the gradient is shared by the entries equal to the maximum
    const mask = b.op("eq", [x[0]!, y[0]!]);
    const ties = b.expandTo(b.op("sum", [mask], { dims: dimsAttr(attrs) }), t);
    return [b.div(b.mul(g, mask), ties)];
  },
}));

function rowOp(name: string, f: (row: Float64Array, n: number) => void, grad: GradRule): OpDef {
  return {
    name,
    family: "reduce",
    args: ["x"],
    shape: ([x], attrs) => {
      needFloat(name, x!);
      needDim(name, x!, String(attrs.dim));
      return [{ dims: x!.dims, dtype: x!.dtype }];
    },
    shard: wholeDimRule("dim"),
    cpu: ([x], attrs, ctx) => {
      const t = ctx.inTypes[0]!, dim = String(attrs.dim);
      const names = t.dims.map((d) => d.name);
      const order = [...names.filter((n) => n !== dim), dim];
      const { data, outer, inner } = rows(x!, t, [dim]);
      const tmp = newOut(x!.dtype, order.map((n) => x!.shape[names.indexOf(n)]!));
      const row = new Float64Array(inner);
      for (let o = 0; o < outer; o++) {
        for (let i = 0; i < inner; i++) row[i] = data[o * inner + i]!;
        f(row, inner);
        for (let i = 0; i < inner; i++) tmp.data[o * inner + i] = row[i]!;
      }
      roundData(tmp.dtype, tmp.data);
      const back = permuteTo(tmp, { ...t, dims: order.map((n) => t.dims[names.indexOf(n)]!) }, names);
      return [back];
    },
    grad,
  };
}

function softmaxRow(row: Float64Array, n: number, log: boolean): void {
  let m = -Infinity;
  for (let i = 0; i < n; i++) if (row[i]! > m) m = row[i]!;
  let s = 0;
  for (let i = 0; i < n; i++) s += Math.exp(row[i]! - m);
  if (log) {
    const ls = Math.log(s) + m;
    for (let i = 0; i < n; i++) row[i] = row[i]! - ls;
  } else for (let i = 0; i < n; i++) row[i] = Math.exp(row[i]! - m) / s;
}

const rmsnorm: OpDef = {
  name: "rmsnorm",
  family: "reduce",
  args: ["x", "weight"],
  shape: ([x, w], attrs) => {
    const dim = String(attrs.dim);
    needFloat("rmsnorm", x!);
    const d = needDim("rmsnorm", x!, dim);
    if (w!.dims.length !== 1 || w!.dims[0]!.name !== dim || w!.dims[0]!.size !== d.size)
      throw new ShapeError(`rmsnorm() weight must have exactly the dim '${dim}' of size ${d.size}, got [${w!.dims.map((e) => `${e.name}:${e.size}`).join(", ")}]`);
    if (w!.dtype !== x!.dtype) throw new ShapeError(`rmsnorm() weight is ${w!.dtype} but x is ${x!.dtype}; cast(weight, "${x!.dtype}")`);
    return [{ dims: x!.dims, dtype: x!.dtype }];
  },
  shard: ([px, pw], ctx) => {
    const dim = String(ctx.attrs.dim);
    for (const p of [px!, pw!]) {
      if (isPartial(p)) throw new ShardingError(msgNonlinear("rmsnorm", ctx.axis, p));
      if (shardDim(p) === dim) throw new ShardingError(msgWholeDim("rmsnorm", ctx.axis, dim));
    }
    return [px!];
  },
  cpu: ([x, w], attrs, ctx) => {
    const t = ctx.inTypes[0]!, dim = String(attrs.dim), eps = Number(attrs.eps ?? 1e-6);
    const names = t.dims.map((d) => d.name);
    const order = [...names.filter((n) => n !== dim), dim];
    const { data, outer, inner } = rows(x!, t, [dim]);
    const tmp = newOut(x!.dtype, order.map((n) => x!.shape[names.indexOf(n)]!));
    for (let o = 0; o < outer; o++) {
      let ss = 0;
      for (let i = 0; i < inner; i++) ss += data[o * inner + i]! ** 2;
      const r = 1 / Math.sqrt(ss / inner + eps);
      for (let i = 0; i < inner; i++) tmp.data[o * inner + i] = data[o * inner + i]! * r * w!.data[i]!;
    }
    roundData(tmp.dtype, tmp.data);
    return [permuteTo(tmp, { ...t, dims: order.map((n) => t.dims[names.indexOf(n)]!) }, names)];
  },
  // y = x r w, r = rsqrt(mean(x^2) + eps): gw = sum(gy x r) over the other dims,
  // gx = r (gy w - x r^2 mean(gy w x))
  grad: ({ b, x, gy, attrs, inTypes }) => {
    const [tx, tw] = inTypes as [TensorType, TensorType];
    const dim = String(attrs.dim), n = findDim(tx, dim)!.size, eps = Number(attrs.eps ?? 1e-6);
    const xx = x[0]!, w = x[1]!, g = gy[0]!;
    const ms = b.div(b.op("sum", [b.mul(xx, xx)], { dims: [dim] }), b.scalar(n, tx.dtype));
    const r = b.expandTo(b.op("rsqrt", [b.add(ms, b.scalar(eps, tx.dtype))]), tx);
    const gw = b.sumTo(b.mul(b.mul(g, xx), r), tw);
    const gwx = b.mul(g, w);
    const m = b.expandTo(b.div(b.op("sum", [b.mul(gwx, xx)], { dims: [dim] }), b.scalar(n, tx.dtype)), tx);
    const gx = b.mul(r, b.sub(gwx, b.mul(b.mul(xx, b.mul(r, r)), m)));
    return [gx, gw];
  },
};

defineOps([
  ...reductions,
  // softmax: gx = y (gy - sum(gy y))
  rowOp("softmax", (r, n) => softmaxRow(r, n, false), ({ b, y, gy, attrs, inTypes }) => {
    const dot = b.op("sum", [b.mul(gy[0]!, y[0]!)], { dims: [String(attrs.dim)] });
    return [b.mul(y[0]!, b.sub(gy[0]!, b.expandTo(dot, inTypes[0]!)))];
  }),
  // log-softmax: gx = gy - exp(y) sum(gy)
  rowOp("log_softmax", (r, n) => softmaxRow(r, n, true), ({ b, y, gy, attrs, inTypes }) => {
    const s = b.op("sum", [gy[0]!], { dims: [String(attrs.dim)] });
    return [b.sub(gy[0]!, b.mul(b.op("exp", [y[0]!]), b.expandTo(s, inTypes[0]!)))];
  }),
  rmsnorm,
]);
