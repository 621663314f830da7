// Index and routing family: top-k, gather, scatter-add, stable sort by key. These carry MoE routing:
// sort_by_key produces rows grouped into data-dependent segments (tokens per expert) whose sizes
// live in a counts tensor; the rows dim keeps its static bound and is marked `segmented`.
import type { Attrs, Dim, TensorType } from "../ir/types.ts";

import { ShapeError, ShardingError } from "../errors.ts";
import { isPartial, shardDim } from "../ir/placement.ts";
import { msgAgree, msgPartialIndex, msgReduceFirst, msgTwoShards } from "../messages.ts";
import { defineOps, type OpDef } from "./registry.ts";
import { attrInt, attrStr, checkSizes, findDim, needDim, needDType, needNewDim, noFp8, wholeDimRule } from "./rules.ts";
import { newOut, permuteTo, roundData } from "./cpu-util.ts";

/** Reference to "this node's output k", resolved to a real ValueRef when the node is added. */
export const SELF = -1;

const topk: OpDef = {
  name: "topk",
  family: "routing",
  args: ["x"],
  shape: ([x], attrs) => {
    noFp8("topk", x!);
    const dim = attrStr(attrs.dim, "topk dim"), k = attrInt(attrs.k, "k"), kd = attrStr(attrs.kDim, "topk's new dim");
    const d = needDim("topk", x!, dim);
    if (k < 1 || k > d.size) throw new ShapeError(`topk() k=${k} must be between 1 and the size of '${dim}' (${d.size})`);
    if (kd !== dim) needNewDim("topk", x!, kd);
    const dims = x!.dims.map((e) => (e.name === dim ? { name: kd, size: k } : e));
    return [{ dims, dtype: x!.dtype }, { dims, dtype: "i32" }];
  },
  shard: wholeDimRule("dim"),
  cpu: ([x], attrs, ctx) => {
    const t = ctx.inTypes[0]!, dim = String(attrs.dim), k = Number(attrs.k);
    const names = t.dims.map((d) => d.name);
    const rest = names.filter((n) => n !== dim);
    const p = permuteTo(x!, t, [...rest, dim]);
    const n = x!.shape[names.indexOf(dim)]!, outer = n ? p.data.length / n : 0;
    const vals = newOut(x!.dtype, [...rest.map((r) => x!.shape[names.indexOf(r)]!), k]);
    const idxs = newOut("i32", vals.shape);
    const order = new Array<number>(n);
    for (let o = 0; o < outer; o++) {
      for (let i = 0; i < n; i++) order[i] = i;
      const row = p.data.subarray(o * n, (o + 1) * n);
      // descending, NaN first (as torch.topk), ties to the lower index; sort is stable
      order.sort((a, b) => {
        const va = row[a]!, vb = row[b]!;
        if (va !== va || vb !== vb) return va !== va ? (vb !== vb ? 0 : -1) : 1;
        return vb - va;
      });
      for (let j = 0; j < k; j++) {
        vals.data[o * k + j] = row[order[j]!]!;
        idxs.data[o * k + j] = order[j]!;
      }
    }
    const outT = ctx.outTypes[0]!, kd = String(attrs.kDim);
    const permType = { ...outT, dims: [...rest.map((r) => outT.dims.find((d) => d.name === r)!), outT.dims.find((d) => d.name === kd)!] };
    const back = outT.dims.map((d) => d.name);
    return [permuteTo(vals, permType, back), permuteTo(idxs, { ...permType, dtype: "i32" }, back)];
  },
  // the k values' gradients go back to the positions they were taken from
  grad: ({ b, y, gy, attrs, inTypes }) => {
    if (!gy[0]) return [null];
    const dim = String(attrs.dim), size = findDim(inTypes[0]!, dim)!.size;
    return [b.op("scatter_add", [gy[0], y[1]!], { dim: String(attrs.kDim), to: dim, size })];
  },
};

// ---- gather ---------------------------------------------------------------------------------

interface GatherDims {
  dim: string;
  batch: string[];
  rest: string[];
  out: Dim[];
}

function gatherDims(x: TensorType, index: TensorType, attrs: Attrs): GatherDims {
  const dim = attrStr(attrs.dim, "gather dim");
  needDim("gather", x, dim, "x");
  if (findDim(index, dim)) throw new ShapeError(`gather() index must not have the gathered dim '${dim}'; its values index into it`);
  checkSizes("gather", x.dims, index.dims);
  const batch = x.dims.filter((d) => d.name !== dim && findDim(index, d.name)).map((d) => d.name);
  const rest = x.dims.filter((d) => d.name !== dim && !batch.includes(d.name)).map((d) => d.name);
  return { dim, batch, rest, out: [...index.dims, ...x.dims.filter((d) => rest.includes(d.name))] };
}

const gather: OpDef = {
  name: "gather",
  family: "routing",
  args: ["x", "index"],
  shape: ([x, i], attrs) => {
    needDType("gather", i!, ["i32"]);
    return [{ dims: gatherDims(x!, i!, attrs).out, dtype: x!.dtype }];
  },
  shard: ([px, pi], ctx) => {
    const gd = gatherDims(ctx.inputs[0]!, ctx.inputs[1]!, ctx.attrs);
    const dx = shardDim(px!), di = shardDim(pi!);
    if (isPartial(pi!)) throw new ShardingError(msgPartialIndex("gather", ctx.axis, pi!));
    if (px === "P(sum)" && pi === "R") return [px];
    if (isPartial(px!)) throw new ShardingError(msgReduceFirst("gather", ctx.axis, px!, pi!, "x"));
    if (px === pi) return [px!]; // both R, or the same batch dim
    if (dx === gd.dim && pi === "R") return ["P(sum)"]; // vocab-parallel: each rank looks up the ids it holds
    if (dx !== undefined && gd.batch.includes(dx)) throw new ShardingError(msgAgree("gather", ctx.axis, px!, pi!, "index", px!));
    if (di !== undefined && gd.batch.includes(di)) throw new ShardingError(msgAgree("gather", ctx.axis, px!, pi!, "x", pi!));
    if (dx !== undefined && gd.rest.includes(dx) && pi === "R") return [px!];
    if (di !== undefined && px === "R") return [pi!];
    throw new ShardingError(msgTwoShards("gather", ctx.axis, px!, pi!));
  },
  cpu: ([x, index], attrs, ctx) => {
    const [tx, ti] = ctx.inTypes as [TensorType, TensorType];
    const gd = gatherDims(tx, ti, attrs);
    const di = tx.dims.findIndex((d) => d.name === gd.dim);
    const off = ctx.inBoxes[0]!.offset[di]!, len = x!.shape[di]!, global = tx.dims[di]!.size;
    const sharded = len !== global;
    const X = permuteTo(x!, tx, [...gd.batch, gd.dim, ...gd.rest]);
    const iNames = ti.dims.map((d) => d.name);
    const I = permuteTo(index!, ti, [...gd.batch, ...iNames.filter((n) => !gd.batch.includes(n))]);
    const shapeX = (n: string) => x!.shape[tx.dims.findIndex((d) => d.name === n)]!;
    const bt = gd.batch.reduce((a, n) => a * shapeX(n), 1);
    const restN = gd.rest.reduce((a, n) => a * shapeX(n), 1);
    const per = bt ? I.data.length / bt : 0;
    const outNames = [...gd.batch, ...iNames.filter((n) => !gd.batch.includes(n)), ...gd.rest];
    const Y = newOut(x!.dtype, [...gd.batch.map(shapeX), ...iNames.filter((n) => !gd.batch.includes(n)).map((n) => index!.shape[iNames.indexOf(n)]!), ...gd.rest.map(shapeX)]);
    for (let b = 0; b < bt; b++) {
      for (let j = 0; j < per; j++) {
        const g = I.data[b * per + j]!;
        if (g === -1) continue; // padding row
        if (g < 0 || g >= global) throw new ShapeError(`gather(): index ${g} is out of range for '${gd.dim}' of size ${global}`);
        const l = g - off;
        if (sharded && (l < 0 || l >= len)) continue; // another rank holds it
        Y.data.set(X.data.subarray((b * len + l) * restN, (b * len + l + 1) * restN), (b * per + j) * restN);
      }
    }
    const outT = ctx.outTypes[0]!;
    return [permuteTo(Y, { ...outT, dims: outNames.map((n) => outT.dims.find((d) => d.name === n)!) }, outT.dims.map((d) => d.name))];
  },
  // rows looked up are added back where they came from
  grad: ({ b, gy, x, attrs, inTypes }) => {
    const [tx, ti] = inTypes as [TensorType, TensorType];
    const gd = gatherDims(tx, ti, attrs);
    const dims = ti.dims.map((d) => d.name).filter((n) => !gd.batch.includes(n));
    return [b.op("scatter_add", [gy[0]!, x[1]!], { dim: dims, to: gd.dim, size: findDim(tx, gd.dim)!.size }), null];
  },
};

// ---- scatter_add ----------------------------------------------------------------------------

/** `dim` may name several index dims: every index entry over them adds one row into `to`. */
function scatterDims(src: TensorType, index: TensorType, attrs: Attrs) {
  const dims = typeof attrs.dim === "string" ? [attrs.dim] : (attrs.dim as string[]);
  if (!Array.isArray(dims)) throw new ShapeError(`scatter_add() needs the index dim(s) to scatter over, got ${JSON.stringify(attrs.dim)}`);
  const to = attrStr(attrs.to, "scatter_add target dim"), size = attrInt(attrs.size, "scatter_add size");
  for (const d of dims) needDim("scatter_add", index, attrStr(d, "scatter_add dim"), "index");
  for (const d of index.dims) needDim("scatter_add", src, d.name, "src");
  checkSizes("scatter_add", src.dims, index.dims);
  if (!dims.includes(to)) needNewDim("scatter_add", src, to);
  const batch = index.dims.filter((d) => !dims.includes(d.name)).map((d) => d.name);
  const rest = src.dims.filter((d) => !findDim(index, d.name)).map((d) => d.name);
  // the target dim takes the place of the first scattered dim; the others disappear. With no
  // scattered dim (every index dim is a batch dim) each entry adds one element, into a new last dim.
  const out: Dim[] = dims.length
    ? src.dims.filter((d) => d.name === dims[0] || !dims.includes(d.name)).map((d) => (d.name === dims[0] ? { name: to, size } : d))
    : [...src.dims, { name: to, size }];
  return { dims, to, size, batch, rest, out };
}

const scatterAdd: OpDef = {
  name: "scatter_add",
  family: "routing",
  args: ["src", "index"],
  shape: ([s, i], attrs) => {
    noFp8("scatter_add", s!);
    needDType("scatter_add", i!, ["i32"]);
    return [{ dims: scatterDims(s!, i!, attrs).out, dtype: s!.dtype }];
  },
  shard: ([ps, pi], ctx) => {
    const sd = scatterDims(ctx.inputs[0]!, ctx.inputs[1]!, ctx.attrs);
    const ds = shardDim(ps!), di = shardDim(pi!);
    if (isPartial(pi!)) throw new ShardingError(msgPartialIndex("scatter_add", ctx.axis, pi!));
    if (ps === "P(sum)" && pi === "R") return [ps];
    if (isPartial(ps!)) throw new ShardingError(msgReduceFirst("scatter_add", ctx.axis, ps!, pi!, "src"));
    if (ps === pi) return ds !== undefined && sd.dims.includes(ds) ? ["P(sum)"] : [ps!]; // rows split across ranks add up; batch passes
    if (ds !== undefined && sd.rest.includes(ds) && pi === "R") return [ps!];
    if (ds !== undefined) throw new ShardingError(msgAgree("scatter_add", ctx.axis, ps!, pi!, "index", ps!));
    if (di !== undefined) throw new ShardingError(msgAgree("scatter_add", ctx.axis, ps!, pi!, "src", pi!));
    throw new ShardingError(msgTwoShards("scatter_add", ctx.axis, ps!, pi!));
  },
  cpu: ([src, index], attrs, ctx) => {
    const [ts, ti] = ctx.inTypes as [TensorType, TensorType];
    const sd = scatterDims(ts, ti, attrs);
    const S = permuteTo(src!, ts, [...sd.batch, ...sd.dims, ...sd.rest]);
    const I = permuteTo(index!, ti, [...sd.batch, ...sd.dims]);
    const shapeS = (n: string) => src!.shape[ts.dims.findIndex((d) => d.name === n)]!;
    const bt = sd.batch.reduce((a, n) => a * shapeS(n), 1), n = sd.dims.reduce((a, d) => a * shapeS(d), 1);
    const restN = sd.rest.reduce((a, nm) => a * shapeS(nm), 1);
    const acc = new Float64Array(bt * sd.size * restN);
    for (let b = 0; b < bt; b++) {
      for (let j = 0; j < n; j++) {
        const g = I.data[b * n + j]!;
        if (g === -1) continue;
        if (g < 0 || g >= sd.size) throw new ShapeError(`scatter_add(): index ${g} is out of range for '${sd.to}' of size ${sd.size}`);
        const so = (b * n + j) * restN, oo = (b * sd.size + g) * restN;
        for (let r = 0; r < restN; r++) acc[oo + r]! += S.data[so + r]!;
      }
    }
    const order = [...sd.batch, sd.to, ...sd.rest];
    const Y = newOut(src!.dtype, order.map((nm) => (nm === sd.to ? sd.size : shapeS(nm))));
    Y.data.set(src!.dtype === "i32" ? Int32Array.from(acc) : Float32Array.from(acc));
    roundData(Y.dtype, Y.data);
    const outT = ctx.outTypes[0]!;
    return [permuteTo(Y, { ...outT, dims: order.map((nm) => outT.dims.find((d) => d.name === nm)!) }, outT.dims.map((d) => d.name))];
  },
  // each row's gradient is the gradient of where it was added; when the target dim has an index
  // dim's name, rename it aside so gather can tell them apart
  grad: ({ b, gy, x, attrs, inTypes }) => {
    const to = String(attrs.to);
    if (!inTypes[1]!.dims.some((d) => d.name === to)) return [b.op("gather", [gy[0]!, x[1]!], { dim: to }), null];
    const aside = `${to}__scattered`;
    return [b.op("gather", [b.op("rename", [gy[0]!], { from: to, to: aside }), x[1]!], { dim: aside }), null];
  },
};

// ---- sort_by_key ----------------------------------------------------------------------------

const sortByKey: OpDef = {
  name: "sort_by_key",
  family: "routing",
  args: ["keys"],
  shape: ([k], attrs) => {
    needDType("sort_by_key", k!, ["i32"]);
    const dim = attrStr(attrs.dim, "sort dim"), rows = attrStr(attrs.rows, "rows dim"), groups = attrStr(attrs.groups, "groups dim");
    const num = attrInt(attrs.numGroups, "numGroups");
    const d = needDim("sort_by_key", k!, dim, "keys");
    if (rows !== dim) needNewDim("sort_by_key", k!, rows);
    needNewDim("sort_by_key", k!, groups);
    const batch = k!.dims.filter((e) => e.name !== dim);
    const rowsDim: Dim = { name: rows, size: d.size, segmented: { counts: { node: SELF, out: 1 }, groups, numGroups: num } };
    return [
      { dims: [...batch, rowsDim], dtype: "i32" },
      { dims: [...batch, { name: groups, size: num }], dtype: "i32" },
    ];
  },
  shard: wholeDimRule("dim"),
  cpu: ([keys], attrs, ctx) => {
    const t = ctx.inTypes[0]!, dim = String(attrs.dim), G = Number(attrs.numGroups);
    const names = t.dims.map((d) => d.name);
    const batch = names.filter((n) => n !== dim);
    const K = permuteTo(keys!, t, [...batch, dim]);
    const n = keys!.shape[names.indexOf(dim)]!, bt = n ? K.data.length / n : batch.reduce((a, b) => a * keys!.shape[names.indexOf(b)]!, 1);
    const perm = newOut("i32", [...batch.map((b) => keys!.shape[names.indexOf(b)]!), n]);
    const counts = newOut("i32", [...batch.map((b) => keys!.shape[names.indexOf(b)]!), G]);
    for (let b = 0; b < bt; b++) {
      // counting sort: stable, O(n + G); keys outside [0, G) are dropped (their rows stay -1 at the end)
      const c = counts.data.subarray(b * G, (b + 1) * G);
      for (let j = 0; j < n; j++) {
        const key = K.data[b * n + j]!;
        if (key >= 0 && key < G) c[key]!++;
      }
      const start = new Int32Array(G);
      for (let g = 1; g < G; g++) start[g] = start[g - 1]! + c[g - 1]!;
      const p = perm.data.subarray(b * n, (b + 1) * n);
      p.fill(-1);
      for (let j = 0; j < n; j++) {
        const key = K.data[b * n + j]!;
        if (key >= 0 && key < G) p[start[key]!++] = j;
      }
    }
    return [perm, counts];
  },
};

defineOps([gather, scatterAdd, sortByKey, topk]);
