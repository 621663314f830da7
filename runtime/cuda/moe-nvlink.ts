// MoE dispatch / combine / redispatch over NVLink within a node (SHARDTS_MOE_TRANSPORT=nvlink): the
// permute kernel as on the NCCL path, then one kernel on a bounded number of SMs (SHARDTS_MOE_SMS)
// that stores rows straight from the tokens into the peers' windows (ipc.ts) and, after a device-side
// barrier, copies its own window into the op's output. No host round trip for counts, no permuted
// copy. The kernels run on the communication stream (SHARDTS_MOE_NVLINK_STREAM, `nvlinkStream`), ordered
// like a plan comm step (RankLocal.onComm): a dispatch/redispatch's rows are waited for by their reader, a
// combine's push waits in the window for the combine's own kernels (its push may go out early, right after
// its rows' writer: the executor's `nvlCombinesAfter`, never past another MoE op, whose peers would store into
// the window meanwhile). Used under `shardts launch` where the op's expert axis lies within one node and its GPUs have
// peer access; anything else (another node, no peer access, a layout with nothing to exchange) runs
// on the NCCL path, said once per expert-axis group. Outputs equal the NCCL path's bit for bit: the
// same permute, the same row bytes, the same combine kernel over the same row order. Its launches can
// be captured in a CUDA graph (the kernels count their epochs on the device) once an eager run of the
// plan made the window and the geometry tables; a capture that would have to make them is refused.
import type { Plan } from "../../compiler/plan.ts";
import type { DType, TensorType } from "../../compiler/ir/types.ts";
import { coordsOf } from "../../compiler/ir/placement.ts";
import { CompileError, UsageError } from "../../compiler/errors.ts";
import { empty, type DeviceTensor } from "./memory.ts";
import { packArgs, type KernelArg } from "./native.ts";
import { elemBytes } from "./kernels/sources.ts";
import * as M from "./kernels/moe-sources.ts";
import { moeNvlCombine, moeNvlPush, NVL_BLOCK } from "./kernels/moe-nvlink-sources.ts";
import { NvlinkUnavailable, nvlGeometry, parityAreas, type NvlGeometry, type WindowLayout } from "./moe-nvlink-layout.ts";
import { ncclAllGather, PeerWindow } from "./ipc.ts";
import type { InFlight } from "./nccl/collectives.ts";
import { collectiveTimeoutS } from "./nccl/watchdog.ts";
import type { CudaExecutor } from "./executor.ts";
import { costFromEnv } from "../../compiler/passes/schedule.ts";
import type { CostModel } from "../../compiler/passes/schedule-cost.ts";

type OpInstr = Extract<Plan["instrs"][number], { kind: "op" }>;
export type MoeTransport = "nccl" | "nvlink";

/** SHARDTS_MOE_TRANSPORT: nccl (default until the NVLink path is measured faster) or nvlink. */
export function moeTransport(env: NodeJS.ProcessEnv = process.env): MoeTransport {
  const v = env.SHARDTS_MOE_TRANSPORT || "nccl";
  if (v !== "nccl" && v !== "nvlink") throw new UsageError(`SHARDTS_MOE_TRANSPORT=${JSON.stringify(v)}: use nccl (grouped send/recv, any nodes) or nvlink (peer stores within a node)`);
  return v;
}

/**
 * The schedule's cost model for the MoE transport in use: over NVLink the MoE ops are priced as that path
 * runs them (moeOnDevice: no host reads of counts, dispatch and redispatch all exchange on the comm
 * stream); `SHARDTS_SCHEDULE_COST` still overrides (moeOnDevice=0 restores the NCCL pricing). On 2 H200s
 * the EP layer's step fell from 12.98 / 12.91 ms (bf16 / FP8, eager) to 12.24 / 11.64 with it, 12.51 / 12.18
 * to 11.63 / 10.81 replayed, and two micro-batches' step/max from 1.191 to 1.130
 * (bench/results/2026-11-24-moe-layer-ep-nvlink-streams-h200x2.txt, …-overlap-nvlink-h200x2.txt).
 */
export function scheduleCost(env: NodeJS.ProcessEnv = process.env): CostModel {
  return costFromEnv(env.SHARDTS_SCHEDULE_COST, moeTransport(env) === "nvlink" ? { moeOnDevice: 1 } : {});
}

/**
 * The NVLink kernels' blocks (one per SM) when SHARDTS_MOE_SMS is unset. On 2 H200s the round trip over
 * the 16 dispatch/combine shapes ran 1.23-1.39x torch (bf16) with 20, 1.42-1.66x with 32 and 1.57-1.84x
 * with 48 (FP8 1.95-2.28x) (bench/results/2026-11-23-moe-dispatch-h200x2-v3.txt).
 */
export const MOE_SMS_DEFAULT = 48;

/** Blocks (one per SM) the NVLink kernels take: SHARDTS_MOE_SMS, default MOE_SMS_DEFAULT, at most the GPU's SMs. */
export function moeSms(smCount: number, env: NodeJS.ProcessEnv = process.env): number {
  const v = env.SHARDTS_MOE_SMS;
  const n = v === undefined || v === "" ? MOE_SMS_DEFAULT : Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`SHARDTS_MOE_SMS=${JSON.stringify(v)} must be a positive whole number of SMs`);
  return Math.min(n, smCount);
}

interface Group {
  window?: PeerWindow;
  refused?: string;
}
const groups = new WeakMap<CudaExecutor, Map<string, Group>>();
/** Per plan and op: its geometry and that geometry's device table; freed with the plan. */
const tables = new WeakMap<Plan, Map<OpInstr, { geo: NvlGeometry; table: bigint }>>();
const freeTables = new FinalizationRegistry<{ free: () => void }>((h) => h.free());

/** The operand counts this path was written for; a variant with more (FP8 scales beside the rows, say) stays on NCCL until this path learns it. */
const ARITY: Record<string, { inputs: number[]; outputs: number }> = {
  moe_combine: { inputs: [2, 3], outputs: 1 },
  moe_dispatch: { inputs: [2], outputs: 3 },
  moe_redispatch: { inputs: [2, 3], outputs: 1 },
};

/**
 * Why the NVLink path would not take `ins` whatever the machine (or undefined): the transport not
 * chosen, an operand count it was not written for, an expert axis of one rank. (A group spanning
 * nodes or without peer access is found only when the window is made.)
 */
export function nvlinkRefusal(plan: Plan, ins: OpInstr, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (moeTransport(env) !== "nvlink") return "SHARDTS_MOE_TRANSPORT is not nvlink";
  const arity = ARITY[ins.op], a = plan.mesh.axes.indexOf(String(ins.attrs.axis));
  if (!arity || !arity.inputs.includes(ins.inputs.length) || ins.outputs.length !== arity.outputs) return `the NVLink kernels do not take this form of ${ins.op} (${ins.inputs.length} operands, ${ins.outputs.length} results)`;
  if (a < 0 || plan.mesh.sizes[a]! < 2) return `its expert axis '${String(ins.attrs.axis)}' has fewer than 2 ranks`;
  return undefined;
}

const names = (t: TensorType) => t.dims.map((d) => d.name);
const prod = (xs: number[]) => xs.reduce((a, b) => a * b, 1);

/** What a stream capture cannot hold (an exchange, a synchronous copy): made by the run before it. */
function notWhileCapturing(capturing: boolean, what: string): void {
  if (capturing) throw new UsageError(`${what} is made on an op's first run, which a CUDA graph capture cannot hold; run the plan once without capture first (CudaExecutor.capture does)`);
}

function windowOf(exe: CudaExecutor, plan: Plan, axis: string, capturing: boolean): PeerWindow {
  const dist = exe.rankLocal!, a = plan.mesh.axes.indexOf(axis), key = `${plan.mesh.sizes.join("x")}/${axis}`;
  const byKey = groups.get(exe) ?? new Map<string, Group>();
  groups.set(exe, byKey);
  let g = byKey.get(key);
  if (!g) {
    notWhileCapturing(capturing, `the MoE NVLink window of mesh axis '${axis}'`);
    g = {};
    byKey.set(key, g);
    const W = plan.mesh.sizes[a]!, me = coordsOf(plan.mesh, dist.rank)[a]!;
    const gather = ncclAllGather(exe.addon, dist.comms.axes(plan.mesh)[a]!, dist.stream(), W, collectiveTimeoutS() * 1000);
    try {
      g.window = PeerWindow.create(exe.addon, gather, me, W, dist.localRank, moeSms(exe.smCount));
    } catch (e) {
      if (!(e instanceof NvlinkUnavailable)) throw e;
      g.refused = e.message;
      console.warn(`shardts: MoE over mesh axis '${axis}' uses NCCL, not NVLink: ${e.message}`);
    }
  }
  if (!g.window) throw new NvlinkUnavailable(g.refused!);
  return g.window;
}

/** The op's geometry (expert side `eSlot`, token side `tSlot`) and its device table, made once per plan. */
function geometry(exe: CudaExecutor, plan: Plan, ins: OpInstr, eSlot: number, tSlot: number, rowsDim: string, batch: string[], rank: number, tokenSide: boolean, capturing: boolean): { geo: NvlGeometry; table: bigint } {
  const byOp = tables.get(plan) ?? new Map();
  tables.set(plan, byOp);
  let t = byOp.get(ins);
  if (!t) {
    notWhileCapturing(capturing, `${ins.op}'s NVLink geometry table`);
    const geo = nvlGeometry(plan, eSlot, tSlot, String(ins.attrs.axis), rowsDim, batch, rank);
    // dispatch/redispatch read efirst | dstOf[me]; combine reads efirst | srcRank | srcLb
    const ints = tokenSide ? [...geo.efirst, ...geo.dstOf[geo.me]!] : [...geo.efirst, ...geo.srcRank, ...geo.srcLb];
    const addon = exe.addon, table = addon.memAlloc(4 * ints.length);
    addon.memcpyHtoD(table, Int32Array.from(ints));
    freeTables.register(plan, { free: () => addon.memFree(table) });
    byOp.set(ins, (t = { geo, table }));
  }
  return t;
}

function launch(exe: CudaExecutor, k: { name: string; source: string }, blocks: number, threads: number, args: KernelArg[], stream = exe.stream): void {
  if (blocks > 0) exe.addon.launchKernel(exe.fn(k.name, k.source), [blocks, 1, 1], [threads, 1, 1], 0, stream, packArgs(...args));
}

/**
 * SHARDTS_MOE_NVLINK_STREAM: where the NVLink kernels run. `comm` (default): on the communication stream,
 * ordered like a comm step (after the compute issued before the op; compute waits where it reads the op's
 * rows), so compute issued in between runs beside them, as the NCCL path's exchanges do. `compute`: on the
 * compute stream, in line (what the path did before; kept to compare).
 */
export function nvlinkStream(env: NodeJS.ProcessEnv = process.env): "comm" | "compute" {
  const v = env.SHARDTS_MOE_NVLINK_STREAM || "comm";
  if (v !== "comm" && v !== "compute") throw new UsageError(`SHARDTS_MOE_NVLINK_STREAM=${JSON.stringify(v)}: use comm (beside compute, the default) or compute (in line)`);
  return v;
}

/**
 * Runs an NVLink kernel that reads `inputs` and writes plan slots `slots` (buffers `outs`): on the
 * communication stream (nvlinkStream), where `release` is freed once compute waited for it, or in line on
 * the compute stream. Returns the in-flight step, if it went to the communication stream.
 */
function exchange(exe: CudaExecutor, what: string, slots: number[], outs: DeviceTensor[], inputs: DeviceTensor[], release: DeviceTensor[], issue: (stream: bigint) => void): InFlight | undefined {
  if (nvlinkStream() === "compute") {
    issue(exe.stream);
    for (const t of release) exe.release(t);
    return undefined;
  }
  return exe.rankLocal!.onComm(slots, outs, inputs, release, issue, exe.commSpan(what));
}

/**
 * The arguments every NVLink kernel starts with, up to its rows area: peers, geometry table, group size
 * and rank, the device epochs, all phases, timeout, the flag sets, the counts (push kernels: `counts`)
 * and lens areas of both parities (the kernels pick one by their epoch on the device), the rows area.
 * `win`: a rank's PeerWindow, or anything laid out as one (bench/gpu/nvlink-graph.ts's loopback windows).
 */
export function nvlWindowArgs(win: { peersTable: bigint; epochs: bigint }, table: bigint, W: number, me: number, L: WindowLayout, counts: boolean): KernelArg[] {
  const even = parityAreas(L, 0), odd = parityAreas(L, 1);
  return [
    ["ptr", win.peersTable], ["ptr", table], ["i32", W], ["i32", me], ["ptr", win.epochs], ["i32", 7], ["i64", collectiveTimeoutS() * 1e9], ["i64", L.flagN], ["i64", L.flagR],
    ...(counts ? ([["i64", even.counts], ["i64", odd.counts]] as KernelArg[]) : []), ["i64", even.lens], ["i64", odd.lens], ["i64", L.rows],
  ];
}

function needFloat(op: string, t: TensorType): "f32" | "bf16" {
  if (t.dtype !== "f32" && t.dtype !== "bf16") throw new CompileError(`the CUDA backend's ${op} computes in f32 or bf16, got ${t.dtype}; cast first`);
  return t.dtype;
}

/** A combine whose push went out ahead of the op (pushCombineEarly); runMoeNvlink finishes it at the op. */
export interface NvlCombinePushed {
  /** Its step on the communication stream (none when the kernels run in line). */
  f?: InFlight;
  /** This rank's window rows: its tokens' rows in sorted order once the push is done. */
  moved: bigint;
  temps: DeviceTensor[];
}

/**
 * Runs a MoE op on this rank over NVLink when the transport is chosen and possible; false: the
 * caller runs it on the NCCL path (refusals are said once per group). `pushed`: a combine whose push
 * went out early.
 */
export function runMoeNvlink(exe: CudaExecutor, plan: Plan, ins: OpInstr, slots: (DeviceTensor[] | undefined)[], pushed?: NvlCombinePushed): boolean {
  if (pushed) return (finishCombine(exe, plan, ins, slots, exe.rankLocal!.rank, pushed), true);
  if (!exe.rankLocal || nvlinkRefusal(plan, ins)) return false;
  try {
    run(exe, plan, ins, slots, exe.rankLocal.rank);
    return true;
  } catch (e) {
    if (!(e instanceof NvlinkUnavailable)) throw e;
    return false;
  }
}

/**
 * A combine's push issued ahead of the op, right after the instruction that writes its rows (the
 * executor decides where: no other MoE op may come between, since the next op's peers store into
 * the window this combine's rows wait in). Undefined: not taken here (NCCL path, kernels in line).
 */
export function pushCombineEarly(exe: CudaExecutor, plan: Plan, ins: OpInstr, slots: (DeviceTensor[] | undefined)[]): NvlCombinePushed | undefined {
  if (!exe.rankLocal || ins.op !== "moe_combine" || nvlinkRefusal(plan, ins) || nvlinkStream() !== "comm") return undefined;
  try {
    return pushCombine(exe, plan, ins, slots, exe.rankLocal.rank);
  } catch (e) {
    if (!(e instanceof NvlinkUnavailable)) throw e;
    return undefined;
  }
}

/** What a combine/redispatch reads of its op: the rows dim, batch dims, sizes, the counts slot. */
function backShape(plan: Plan, ins: OpInstr) {
  const at = ins.attrs, tp = plan.values[ins.inputs[1]!]!.type, rowsDim = tp.dims.find((d) => d.segmented)!;
  const S = Number(at.size), Kk = Number(at.numK);
  return { rowsDim, batch: names(tp).filter((n) => n !== rowsDim.name), S, Kk, n: S * Kk, countsSlot: plan.values[ins.inputs[1]!]!.segCounts[rowsDim.name]! };
}

/** A tensor of slot `s` in `order` (a reordered copy goes into `temps`). */
function reorderer(exe: CudaExecutor, plan: Plan, slots: (DeviceTensor[] | undefined)[], r: number, temps: DeviceTensor[]) {
  return (s: number, order: string[]) => {
    const own = slots[s]![r]!, t = exe.reorder(own, names(plan.values[s]!.type), order);
    if (t !== own) temps.push(t);
    return t;
  };
}

/** Combine's first half: the rows pushed back to the ranks that hold their tokens, into each one's window. */
function pushCombine(exe: CudaExecutor, plan: Plan, ins: OpInstr, slots: (DeviceTensor[] | undefined)[], r: number): NvlCombinePushed {
  const capturing = exe.addon.streamIsCapturing(exe.stream) !== 0, blocks = moeSms(exe.smCount);
  const { rowsDim, batch, Kk, n, countsSlot } = backShape(plan, ins);
  const tr = plan.values[ins.inputs[0]!]!.type, dt = needFloat("moe_combine", tr);
  if (Kk > 16) throw new CompileError(`the CUDA backend's moe_combine takes at most 16 slots per token, got ${Kk}`);
  const { geo, table } = geometry(exe, plan, ins, ins.inputs[0]!, ins.inputs[1]!, rowsDim.name, batch, r, false, capturing);
  const w = windowOf(exe, plan, String(ins.attrs.axis), capturing);
  exe.rankLocal!.beforeReads([countsSlot]);
  const temps: DeviceTensor[] = [], reorder = reorderer(exe, plan, slots, r, temps);
  const C = reorder(countsSlot, [...batch, rowsDim.segmented!.groups]);
  const inner = names(tr).filter((nm) => nm !== rowsDim.name && !batch.includes(nm));
  const R = reorder(ins.inputs[0]!, [...batch, rowsDim.name, ...inner]), D = prod(R.shape.slice(batch.length + 1)), rowBytes = D * elemBytes(dt);
  const L = w.ensure({ blocks, countsCap: 0, lensCap: geo.ranks.length * geo.Bdst, rowsCap: geo.Bdst * n * rowBytes }, capturing);
  const V = M.gatherWord(rowBytes, [R.ptr]);
  const f = exchange(exe, "moe_combine (nvlink)", [], [], [R, C], [], (st) =>
    launch(exe, moeNvlCombine(V), blocks, NVL_BLOCK, [...nvlWindowArgs(w, table, geo.ranks.length, geo.me, L, false), ["ptr", R.ptr], ["ptr", C.ptr], ["i32", geo.Bdst], ["i32", n], ["i64", rowBytes / V]], st),
  );
  return { f, moved: w.base + BigInt(L.rows), temps };
}

/** Combine's second half, on compute: the window's rows un-permuted and weighed into the op's output. */
function finishCombine(exe: CudaExecutor, plan: Plan, ins: OpInstr, slots: (DeviceTensor[] | undefined)[], r: number, pushed: NvlCombinePushed): void {
  const at = ins.attrs, seq = String(at.dim), kDim = String(at.k), keepK = at.keepK === true;
  const { rowsDim, batch, S, Kk, n } = backShape(plan, ins);
  const tr = plan.values[ins.inputs[0]!]!.type, ty = plan.values[ins.outputs[0]!]!.type, dt = needFloat("moe_combine", tr);
  const temps = pushed.temps, reorder = reorderer(exe, plan, slots, r, temps);
  const inner = names(tr).filter((nm) => nm !== rowsDim.name && !batch.includes(nm)), D = prod(inner.map((d) => plan.values[ins.inputs[0]!]!.shapes[r]![tr.dims.findIndex((e) => e.name === d)]!));
  const P = reorder(ins.inputs[1]!, [...batch, rowsDim.name]), Bloc = prod(P.shape.slice(0, batch.length));
  const Wt = ins.inputs.length === 3 ? reorder(ins.inputs[2]!, [...batch, seq, kDim]) : undefined;
  const Bn = Bloc * n, pos = empty(exe.mem, "i32", [Bn]);
  temps.push(pos);
  if (Bn) exe.addon.memsetD8(pos.ptr, 0xff, Bn * 4, exe.stream);
  exe.launch1D(M.moeInvert(), Bn, [["ptr", pos.ptr], ["ptr", P.ptr], ["i64", Bn], ["i32", n]]);
  if (pushed.f) exe.rankLocal!.waitFor(pushed.f); // (the invert above ran beside the push)
  const order = [...batch, seq, ...(keepK ? [kDim] : []), ...inner], shape = plan.values[ins.outputs[0]!]!.shapes[r]!;
  const Y = empty(exe.mem, dt, order.map((d) => shape[ty.dims.findIndex((e) => e.name === d)]!));
  launch(exe, M.moeCombine(dt, M.combineVec(dt, D, [Y.ptr, pushed.moved])), Math.min(Math.ceil((Bloc * S) / 8), exe.smCount * 8), 256, [["ptr", Y.ptr], ["ptr", pushed.moved], ["ptr", pos.ptr], ["ptr", Wt?.ptr ?? 0n], ["i64", Bloc * S], ["i32", S], ["i32", Kk], ["i32", D], ["i32", keepK ? 1 : 0]]);
  (slots[ins.outputs[0]!] ??= [])[r] = exe.reorderOwned(Y, order, names(ty));
  for (const t of temps) exe.release(t);
}

function run(exe: CudaExecutor, plan: Plan, ins: OpInstr, slots: (DeviceTensor[] | undefined)[], r: number): void {
  if (ins.op === "moe_combine") return finishCombine(exe, plan, ins, slots, r, pushCombine(exe, plan, ins, slots, r));
  const capturing = exe.addon.streamIsCapturing(exe.stream) !== 0;
  const at = ins.attrs, axis = String(at.axis), seq = String(at.dim), kDim = String(at.k), blocks = moeSms(exe.smCount);
  const tIn = ins.inputs.map((s) => plan.values[s]!.type);
  const temps: DeviceTensor[] = [], reorder = reorderer(exe, plan, slots, r, temps);
  const out = (i: number, dtype: DType) => ((slots[ins.outputs[i]!] ??= [])[r] = empty(exe.mem, dtype, plan.values[ins.outputs[i]!]!.shapes[r]!));

  if (ins.op === "moe_dispatch") {
    const [tx, ti] = tIn as [TensorType, TensorType], G = Number(at.numGroups);
    if (G > M.MOE_MAX_GROUPS) throw new CompileError(`moe_dispatch on CUDA sorts by at most ${M.MOE_MAX_GROUPS} experts, got ${G}`);
    const batch = names(ti).filter((n) => n !== seq && n !== kDim), inner = names(tx).filter((n) => n !== seq && !batch.includes(n));
    const { geo, table } = geometry(exe, plan, ins, ins.outputs[0]!, ins.inputs[1]!, String(at.rows), batch, r, true, capturing);
    const w = windowOf(exe, plan, axis, capturing);
    const X = reorder(ins.inputs[0]!, [...batch, seq, ...inner]), I = reorder(ins.inputs[1]!, [...batch, seq, kDim]);
    const Bloc = prod(I.shape.slice(0, batch.length)), S = I.shape[batch.length]!, Kk = I.shape[batch.length + 1]!, n = S * Kk;
    const rowBytes = prod(X.shape.slice(batch.length + 1)) * elemBytes(tx.dtype);
    const perm = out(1, "i32"), counts = empty(exe.mem, "i32", [Bloc, G]), rows = out(0, tx.dtype), cOut = out(2, "i32");
    temps.push(counts);
    launch(exe, M.moeRoute(), Math.min(Bloc, exe.smCount * 8), M.MOE_ROUTE_BLOCK, [["ptr", counts.ptr], ["ptr", perm.ptr], ["ptr", I.ptr], ["i64", Bloc], ["i32", n], ["i32", G]]);
    const L = w.ensure({ blocks, countsCap: geo.Bdst * G, lensCap: geo.ranks.length * geo.Bdst, rowsCap: geo.Bdst * n * rowBytes }, capturing);
    const V = M.gatherWord(rowBytes, [X.ptr, rows.ptr]);
    exchange(exe, "moe_dispatch (nvlink)", [ins.outputs[0]!, ins.outputs[2]!], [rows, cOut], [X, perm, counts], temps, (st) =>
      launch(exe, moeNvlPush({ redispatch: false, V }), blocks, NVL_BLOCK, [...nvlWindowArgs(w, table, geo.ranks.length, geo.me, L, true),
        ["ptr", X.ptr], ["ptr", perm.ptr], ["ptr", counts.ptr], ["ptr", 0n], ["i32", Bloc], ["i32", geo.Bdst], ["i32", G], ["i32", n], ["i32", Kk], ["i64", S], ["i64", rowBytes / V], ["ptr", rows.ptr], ["ptr", cOut.ptr]], st),
    );
    return;
  }
  // redispatch: perm [...batch, rows~seg] in the tokens' layout; counts: the expert side's piece
  const { rowsDim, batch, S, Kk, n, countsSlot } = backShape(plan, ins), hasW = ins.inputs.length === 3;
  const { geo, table } = geometry(exe, plan, ins, ins.outputs[0]!, ins.inputs[1]!, rowsDim.name, batch, r, true, capturing);
  const w = windowOf(exe, plan, axis, capturing);
  exe.rankLocal!.beforeReads([countsSlot]);
  const C = reorder(countsSlot, [...batch, rowsDim.segmented!.groups]);
  const P = reorder(ins.inputs[1]!, [...batch, rowsDim.name]), Bloc = prod(P.shape.slice(0, batch.length));
  const Wt = hasW ? reorder(ins.inputs[2]!, [...batch, seq, kDim]) : undefined;
  const ts = tIn[0]!, keepK = ts.dims.some((d) => d.name === kDim);
  const inner = names(ts).filter((nm) => nm !== seq && nm !== kDim && !batch.includes(nm));
  const X = reorder(ins.inputs[0]!, [...batch, seq, ...(keepK ? [kDim] : []), ...inner]), D = prod(X.shape.slice(batch.length + (keepK ? 2 : 1)));
  const rowBytes = D * elemBytes(ts.dtype), rows = out(0, ts.dtype);
  const L = w.ensure({ blocks, countsCap: 0, lensCap: geo.ranks.length * geo.Bdst, rowsCap: geo.Bdst * n * rowBytes }, capturing);
  const V = Wt ? 1 : M.gatherWord(rowBytes, [X.ptr, rows.ptr]), words = Wt ? D : rowBytes / V;
  const k = Wt ? moeNvlPush({ redispatch: true, V: 1, weighted: needFloat("moe_redispatch", ts) }) : moeNvlPush({ redispatch: true, V });
  exchange(exe, "moe_redispatch (nvlink)", [ins.outputs[0]!], [rows], [X, P, C, ...(Wt ? [Wt] : [])], temps, (st) =>
    launch(exe, k, blocks, NVL_BLOCK, [...nvlWindowArgs(w, table, geo.ranks.length, geo.me, L, true),
      ["ptr", X.ptr], ["ptr", P.ptr], ["ptr", C.ptr], ["ptr", Wt?.ptr ?? 0n], ["i32", Bloc], ["i32", geo.Bdst], ["i32", 0], ["i32", n], ["i32", keepK ? 1 : Kk], ["i64", keepK ? n : S], ["i64", words], ["ptr", rows.ptr], ["ptr", 0n]], st),
  );
}
