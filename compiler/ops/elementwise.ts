// Elementwise family: unary and binary maps with broadcasting by dim name, `where` and `cast`.
// Floating math runs in float64 and is rounded to float32, then to the output dtype, as a GPU
// computes in f32 and stores in the tensor's dtype.
import type { Attrs, DType, Placement, TensorType } from "../ir/types.ts";
import type { LocalTensor } from "../ir/local.ts";
import { DTYPES } from "../ir/types.ts";
import { DTypeError, ShardingError } from "../errors.ts";
import { isPartial, isShard, shardDim } from "../ir/placement.ts";
import { msgAgree, msgNeedsDType, msgNonlinear, msgReduceFirst, msgTwoShards } from "../messages.ts";
import { defineOps, type OpDef, type ShardCtx } from "./registry.ts";
import { noFp8, sameDType, unionDims } from "./rules.ts";
import { alignStrides, newOut, roundData } from "./cpu-util.ts";
import { elementwiseKernel } from "./cpu-kernels.ts";
import type { GradCtx, GradOps } from "../autodiff/types.ts";
import type { ValueRef } from "../ir/types.ts";

/** How an op treats a Partial<sum> input: add-like (sum of partials), mul-like (linear in one arg), div (linear in a). */
export type Linearity = "add" | "mul" | "div";

const hasDim = (t: TensorType, d: string) => t.dims.some((x) => x.name === d);

/** The one-axis placement rule for binary elementwise ops; mirrored by stdlib/types/elementwise.ts. */
export function binaryRule(op: string, lin: Linearity, pa: Placement, pb: Placement, ta: TensorType, tb: TensorType, ax: string): Placement {
  if (pa === pb) {
    if (pa === "P(sum)" && lin !== "add") throw new ShardingError(msgReduceFirst(op, ax, pa, pb, "b"));
    if (pa === "P(max)") throw new ShardingError(msgReduceFirst(op, ax, pa, pb, "a"));
    return pa;
  }
  if (isPartial(pa)) {
    if (pa === "P(sum)" && pb === "R" && lin !== "add") return pa;
    throw new ShardingError(msgReduceFirst(op, ax, pa, pb, "a"));
  }
  if (isPartial(pb)) {
    if (pb === "P(sum)" && pa === "R" && lin === "mul") return pb;
    throw new ShardingError(msgReduceFirst(op, ax, pa, pb, "b"));
  }
  if (isShard(pa) && pb === "R") {
    if (!hasDim(tb, shardDim(pa)!)) return pa;
    throw new ShardingError(msgAgree(op, ax, pa, pb, "b", pa));
  }
  if (pa === "R" && isShard(pb)) {
    if (!hasDim(ta, shardDim(pb)!)) return pb;
    throw new ShardingError(msgAgree(op, ax, pa, pb, "a", pb));
  }
  // two different shards
  if (hasDim(tb, shardDim(pa)!)) throw new ShardingError(msgAgree(op, ax, pa, pb, "b", pa));
  if (hasDim(ta, shardDim(pb)!)) throw new ShardingError(msgAgree(op, ax, pa, pb, "a", pb));
  throw new ShardingError(msgTwoShards(op, ax, pa, pb));
}

/** Unary rule: a linear op passes Partial<sum> through; anything else on a Partial is an error. */
export function unaryRule(op: string, linear: boolean, p: Placement, ax: string): Placement {
  if (p === "P(sum)" && linear) return p;
  if (isPartial(p)) throw new ShardingError(msgNonlinear(op, ax, p));
  return p;
}

// Each op is an expression over `a` (and `b`, `c`) compiled once into a loop (cpu-kernels.ts), so
// the CPU reference runs monomorphic code; `ie` is the i32 form where the op takes integers.
type G1 = (b: GradOps, x: ValueRef, y: ValueRef, gy: ValueRef) => ValueRef;
// noGrad: the op passes no gradient on purpose (masks, derivatives, stop_gradient)
const UNARY: Record<string, { e: string; linear?: boolean; ie?: string; grad?: G1; noGrad?: true }> = {
  abs: { e: "Math.abs(a)", ie: "Math.abs(a)", grad: (b, x, _y, g) => b.mul(g, b.op("sign", [x])) },
  exp: { e: "Math.exp(a)", grad: (b, _x, y, g) => b.mul(g, y) },
  gelu: { e: "0.5 * a * (1 + erf(a / Math.SQRT2))", grad: (b, x, _y, g) => b.mul(g, b.op("gelu_deriv", [x])) },
  // d/dx gelu(x) = Phi(x) + x phi(x): used by gelu's gradient rule
  gelu_deriv: {
    e: "0.5 * (1 + erf(a / Math.SQRT2)) + (a * Math.exp(-0.5 * a * a)) / SQRT_2PI",
    // gelu''(x) = phi(x) (2 - x^2), for second-order gradients
    grad: (b, x, _y, g) => {
      const t = b.type(x).dtype, xx = b.mul(x, x);
      const phi = b.mul(b.op("exp", [b.mul(xx, b.scalar(-0.5, t))]), b.scalar(1 / Math.sqrt(2 * Math.PI), t));
      return b.mul(g, b.mul(phi, b.sub(b.scalar(2, t), xx)));
    },
  },
  log: { e: "Math.log(a)", grad: (b, x, _y, g) => b.div(g, x) },
  neg: { e: "-a", linear: true, ie: "-a | 0", grad: (b, _x, _y, g) => b.op("neg", [g]) },
  relu: { e: "a > 0 ? a : 0", ie: "a > 0 ? a : 0", grad: (b, x, _y, g) => b.mul(g, b.op("gt", [x, b.scalar(0, b.type(x).dtype)])) },
  rsqrt: { e: "1 / Math.sqrt(a)", grad: (b, _x, y, g) => b.mul(g, b.mul(b.scalar(-0.5, b.type(y).dtype), b.mul(y, b.mul(y, y)))) },
  sigmoid: { e: "1 / (1 + Math.exp(-a))", grad: (b, _x, y, g) => b.mul(g, b.mul(y, b.sub(b.scalar(1, b.type(y).dtype), y))) },
  sign: { e: "a > 0 ? 1 : a < 0 ? -1 : 0", ie: "a > 0 ? 1 : a < 0 ? -1 : 0", noGrad: true },
  silu: {
    e: "a / (1 + Math.exp(-a))",
    // silu'(x) = s (1 + x (1 - s)), s = sigmoid(x)
    grad: (b, x, _y, g) => {
      const s = b.op("sigmoid", [x]), one = b.scalar(1, b.type(x).dtype);
      return b.mul(g, b.mul(s, b.add(one, b.mul(x, b.sub(one, s)))));
    },
  },
  // identity whose gradient is zero (e.g. the max subtracted for a stable log-sum-exp)
  stop_gradient: { e: "a", linear: true, ie: "a", noGrad: true },
  sqrt: { e: "Math.sqrt(a)", grad: (b, _x, y, g) => b.div(b.mul(g, b.scalar(0.5, b.type(y).dtype)), y) },
};

type G2 = (b: GradOps, a: ValueRef, bb: ValueRef, y: ValueRef, gy: ValueRef) => [ValueRef | null, ValueRef | null];
const BINARY: Record<string, { e: string; lin: Linearity; ie: string; grad?: G2; noGrad?: true }> = {
  add: { e: "a + b", lin: "add", ie: "(a + b) | 0", grad: (o, _a, _b, _y, g) => [g, g] },
  // comparisons give 1 or 0 in the operands' dtype (masks for where() and gradients)
  eq: { e: "a === b ? 1 : 0", lin: "add", ie: "a === b ? 1 : 0", noGrad: true },
  ge: { e: "a >= b ? 1 : 0", lin: "add", ie: "a >= b ? 1 : 0", noGrad: true },
  gt: { e: "a > b ? 1 : 0", lin: "add", ie: "a > b ? 1 : 0", noGrad: true },
  // integer division truncates toward zero; division by zero gives 0 (as a guard, not a value to rely on)
  div: { e: "a / b", lin: "div", ie: "b === 0 ? 0 : Math.trunc(a / b) | 0", grad: (o, _a, b, y, g) => [o.div(g, b), o.op("neg", [o.div(o.mul(g, y), b)])] },
  maximum: { e: "a !== a || b !== b ? NaN : a > b ? a : b", lin: "add", ie: "a > b ? a : b", grad: (o, a, b, _y, g) => pick(o, o.op("ge", [a, b]), g) },
  minimum: { e: "a !== a || b !== b ? NaN : a < b ? a : b", lin: "add", ie: "a < b ? a : b", grad: (o, a, b, _y, g) => pick(o, o.op("ge", [b, a]), g) },
  mul: { e: "a * b", lin: "mul", ie: "Math.imul(a, b)", grad: (o, a, b, _y, g) => [o.mul(g, b), o.mul(g, a)] },
  sub: { e: "a - b", lin: "add", ie: "(a - b) | 0", grad: (o, _a, _b, _y, g) => [g, o.op("neg", [g])] },
};
/** Routes g to a where mask is 1, to b elsewhere. */
function pick(o: GradOps, mask: ValueRef, g: ValueRef): [ValueRef, ValueRef] {
  const t = o.type(g);
  return [o.mul(g, mask), o.mul(g, o.sub(o.scalar(1, t.dtype), mask))];
}

// maximum/minimum of two Partial<sum> is not the partial of anything: give them their own linearity
const NONLINEAR_BINARY = new Set(["eq", "ge", "gt", "maximum", "minimum"]);

/** Applies an expression kernel over the inputs, broadcast by dim name into the output's layout. */
function mapN(name: string, expr: string, inputs: LocalTensor[], inTypes: TensorType[], outType: TensorType, outShape: number[]): LocalTensor {
  const out = newOut(outType.dtype, outShape);
  const names = outType.dims.map((d) => d.name);
  const strides = inputs.map((t, i) => alignStrides(inTypes[i]!, t.shape, names));
  elementwiseKernel(name, expr, inputs.length)(out.data, inputs.map((t) => t.data), outShape, strides);
  roundData(outType.dtype, out.data);
  return out;
}

const unaryDefs: OpDef[] = Object.entries(UNARY).map(([name, u]) => ({
  name,
  family: "elementwise",
  args: ["x"],
  shape: ([x]) => {
    noFp8(name, x!);
    if (x!.dtype === "i32" && !u.ie) throw new DTypeError(msgNeedsDType(name, "i32", "f32 or bf16"));
    return [{ dims: x!.dims, dtype: x!.dtype }];
  },
  shard: ([p], ctx) => [unaryRule(name, !!u.linear, p!, ctx.axis)],
  cpu: ([x], _a, ctx) => [x!.dtype === "i32" ? mapN(`${name}.i32`, u.ie!, [x!], ctx.inTypes, ctx.outTypes[0]!, ctx.outShapes[0]!) : mapN(name, u.e, [x!], ctx.inTypes, ctx.outTypes[0]!, ctx.outShapes[0]!)],
  ...(u.grad ? { grad: (c: GradCtx) => [u.grad!(c.b, c.x[0]!, c.y[0]!, c.gy[0]!)] } : u.noGrad ? { grad: () => [null] } : {}),
}));

const binaryDefs: OpDef[] = Object.entries(BINARY).map(([name, b]) => ({
  name,
  family: "elementwise",
  args: ["a", "b"],
  shape: ([a, b2]) => {
    noFp8(name, a!, b2!);
    return [{ dims: unionDims(name, a!.dims, b2!.dims), dtype: sameDType(name, a!, b2!) }];
  },
  shard: ([pa, pb], ctx: ShardCtx) => {
    if (NONLINEAR_BINARY.has(name)) {
      for (const p of [pa!, pb!]) if (isPartial(p)) throw new ShardingError(msgNonlinear(name, ctx.axis, p));
    }
    return [binaryRule(name, b.lin, pa!, pb!, ctx.inputs[0]!, ctx.inputs[1]!, ctx.axis)];
  },
  cpu: (xs, _a, ctx) => [xs[0]!.dtype === "i32" ? mapN(`${name}.i32`, b.ie, xs, ctx.inTypes, ctx.outTypes[0]!, ctx.outShapes[0]!) : mapN(name, b.e, xs, ctx.inTypes, ctx.outTypes[0]!, ctx.outShapes[0]!)],
  // gradients of broadcast operands are summed back over the dims they lack
  ...(b.grad ? { grad: (c: GradCtx) => b.grad!(c.b, c.x[0]!, c.x[1]!, c.y[0]!, c.gy[0]!).map((g, i) => (g ? c.b.sumTo(g, c.inTypes[i]!) : null)) } : b.noGrad ? { grad: () => [null, null] } : {}),
}));

const where: OpDef = {
  name: "where",
  family: "elementwise",
  args: ["cond", "a", "b"],
  shape: ([c, a, b]) => {
    noFp8("where", c!, a!, b!);
    return [{ dims: unionDims("where", c!.dims, a!.dims, b!.dims), dtype: sameDType("where", a!, b!) }];
  },
  shard: ([pc, pa, pb], ctx) => {
    // where(c, a, b) is linear in (a, b) jointly when the condition is whole on every rank
    if (isPartial(pc!)) throw new ShardingError(msgReduceFirst("where", ctx.axis, pc!, pa!, "cond"));
    const ab = binaryRule("where", "add", pa!, pb!, ctx.inputs[1]!, ctx.inputs[2]!, ctx.axis);
    if (isPartial(ab)) {
      if (pc === "R") return [ab];
      throw new ShardingError(msgReduceFirst("where", ctx.axis, ab, pc!, "a"));
    }
    const cab = { ...ctx.inputs[1]!, dims: unionDims("where", ctx.inputs[1]!.dims, ctx.inputs[2]!.dims) };
    return [binaryRule("where", "add", ab, pc!, cab, ctx.inputs[0]!, ctx.axis)];
  },
  cpu: (xs, _a, ctx) => [mapN("where", "a !== 0 ? b : c", xs, ctx.inTypes, ctx.outTypes[0]!, ctx.outShapes[0]!)],
  grad: ({ b, x, gy, inTypes }) => {
    const zero = b.scalar(0, b.type(gy[0]!).dtype);
    return [null, b.sumTo(b.op("where", [x[0]!, gy[0]!, zero]), inTypes[1]!), b.sumTo(b.op("where", [x[0]!, zero, gy[0]!]), inTypes[2]!)];
  },
};

const cast: OpDef = {
  name: "cast",
  family: "elementwise",
  args: ["x"],
  shape: ([x], attrs: Attrs) => {
    const to = attrs.dtype as DType;
    if (!DTYPES.includes(to)) throw new DTypeError(`cast() to unknown dtype ${JSON.stringify(to)}; use one of ${DTYPES.join(", ")}`);
    return [{ dims: x!.dims, dtype: to }];
  },
  // rounding is not linear, so a Partial may only pass through a cast that changes nothing
  shard: ([p], ctx) => [unaryRule("cast", ctx.inputs[0]!.dtype === ctx.attrs.dtype, p!, ctx.axis)],
  cpu: ([x], attrs, ctx) => {
    const to = attrs.dtype as DType;
    const out = newOut(to, ctx.outShapes[0]!);
    const src = x!.data, dst = out.data;
    if (to === "i32") for (let i = 0; i < src.length; i++) dst[i] = Number.isFinite(src[i]!) ? Math.trunc(src[i]!) : 0;
    else {
      for (let i = 0; i < src.length; i++) dst[i] = src[i]!;
      // FP8 from bf16/f32 rounds directly from the float32 value, like cvt.rn.satfinite
      roundData(to, dst);
    }
    return [out];
  },
  // straight through: the gradient is cast back to the input's dtype
  grad: ({ b, gy, inTypes, outTypes }) => [inTypes[0]!.dtype === "i32" || outTypes[0]!.dtype === "i32" ? null : b.op("cast", [gy[0]!], { dtype: inTypes[0]!.dtype })],
};


defineOps([...unaryDefs, ...binaryDefs, where, cast]);
