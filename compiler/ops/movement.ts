// Movement family: rename, flatten/unflatten, concat/split. Named dims make transposes unnecessary;
// these change which dims exist. Moving data across a sharded dim would need communication, so the
// dims they restructure must be whole on every rank.
import type { Dim, Placement, TensorType } from "../ir/types.ts";
import { ShapeError, ShardingError } from "../errors.ts";
import { shardDim } from "../ir/placement.ts";
import { msgAgree, msgWholeDim } from "../messages.ts";
import { defineOps, type OpDef, type ShardCtx } from "./registry.ts";
import { attrInt, attrStr, checkSizes, findDim, needDim, needNewDim } from "./rules.ts";
import { newOut, permuteTo } from "./cpu-util.ts";
import { numel } from "../ir/types.ts";

const strList = (v: unknown, what: string): string[] => {
  if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) throw new ShapeError(`expected ${what} to be a list of dim names, got ${JSON.stringify(v)}`);
  return v as string[];
};

/** Every input must agree on the axis and must not shard any of `whole`; Partials pass (all ops here are linear). */
function passThrough(op: string, whole: (ctx: ShardCtx) => string[]) {
  return (ps: Placement[], ctx: ShardCtx): Placement[] => {
    const w = whole(ctx);
    for (let i = 0; i < ps.length; i++) {
      const d = shardDim(ps[i]!);
      if (d !== undefined && w.includes(d)) throw new ShardingError(msgWholeDim(op, ctx.axis, d));
      if (ps[i] !== ps[0]) throw new ShardingError(msgAgree(op, ctx.axis, ps[0]!, ps[i]!, `xs[${i}]`, ps[0]!));
    }
    const p = ps[0]!;
    return ctx.outputs.map(() => p);
  };
}

const rename: OpDef = {
  name: "rename",
  family: "movement",
  args: ["x"],
  shape: ([x], attrs) => {
    const from = attrStr(attrs.from, "rename source"), to = attrStr(attrs.to, "rename target");
    needDim("rename", x!, from);
    if (to !== from) needNewDim("rename", x!, to);
    return [{ dims: x!.dims.map((d) => (d.name === from ? { ...d, name: to } : d)), dtype: x!.dtype }];
  },
  shard: ([p], ctx) => [shardDim(p!) === ctx.attrs.from ? `S(${String(ctx.attrs.to)})` : p!],
  cpu: ([x]) => [x!],
  grad: ({ b, gy, attrs }) => [b.op("rename", [gy[0]!], { from: String(attrs.to), to: String(attrs.from) })],
};

const flatten: OpDef = {
  name: "flatten",
  family: "movement",
  args: ["x"],
  shape: ([x], attrs) => {
    const dims = strList(attrs.dims, "flatten dims"), to = attrStr(attrs.to, "flatten target");
    const ds = dims.map((d) => needDim("flatten", x!, d));
    if (new Set(dims).size !== dims.length) throw new ShapeError(`flatten() names a dim twice: [${dims.join(", ")}]`);
    if (!dims.includes(to)) needNewDim("flatten", x!, to);
    // the merged dim (row-major over `dims` in the order given) takes the place of the first one
    const merged: Dim = { name: to, size: numel(ds.map((d) => d.size)) };
    return [{ dims: x!.dims.filter((d) => d.name === dims[0] || !dims.includes(d.name)).map((d) => (d.name === dims[0] ? merged : d)), dtype: x!.dtype }];
  },
  shard: passThrough("flatten", (ctx) => strList(ctx.attrs.dims, "dims")),
  cpu: ([x], attrs, ctx) => {
    const t = ctx.inTypes[0]!, dims = attrs.dims as string[];
    const order = t.dims.flatMap((d) => (d.name === dims[0] ? dims : dims.includes(d.name) ? [] : [d.name]));
    return [{ ...permuteTo(x!, t, order), shape: ctx.outShapes[0]! }];
  },
  grad: ({ b, gy, attrs, inTypes }) => {
    const dims = attrs.dims as string[], t = inTypes[0]!;
    return [b.op("unflatten", [gy[0]!], { dim: String(attrs.to), into: Object.fromEntries(dims.map((n) => [n, findDim(t, n)!.size])) })];
  },
};

const unflatten: OpDef = {
  name: "unflatten",
  family: "movement",
  args: ["x"],
  shape: ([x], attrs) => {
    const dim = attrStr(attrs.dim, "unflatten dim");
    const into = attrs.into as Record<string, number>;
    const d = needDim("unflatten", x!, dim);
    const parts = Object.entries(into ?? {});
    if (parts.length === 0 || numel(parts.map(([, n]) => n)) !== d.size)
      throw new ShapeError(`unflatten() sizes ${JSON.stringify(into)} must multiply to '${dim}''s size ${d.size}`);
    for (const [n] of parts) if (n !== dim) needNewDim("unflatten", x!, n);
    const i = x!.dims.indexOf(d);
    return [{ dims: [...x!.dims.slice(0, i), ...parts.map(([name, size]) => ({ name, size: attrInt(size, name) })), ...x!.dims.slice(i + 1)], dtype: x!.dtype }];
  },
  shard: passThrough("unflatten", (ctx) => [String(ctx.attrs.dim)]),
  cpu: ([x], _a, ctx) => [{ ...x!, shape: ctx.outShapes[0]! }],
  grad: ({ b, gy, attrs }) => [b.op("flatten", [gy[0]!], { dims: Object.keys(attrs.into as object), to: String(attrs.dim) })],
};

/** Splits the local tensor's `dim` into consecutive parts (or joins parts back), via a [outer, dim, inner] view. */
function view3(t: TensorType, shape: number[], dim: string): [number, number, number] {
  const i = t.dims.findIndex((d) => d.name === dim);
  return [numel(shape.slice(0, i)), shape[i]!, numel(shape.slice(i + 1))];
}

const concat: OpDef = {
  name: "concat",
  family: "movement",
  args: "variadic",
  shape: (xs, attrs) => {
    const dim = attrStr(attrs.dim, "concat dim");
    if (xs.length < 1) throw new ShapeError("concat() needs at least one tensor");
    const first = xs[0]!;
    let size = 0;
    for (const [i, x] of xs.entries()) {
      needDim("concat", x, dim, `xs[${i}]`);
      if (x.dtype !== first.dtype) throw new ShapeError(`concat(): xs[${i}] is ${x.dtype} but xs[0] is ${first.dtype}; cast first`);
      const names = x.dims.map((d) => d.name).join();
      if (names !== first.dims.map((d) => d.name).join()) throw new ShapeError(`concat(): xs[${i}] has dims [${names}] but xs[0] has [${first.dims.map((d) => d.name).join()}]`);
      checkSizes("concat", first.dims.filter((d) => d.name !== dim), x.dims.filter((d) => d.name !== dim));
      size += x.dims.find((d) => d.name === dim)!.size;
    }
    return [{ dims: first.dims.map((d) => (d.name === dim ? { name: dim, size } : d)), dtype: first.dtype }];
  },
  shard: passThrough("concat", (ctx) => [String(ctx.attrs.dim)]),
  cpu: (xs, attrs, ctx) => {
    const dim = String(attrs.dim);
    const out = newOut(ctx.outTypes[0]!.dtype, ctx.outShapes[0]!);
    const [outer, total, inner] = view3(ctx.outTypes[0]!, ctx.outShapes[0]!, dim);
    let at = 0;
    xs.forEach((x, k) => {
      const [, n] = view3(ctx.inTypes[k]!, x.shape, dim);
      for (let o = 0; o < outer; o++) out.data.set(x.data.subarray(o * n * inner, (o + 1) * n * inner), (o * total + at) * inner);
      at += n;
    });
    return [out];
  },
  grad: ({ b, gy, attrs, inTypes }) => {
    const dim = String(attrs.dim);
    return b.ops("split", [gy[0]!], { dim, sizes: inTypes.map((t) => findDim(t, dim)!.size) });
  },
};

const split: OpDef = {
  name: "split",
  family: "movement",
  args: ["x"],
  shape: ([x], attrs) => {
    const dim = attrStr(attrs.dim, "split dim");
    const sizes = attrs.sizes as number[];
    const d = needDim("split", x!, dim);
    if (!Array.isArray(sizes) || sizes.length < 1 || sizes.reduce((a, b) => a + attrInt(b, "split size"), 0) !== d.size)
      throw new ShapeError(`split() sizes ${JSON.stringify(sizes)} must add up to '${dim}''s size ${d.size}`);
    return sizes.map((s) => ({ dims: x!.dims.map((e) => (e.name === dim ? { name: dim, size: s } : e)), dtype: x!.dtype }));
  },
  shard: passThrough("split", (ctx) => [String(ctx.attrs.dim)]),
  cpu: ([x], attrs, ctx) => {
    const dim = String(attrs.dim);
    const [outer, total, inner] = view3(ctx.inTypes[0]!, x!.shape, dim);
    let at = 0;
    return ctx.outShapes.map((shape, k) => {
      const out = newOut(x!.dtype, shape);
      const n = (attrs.sizes as number[])[k]!;
      for (let o = 0; o < outer; o++) out.data.set(x!.data.subarray((o * total + at) * inner, (o * total + at + n) * inner), o * n * inner);
      at += n;
      return out;
    });
  },
  // parts without a gradient contribute zeros
  grad: ({ b, gy, outTypes, attrs }) => [
    b.op("concat", gy.map((g, k) => g ?? b.op("full", [], { dims: outTypes[k]!.dims.map((d) => [d.name, d.size]), dtype: outTypes[k]!.dtype, placements: outTypes[k]!.placements, value: 0 })), { dim: String(attrs.dim) }),
  ],
};

/** Broadcasts x over new dims (appended, replicated on every axis): the transpose of a sum. */
const expand: OpDef = {
  name: "expand",
  family: "movement",
  args: ["x"],
  shape: ([x], attrs) => {
    const add = attrs.dims as [string, number, unknown?][];
    if (!Array.isArray(add)) throw new ShapeError(`expand() needs attrs.dims as [name, size] pairs`);
    for (const [n] of add) needNewDim("expand", x!, n);
    const dims = add.map(([name, size, seg]): Dim => (seg ? { name, size: attrInt(size, name), segmented: seg as unknown as Dim["segmented"] } : { name, size: attrInt(size, name) }));
    return [{ dims: [...x!.dims, ...dims], dtype: x!.dtype }];
  },
  shard: ([p]) => [p!],
  cpu: ([x], _a, ctx) => {
    const out = newOut(x!.dtype, ctx.outShapes[0]!);
    const rep = x!.data.length ? out.data.length / x!.data.length : 0;
    for (let i = 0; i < x!.data.length; i++) out.data.fill(x!.data[i]!, i * rep, (i + 1) * rep);
    return [out];
  },
  grad: ({ b, gy, attrs }) => [b.op("sum", [gy[0]!], { dims: (attrs.dims as [string, number][]).map(([n]) => n) })],
};

/** Reorders the layout of dims (the values of every named element are unchanged). */
const permute: OpDef = {
  name: "permute",
  family: "movement",
  args: ["x"],
  shape: ([x], attrs) => {
    const order = strList(attrs.order, "permute order");
    const names = x!.dims.map((d) => d.name);
    if (order.length !== names.length || !order.every((n) => names.includes(n))) throw new ShapeError(`permute() order [${order.join(", ")}] must list each of [${names.join(", ")}] once`);
    return [{ dims: order.map((n) => x!.dims[names.indexOf(n)]!), dtype: x!.dtype }];
  },
  shard: ([p]) => [p!],
  cpu: ([x], attrs, ctx) => [permuteTo(x!, ctx.inTypes[0]!, attrs.order as string[])],
  grad: ({ b, gy, inTypes }) => [b.op("permute", [gy[0]!], { order: inTypes[0]!.dims.map((d) => d.name) })],
};

defineOps([concat, expand, flatten, permute, rename, split, unflatten]);
