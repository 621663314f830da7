// Geometry of the NVLink MoE transport, as pure functions of the plan: which batch entries each rank
// of the expert axis holds on the tokens' side and on the experts' side, where every row lands, and
// the byte layout of a receive window. The kernels (kernels/moe-nvlink-sources.ts) do the same index
// math on the device; pushRows / combineBack here do it on host arrays so the unit tests can check
// it against the CPU reference's pieces (test/unit/moe-nvlink-layout.test.ts).
//
// The layout to reproduce (compiler/ops/dispatch.ts, runtime/cpu/pieces.ts): an expert rank's piece
// of dispatch's rows is [...batch, rows, ...inner] over every batch entry of its group, and per batch
// entry it holds the rows of its own experts packed from row 0 (by expert, then slot order), zeros
// after. A source's rows of one batch entry, sorted by expert (the permute's perm order), are thus cut
// into W consecutive runs, run q going to rank q at the same batch entry from row 0: where a row lands
// needs only the source's own counts, never its peers'.
import type { Plan } from "../../compiler/plan.ts";
import type { MeshSpec } from "../../compiler/ir/types.ts";
import { coordsOf, rankOf } from "../../compiler/ir/placement.ts";
import { ShardtsError } from "../../compiler/errors.ts";
import { NVL_MAX_RANKS } from "./kernels/moe-nvlink-sources.ts";

/** The NVLink transport cannot run this op here; the caller uses the NCCL path and says why. */
export class NvlinkUnavailable extends ShardtsError {}

export interface NvlGeometry {
  /** Ranks of the expert axis group (global ranks, by coordinate on the axis) and this rank's coordinate. */
  ranks: number[];
  me: number;
  /** Batch entries of the expert-side piece (the same on every rank of the group). */
  Bdst: number;
  /** Per group rank s: the expert-side batch index of each of its token-side batch entries. */
  dstOf: Int32Array[];
  /** Per expert-side batch index: the group rank holding it on the tokens' side, and its index there. */
  srcRank: Int32Array;
  srcLb: Int32Array;
  /** Experts of group rank q: [efirst[q], efirst[q + 1]). */
  efirst: Int32Array;
}

const prod = (xs: number[]) => xs.reduce((a, b) => a * b, 1);

/**
 * `expertSlot`: a value whose `rows` dim is split by expert over `axis`; `tokenSlot`: one in the
 * tokens' layout (sharded over `axis` on a batch dim); `batch`: the batch dims (names).
 */
export function nvlGeometry(plan: Plan, expertSlot: number, tokenSlot: number, axis: string, rowsDim: string, batch: string[], rank: number): NvlGeometry {
  const mesh: MeshSpec = plan.mesh, a = mesh.axes.indexOf(axis);
  if (a < 0) throw new NvlinkUnavailable(`the op's expert axis '${axis}' is not a mesh axis`);
  const W = mesh.sizes[a]!, c = coordsOf(mesh, rank);
  if (W > NVL_MAX_RANKS) throw new NvlinkUnavailable(`expert axis '${axis}' has ${W} ranks; the NVLink kernels take at most ${NVL_MAX_RANKS}`);
  const ranks = Array.from({ length: W }, (_, q) => rankOf(mesh, c.map((x, i) => (i === a ? q : x))));
  const ev = plan.values[expertSlot]!, tv = plan.values[tokenSlot]!;
  const dimsOf = (v: typeof ev) => batch.map((n) => v.type.dims.findIndex((d) => d.name === n));
  const eIdx = dimsOf(ev), tIdx = dimsOf(tv);
  if ([...eIdx, ...tIdx].some((i) => i < 0)) throw new NvlinkUnavailable(`batch dims [${batch.join(", ")}] missing from the op's values`);
  const ri = ev.type.dims.findIndex((d) => d.name === rowsDim);
  const eBox = ev.boxes[ranks[0]!]!, eShape = eIdx.map((i) => ev.shapes[ranks[0]!]![i]!), eOff = eIdx.map((i) => eBox.offset[i]!);
  const efirst = new Int32Array(W + 1);
  ranks.forEach((r, q) => {
    const b = ev.boxes[r]!, s = b.seg[ri];
    if (!s) throw new NvlinkUnavailable(`the rows dim '${rowsDim}' is not split by expert over '${axis}'`);
    if (eIdx.some((i, k) => b.offset[i] !== eOff[k] || ev.shapes[r]![i] !== eShape[k])) throw new NvlinkUnavailable(`the expert side's batch entries differ across axis '${axis}'`);
    efirst[q] = s.firstGroup;
    efirst[q + 1] = s.firstGroup + s.numGroups;
  });
  const Bdst = prod(eShape), srcRank = new Int32Array(Bdst).fill(-1), srcLb = new Int32Array(Bdst);
  const dstOf = ranks.map((r, q) => {
    const tShape = tIdx.map((i) => tv.shapes[r]![i]!), tOff = tIdx.map((i) => tv.boxes[r]!.offset[i]!);
    const B = prod(tShape), m = new Int32Array(B);
    for (let lb = 0; lb < B; lb++) {
      // local batch coords -> global -> expert-side local -> flat (row-major over `batch`)
      let rest = lb, flat = 0, stride = 1;
      for (let k = batch.length - 1; k >= 0; k--) {
        const local = rest % tShape[k]!, e = tOff[k]! + local - eOff[k]!;
        rest = Math.floor(rest / tShape[k]!);
        if (e < 0 || e >= eShape[k]!) throw new NvlinkUnavailable(`rank ${r}'s batch entries are not all held by its expert-axis group`);
        flat += e * stride;
        stride *= eShape[k]!;
      }
      if (srcRank[flat] !== -1) throw new NvlinkUnavailable(`batch entry ${flat} is on the tokens' side of two ranks of axis '${axis}' (tokens replicated over it): no exchange to run`);
      m[lb] = flat;
      srcRank[flat] = q;
      srcLb[flat] = lb;
    }
    return m;
  });
  if (srcRank.some((s) => s < 0)) throw new NvlinkUnavailable(`some expert-side batch entries have no token-side owner on axis '${axis}'`);
  return { ranks, me: c[a]!, Bdst, dstOf, srcRank, srcLb, efirst };
}

/** Byte offsets in a receive window; flags first, so they stay put while the window keeps its size. */
export interface WindowLayout {
  flagN: number;
  flagR: number;
  /** Two parity areas (op epoch even / odd) of `countsCap` i32 each, then of `lensCap` i32 each. */
  counts: number;
  lens: number;
  rows: number;
  bytes: number;
  countsCap: number;
  lensCap: number;
  rowsCap: number;
}

const up = (x: number) => Math.ceil(x / 256) * 256;

/** A window holding W ranks' flags for `blocks` blocks, counts rows, lens and `rowsCap` row bytes. */
export function windowLayout(W: number, blocks: number, countsCap: number, lensCap: number, rowsCap: number): WindowLayout {
  const flagN = 0, flagR = up(W * blocks * 8), counts = flagR + up(W * blocks * 8);
  const lens = counts + 2 * up(countsCap * 4), rows = lens + 2 * up(lensCap * 4);
  return { flagN, flagR, counts, lens, rows, bytes: rows + up(rowsCap), countsCap, lensCap, rowsCap };
}

/** The counts and lens areas op `epoch` uses: a peer still reading the last op's (other parity) is not disturbed. */
export function parityAreas(l: WindowLayout, epoch: number): { counts: number; lens: number } {
  const p = epoch % 2;
  return { counts: l.counts + p * up(l.countsCap * 4), lens: l.lens + p * up(l.lensCap * 4) };
}

/** st[q] = a batch entry's sorted rows before rank q's experts (st[W] = rows kept), from its counts row. */
export function boundsFromCounts(counts: ArrayLike<number>, at: number, G: number, efirst: Int32Array): number[] {
  const W = efirst.length - 1, st = new Array<number>(W + 1).fill(0);
  for (let g = 0; g < G; g++) {
    let q = 0;
    while (g >= efirst[q + 1]!) q++;
    st[q + 1]! += counts[at + g]!;
  }
  for (let q = 0; q < W; q++) st[q + 1]! += st[q]!;
  return st;
}

/**
 * The push phase on host arrays: each group rank s's sorted token-side rows [Bloc, n, I] (rowOf(s, lb,
 * j) gives row j's values) into the expert ranks' [Bdst, n, I] windows. `bounds(s, lb)` is st above.
 */
export function pushRows(geo: NvlGeometry, n: number, I: number, rowOf: (s: number, lb: number, j: number) => ArrayLike<number>, bounds: (s: number, lb: number) => number[]): Float64Array[] {
  const W = geo.ranks.length, win = geo.ranks.map(() => new Float64Array(geo.Bdst * n * I));
  for (let s = 0; s < W; s++)
    geo.dstOf[s]!.forEach((b, lb) => {
      const st = bounds(s, lb);
      for (let j = 0, q = 0; j < st[W]!; j++) {
        while (j >= st[q + 1]!) q++;
        win[q]!.set(rowOf(s, lb, j), (b * n + j - st[q]!) * I);
      }
    });
  return win;
}

/** Combine's push: expert rank q's rows [Bdst, n, I] (lens[q][b] of them per b) back to the token side. */
export function combineBack(geo: NvlGeometry, n: number, I: number, rows: ArrayLike<number>[], lens: number[][]): Float64Array[] {
  const W = geo.ranks.length;
  const win = geo.dstOf.map((m) => new Float64Array(m.length * n * I));
  for (let q = 0; q < W; q++)
    for (let b = 0; b < geo.Bdst; b++) {
      let start = 0;
      for (let p = 0; p < q; p++) start += lens[p]![b]!;
      for (let j = 0; j < lens[q]![b]!; j++) {
        const from = (b * n + j) * I;
        win[geo.srcRank[b]!]!.set(Array.prototype.slice.call(rows[q]!, from, from + I) as number[], (geo.srcLb[b]! * n + start + j) * I);
      }
    }
  return win;
}
