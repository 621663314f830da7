// A tiny host "NCCL" for the lowering tests: runs every rank's call list (runtime/cuda/nccl/lower.ts)
// on host arrays in lock step, collectives matched across each axis group in call order and
// send/recv pairs matched within a group. Fresh buffers (and the output) start as NaN, so a region
// the lowering forgets to write shows up in the comparison.
import type { DType } from "../../../compiler/ir/types.ts";
import { roundData } from "../../../compiler/ops/cpu-util.ts";
import type { Call, Lowered, View } from "../../../runtime/cuda/nccl/lower.ts";

type Bufs = Map<string, Float64Array>;

function each(v: View, f: (at: number, i: number) => void): void {
  const n = v.shape.reduce((a, b) => a * b, 1);
  for (let i = 0; i < n; i++) {
    let rem = i, at = v.at;
    for (let d = v.shape.length - 1; d >= 0; d--) {
      at += (rem % v.shape[d]!) * v.strides[d]!;
      rem = Math.floor(rem / v.shape[d]!);
    }
    f(at, i);
  }
}

function reduce(dtype: DType, op: "sum" | "max", parts: Float64Array[], from: number[], count: number): Float64Array {
  const acc = new Float64Array(count).fill(op === "max" ? -Infinity : 0);
  parts.forEach((p, m) => {
    for (let i = 0; i < count; i++) {
      const x = p[from[m]! + i]!;
      acc[i] = op === "sum" ? acc[i]! + x : x > acc[i]! || x !== x ? x : acc[i]!;
    }
  });
  const t = dtype === "i32" ? Int32Array.from(acc) : Float32Array.from(acc);
  roundData(dtype, t);
  return Float64Array.from(t);
}

/** Runs the lowered steps of all ranks; `inputs[r]` is rank r's input piece. Returns each rank's output. */
export function emulate(lowered: Lowered[], inputs: ArrayLike<number>[], dtype: DType): Float64Array[] {
  const W = lowered.length;
  const bufs: Bufs[] = lowered.map((l, r) => new Map([["in", Float64Array.from(inputs[r]!)], ["out", new Float64Array(l.outElems).fill(NaN)]]));
  const pc = new Array<number>(W).fill(0);
  const buf = (r: number, name: string) => {
    const b = bufs[r]!.get(name);
    if (!b) throw new Error(`rank ${r}: buffer ${name} used before alloc`);
    return b;
  };
  const isComm = (c: Call) => c.op !== "alloc" && c.op !== "zero" && c.op !== "copy";
  for (let guard = 0; guard < 10_000; guard++) {
    // local calls up to the next communication
    for (let r = 0; r < W; r++)
      for (let c = lowered[r]!.calls[pc[r]!]; c && !isComm(c); c = lowered[r]!.calls[++pc[r]!]) {
        if (c.op === "alloc") bufs[r]!.set(c.buf, new Float64Array(c.elems).fill(NaN));
        else if (c.op === "zero") buf(r, c.buf).fill(0, 0, c.elems);
        else {
          const src = buf(r, c.src.buf), dst = buf(r, c.dst.buf), vals: number[] = [];
          each(c.src, (at) => vals.push(src[at]!));
          each(c.dst, (at, i) => (dst[at] = vals[i]!));
        }
      }
    if (pc.every((p, r) => p >= lowered[r]!.calls.length)) return bufs.map((b) => b.get("out")!);
    const done = new Set<number>();
    for (let r = 0; r < W; r++) {
      if (done.has(r) || pc[r]! >= lowered[r]!.calls.length) continue;
      const g = lowered[r]!.group;
      g.forEach((q) => done.add(q));
      const cs = g.map((q) => lowered[q]!.calls[pc[q]!]);
      if (cs.some((c) => !c || c.op !== cs[0]!.op)) throw new Error(`group ${g}: mismatched calls ${cs.map((c) => c?.op)}`);
      const c0 = cs[0]!;
      if (c0.op === "all_gather" || c0.op === "all_reduce" || c0.op === "reduce_scatter") {
        const cc = cs as Extract<Call, { op: typeof c0.op }>[];
        if (cc.some((c) => c.count !== c0.count)) throw new Error(`${c0.op}: counts differ ${cc.map((c) => c.count)}`);
        const sends = cc.map((c, m) => buf(g[m]!, c.send.buf)), n = c0.count;
        g.forEach((q, m) => {
          const c = cc[m]!, recv = buf(q, c.recv.buf);
          if (c.op === "all_gather") sends.forEach((s, k) => recv.set(s.subarray(cc[k]!.send.at, cc[k]!.send.at + n), c.recv.at + k * n));
          else if (c.op === "all_reduce") recv.set(reduce(dtype, c.reduce, sends, cc.map((x) => x.send.at), n), c.recv.at);
          else recv.set(reduce(dtype, c.reduce, sends, cc.map((x) => x.send.at + m * n), n), c.recv.at);
        });
        g.forEach((q) => pc[q]!++);
        continue;
      }
      if (c0.op !== "group_start") throw new Error(`unexpected ${c0.op}`);
      const ops = g.map((q) => {
        const list: Extract<Call, { op: "send" | "recv" }>[] = [];
        let c = lowered[q]!.calls[++pc[q]!];
        for (; c && c.op !== "group_end"; c = lowered[q]!.calls[++pc[q]!]) {
          if (c.op !== "send" && c.op !== "recv") throw new Error(`${c.op} inside a group`);
          list.push(c);
        }
        pc[q]!++;
        return list;
      });
      g.forEach((q, m) => {
        for (const rv of ops[m]!.filter((c) => c.op === "recv")) {
          const nth = ops[m]!.filter((c) => c.op === "recv" && c.peer === rv.peer).indexOf(rv);
          const sd = ops[rv.peer]!.filter((c) => c.op === "send" && c.peer === m)[nth];
          if (!sd) throw new Error(`rank ${q} receives from group index ${rv.peer}, which sends nothing back`);
          if (sd.count !== rv.count) throw new Error(`send ${sd.count} elements, recv ${rv.count}`);
          buf(q, rv.span.buf).set(buf(g[rv.peer]!, sd.span.buf).subarray(sd.span.at, sd.span.at + sd.count), rv.span.at);
        }
        const sendsOut = ops[m]!.filter((c) => c.op === "send");
        for (const sd of sendsOut) if (!ops[sd.peer]!.some((c) => c.op === "recv" && c.peer === m)) throw new Error(`rank ${q} sends to group index ${sd.peer}, which does not receive`);
      });
    }
  }
  throw new Error("emulation did not finish");
}
