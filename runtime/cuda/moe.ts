// MoE dispatch / combine / redispatch on the CUDA backend. Each op is its local kernels
// (kernels/moe-sources.ts: the fused permute, the row gather, the un-permute + weighted combine) and
// the exchange over the op's mesh axis, written as redistribute steps between a "token-side" value
// (the rows in the tokens' layout) and the op's own value. The executor runs those steps as it runs
// any plan comm step: NCCL all-to-all-v (grouped send/recv, lower.ts) under `shardts launch`, the
// CPU simulation when one GPU holds every rank. So the count exchange and the token exchange reuse
// the plan's lowering, and dispatch equals its CPU reference bit for bit.
import type { TensorType } from "../../compiler/ir/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import { numel } from "../../compiler/ir/types.ts";
import { CompileError } from "../../compiler/errors.ts";
import { Extra, move, tokenSide, type RunStep } from "./moe-exchange.ts";
import { empty, type DeviceTensor } from "./memory.ts";
import type { KernelArg } from "./native.ts";
import * as K from "./kernels/sources.ts";
import * as M from "./kernels/moe-sources.ts";
import type { CudaExecutor } from "./executor.ts";
import { runMoeNvlink } from "./moe-nvlink.ts";

const names = (t: TensorType) => t.dims.map((d) => d.name);

type OpInstr = Extract<Plan["instrs"][number], { kind: "op" }>;
function launch(exe: CudaExecutor, k: { name: string; source: string }, blocks: number, threads: number, args: KernelArg[]): void {
  if (blocks <= 0) return;
  exe.launchGrid(k, Math.min(blocks, exe.smCount * 8), threads, args);
}

/** Rows of `words` words gathered by perm; the word is the widest the row bytes and pointers allow. */
function gatherRows(exe: CudaExecutor, out: DeviceTensor, src: DeviceTensor, perm: DeviceTensor, rows: number, n: number, per: number, srcRows: number, rowBytes: number): void {
  const V = M.gatherWord(rowBytes, [out.ptr, src.ptr]);
  launch(exe, M.moeGatherRows(V), Math.ceil(rows / 8), 256, [["ptr", out.ptr], ["ptr", src.ptr], ["ptr", perm.ptr], ["i64", rows], ["i32", n], ["i32", per], ["i64", srcRows], ["i64", rowBytes / V]]);
}

function needFloat(op: string, t: TensorType): "f32" | "bf16" {
  if (t.dtype !== "f32" && t.dtype !== "bf16") throw new CompileError(`the CUDA backend's ${op} computes in f32 or bf16, got ${t.dtype}; cast first`);
  return t.dtype;
}

/**
 * moe_combine's exchange alone: its rows (input 0) back to the tokens' layout. The executor issues it
 * right after the instruction that writes those rows (rank-local, NCCL transport), so its comm step
 * waits for the compute issued up to there and no more (the other micro-batch's experts issued in
 * between run beside it); the combine then runs on the moved rows (`runMoe`'s `moved`).
 */
export function combineExchange(plan: Plan, ins: OpInstr, ranks: number[], slots: (DeviceTensor[] | undefined)[], run: RunStep<DeviceTensor>): DeviceTensor[] {
  const tr = plan.values[ins.inputs[0]!]!.type, tp = plan.values[ins.inputs[1]!]!.type, rowsDim = tp.dims.find((d) => d.segmented)!;
  const segCounts = { [rowsDim.name]: plan.values[ins.inputs[1]!]!.segCounts[rowsDim.name]! };
  const ex = new Extra(plan);
  // the way back: rows to the tokens' layout
  const back = ex.add({ ...tr, placements: tokenSide(tr.placements, tp.placements, [rowsDim.name]) }, segCounts);
  const mine = ranks.reduce((acc, r) => ((acc[r] = slots[ins.inputs[0]!]![r]!), acc), [] as DeviceTensor[]);
  return move(ex, run, tr, ins.inputs[0]!, tr.placements, back, ex.typeOf(back).placements, mine, segCounts, false);
}

/** One MoE op; `moved`: a combine whose exchange was issued already (combineExchange), its moved rows. */
export function runMoe(exe: CudaExecutor, plan: Plan, ins: OpInstr, ranks: number[], slots: (DeviceTensor[] | undefined)[], run: RunStep<DeviceTensor>, moved?: DeviceTensor[]): void {
  if (!moved && runMoeNvlink(exe, plan, ins, slots)) return; // SHARDTS_MOE_TRANSPORT=nvlink within a node (moe-nvlink.ts)
  const a = ins.attrs, ex = new Extra(plan);
  const tIn = ins.inputs.map((s) => plan.values[s]!.type), tOut = ins.outputs.map((s) => plan.values[s]!.type);
  const piece = (s: number, r: number) => slots[s]![r]!;
  const local = (t: DeviceTensor, d: string[], shapeNames: string[]) => shapeNames.reduce((p, n) => p * t.shape[d.indexOf(n)]!, 1);
  const seq = String(a.dim), kDim = String(a.k);
  const temps: DeviceTensor[] = [];
  const tmp = (t: DeviceTensor) => (temps.push(t), t);

  if (ins.op === "moe_dispatch") {
    const [tx, ti] = tIn as [TensorType, TensorType], [tr, , tc] = tOut as [TensorType, TensorType, TensorType];
    const rowsName = String(a.rows), groups = String(a.groups), G = Number(a.numGroups);
    if (G > M.MOE_MAX_GROUPS) throw new CompileError(`moe_dispatch on CUDA sorts by at most ${M.MOE_MAX_GROUPS} experts, got ${G}`);
    const batch = names(ti).filter((n) => n !== seq && n !== kDim), inner = names(tx).filter((n) => n !== seq && !batch.includes(n));
    const segCounts = { [rowsName]: ins.outputs[2]! };
    const rowsSrc = ex.add({ ...tr, placements: tokenSide(tr.placements, ti.placements, [rowsName]) }, segCounts);
    const countsSrc = ex.add({ ...tc, placements: tokenSide(tc.placements, ti.placements, [groups]) }, {});
    const rowsP: DeviceTensor[] = [], countsP: DeviceTensor[] = [];
    for (const r of ranks) {
      const X = exe.reorder(piece(ins.inputs[0]!, r), names(tx), [...batch, seq, ...inner]);
      const I = exe.reorder(piece(ins.inputs[1]!, r), names(ti), [...batch, seq, kDim]);
      const B = local(I, [...batch, seq, kDim], batch), S = I.shape[batch.length]!, Kk = I.shape[batch.length + 1]!, n = S * Kk;
      const perm = empty(exe.mem, "i32", plan.values[ins.outputs[1]!]!.shapes[r]!);
      const counts = empty(exe.mem, "i32", ex.shapeOf(countsSrc, r));
      const rows = empty(exe.mem, tx.dtype, ex.shapeOf(rowsSrc, r));
      launch(exe, M.moeRoute(), B, M.MOE_ROUTE_BLOCK, [["ptr", counts.ptr], ["ptr", perm.ptr], ["ptr", I.ptr], ["i64", B], ["i32", n], ["i32", G]]);
      gatherRows(exe, rows, X, perm, B * n, n, Kk, S, local(X, [...batch, seq, ...inner], inner) * K.elemBytes(tx.dtype));
      if (X !== piece(ins.inputs[0]!, r)) exe.release(X);
      if (I !== piece(ins.inputs[1]!, r)) exe.release(I);
      (slots[ins.outputs[1]!] ??= [])[r] = perm;
      rowsP[r] = rows;
      countsP[r] = counts;
    }
    // the count exchange, then the token exchange (its sizes are the exchanged counts)
    slots[ins.outputs[2]!] = move(ex, run, tc, countsSrc, ex.typeOf(countsSrc).placements, ins.outputs[2]!, tc.placements, countsP, {}, true);
    slots[ins.outputs[0]!] = move(ex, run, tr, rowsSrc, ex.typeOf(rowsSrc).placements, ins.outputs[0]!, tr.placements, rowsP, segCounts, true);
    return;
  }

  // combine and redispatch: perm [...batch, rows~seg] is in the tokens' layout
  const tp = tIn[1]!, rowsDim = tp.dims.find((d) => d.segmented)!;
  const batch = names(tp).filter((n) => n !== rowsDim.name), S = Number(a.size), Kk = Number(a.numK), n = S * Kk;
  const segCounts = { [rowsDim.name]: plan.values[ins.inputs[1]!]!.segCounts[rowsDim.name]! };
  const hasW = ins.inputs.length === 3;
  // the weights in [...batch, seq, k] order: a reordered copy is a temporary, the slot's own piece is not
  // (releasing that one handed a live buffer back to the pool: later ops got aliased buffers)
  const W = (r: number) => {
    if (!hasW) return undefined;
    const own = piece(ins.inputs[2]!, r), w = exe.reorder(own, names(tIn[2]!), [...batch, seq, kDim]);
    return w === own ? w : tmp(w);
  };
  const P = (r: number) => exe.reorder(piece(ins.inputs[1]!, r), names(tp), [...batch, rowsDim.name]);

  if (ins.op === "moe_combine") {
    const tr = tIn[0]!, ty = tOut[0]!, dt = needFloat("moe_combine", tr), keepK = a.keepK === true;
    if (Kk > 16) throw new CompileError(`the CUDA backend's moe_combine takes at most 16 slots per token, got ${Kk}`);
    const inner = names(tr).filter((nm) => nm !== rowsDim.name && !batch.includes(nm));
    moved ??= combineExchange(plan, ins, ranks, slots, run);
    for (const r of ranks) {
      const R = exe.reorder(moved[r]!, names(tr), [...batch, rowsDim.name, ...inner]), p = P(r);
      const Bn = numel(p.shape), I = numel(R.shape) / Math.max(1, Bn), B = Bn / n;
      const pos = empty(exe.mem, "i32", p.shape);
      if (Bn) exe.addon.memsetD8(pos.ptr, 0xff, Bn * 4, exe.stream);
      exe.launch1D(M.moeInvert(), Bn, [["ptr", pos.ptr], ["ptr", p.ptr], ["i64", Bn], ["i32", n]]);
      const order = [...batch, seq, ...(keepK ? [kDim] : []), ...inner];
      const shape = plan.values[ins.outputs[0]!]!.shapes[r]!;
      const Y = empty(exe.mem, dt, order.map((d) => shape[ty.dims.findIndex((e) => e.name === d)]!));
      const w = W(r);
      launch(exe, M.moeCombine(dt, M.combineVec(dt, I, [Y.ptr, R.ptr])), Math.ceil((B * S) / 8), 256, [["ptr", Y.ptr], ["ptr", R.ptr], ["ptr", pos.ptr], ["ptr", w ? w.ptr : 0n], ["i64", B * S], ["i32", S], ["i32", Kk], ["i32", I], ["i32", keepK ? 1 : 0]]);
      (slots[ins.outputs[0]!] ??= [])[r] = exe.reorderOwned(Y, order, names(ty));
      for (const t of [R === moved[r] ? undefined : R, p === piece(ins.inputs[1]!, r) ? undefined : p, pos]) exe.release(t);
      if (moved[r] !== piece(ins.inputs[0]!, r)) exe.release(moved[r]);
    }
  } else {
    // moe_redispatch: weighted rows in the tokens' layout, then to the op's layout
    const ts = tIn[0]!, tr = tOut[0]!, keepK = ts.dims.some((d) => d.name === kDim);
    const inner = names(ts).filter((nm) => nm !== seq && nm !== kDim && !batch.includes(nm));
    const rowsSrc = ex.add({ ...tr, placements: tokenSide(tr.placements, tp.placements, [rowsDim.name]) }, segCounts);
    const rowsP: DeviceTensor[] = [];
    for (const r of ranks) {
      const order = [...batch, seq, ...(keepK ? [kDim] : []), ...inner];
      const X = exe.reorder(piece(ins.inputs[0]!, r), names(ts), order), p = P(r);
      const Bn = numel(p.shape), I = local(X, order, inner);
      const rows = empty(exe.mem, ts.dtype, ex.shapeOf(rowsSrc, r));
      const w = W(r), per = keepK ? 1 : Kk, srcRows = keepK ? n : S;
      if (w) launch(exe, M.moeGatherWeighted(needFloat("moe_redispatch", ts)), Math.ceil(Bn / 8), 256, [["ptr", rows.ptr], ["ptr", X.ptr], ["ptr", p.ptr], ["ptr", w.ptr], ["i64", Bn], ["i32", n], ["i32", per], ["i64", srcRows], ["i32", I]]);
      else gatherRows(exe, rows, X, p, Bn, n, per, srcRows, I * K.elemBytes(ts.dtype));
      rowsP[r] = rows;
      if (X !== piece(ins.inputs[0]!, r)) exe.release(X);
      if (p !== piece(ins.inputs[1]!, r)) exe.release(p);
    }
    slots[ins.outputs[0]!] = move(ex, run, tr, rowsSrc, ex.typeOf(rowsSrc).placements, ins.outputs[0]!, tr.placements, rowsP, segCounts, true);
  }
  for (const t of temps) exe.release(t);
}
