// Contraction family: `dot` (einsum by dim name: contracted dims named, shared others are batch
// dims) and `segment_dot` (grouped GEMM over contiguous data-dependent segments, the MoE experts).
import type { Attrs, Dim, DType, Placement, TensorType } from "../ir/types.ts";
import type { LocalTensor } from "../ir/local.ts";
import { isFp8 } from "../ir/types.ts";
import { DTypeError, ShapeError, ShardingError } from "../errors.ts";
import { isPartial, shardDim } from "../ir/placement.ts";
import { msgAgree, msgContractOneSide, msgDType, msgNeedsDType, msgReduceFirst, msgTwoShards, msgUnsupported } from "../messages.ts";
import { defineOps, type OpDef, type ShardCtx } from "./registry.ts";
import { checkSizes, findDim, needDim } from "./rules.ts";
import { newOut, permuteTo, roundData } from "./cpu-util.ts";

export const contractAttr = (attrs: Attrs): string[] => {
  const c = attrs.contract;
  const list = typeof c === "string" ? [c] : c;
  if (!Array.isArray(list) || !list.every((x) => typeof x === "string")) throw new ShapeError(`expected attrs.contract to be a dim name or list of names, got ${JSON.stringify(c)}`);
  return list as string[];
};

/** Output dtype of a contraction: bf16/f32 keep theirs, FP8 operands produce bf16 unless told. */
function contractDType(op: string, a: TensorType, b: TensorType, attrs: Attrs): DType {
  const want = attrs.out as DType | undefined;
  if (a.dtype === "i32" || b.dtype === "i32") throw new DTypeError(msgNeedsDType(op, "i32", "f32, bf16 or FP8"));
  if (isFp8(a.dtype) !== isFp8(b.dtype) || (!isFp8(a.dtype) && a.dtype !== b.dtype)) throw new DTypeError(msgDType(op, a.dtype, b.dtype));
  if (want !== undefined && want !== "f32" && want !== "bf16") throw new DTypeError(`${op}() output dtype must be f32 or bf16, got ${want}`);
  return want ?? (isFp8(a.dtype) ? "bf16" : a.dtype);
}

export interface DotDims {
  contract: string[];
  batch: string[];
  freeA: string[];
  freeB: string[];
  out: Dim[];
}

export function dotDims(a: TensorType, b: TensorType, contract: string[]): DotDims {
  for (const c of contract) {
    needDim("dot", a, c, "a");
    needDim("dot", b, c, "b");
  }
  checkSizes("dot", a.dims, b.dims);
  const batch = a.dims.filter((d) => !contract.includes(d.name) && findDim(b, d.name)).map((d) => d.name);
  const freeA = a.dims.filter((d) => !contract.includes(d.name) && !batch.includes(d.name)).map((d) => d.name);
  const freeB = b.dims.filter((d) => !contract.includes(d.name) && !batch.includes(d.name)).map((d) => d.name);
  const out = [...a.dims.filter((d) => !contract.includes(d.name)), ...b.dims.filter((d) => freeB.includes(d.name))];
  return { contract, batch, freeA, freeB, out };
}

/** The one-axis rule of `dot`; mirrored by stdlib/types/contraction.ts. */
export function dotRule(pa: Placement, pb: Placement, dd: DotDims, ax: string): Placement {
  if (pa === "R" && pb === "R") return "R";
  if (isPartial(pa) || isPartial(pb)) {
    if (pa === "P(sum)" && pb === "R") return pa;
    if (pa === "R" && pb === "P(sum)") return pb;
    throw new ShardingError(msgReduceFirst("dot", ax, pa, pb, isPartial(pb) ? "b" : "a"));
  }
  const da = shardDim(pa), db = shardDim(pb);
  if (da !== undefined && dd.contract.includes(da)) {
    if (db === da) return "P(sum)";
    throw new ShardingError(msgContractOneSide(ax, da, "b", pb));
  }
  if (db !== undefined && dd.contract.includes(db)) throw new ShardingError(msgContractOneSide(ax, db, "a", pa));
  if (pa === pb) return pa; // same batch dim
  if (da !== undefined && dd.batch.includes(da)) throw new ShardingError(msgAgree("dot", ax, pa, pb, "b", pa));
  if (db !== undefined && dd.batch.includes(db)) throw new ShardingError(msgAgree("dot", ax, pa, pb, "a", pb));
  if (pb === "R") return pa; // free dim of a
  if (pa === "R") return pb; // free dim of b
  throw new ShardingError(msgTwoShards("dot", ax, pa, pb));
}

/**
 * C[bt, m, n] = sum_k A[bt, m, k] * B[bt, k, n] with float64 accumulation, i-k-j order, four rows
 * of B per pass over the accumulator (fewer loads and stores of it per multiply-add).
 */
export function batchedMatmul(A: LocalTensor["data"], B: LocalTensor["data"], bt: number, m: number, k: number, n: number, C: Float32Array): void {
  const acc = new Float64Array(n);
  for (let t = 0; t < bt; t++) {
    const ao = t * m * k, bo = t * k * n, co = t * m * n;
    for (let i = 0; i < m; i++) {
      acc.fill(0);
      const ar = ao + i * k;
      let p = 0;
      for (; p + 3 < k; p += 4) {
        const a0 = A[ar + p]!, a1 = A[ar + p + 1]!, a2 = A[ar + p + 2]!, a3 = A[ar + p + 3]!;
        if (a0 === 0 && a1 === 0 && a2 === 0 && a3 === 0) continue;
        const r0 = bo + p * n, r1 = r0 + n, r2 = r1 + n, r3 = r2 + n;
        for (let j = 0; j < n; j++) acc[j]! += a0 * B[r0 + j]! + a1 * B[r1 + j]! + a2 * B[r2 + j]! + a3 * B[r3 + j]!;
      }
      for (; p < k; p++) {
        const av = A[ar + p]!;
        if (av === 0) continue;
        const r = bo + p * n;
        for (let j = 0; j < n; j++) acc[j]! += av * B[r + j]!;
      }
      for (let j = 0; j < n; j++) C[co + i * n + j] = acc[j]!;
    }
  }
}

const sizeOf = (x: LocalTensor, t: TensorType, names: string[]) => names.reduce((s, n) => s * x.shape[t.dims.findIndex((d) => d.name === n)]!, 1);

const dot: OpDef = {
  name: "dot",
  family: "contraction",
  args: ["a", "b"],
  shape: ([a, b], attrs) => {
    const dd = dotDims(a!, b!, contractAttr(attrs));
    return [{ dims: dd.out, dtype: contractDType("dot", a!, b!, attrs) }];
  },
  shard: ([pa, pb], ctx: ShardCtx) => [dotRule(pa!, pb!, dotDims(ctx.inputs[0]!, ctx.inputs[1]!, contractAttr(ctx.attrs)), ctx.axis)],
  cpu: ([a, b], attrs, ctx) => {
    const [ta, tb] = ctx.inTypes as [TensorType, TensorType];
    const dd = dotDims(ta, tb, contractAttr(attrs));
    const A = permuteTo(a!, ta, [...dd.batch, ...dd.freeA, ...dd.contract]);
    const B = permuteTo(b!, tb, [...dd.batch, ...dd.contract, ...dd.freeB]);
    const bt = sizeOf(a!, ta, dd.batch), m = sizeOf(a!, ta, dd.freeA), k = sizeOf(a!, ta, dd.contract), n = sizeOf(b!, tb, dd.freeB);
    const outType = ctx.outTypes[0]!;
    const order = [...dd.batch, ...dd.freeA, ...dd.freeB];
    const shapeOf = (name: string) => (findDim(ta, name) ? a!.shape[ta.dims.findIndex((d) => d.name === name)]! : b!.shape[tb.dims.findIndex((d) => d.name === name)]!);
    const C = newOut(outType.dtype, order.map(shapeOf));
    batchedMatmul(A.data, B.data, bt, m, k, n, C.data as Float32Array);
    roundData(outType.dtype, C.data);
    const orderedType = { ...outType, dims: order.map((nm) => outType.dims.find((d) => d.name === nm)!) };
    return [permuteTo(C, orderedType, outType.dims.map((d) => d.name))];
  },
  // ga = gy . b over b's free dims; gb = a . gy over a's free dims (batch dims stay batch dims)
  grad: ({ b, x, gy, attrs, inTypes }) => {
    const [ta, tb] = inTypes as [TensorType, TensorType];
    if (isFp8(ta.dtype) || isFp8(tb.dtype)) return [null, null];
    const dd = dotDims(ta, tb, contractAttr(attrs));
    const ga = b.op("dot", [gy[0]!, x[1]!], { contract: dd.freeB });
    const gb = b.op("dot", [x[0]!, gy[0]!], { contract: dd.freeA });
    return [ga, gb];
  },
};

// ---- segment_dot ----------------------------------------------------------------------------

export interface SegDims {
  rows: Dim;
  groups: string;
  k: string;
  batch: string[];
  n: string[];
}

export function segDims(x: TensorType, w: TensorType, counts: TensorType, attrs: Attrs, op = "segment_dot"): SegDims {
  const k = String(attrs.contract);
  const rows = x.dims.find((d) => d.segmented);
  if (!rows) throw new ShapeError(`${op}() needs x to have a segmented dim (the rows produced by sort_by_key); x has [${x.dims.map((d) => d.name).join(", ")}]`);
  const groups = rows.segmented!.groups;
  needDim(op, x, k, "x");
  needDim(op, w, k, "w");
  needDim(op, w, groups, "w");
  checkSizes(op, x.dims, w.dims);
  const batch = x.dims.filter((d) => d !== rows && d.name !== k).map((d) => d.name);
  const wantCounts = [...batch, groups];
  if (counts.dtype !== "i32" || counts.dims.map((d) => d.name).join() !== wantCounts.join())
    throw new ShapeError(`${op}() counts must be i32 [${wantCounts.join(", ")}], got ${counts.dtype} [${counts.dims.map((d) => d.name).join(", ")}]`);
  const n = w.dims.filter((d) => d.name !== k && d.name !== groups).map((d) => d.name);
  for (const nm of n) if (findDim(x, nm)) throw new ShapeError(`${op}(): w's output dim '${nm}' is also a dim of x; rename one`);
  return { rows, groups, k, batch, n };
}

/** The one-axis rule of segment_dot (its FP8 twin scaled_segment_dot shares it, Partial operands excluded there). */
export function segmentDotRule(px: Placement, pw: Placement, pc: Placement, sd: SegDims, axis: string, op = "segment_dot"): Placement {
  const dx = shardDim(px), dw = shardDim(pw), dc = shardDim(pc);
  if (isPartial(pc)) throw new ShardingError(msgUnsupported(op, axis, pc));
  if (px === "R" && pw === "R" && pc === "R") return "R";
  if (px === "P(sum)" && pw === "R" && pc === "R") return "P(sum)";
  if (isPartial(px) || isPartial(pw)) throw new ShardingError(msgReduceFirst(op, axis, px, pw, isPartial(pw) ? "w" : "x"));
  // batch dims: x and counts sharded alike, weights whole
  if (dx !== undefined && sd.batch.includes(dx) && dc === dx && pw === "R") return px;
  // expert parallel: the rank's rows are the segments of its own groups
  // (x whole needs every group's counts, to skip the rows of groups before the rank's own)
  if (dw === sd.groups && ((px === `S(${sd.rows.name})` && (dc === sd.groups || pc === "R")) || (px === "R" && pc === "R"))) return `S(${sd.rows.name})`;
  if (dx === sd.k && dw === sd.k && dc === undefined) return "P(sum)";
  if (dw !== undefined && sd.n.includes(dw) && px === "R" && pc === "R") return pw;
  throw new ShardingError(msgTwoShards(op, axis, px, pw));
}

const segmentDot: OpDef = {
  name: "segment_dot",
  family: "contraction",
  args: ["x", "w", "counts"],
  shape: ([x, w, c], attrs) => {
    const sd = segDims(x!, w!, c!, attrs);
    const dims = [...x!.dims.filter((d) => d.name !== sd.k), ...w!.dims.filter((d) => sd.n.includes(d.name))];
    return [{ dims, dtype: contractDType("segment_dot", x!, w!, attrs) }];
  },
  shard: ([px, pw, pc], ctx) => [segmentDotRule(px!, pw!, pc!, segDims(ctx.inputs[0]!, ctx.inputs[1]!, ctx.inputs[2]!, ctx.attrs), ctx.axis)],
  cpu: ([x, w, c], attrs, ctx) => {
    const [tx, tw, tc] = ctx.inTypes as [TensorType, TensorType, TensorType];
    const sd = segDims(tx, tw, tc, attrs);
    const X = permuteTo(x!, tx, [...sd.batch, sd.rows.name, sd.k]);
    const W = permuteTo(w!, tw, [sd.groups, sd.k, ...sd.n]);
    const C = permuteTo(c!, tc, [...sd.batch, sd.groups]);
    const bt = sizeOf(x!, tx, sd.batch), rowsLocal = sizeOf(x!, tx, [sd.rows.name]), K = sizeOf(x!, tx, [sd.k]);
    const N = sizeOf(w!, tw, sd.n), gW = sizeOf(w!, tw, [sd.groups]), gC = sizeOf(c!, tc, [sd.groups]);
    // Which global groups do w and counts hold, and are x's rows packed for w's groups only?
    const wOff = ctx.inBoxes[1]!.offset[tw.dims.findIndex((d) => d.name === sd.groups)]!;
    const cOff = ctx.inBoxes[2]!.offset[tc.dims.findIndex((d) => d.name === sd.groups)]!;
    const rowsIdx = tx.dims.findIndex((d) => d.name === sd.rows.name);
    const xPacked = ctx.inBoxes[0]!.seg[rowsIdx] !== null;
    const outType = ctx.outTypes[0]!;
    const order = [...sd.batch, sd.rows.name, ...sd.n];
    const Y = newOut(outType.dtype, [...sd.batch.map((nm) => x!.shape[tx.dims.findIndex((d) => d.name === nm)]!), rowsLocal, N]);
    const yd = Y.data as Float32Array;
    for (let t = 0; t < bt; t++) {
      // when x holds every group's rows, skip those before w's first group; the output is packed
      let row = 0;
      if (!xPacked) for (let g = 0; g < wOff - cOff; g++) row += C.data[t * gC + g]!;
      const start = row;
      for (let g = 0; g < gW; g++) {
        const cnt = C.data[t * gC + (wOff - cOff) + g]!;
        const m = Math.max(0, Math.min(cnt, rowsLocal - row));
        const out = new Float32Array(m * N);
        batchedMatmul(X.data.subarray((t * rowsLocal + row) * K, (t * rowsLocal + row + m) * K), W.data.subarray(g * K * N, (g + 1) * K * N), 1, m, K, N, out);
        yd.set(out, (t * rowsLocal + row - start) * N);
        row += cnt;
      }
    }
    roundData(outType.dtype, yd);
    const orderedType = { ...outType, dims: order.map((nm) => outType.dims.find((d) => d.name === nm)!) };
    return [permuteTo(Y, orderedType, outType.dims.map((d) => d.name))];
  },
  // gx: the same grouped contraction against w's output dim; gw: the per-segment outer products
  grad: ({ b, x, gy, attrs, inTypes }) => {
    const [tx, tw, tc] = inTypes as [TensorType, TensorType, TensorType];
    const sd = segDims(tx, tw, tc, attrs);
    if (sd.n.length !== 1) throw new ShapeError(`segment_dot()'s gradient needs w to have exactly one output dim besides '${sd.k}' and '${sd.groups}'`);
    const gx = b.op("segment_dot", [gy[0]!, x[1]!, x[2]!], { contract: sd.n[0]! });
    const gw = b.op("segment_wgrad", [x[0]!, gy[0]!, x[2]!], { k: sd.k, n: sd.n[0]! });
    return [gx, gw, null];
  },
};

/**
 * The weight gradient of segment_dot: out[g, k, n] = sum over the rows r of segment g (every batch
 * index) of x[r, k] * gy[r, n].
 */
const segmentWgrad: OpDef = {
  name: "segment_wgrad",
  family: "contraction",
  args: ["x", "gy", "counts"],
  shape: ([x, gy, c], attrs) => {
    const rows = x!.dims.find((d) => d.segmented);
    if (!rows) throw new ShapeError("segment_wgrad() needs x to have a segmented rows dim");
    const k = String(attrs.k), n = String(attrs.n), groups = rows.segmented!.groups;
    needDim("segment_wgrad", x!, k, "x");
    needDim("segment_wgrad", gy!, n, "gy");
    checkSizes("segment_wgrad", x!.dims, gy!.dims);
    if (c!.dtype !== "i32") throw new ShapeError("segment_wgrad() counts must be i32");
    return [{ dims: [{ name: groups, size: rows.segmented!.numGroups }, findDim(x!, k)!, findDim(gy!, n)!], dtype: contractDType("segment_wgrad", x!, gy!, attrs) }];
  },
  shard: ([px, pg, pc], ctx) => [segmentWgradRule(px!, pg!, pc!, ctx.inputs[0]!, ctx.attrs, ctx.axis)],
  cpu: ([x, gy, c], attrs, ctx) => {
    const [tx, tg, tc] = ctx.inTypes as [TensorType, TensorType, TensorType];
    const rows = tx.dims.find((d) => d.segmented)!, groups = rows.segmented!.groups;
    const k = String(attrs.k), n = String(attrs.n);
    const batch = tc.dims.map((d) => d.name).filter((nm) => nm !== groups);
    const X = permuteTo(x!, tx, [...batch, rows.name, k]);
    const Gy = permuteTo(gy!, tg, [...batch, rows.name, n]);
    const C = permuteTo(c!, tc, [...batch, groups]);
    const bt = sizeOf(x!, tx, batch), R = sizeOf(x!, tx, [rows.name]), K = sizeOf(x!, tx, [k]), N = sizeOf(gy!, tg, [n]);
    const gC = sizeOf(c!, tc, [groups]);
    const outBox = ctx.outBoxes[0]!, gOut = ctx.outShapes[0]![0]!;
    const cOff = ctx.inBoxes[2]!.offset[tc.dims.findIndex((d) => d.name === groups)]!;
    const packed = ctx.inBoxes[0]!.seg[tx.dims.indexOf(rows)] !== null;
    const acc = new Float64Array(gOut * K * N);
    for (let t = 0; t < bt; t++) {
      let row = 0;
      // unpacked rows start with the segments of groups before the output's first group
      if (!packed) for (let g = 0; g < outBox.offset[0]! - cOff; g++) row += C.data[t * gC + g]!;
      for (let g = 0; g < gOut; g++) {
        const cnt = C.data[t * gC + (outBox.offset[0]! - cOff) + g]!;
        // acc[g] += X_seg^T · Gy_seg, through the matmul kernel on a transposed copy of the rows
        const m = Math.max(0, Math.min(row + cnt, R) - row);
        if (m > 0) {
          const xt = new Float32Array(K * m), xd = X.data, base = (t * R + row) * K;
          for (let r = 0; r < m; r++) for (let p = 0; p < K; p++) xt[p * m + r] = xd[base + r * K + p]!;
          const prod = new Float32Array(K * N);
          batchedMatmul(xt, Gy.data.subarray((t * R + row) * N, (t * R + row + m) * N), 1, K, m, N, prod);
          for (let i = 0, o = g * K * N; i < prod.length; i++) acc[o + i]! += prod[i]!;
        }
        row += cnt;
      }
    }
    const out = newOut(ctx.outTypes[0]!.dtype, ctx.outShapes[0]!);
    for (let i = 0; i < acc.length; i++) out.data[i] = acc[i]!;
    roundData(out.dtype, out.data);
    return [out];
  },
};

/** The one-axis rule of segment_wgrad (shared with scaled_segment_wgrad, which excludes Partial inputs). */
export function segmentWgradRule(px: Placement, pg: Placement, pc: Placement, x: TensorType, attrs: Attrs, axis: string, op = "segment_wgrad"): Placement {
  const rows = x.dims.find((d) => d.segmented)!, groups = rows.segmented!.groups;
  const k = String(attrs.k), n = String(attrs.n);
  if (px === "R" && pg === "R" && pc === "R") return "R";
  if (((px === "P(sum)" && pg === "R") || (px === "R" && pg === "P(sum)")) && pc === "R") return "P(sum)";
  if (px === `S(${rows.name})` && pg === px && (pc === `S(${groups})` || pc === "R")) return `S(${groups})`;
  const dx = shardDim(px);
  if (dx !== undefined && px === pg && pc === px && dx !== k && dx !== n) return "P(sum)"; // a batch dim
  if (px === `S(${k})` && pg === "R" && pc === "R") return px;
  if (pg === `S(${n})` && px === "R" && pc === "R") return pg;
  throw new ShardingError(msgTwoShards(op, axis, px, pg));
}

defineOps([dot, segmentDot, segmentWgrad]);
