// MoE dispatch/combine family: the whole token exchange of an expert-parallel layer as single ops.
// In the global view they are routing (sort by expert, gather rows, weighted un-permute); over the
// expert axis (`axis`) their sharding rules move the rows, so one op is one plan step (a backend
// runs the permute, the count exchange and the token exchange inside it). Their references see the
// whole mesh at once (`global`): the CPU backend assembles the inputs and cuts the outputs.
//
//   moe_dispatch(x[...b, seq, ...in], idx[...b, seq, k]) -> rows[...b, rows~seg(experts), ...in],
//                perm[...b, rows~seg] (slot t*K+k of each row, -1 padding), counts[...b, experts]
//   moe_combine(rows, perm[, w[...b, seq, k]]) -> y[...b, seq, ...in] = sum_k w * row  (keepK: [..., seq, k, ...])
//   moe_redispatch(src[...b, seq(, k), ...in], perm[, w]) -> rows: combine's transpose
//
// Rows are grouped per batch index by expert (stable in slot order), exactly as sort_by_key +
// gather produce them; combine adds a token's rows in that order after rounding each weighted row
// to the dtype (as mul then scatter_add would), so the fused path equals the composed one bit-exactly.
import type { Attrs, Dim, Placement, TensorType } from "../ir/types.ts";
import type { LocalTensor } from "../ir/local.ts";
import { CompileError, ShapeError, ShardingError } from "../errors.ts";
import { isPartial, shardDim } from "../ir/placement.ts";
import { msgAgree, msgPartialIndex, msgWholeDim } from "../messages.ts";
import { defineOps, type OpDef, type ShardCtx } from "./registry.ts";
import { attrInt, attrStr, checkSizes, findDim, needDim, needDType, needNewDim, sameDType } from "./rules.ts";
import { newOut, permuteTo, roundData } from "./cpu-util.ts";
import { SELF } from "./routing.ts";
import type { GradOps } from "../autodiff/types.ts";
import type { ValueRef } from "../ir/types.ts";

/** Names an op's dims: batch (indices/perm dims but the token ones), inner (the row's own dims). */
interface Roles {
  batch: string[];
  inner: string[];
}

const names = (t: TensorType) => t.dims.map((d) => d.name);

function dispatchRoles(x: TensorType, idx: TensorType, attrs: Attrs): Roles & { seq: string; k: string } {
  const seq = attrStr(attrs.dim, "moe_dispatch token dim"), k = attrStr(attrs.k, "moe_dispatch top-k dim");
  needDim("moe_dispatch", idx, seq, "indices");
  needDim("moe_dispatch", idx, k, "indices");
  if (findDim(x, k)) throw new ShapeError(`moe_dispatch(): x must not have the top-k dim '${k}'; each token row goes to its k experts`);
  const batch = names(idx).filter((n) => n !== seq && n !== k);
  for (const n of [...batch, seq]) needDim("moe_dispatch", x, n, "x");
  checkSizes("moe_dispatch", x.dims, idx.dims);
  return { seq, k, batch, inner: names(x).filter((n) => n !== seq && !batch.includes(n)) };
}

/** rows/perm/weights roles for combine and redispatch: perm is [...batch, rows~seg]. */
function permRoles(op: string, perm: TensorType): Roles & { rows: Dim } {
  needDType(op, perm, ["i32"]);
  const rows = perm.dims.find((d) => d.segmented);
  if (!rows) throw new ShapeError(`${op}() needs perm with a segmented rows dim (moe_dispatch's second output); perm has [${names(perm).join(", ")}]`);
  return { rows, batch: names(perm).filter((n) => n !== rows.name), inner: [] };
}

function checkWeights(op: string, w: TensorType | undefined, like: TensorType, batch: string[], seq: string, k: string, S: number, K: number): void {
  if (!w) return;
  sameDType(op, like, w);
  const want = [...batch, seq, k].sort().join();
  if ([...names(w)].sort().join() !== want) throw new ShapeError(`${op}() weights must have dims [${[...batch, seq, k].join(", ")}] (the gate of each token's k slots); got [${names(w).join(", ")}]`);
  if (findDim(w, seq)!.size !== S || findDim(w, k)!.size !== K) throw new ShapeError(`${op}() weights are [${seq}:${findDim(w, seq)!.size}, ${k}:${findDim(w, k)!.size}] but the op was told ${seq}=${S}, ${k}=${K}`);
}

const tokenAttrs = (attrs: Attrs) => ({
  seq: attrStr(attrs.dim, "token dim"), S: attrInt(attrs.size, "token count"),
  k: attrStr(attrs.k, "top-k dim"), K: attrInt(attrs.numK, "top-k size"), keepK: attrs.keepK === true,
});

/** The family's ops: each exchanges rows over its axis inside one plan step (passes and backends special-case them). */
export const MOE_OPS: ReadonlySet<string> = new Set(["moe_dispatch", "moe_combine", "moe_redispatch"]);

// ---- the one-axis sharding rules -----------------------------------------------------------------

/** The expert axis moves rows: tokens (sharded on a batch dim, or replicated) in, rows by expert out. */
function dispatchShard([px, pi]: Placement[], ctx: ShardCtx): Placement[] {
  const r = dispatchRoles(ctx.inputs[0]!, ctx.inputs[1]!, ctx.attrs);
  if (isPartial(pi!)) throw new ShardingError(msgPartialIndex(ctx.op, ctx.axis, pi!));
  if (isPartial(px!)) throw new ShardingError(`mesh axis '${ctx.axis}': ${ctx.op}() moves whole rows and x is ${px}; reduce first: redistribute(x, { ${ctx.axis}: Replicate })`);
  for (const p of [px!, pi!]) if (shardDim(p) === r.seq || shardDim(p) === r.k) throw new ShardingError(msgWholeDim(ctx.op, ctx.axis, shardDim(p)!));
  const ep = ctx.axis === ctx.attrs.axis;
  const inner = shardDim(px!) !== undefined && r.inner.includes(shardDim(px!)!);
  if (inner && pi === "R" && !ep) return [px!, "R", "R"];
  if (px !== pi) {
    const why = ep ? `; on the expert axis tokens must be sharded on a batch dim (${r.batch.join(", ") || "none"}) or replicated` : "";
    throw new ShardingError(msgAgree(ctx.op, ctx.axis, px!, pi!, inner ? "x" : "indices", inner ? pi! : px!) + why);
  }
  return ep ? [`S(${String(ctx.attrs.rows)})`, pi!, `S(${String(ctx.attrs.groups)})`] : [px!, pi!, pi!];
}

/** combine: rows (by expert, or like perm) meet perm/weights (by token) and leave like perm. */
function combineShard([pr, pp, pw]: Placement[], ctx: ShardCtx): Placement[] {
  const { rows } = permRoles(ctx.op, ctx.inputs[1]!);
  if (isPartial(pp!) || (pw && isPartial(pw))) throw new ShardingError(msgPartialIndex(ctx.op, ctx.axis, isPartial(pp!) ? pp! : pw!));
  if (shardDim(pp!) === rows.name) throw new ShardingError(msgWholeDim(ctx.op, ctx.axis, rows.name));
  if (pw && pw !== pp) throw new ShardingError(msgAgree(ctx.op, ctx.axis, pp!, pw, "weights", pp!));
  const dr = shardDim(pr!);
  if (pr === "P(sum)" && pp === "R") return [pr]; // linear in rows
  if (isPartial(pr!)) throw new ShardingError(`mesh axis '${ctx.axis}': ${ctx.op}() got rows ${pr} with perm ${pp}; reduce first: redistribute(rows, { ${ctx.axis}: Replicate })`);
  if (pr === "R" || dr === rows.name || pr === pp) return [pp!];
  if (dr !== undefined && !findDim(ctx.inputs[1]!, dr) && pp === "R") return [pr!]; // a row's own dim (model) stays split
  throw new ShardingError(msgAgree(ctx.op, ctx.axis, pr!, pp!, "rows", pp!));
}

/** redispatch: like dispatch with perm in place of the indices. */
function redispatchShard([ps, pp, pw]: Placement[], ctx: ShardCtx): Placement[] {
  const { rows, batch } = permRoles(ctx.op, ctx.inputs[1]!);
  if (isPartial(pp!) || (pw && isPartial(pw))) throw new ShardingError(msgPartialIndex(ctx.op, ctx.axis, isPartial(pp!) ? pp! : pw!));
  if (shardDim(pp!) === rows.name) throw new ShardingError(msgWholeDim(ctx.op, ctx.axis, rows.name));
  if (pw && pw !== pp) throw new ShardingError(msgAgree(ctx.op, ctx.axis, pp!, pw, "weights", pp!));
  if (ps === "P(sum)" && pp === "R") return [ps];
  if (isPartial(ps!)) throw new ShardingError(`mesh axis '${ctx.axis}': ${ctx.op}() got src ${ps} with perm ${pp}; reduce first: redistribute(src, { ${ctx.axis}: Replicate })`);
  const ep = ctx.axis === ctx.attrs.axis, ds = shardDim(ps!);
  const inner = ds !== undefined && !batch.includes(ds);
  if (inner && (ds === ctx.attrs.dim || ds === ctx.attrs.k)) throw new ShardingError(msgWholeDim(ctx.op, ctx.axis, ds));
  if (inner && pp === "R" && !ep) return [ps!];
  if (ps !== pp) throw new ShardingError(msgAgree(ctx.op, ctx.axis, ps!, pp!, "src", pp!));
  return [ep ? `S(${rows.name})` : pp!];
}

// ---- global references -----------------------------------------------------------------------

/** [B, ...] views in a given dim order; `B` is the product of the batch dims. */
const ordered = (x: LocalTensor, t: TensorType, order: string[]) => permuteTo(x, t, order);
const prodOf = (t: TensorType, ns: string[]) => ns.reduce((a, n) => a * findDim(t, n)!.size, 1);
/** y computed flat in `order` (batch dims, rows or tokens, row dims) → the output type's dim order. */
function back(y: LocalTensor, outT: TensorType, order: string[]): LocalTensor {
  const dims = order.map((n) => findDim(outT, n)!);
  return permuteTo({ ...y, shape: dims.map((d) => d.size) }, { ...outT, dims }, names(outT));
}

function dispatchGlobal([x, idx]: LocalTensor[], attrs: Attrs, inT: TensorType[], outT: TensorType[]): LocalTensor[] {
  const [tx, ti] = inT as [TensorType, TensorType];
  const r = dispatchRoles(tx, ti, attrs), G = attrInt(attrs.numGroups, "numGroups");
  const B = prodOf(ti, r.batch), S = findDim(ti, r.seq)!.size, K = findDim(ti, r.k)!.size, I = prodOf(tx, r.inner), n = S * K;
  const X = ordered(x!, tx, [...r.batch, r.seq, ...r.inner]), Idx = ordered(idx!, ti, [...r.batch, r.seq, r.k]);
  const rows = newOut(x!.dtype, [B, n, I]), perm = newOut("i32", [B, n]), counts = newOut("i32", [B, G]);
  perm.data.fill(-1);
  for (let b = 0; b < B; b++) {
    // counting sort by expert, stable in slot order; ids outside [0, G) are dropped (as sort_by_key)
    const c = counts.data.subarray(b * G, (b + 1) * G), keys = Idx.data.subarray(b * n, (b + 1) * n);
    for (const e of keys) if (e >= 0 && e < G) c[e]!++;
    const at = new Int32Array(G);
    for (let g = 1; g < G; g++) at[g] = at[g - 1]! + c[g - 1]!;
    for (let s = 0; s < n; s++) {
      const e = keys[s]!;
      if (e < 0 || e >= G) continue;
      const j = at[e]!++, t = Math.floor(s / K);
      perm.data[b * n + j] = s;
      rows.data.set(X.data.subarray((b * S + t) * I, (b * S + t + 1) * I), (b * n + j) * I);
    }
  }
  const [tr, tp, tc] = outT as [TensorType, TensorType, TensorType];
  const rowsName = String(attrs.rows);
  return [
    back(rows, tr, [...r.batch, rowsName, ...r.inner]),
    back(perm, tp, [...r.batch, rowsName]),
    back(counts, tc, [...r.batch, String(attrs.groups)]),
  ];
}

/** Row j of batch b goes to slot perm[b, j] of token perm/K; weighted rows round like mul(). */
function combineGlobal([rowsT, permT, w]: LocalTensor[], attrs: Attrs, inT: TensorType[], outT: TensorType[]): LocalTensor[] {
  const [tr, tp, tw] = inT as [TensorType, TensorType, TensorType | undefined];
  const { rows, batch } = permRoles("moe_combine", tp);
  const { seq, S, k, K, keepK } = tokenAttrs(attrs);
  const inner = names(tr).filter((nm) => nm !== rows.name && !batch.includes(nm));
  const B = prodOf(tp, batch), n = rows.size, I = prodOf(tr, inner);
  const X = ordered(rowsT!, tr, [...batch, rows.name, ...inner]), P = ordered(permT!, tp, [...batch, rows.name]);
  const W = w ? ordered(w, tw!, [...batch, seq, k]) : null;
  const slots = keepK ? S * K : S;
  const acc = new Float64Array(B * slots * I), tmp = new Float32Array(I);
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < n; j++) {
      const s = P.data[b * n + j]!;
      if (s < 0) continue;
      if (s >= S * K) throw new ShapeError(`moe_combine(): perm holds slot ${s}, beyond ${seq}*${k} = ${S * K}`);
      const src = X.data.subarray((b * n + j) * I, (b * n + j + 1) * I);
      if (W) {
        const wv = W.data[b * S * K + s]!;
        for (let i = 0; i < I; i++) tmp[i] = src[i]! * wv;
        roundData(rowsT!.dtype, tmp);
      } else tmp.set(src);
      const o = (b * slots + (keepK ? s : Math.floor(s / K))) * I;
      for (let i = 0; i < I; i++) acc[o + i]! += tmp[i]!;
    }
  }
  const y = newOut(rowsT!.dtype, [B, slots, I]);
  y.data.set(Float32Array.from(acc));
  roundData(y.dtype, y.data);
  const order = keepK ? [...batch, seq, k, ...inner] : [...batch, seq, ...inner];
  return [back(y, outT[0]!, order)];
}

/** Row j of batch b is src at its token (and slot, when src keeps k), times the slot's weight. */
function redispatchGlobal([src, permT, w]: LocalTensor[], attrs: Attrs, inT: TensorType[], outT: TensorType[]): LocalTensor[] {
  const [ts, tp, tw] = inT as [TensorType, TensorType, TensorType | undefined];
  const { rows, batch } = permRoles("moe_redispatch", tp);
  const { seq, S, k, K } = tokenAttrs(attrs);
  const keepK = !!findDim(ts, k);
  const inner = names(ts).filter((nm) => nm !== seq && nm !== k && !batch.includes(nm));
  const B = prodOf(tp, batch), n = rows.size, I = prodOf(ts, inner), slots = keepK ? S * K : S;
  const X = ordered(src!, ts, keepK ? [...batch, seq, k, ...inner] : [...batch, seq, ...inner]);
  const P = ordered(permT!, tp, [...batch, rows.name]);
  const W = w ? ordered(w, tw!, [...batch, seq, k]) : null;
  const y = newOut(src!.dtype, [B, n, I]);
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < n; j++) {
      const s = P.data[b * n + j]!;
      if (s < 0) continue;
      const from = (b * slots + (keepK ? s : Math.floor(s / K))) * I, to = (b * n + j) * I;
      if (W) {
        const wv = W.data[b * S * K + s]!;
        for (let i = 0; i < I; i++) y.data[to + i] = X.data[from + i]! * wv;
      } else y.data.set(X.data.subarray(from, from + I), to);
    }
  }
  roundData(y.dtype, y.data);
  return [back(y, outT[0]!, [...batch, rows.name, ...inner])];
}

// ---- gradients ---------------------------------------------------------------------------------

const combineAttrs = (a: Attrs, keepK: boolean): Attrs => ({ axis: a.axis ?? null, dim: a.dim!, size: a.size!, k: a.k!, numK: a.numK!, keepK });

/** d/dw of sum(g * (rows moved to their slots) * w): the rows at their slots, times g, summed over a row. */
function weightGrad(b: GradOps, rows: ValueRef, perm: ValueRef, g: ValueRef, attrs: Attrs, wType: TensorType): ValueRef {
  const atSlots = b.op("moe_combine", [rows, perm], combineAttrs(attrs, true));
  return b.sumTo(b.mul(atSlots, g), wType);
}

const moeDispatch: OpDef = {
  name: "moe_dispatch",
  family: "collective",
  args: ["x", "indices"],
  shape: ([x, idx], attrs) => {
    needDType("moe_dispatch", idx!, ["i32"]);
    const r = dispatchRoles(x!, idx!, attrs);
    const rowsName = attrStr(attrs.rows, "rows dim"), groups = attrStr(attrs.groups, "groups dim"), G = attrInt(attrs.numGroups, "numGroups");
    for (const nm of [rowsName, groups]) needNewDim("moe_dispatch", x!, nm), needNewDim("moe_dispatch", idx!, nm);
    const dim = (nm: string) => findDim(x!, nm)!;
    const rowsDim: Dim = { name: rowsName, size: findDim(idx!, r.seq)!.size * findDim(idx!, r.k)!.size, segmented: { counts: { node: SELF, out: 2 }, groups, numGroups: G } };
    return [
      { dims: [...r.batch.map(dim), rowsDim, ...r.inner.map(dim)], dtype: x!.dtype },
      { dims: [...r.batch.map(dim), rowsDim], dtype: "i32" },
      { dims: [...r.batch.map(dim), { name: groups, size: G }], dtype: "i32" },
    ];
  },
  shard: dispatchShard,
  cpu: () => {
    throw new CompileError("moe_dispatch reads every rank\'s pieces: a backend runs its `global` reference, never the per-rank one");
  },
  global: dispatchGlobal,
  // rows are copies of token rows: their gradients add back to the tokens (combine without weights)
  grad: ({ b, gy, y, attrs, inTypes }) => {
    if (!gy[0]) return [null, null];
    const ti = inTypes[1]!, seq = String(attrs.dim), k = String(attrs.k);
    const a: Attrs = { axis: attrs.axis ?? null, dim: seq, size: findDim(ti, seq)!.size, k, numK: findDim(ti, k)!.size };
    return [b.op("moe_combine", [gy[0], y[1]!], combineAttrs(a, false)), null];
  },
};

function combineShape(op: string, [r, p, w]: TensorType[], attrs: Attrs) {
  const { rows, batch } = permRoles(op, p!);
  const { seq, S, k, K, keepK } = tokenAttrs(attrs);
  const rr = findDim(r!, rows.name);
  if (!rr?.segmented) throw new ShapeError(`${op}(): rows must have perm's segmented dim '${rows.name}'`);
  checkSizes(op, r!.dims, p!.dims);
  for (const nm of batch) needDim(op, r!, nm, "rows");
  checkWeights(op, w, r!, batch, seq, k, S, K);
  const inner = r!.dims.filter((d) => d.name !== rows.name && !batch.includes(d.name));
  const bd = batch.map((nm) => findDim(p!, nm)!);
  const tok: Dim[] = keepK ? [{ name: seq, size: S }, { name: k, size: K }] : [{ name: seq, size: S }];
  return [{ dims: [...bd, ...tok, ...inner], dtype: r!.dtype }];
}

const moeCombine: OpDef = {
  name: "moe_combine",
  family: "collective",
  args: ["rows", "perm", "weights"],
  shape: (ins, attrs) => combineShape("moe_combine", ins, attrs),
  shard: combineShard,
  cpu: () => {
    throw new CompileError("moe_combine reads every rank\'s pieces: a backend runs its `global` reference, never the per-rank one");
  },
  global: combineGlobal,
  grad: ({ b, gy, x, attrs, inTypes }) => {
    const [rows, perm, w] = x as [ValueRef, ValueRef, ValueRef | undefined];
    const g = gy[0]!;
    const gRows = b.op("moe_redispatch", w ? [g, perm, w] : [g, perm], combineAttrs(attrs, false));
    return [gRows, null, ...(w ? [weightGrad(b, rows, perm, g, attrs, inTypes[2]!)] : [])];
  },
};

const moeRedispatch: OpDef = {
  name: "moe_redispatch",
  family: "collective",
  args: ["src", "perm", "weights"],
  shape: ([s, p, w], attrs) => {
    const { rows, batch } = permRoles("moe_redispatch", p!);
    const { seq, S, k, K } = tokenAttrs(attrs);
    needDim("moe_redispatch", s!, seq, "src");
    if (findDim(s!, seq)!.size !== S || (findDim(s!, k) && findDim(s!, k)!.size !== K)) throw new ShapeError(`moe_redispatch(): src's [${seq}, ${k}] sizes differ from ${seq}=${S}, ${k}=${K}`);
    needNewDim("moe_redispatch", s!, rows.name);
    for (const nm of batch) needDim("moe_redispatch", s!, nm, "src");
    checkSizes("moe_redispatch", s!.dims, p!.dims);
    checkWeights("moe_redispatch", w, s!, batch, seq, k, S, K);
    const inner = s!.dims.filter((d) => d.name !== seq && d.name !== k && !batch.includes(d.name));
    return [{ dims: [...batch.map((nm) => findDim(p!, nm)!), rows, ...inner], dtype: s!.dtype }];
  },
  shard: redispatchShard,
  cpu: () => {
    throw new CompileError("moe_redispatch reads every rank\'s pieces: a backend runs its `global` reference, never the per-rank one");
  },
  global: redispatchGlobal,
  grad: ({ b, gy, x, attrs, inTypes }) => {
    const [src, perm, w] = x as [ValueRef, ValueRef, ValueRef | undefined];
    const g = gy[0]!;
    const keepK = !!findDim(inTypes[0]!, String(attrs.k));
    const gSrc = b.op("moe_combine", w ? [g, perm, w] : [g, perm], combineAttrs(attrs, keepK));
    if (!w) return [gSrc, null];
    // the weight of slot (t, k) scaled src's row into row j: its gradient is <g_j, src row>
    return [gSrc, null, weightGrad(b, g, perm, src, attrs, inTypes[2]!)];
  },
};

defineOps([moeCombine, moeDispatch, moeRedispatch]);
