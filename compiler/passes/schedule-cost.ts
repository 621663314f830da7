// The schedule pass's cost model and timeline simulation (compiler/passes/schedule.ts): what one
// instruction costs on each stream, and how the CUDA runtime's rank-local execution orders them —
// one compute stream and one communication stream, both in issue order; a comm step waits for all
// compute issued before it (runtime/cuda/nccl/collectives.ts records its start event on the compute
// stream when it is issued); compute waits for a comm step only where it reads the step's output;
// the first host read of a counts value waits for that value's writer only (runtime/cuda/moe-counts.ts:
// its own stream, an event after the writer), and holds up the host: nothing issued after the read
// starts before it, while the work queued before it runs on. A MoE dispatch is its permute kernels,
// the count exchange, that host read, then the token exchange; combine and redispatch move rows first
// and compute waits for them (a fused combine's exchange is issued right after its rows' writer).
// With `moeOnDevice` (the NVLink path on the comm stream, runtime/cuda/moe-nvlink.ts) no MoE op reads
// counts on the host, and dispatch and redispatch are their exchange on the comm stream alone (dispatch
// after its route kernel): compute is not held, their rows are ready when the exchange ends.
import { pieceBytes, readsOf, COUNT_SIZED_OPS, writesOf, type PlanValue } from "../plan.ts";
import { MOE_OPS } from "../ops/dispatch.ts";

/** What the model needs of an instruction (a Plan's or a FusedPlan's). */
export type AnyInstr = { kind: string; op?: string; inputs?: number[]; input?: number; outputs?: number[]; output?: number };

/** Rates and latencies, per rank. Defaults: one H100/H200 SXM GPU in an NVLink node; override per machine. */
export interface CostModel {
  /** Dense matrix rate for bf16 operands, FLOP/s (cuBLASLt reaches ~600-700 T on H100). */
  matmulBf16: number;
  /** f32 operands (cuBLASLt without TF32). */
  matmulF32: number;
  /** FP8 operands (the block-scaled kernels: ~1000-1200 T measured). */
  matmulFp8: number;
  /** Device memory bandwidth for elementwise/row kernels and copies, bytes/s (copy: 3.0 T measured). */
  memBandwidth: number;
  /** Bytes a rank sends or receives over the link per second in a collective (NCCL all-to-all over NVLink: 100-250 G measured). */
  linkBandwidth: number;
  /** Fixed cost of one kernel or library call on its stream, s. */
  launch: number;
  /** Fixed cost of one collective (NCCL latency), s. */
  commLatency: number;
  /** A host read of counts: the wait for its writer's event, a world all-gather of the counts, the copy to the host, s. */
  hostRead: number;
  /**
   * 1: MoE dispatch/combine run over NVLink on the communication stream (SHARDTS_MOE_TRANSPORT=nvlink):
   * sized on the device, no host reads, dispatch/redispatch all exchange; 0 (default): the NCCL path.
   */
  moeOnDevice: number;
}

export const DEFAULT_COST: CostModel = {
  matmulBf16: 600e12, matmulF32: 50e12, matmulFp8: 1000e12,
  memBandwidth: 3.0e12, linkBandwidth: 150e9,
  launch: 4e-6, commLatency: 20e-6, hostRead: 60e-6, moeOnDevice: 0,
};

const CONTRACTIONS = new Set(["dot", "segment_dot", "segment_wgrad", "scaled_dot", "scaled_dot_wgrad", "scaled_segment_dot", "scaled_segment_wgrad"]);

/** Largest piece over the ranks: elements, bytes. */
const elems = (v: PlanValue) => Math.max(0, ...v.shapes.map((s) => s.reduce((a, b) => a * b, 1)));

/** One instruction's work: compute-stream seconds, comm-stream seconds, and which comes first. */
export interface InstrCost {
  compute: number;
  comm: number;
  /** Combine/redispatch: the exchange runs first and the op's kernels wait for it. */
  commFirst: boolean;
}

export function instrCost(values: PlanValue[], ins: AnyInstr, m: CostModel): InstrCost {
  const r = readsOf(ins as never).map((s) => values[s]!), w = writesOf(ins as never).map((s) => values[s]!);
  const moved = [...r, ...w].reduce((a, v) => a + pieceBytes(v), 0);
  if (ins.kind === "comm") return { compute: 0, comm: m.commLatency + Math.max(pieceBytes(r[0]!), pieceBytes(w[0]!)) / m.linkBandwidth, commFirst: true };
  if (ins.kind === "op" && MOE_OPS.has(ins.op!)) {
    // the rows cross the link once; the permute kernels read and write them once more
    const rows = ins.op === "moe_dispatch" ? pieceBytes(w[0]!) : Math.max(pieceBytes(r[0]!), pieceBytes(w[0]!));
    // over NVLink: one kernel on the comm stream moves (and gathers) the rows; compute issues it, and
    // dispatch's route kernel before it
    if (m.moeOnDevice && ins.op !== "moe_combine") return { compute: m.launch, comm: m.commLatency + rows / m.linkBandwidth, commFirst: false };
    const exchanges = ins.op === "moe_dispatch" ? 2 : 1;
    return { compute: m.launch * 2 + moved / m.memBandwidth, comm: exchanges * m.commLatency + rows / m.linkBandwidth, commFirst: ins.op !== "moe_dispatch" };
  }
  if (ins.kind === "op" && CONTRACTIONS.has(ins.op!)) {
    // 2·M·N·K: the output's elements times the first operand's contracted extent; where the contracted dim
    // is segmented and the output has its groups (segment_wgrad: a row meets its own group's slice only),
    // divided by the groups (counted as every row against every group, the Wgrads of a V2-Lite layer cost 32x)
    const outDims = new Set(w[0]!.type.dims.map((d) => d.name));
    const a = r[0]!, extent = (v: PlanValue, i: number) => Math.max(...v.shapes.map((s) => s[i]!));
    const k = a.type.dims.reduce((p, d, i) => (outDims.has(d.name) ? p : p * extent(a, i)), 1);
    const g = a.type.dims.find((d) => d.segmented && !outDims.has(d.name) && outDims.has(d.segmented.groups))?.segmented!.groups;
    const groups = g === undefined ? 1 : extent(w[0]!, w[0]!.type.dims.findIndex((d) => d.name === g));
    const dt = a.type.dtype, rate = dt === "bf16" ? m.matmulBf16 : dt.startsWith("fp8") ? m.matmulFp8 : m.matmulF32;
    return { compute: m.launch + Math.max((2 * elems(w[0]!) * k) / groups / rate, moved / m.memBandwidth), comm: 0, commFirst: false };
  }
  return { compute: m.launch + moved / m.memBandwidth, comm: 0, commFirst: false };
}

/** Predicted step time of an order, and its parts (seconds). */
export interface Timeline {
  /** The compute stream's work alone (sum of compute costs). */
  computeOnly: number;
  /** The communication stream's work alone. */
  commOnly: number;
  /** Host reads of counts (each holds the host until its counts are written and read). */
  hostReads: number;
  /** The simulated step in this order: both streams, their waits and the host reads. */
  step: number;
}

/**
 * The counts slots an instruction needs on the host (the first read of each waits for its writer and holds
 * the host). `moeOnDevice`: MoE ops read none (the NVLink path sizes its exchanges on the device).
 */
export function countsReadOnHost(values: PlanValue[], ins: AnyInstr, moeOnDevice = false): number[] {
  const counts = (s: number) => Object.values(values[s]!.segCounts);
  if (moeOnDevice && ins.kind === "op" && MOE_OPS.has(ins.op!)) return [];
  if (ins.kind === "comm") return [...counts(ins.input!), ...counts(ins.output!)];
  if (ins.kind === "op" && COUNT_SIZED_OPS.has(ins.op!)) return readsOf(ins as never).flatMap(counts);
  // dispatch sizes its token exchange by the exchanged counts; combine/redispatch move segmented rows
  if (ins.kind === "op" && MOE_OPS.has(ins.op!)) return [...readsOf(ins as never), ...writesOf(ins as never)].flatMap(counts);
  return [];
}

/** The streams' state while an order is simulated; `issue` advances it by one instruction. */
export class StreamSim {
  compute = 0;
  comm = 0;
  /** When the host is back from its last read of counts: work issued after it starts no earlier. */
  host = 0;
  computeOnly = 0;
  commOnly = 0;
  hostReads = 0;
  private readonly ready: number[];
  /** Counts slots already read on the host. */
  readonly read = new Set<number>();
  constructor(private readonly values: PlanValue[], private readonly model: CostModel) {
    this.ready = values.map(() => 0);
  }

  /** Counts `ins` reads on the host first: written before it (`before`) or by itself (`own`: a dispatch's exchanged counts). */
  private unread(ins: AnyInstr): { before: number[]; own: number[] } {
    const reads = countsReadOnHost(this.values, ins, this.model.moeOnDevice === 1).filter((c) => !this.read.has(c)), w = writesOf(ins as never);
    return { before: reads.filter((c) => !w.includes(c)), own: reads.filter((c) => w.includes(c)) };
  }

  /** When the host is back from reading `counts` (written earlier): their writer done, then the read. */
  private hostAfter(counts: number[]): number {
    return counts.length ? Math.max(this.host, ...counts.map((c) => this.ready[c]!)) + this.model.hostRead : this.host;
  }

  /**
   * When a combine/redispatch's exchange could start: a fused combine's right after its rows' writer
   * (the executor issues it there, runtime/cuda/executor.ts); redispatch's where it stands (after the
   * compute issued before it, and the host).
   */
  private exchangeFrom(ins: AnyInstr, host: number): number {
    return ins.op === "moe_combine" ? this.ready[readsOf(ins as never)[0]!]! : Math.max(this.compute, host);
  }

  /** When the compute stream could start `ins`'s compute work if it were issued now. */
  start(ins: AnyInstr, cost: InstrCost): number {
    const inputs = Math.max(0, ...readsOf(ins as never).map((s) => this.ready[s]!));
    const host = this.hostAfter(this.unread(ins).before);
    if (cost.comm > 0 && cost.commFirst) return Math.max(this.compute, Math.max(this.comm, this.exchangeFrom(ins, host)) + cost.comm);
    return Math.max(this.compute, host, inputs);
  }

  issue(ins: AnyInstr, cost: InstrCost): void {
    const { before, own } = this.unread(ins);
    if (before.length) {
      // the host waits for those counts' writer alone; the streams run on
      this.host = this.hostAfter(before);
      this.hostReads++;
    }
    for (const c of [...before, ...own]) this.read.add(c);
    this.computeOnly += cost.compute;
    this.commOnly += cost.comm;
    let done: number;
    if (ins.kind === "comm") {
      done = this.comm = Math.max(this.comm, this.compute, this.host) + cost.comm;
    } else if (cost.comm > 0 && cost.commFirst) {
      const moved = (this.comm = Math.max(this.comm, this.exchangeFrom(ins, this.host)) + cost.comm);
      done = this.compute = Math.max(this.compute, moved) + cost.compute;
    } else {
      this.compute = Math.max(this.compute, this.host, ...readsOf(ins as never).map((s) => this.ready[s]!)) + cost.compute;
      if (cost.comm > 0 && own.length) {
        // dispatch: the count exchange, the host's read of what it brought, then the token exchange
        this.comm = Math.max(this.comm, this.compute) + this.model.commLatency;
        this.host = Math.max(this.host, this.comm) + this.model.hostRead;
        this.hostReads++;
        done = this.comm = Math.max(this.comm, this.host) + cost.comm - this.model.commLatency;
      } else done = cost.comm > 0 ? (this.comm = Math.max(this.comm, this.compute) + cost.comm) : this.compute;
    }
    for (const s of writesOf(ins as never)) this.ready[s] = done;
    // over NVLink a dispatch's permutation is its route kernel's, on compute: ready before the exchange
    if (this.model.moeOnDevice && ins.op === "moe_dispatch" && ins.outputs) this.ready[ins.outputs[1]!] = this.compute;
  }

  get step(): number {
    return Math.max(this.compute, this.comm);
  }
}

/** The timeline of `instrs` in their order under `model`. */
export function simulate(values: PlanValue[], instrs: readonly AnyInstr[], model: CostModel = DEFAULT_COST): Timeline {
  const sim = new StreamSim(values, model);
  for (const ins of instrs) sim.issue(ins, instrCost(values, ins, model));
  return { computeOnly: sim.computeOnly, commOnly: sim.commOnly, hostReads: sim.hostReads, step: sim.step };
}
