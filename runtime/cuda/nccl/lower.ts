// Lowering one redistribute step of a plan, for one rank, to a list of NCCL calls on buffers: a pure
// function (runtime/cuda/nccl/collectives.ts runs the list on a GPU; the unit tests run it on host
// arrays against the CPU reference's simulation). Buffers are named: "in" (this rank's input piece),
// "out" (its output piece) and temporaries "t0", "t1", ... that the list allocates.
//
// Dense all-gather, reduce-scatter and all-reduce go to the NCCL collective of the mesh axis's
// communicator, straight from and into the pieces when the moved dim is outermost and the split even,
// else through padded staging buffers (uneven splits: first ranks one larger; NCCL wants equal
// counts). All-to-all and anything with a segmented (data-dependent) dim is all-to-all-v: grouped
// send/recv of exactly the regions transfers.ts computes, packed where they are not contiguous.
// `packIssue` turns a list of allocs and NCCL calls into the typed arrays of one native ncclIssue.
import type { Plan } from "../../../compiler/plan.ts";
import type { ReduceOp } from "../../../compiler/ir/types.ts";
import { stridesOf } from "../../../compiler/ir/local.ts";
import { groupAlong } from "../../../compiler/ir/placement.ts";
import { fmtStep, type PlannedStep } from "../../../compiler/passes/redistribute-plan.ts";
import { CompileError } from "../../../compiler/errors.ts";
import { NcclIssueOp } from "../native-types.ts";
import { isContiguous, numelOf, segDimOf, transfers, wholeView, type Counts, type Transfer, type View } from "./transfers.ts";

export type { View };
/** A position in a buffer, in elements. */
export interface Span {
  buf: string;
  at: number;
}

export type Call =
  | { op: "alloc"; buf: string; elems: number }
  | { op: "zero"; buf: string; elems: number }
  | { op: "copy"; src: View; dst: View }
  | { op: "all_gather"; send: Span; recv: Span; count: number }
  | { op: "reduce_scatter"; send: Span; recv: Span; count: number; reduce: ReduceOp }
  | { op: "all_reduce"; send: Span; recv: Span; count: number; reduce: ReduceOp }
  | { op: "group_start" }
  | { op: "group_end" }
  /** peer: the index in the axis group (the rank in the axis communicator). */
  | { op: "send"; peer: number; span: Span; count: number }
  | { op: "recv"; peer: number; span: Span; count: number };

export interface Lowered {
  /** Mesh axis whose communicator runs the calls. */
  axis: number;
  /** World ranks of the axis group, in communicator order; `me` is this rank's index in it. */
  group: number[];
  me: number;
  /** Elements of the output piece. */
  outElems: number;
  calls: Call[];
  /** e.g. "all_gather[dp](tokens)", for messages. */
  what: string;
}

const padded = (shape: number[], d: number, size: number) => shape.map((s, i) => (i === d ? size : s));

export function lowerStep(plan: Plan, step: PlannedStep, inSlot: number, outSlot: number, rank: number, counts: Counts): Lowered {
  const inV = plan.values[inSlot]!, outV = plan.values[outSlot]!;
  const group = groupAlong(plan.mesh, rank, step.axis), me = group.indexOf(rank), n = group.length;
  const sIn = inV.shapes[rank]!, sOut = outV.shapes[rank]!;
  const calls: Call[] = [];
  let temps = 0;
  const temp = (elems: number) => {
    const buf = `t${temps++}`;
    calls.push({ op: "alloc", buf, elems });
    return buf;
  };
  const dimIdx = (name: string) => inV.type.dims.findIndex((d) => d.name === name);
  const segAnywhere = group.some((k) => group.some((j) => segDimOf(inV, outV, k, j) >= 0));
  const base = { axis: step.axis, group, me, outElems: numelOf(sOut), what: fmtStep(step, plan.mesh) };
  const done = () => ({ ...base, calls });

  // all-to-all-v: each pair's regions, packed where not contiguous; this rank's own region a send to
  // itself inside the group where contiguous on both sides (NCCL copies it while the peers' data moves,
  // as torch's all_to_all_single does), else copied before the group
  const p2p = (pairs: (k: number, j: number) => Transfer[], srcBuf = "in") => {
    if (group.some((_, k) => segDimOf(inV, outV, group[k]!, rank) >= 0)) calls.push({ op: "zero", buf: "out", elems: numelOf(sOut) });
    const rename = (ts: Transfer[]) => ts.map((t) => ({ src: { ...t.src, buf: srcBuf }, dst: t.dst }));
    const sends: [number, Span, number][] = [], recvs: [number, Span, number][] = [], unpack: Call[] = [];
    const self = rename(pairs(me, me)), selfN = self.reduce((a, t) => a + numelOf(t.src.shape), 0);
    const selfInGroup = self.length === 1 && selfN > 0 && isContiguous(self[0]!.src) && isContiguous(self[0]!.dst);
    if (!selfInGroup) for (const t of self) calls.push({ op: "copy", src: t.src, dst: t.dst });
    group.forEach((_, j) => {
      if (j === me) return;
      const out = rename(pairs(me, j)), total = out.reduce((a, t) => a + numelOf(t.src.shape), 0);
      if (total === 0) return;
      if (out.length === 1 && isContiguous(out[0]!.src)) return sends.push([j, { buf: srcBuf, at: out[0]!.src.at }, total]);
      const buf = temp(total);
      let at = 0;
      for (const t of out) calls.push({ op: "copy", src: t.src, dst: { buf, at: (at += numelOf(t.src.shape)) - numelOf(t.src.shape), shape: t.src.shape, strides: stridesOf(t.src.shape) } });
      sends.push([j, { buf, at: 0 }, total]);
    });
    group.forEach((_, k) => {
      if (k === me) return;
      const inn = pairs(k, me), total = inn.reduce((a, t) => a + numelOf(t.dst.shape), 0);
      if (total === 0) return;
      if (inn.length === 1 && isContiguous(inn[0]!.dst)) return recvs.push([k, { buf: "out", at: inn[0]!.dst.at }, total]);
      const buf = temp(total);
      let at = 0;
      for (const t of inn) unpack.push({ op: "copy", src: { buf, at: (at += numelOf(t.dst.shape)) - numelOf(t.dst.shape), shape: t.dst.shape, strides: stridesOf(t.dst.shape) }, dst: t.dst });
      recvs.push([k, { buf, at: 0 }, total]);
    });
    if (sends.length || recvs.length) {
      // (only in a group that moves data between ranks anyway: a purely local step stays a copy)
      if (selfInGroup) (sends.push([me, { buf: self[0]!.src.buf, at: self[0]!.src.at }, selfN]), recvs.push([me, { buf: self[0]!.dst.buf, at: self[0]!.dst.at }, selfN]));
      calls.push({ op: "group_start" });
      for (const [peer, span, count] of sends) calls.push({ op: "send", peer, span, count });
      for (const [peer, span, count] of recvs) calls.push({ op: "recv", peer, span, count });
      calls.push({ op: "group_end" });
    }
    else if (selfInGroup) calls.push({ op: "copy", src: self[0]!.src, dst: self[0]!.dst });
    calls.push(...unpack);
  };
  const pairsOf = (k: number, j: number) => transfers(plan, inV, outV, group[k]!, group[j]!, counts);

  switch (step.kind) {
    case "all_reduce":
      if (numelOf(sIn)) calls.push({ op: "all_reduce", send: { buf: "in", at: 0 }, recv: { buf: "out", at: 0 }, count: numelOf(sIn), reduce: step.reduce });
      return done();
    case "partialize":
      if (me === 0 || step.reduce === "max") calls.push({ op: "copy", src: wholeView("in", sIn), dst: wholeView("out", sOut) });
      else calls.push({ op: "zero", buf: "out", elems: numelOf(sOut) });
      return done();
    case "local_slice":
      p2p((k, j) => (k === j ? pairsOf(k, j) : []));
      return done();
    case "all_to_all":
      p2p(pairsOf);
      return done();
    case "all_gather": {
      if (segAnywhere) return p2p(pairsOf), done();
      const d = dimIdx(step.dim), sz = group.map((k) => inV.shapes[k]![d]!), max = Math.max(...sz);
      const outer = numelOf(sIn.slice(0, d)), blk = numelOf(padded(sIn, d, max));
      if (blk === 0) return done();
      if (outer === 1 && sz.every((s) => s === max)) {
        calls.push({ op: "all_gather", send: { buf: "in", at: 0 }, recv: { buf: "out", at: 0 }, count: blk });
        return done();
      }
      const P = stridesOf(padded(sIn, d, max));
      let send: Span = { buf: "in", at: 0 };
      if (sz[me] !== max) {
        send = { buf: temp(blk), at: 0 };
        calls.push({ op: "copy", src: wholeView("in", sIn), dst: { buf: send.buf, at: 0, shape: sIn, strides: P } });
      }
      const recv = temp(n * blk);
      calls.push({ op: "all_gather", send, recv: { buf: recv, at: 0 }, count: blk });
      const stOut = stridesOf(sOut);
      group.forEach((k, m) => {
        const off = inV.boxes[k]!.offset[d]! - outV.boxes[rank]!.offset[d]!;
        const shape = padded(sIn, d, sz[m]!);
        if (numelOf(shape)) calls.push({ op: "copy", src: { buf: recv, at: m * blk, shape, strides: P }, dst: { buf: "out", at: off * stOut[d]!, shape, strides: stOut } });
      });
      return done();
    }
    case "reduce_scatter": {
      if (segAnywhere) {
        // reduce everything, then keep this rank's rows: exact, if not the fewest bytes
        const full = temp(numelOf(sIn));
        if (numelOf(sIn)) calls.push({ op: "all_reduce", send: { buf: "in", at: 0 }, recv: { buf: full, at: 0 }, count: numelOf(sIn), reduce: step.reduce });
        p2p((k, j) => (k === j ? pairsOf(k, j) : []), full);
        return done();
      }
      const d = dimIdx(step.dim), sz = group.map((k) => outV.shapes[k]![d]!), max = Math.max(...sz);
      const off = group.map((k) => outV.boxes[k]!.offset[d]! - inV.boxes[rank]!.offset[d]!);
      const outer = numelOf(sIn.slice(0, d)), blk = numelOf(padded(sIn, d, max));
      if (blk === 0) return done();
      if (outer === 1 && sz.every((s, m) => s === max && off[m] === m * max)) {
        calls.push({ op: "reduce_scatter", send: { buf: "in", at: 0 }, recv: { buf: "out", at: 0 }, count: blk, reduce: step.reduce });
        return done();
      }
      const P = stridesOf(padded(sIn, d, max)), stIn = stridesOf(sIn);
      const send = temp(n * blk);
      group.forEach((_, m) => {
        const shape = padded(sIn, d, sz[m]!);
        if (numelOf(shape)) calls.push({ op: "copy", src: { buf: "in", at: off[m]! * stIn[d]!, shape, strides: stIn }, dst: { buf: send, at: m * blk, shape, strides: P } });
      });
      const recv = temp(blk);
      calls.push({ op: "reduce_scatter", send: { buf: send, at: 0 }, recv: { buf: recv, at: 0 }, count: blk, reduce: step.reduce });
      if (numelOf(sOut)) calls.push({ op: "copy", src: { buf: recv, at: 0, shape: sOut, strides: P }, dst: wholeView("out", sOut) });
      return done();
    }
  }
}

/**
 * A lowered step as ncclIssue's arguments (native-types.ts), packed once per (plan step, rank):
 * per issue only the buffers' base pointers change. `ptrs` holds in, out, then the temporaries,
 * in that order, and is written by each issue (read by the native call, synchronously).
 */
export interface Packed {
  ops: Int32Array;
  counts: Float64Array;
  ptrs: BigUint64Array;
  /** Temporaries to allocate per issue, in lowering order: [index in ptrs, elements]. */
  allocs: [number, number][];
  /** Indices of the calls whose status RankLocal accounts for (collectives and group ends), in order. */
  counted: number[];
}

/**
 * `low` packed for ncclIssue, or null when it has a call the native issue does not make (a zero
 * fill or copy: memsets and kernels on the comm stream between NCCL calls). `red` gives a reduction's
 * NcclRedOp (and refuses one the dtype cannot take).
 */
export function packIssue(low: Lowered, red: (r: ReduceOp) => number): Packed | null {
  if (low.calls.some((c) => c.op === "zero" || c.op === "copy")) return null;
  const bufs = new Map<string, number>([["in", 0], ["out", 1]]), allocs: [number, number][] = [], counted: number[] = [];
  const ops: number[] = [], counts: number[] = [];
  const buf = (s: Span) => bufs.get(s.buf)!;
  let grouped = false;
  for (const c of low.calls) {
    switch (c.op) {
      case "alloc":
        bufs.set(c.buf, bufs.size);
        allocs.push([bufs.size - 1, c.elems]);
        continue;
      case "all_gather":
      case "reduce_scatter":
      case "all_reduce":
        counted.push(ops.length / 4);
        ops.push(NcclIssueOp[c.op], buf(c.send), buf(c.recv), c.op === "all_gather" ? 0 : red(c.reduce));
        counts.push(c.count, c.send.at, c.recv.at);
        continue;
      case "send":
      case "recv":
        ops.push(NcclIssueOp[c.op], buf(c.span), 0, c.peer);
        counts.push(c.count, c.span.at, 0);
        continue;
      case "group_start":
        grouped = true;
        ops.push(NcclIssueOp.group_start, 0, 0, 0);
        counts.push(0, 0, 0);
        continue;
      case "group_end":
        if (!grouped) throw new CompileError("group_end without group_start in a lowered comm step (a shardts bug)");
        grouped = false;
        counted.push(ops.length / 4);
        ops.push(NcclIssueOp.group_end, 0, 0, 0);
        counts.push(0, 0, 0);
        continue;
    }
  }
  return { ops: Int32Array.from(ops), counts: Float64Array.from(counts), ptrs: new BigUint64Array(bufs.size), allocs, counted };
}
