// Elementwise family: unary and binary maps with broadcasting by dim name, `where` and `cast`.
// Floating math runs in float64 and is rounded to float32, then to the output dtype, as a GPU
// computes in f32 and stores in the tensor's dtype.
import type { Attrs, DType, Placement, TensorType } from "../ir/types.ts";
import type { LocalTensor } from "../ir/local.ts";
import { DTYPES, isFp8 } from "../ir/types.ts";
import { DTypeError, ShardingError } from "../errors.ts";
import { isPartial, isShard, shardDim } from "../ir/placement.ts";
import { msgAgree, msgNeedsDType, msgNonlinear, msgReduceFirst, msgTwoShards } from "../messages.ts";
import { defineOps, type OpDef, type ShardCtx } from "./registry.ts";
import { noFp8, sameDType, unionDims } from "./rules.ts";
import { alignStrides, forEachStrided, newOut, roundData } from "./cpu-util.ts";
import { erf } from "../numeric/special.ts";
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

type F1 = (x: number) => number;
type F2 = (a: number, b: number) => number;

const sigmoid: F1 = (x) => 1 / (1 + Math.exp(-x));
const SQRT_2PI = Math.sqrt(2 * Math.PI);
type G1 = (b: GradOps, x: ValueRef, y: ValueRef, gy: ValueRef) => ValueRef;
// noGrad: the op passes no gradient on purpose (masks, derivatives, stop_gradient)
const UNARY: Record<string, { f: F1; linear?: boolean; int?: F1; grad?: G1; noGrad?: true }> = {
  abs: { f: Math.abs, int: Math.abs, grad: (b, x, _y, g) => b.mul(g, b.op("sign", [x])) },
  exp: { f: Math.exp, grad: (b, _x, y, g) => b.mul(g, y) },
  gelu: { f: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)), grad: (b, x, _y, g) => b.mul(g, b.op("gelu_deriv", [x])) },
  // d/dx gelu(x) = Phi(x) + x phi(x): used by gelu's gradient rule
  gelu_deriv: { f: (x) => 0.5 * (1 + erf(x / Math.SQRT2)) + (x * Math.exp(-0.5 * x * x)) / SQRT_2PI, noGrad: true },
  log: { f: Math.log, grad: (b, x, _y, g) => b.div(g, x) },
  neg: { f: (x) => -x, linear: true, int: (x) => -x, grad: (b, _x, _y, g) => b.op("neg", [g]) },
  relu: { f: (x) => (x > 0 ? x : 0), int: (x) => (x > 0 ? x : 0), grad: (b, x, _y, g) => b.mul(g, b.op("gt", [x, b.scalar(0, b.type(x).dtype)])) },
  rsqrt: { f: (x) => 1 / Math.sqrt(x), grad: (b, _x, y, g) => b.mul(g, b.mul(b.scalar(-0.5, b.type(y).dtype), b.mul(y, b.mul(y, y)))) },
  sigmoid: { f: sigmoid, grad: (b, _x, y, g) => b.mul(g, b.mul(y, b.sub(b.scalar(1, b.type(y).dtype), y))) },
  sign: { f: (x) => (x > 0 ? 1 : x < 0 ? -1 : 0), int: (x) => (x > 0 ? 1 : x < 0 ? -1 : 0), noGrad: true },
  silu: {
    f: (x) => x * sigmoid(x),
    // silu'(x) = s (1 + x (1 - s)), s = sigmoid(x)
    grad: (b, x, _y, g) => {
      const s = b.op("sigmoid", [x]), one = b.scalar(1, b.type(x).dtype);
      return b.mul(g, b.mul(s, b.add(one, b.mul(x, b.sub(one, s)))));
    },
  },
  // identity whose gradient is zero (e.g. the max subtracted for a stable log-sum-exp)
  stop_gradient: { f: (x) => x, linear: true, int: (x) => x, noGrad: true },
  sqrt: { f: Math.sqrt, grad: (b, _x, y, g) => b.div(b.mul(g, b.scalar(0.5, b.type(y).dtype)), y) },
};

type G2 = (b: GradOps, a: ValueRef, bb: ValueRef, y: ValueRef, gy: ValueRef) => [ValueRef | null, ValueRef | null];
const BINARY: Record<string, { f: F2; lin: Linearity; int: F2; grad?: G2; noGrad?: true }> = {
  add: { f: (a, b) => a + b, lin: "add", int: (a, b) => (a + b) | 0, grad: (o, _a, _b, _y, g) => [g, g] },
  // comparisons give 1 or 0 in the operands' dtype (masks for where() and gradients)
  eq: { f: (a, b) => (a === b ? 1 : 0), lin: "add", int: (a, b) => (a === b ? 1 : 0), noGrad: true },
  ge: { f: (a, b) => (a >= b ? 1 : 0), lin: "add", int: (a, b) => (a >= b ? 1 : 0), noGrad: true },
  gt: { f: (a, b) => (a > b ? 1 : 0), lin: "add", int: (a, b) => (a > b ? 1 : 0), noGrad: true },
  // integer division truncates toward zero; division by zero gives 0 (as a guard, not a value to rely on)
  div: { f: (a, b) => a / b, lin: "div", int: (a, b) => (b === 0 ? 0 : Math.trunc(a / b) | 0), grad: (o, _a, b, y, g) => [o.div(g, b), o.op("neg", [o.div(o.mul(g, y), b)])] },
  maximum: { f: (a, b) => (a !== a || b !== b ? NaN : Math.max(a, b)), lin: "add", int: Math.max, grad: (o, a, b, _y, g) => pick(o, o.op("ge", [a, b]), g) },
  minimum: { f: (a, b) => (a !== a || b !== b ? NaN : Math.min(a, b)), lin: "add", int: Math.min, grad: (o, a, b, _y, g) => pick(o, o.op("ge", [b, a]), g) },
  mul: { f: (a, b) => a * b, lin: "mul", int: (a, b) => Math.imul(a, b), grad: (o, a, b, _y, g) => [o.mul(g, b), o.mul(g, a)] },
  sub: { f: (a, b) => a - b, lin: "add", int: (a, b) => (a - b) | 0, grad: (o, _a, _b, _y, g) => [g, o.op("neg", [g])] },
};
/** Routes g to a where mask is 1, to b elsewhere. */
function pick(o: GradOps, mask: ValueRef, g: ValueRef): [ValueRef, ValueRef] {
  const t = o.type(g);
  return [o.mul(g, mask), o.mul(g, o.sub(o.scalar(1, t.dtype), mask))];
}

// maximum/minimum of two Partial<sum> is not the partial of anything: give them their own linearity
const NONLINEAR_BINARY = new Set(["eq", "ge", "gt", "maximum", "minimum"]);

function mapN(inputs: LocalTensor[], inTypes: TensorType[], outType: TensorType, outShape: number[], f: (...v: number[]) => number): LocalTensor {
  const out = newOut(outType.dtype, outShape);
  const names = outType.dims.map((d) => d.name);
  const same = inputs.every((t, i) => t.data.length === out.data.length && inTypes[i]!.dims.every((d, j) => d.name === names[j]));
  const src = inputs.map((t) => t.data), dst = out.data;
  if (same && inputs.length === 1) for (let i = 0; i < dst.length; i++) dst[i] = f(src[0]![i]!);
  else if (same && inputs.length === 2) for (let i = 0; i < dst.length; i++) dst[i] = f(src[0]![i]!, src[1]![i]!);
  else {
    const strides = inputs.map((t, i) => alignStrides(inTypes[i]!, t.shape, names));
    const vals = new Array<number>(inputs.length);
    forEachStrided(outShape, strides, (o, offs) => {
      for (let k = 0; k < vals.length; k++) vals[k] = src[k]![offs[k]!]!;
      dst[o] = f(...vals);
    });
  }
  roundData(outType.dtype, dst);
  return out;
}

const unaryDefs: OpDef[] = Object.entries(UNARY).map(([name, u]) => ({
  name,
  family: "elementwise",
  args: ["x"],
  shape: ([x]) => {
    noFp8(name, x!);
    if (x!.dtype === "i32" && !u.int) throw new DTypeError(msgNeedsDType(name, "i32", "f32 or bf16"));
    return [{ dims: x!.dims, dtype: x!.dtype }];
  },
  shard: ([p], ctx) => [unaryRule(name, !!u.linear, p!, ctx.axis)],
  cpu: ([x], _a, ctx) => [mapN([x!], ctx.inTypes, ctx.outTypes[0]!, ctx.outShapes[0]!, x!.dtype === "i32" ? u.int! : u.f)],
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
  cpu: (xs, _a, ctx) => [mapN(xs, ctx.inTypes, ctx.outTypes[0]!, ctx.outShapes[0]!, xs[0]!.dtype === "i32" ? b.int : b.f)],
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
  cpu: (xs, _a, ctx) => [mapN(xs, ctx.inTypes, ctx.outTypes[0]!, ctx.outShapes[0]!, (c, a, b) => (c !== 0 ? a! : b!))],
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

export const isLinearUnary = (op: string) => !!UNARY[op]?.linear;
export const UNARY_OPS = Object.keys(UNARY);
export const BINARY_OPS = Object.keys(BINARY);
export const fp8Allowed = (t: DType) => !isFp8(t);

defineOps([...unaryDefs, ...binaryDefs, where, cast]);
