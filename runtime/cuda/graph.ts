// Whole-step CUDA graphs: a plan run captured once (CudaExecutor.capture) and replayed with one
// launch. What a capture needs: every shape static and nothing read back to the host mid-run. The
// segment contractions (MoE experts) qualify where they run on device-side counts (segment-device.ts:
// bf16 segment_dot / segment_wgrad; fp8-segment-device.ts: the FP8 scaled_segment_dot / _wgrad with bf16
// results; on Hopper, their GEMMs planned on the GPU over buffers sized by the routing's upper bound),
// which capture switches on; a plan is refused (saying why) when one of them would read its per-expert
// counts on the host (f32, another GPU, sizes the kernels refuse). A mesh of several ranks is captured
// rank-locally (one process per GPU, `shardts launch`): each rank captures its own part, NCCL calls
// included (NCCL records them into the graph), and its global MoE ops when they run over NVLink
// (moe-nvlink.ts: the exchange is sized by the routing's upper bound and counts its epochs on the
// device); the NCCL path of a MoE op sizes its exchange by counts read on the host, and so does a
// collective of a segmented value: both are refused. A mesh simulated on one GPU moves its collectives
// through the host and is refused. Every rank must replay its graph as often as the others (their
// NCCL calls and NVLink barriers meet across the graphs). The graph owns its memory: the pool the
// captured run drew from, the staged host-made values and the outputs, freed by destroy(); resident
// inputs (CudaExecutor.setResident) it reads stay the caller's.
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { COUNT_SIZED_OPS, type Plan } from "../../compiler/plan.ts";
import { UsageError } from "../../compiler/errors.ts";
import { assemble, type GlobalTensor } from "../cpu/assemble.ts";
import { download, hostBits, type CachingAllocator, type DeviceTensor } from "./memory.ts";
import type { Graph, GraphExec } from "./native-types.ts";
import type { CudaExecutor } from "./executor.ts";
import { getOp } from "../../compiler/ops/index.ts";
import { deviceSegmentRefusal } from "./segment-device.ts";
import { deviceScaledSegmentRefusal } from "./fp8-segment-device.ts";
import { nvlinkRefusal } from "./moe-nvlink.ts";
import type { RankLocal } from "./nccl/collectives.ts";

/** A gather/scatter index check whose flag is read after the run (a capture cannot read mid-run). */
export interface DeferredCheck {
  bad: DeviceTensor;
  op: string;
  dim: string;
  size: number;
}

/** How the plan would run: rank-local (one process per GPU) or simulated on one GPU. */
export interface CaptureSite {
  rankLocal?: boolean;
  env?: NodeJS.ProcessEnv;
}

/**
 * Why `plan` cannot be captured on a GPU of `arch` (e.g. "sm_90a") at `site`, or undefined when it
 * can. A segment contraction is checked with every rank's shapes (a rank whose sizes the device path
 * refuses would read its counts on the host mid-capture).
 */
export function notCapturable(plan: Plan, arch: string, site: CaptureSite = {}): string | undefined {
  for (const ins of plan.instrs) {
    if (ins.kind !== "op" || !COUNT_SIZED_OPS.has(ins.op)) continue;
    const inTypes = ins.inputs.map((s) => plan.values[s]!.type), out = plan.values[ins.outputs[0]!]!;
    const fp8 = ins.op === "scaled_segment_dot" || ins.op === "scaled_segment_wgrad";
    for (let r = 0; r < plan.world; r++) {
      const local = { inShapes: ins.inputs.map((s) => plan.values[s]!.shapes[r]!), outShape: out.shapes[r]! };
      const why = fp8 ? deviceScaledSegmentRefusal(ins.op, inTypes, out.type, arch, ins.attrs, local) : deviceSegmentRefusal(ins.op, inTypes, out.type, arch, local);
      if (why) return `it holds ${ins.op}, whose per-group row counts would be read on the host to size its GEMMs: device-side counts do not take it (${why}); run it without capture`;
    }
  }
  const rankLocal = site.rankLocal === true && plan.world > 1;
  for (const ins of plan.instrs) {
    if (ins.kind !== "op" || !getOp(ins.op).global) continue;
    const why = rankLocal ? nvlinkRefusal(plan, ins, site.env) : "the mesh is simulated on one GPU";
    if (why) return `it holds ${ins.op}, whose token exchange would be sized by per-expert counts read on the host (${why}; under shardts launch with SHARDTS_MOE_TRANSPORT=nvlink it runs over NVLink, sized on the device); run it without capture`;
  }
  for (const ins of plan.instrs) {
    if (ins.kind !== "comm" || plan.world < 2) continue;
    if (!rankLocal)
      return `its mesh has ${plan.world} ranks and collectives, which a mesh simulated on one GPU moves through the host; capture it rank-locally (shardts launch, one process per GPU), or run it without capture`;
    const v = plan.values[ins.input]!;
    if (Object.keys(v.segCounts).length || v.type.dims.some((d) => d.segmented))
      return `it moves a value with a segmented dim (${v.type.dims.map((d) => d.name).join(", ")}) between GPUs, sized by counts read on the host; run it without capture`;
  }
  return undefined;
}

export class CapturedStep {
  private exec?: GraphExec;
  /** Replays so far. */
  replays = 0;

  constructor(
    private readonly gpu: CudaExecutor,
    readonly plan: Plan,
    private graph: Graph | undefined,
    private readonly outputs: DeviceTensor[][],
    private readonly staged: Map<object, DeviceTensor[]>,
    private readonly checks: DeferredCheck[],
    private readonly pools: CachingAllocator[],
    /** Rank-local (one process per GPU): this rank's part; its replays meet the other ranks' in their NCCL calls and barriers. */
    private readonly dist?: RankLocal,
    /** Staged values the graph reads but does not own (resident inputs: CudaExecutor.setResident). */
    private readonly borrowed: ReadonlySet<DeviceTensor> = new Set(),
  ) {
    this.exec = gpu.addon.graphInstantiate(graph!);
    gpu.addon.graphUpload(this.exec, gpu.stream);
  }

  /** Nodes in the captured graph (kernels, copies, memsets, GEMMs). */
  get nodes(): number {
    return this.gpu.addon.graphNodeCount(this.live().graph);
  }

  private live(): { exec: GraphExec; graph: Graph } {
    if (!this.exec || !this.graph) throw new UsageError("this captured step was destroyed; capture the plan again");
    return { exec: this.exec, graph: this.graph };
  }

  /** Uploads new values for the plan's inputs (by name; the same shapes as at capture) into their staged buffers. */
  feed(feeds: ReadonlyMap<string, LocalTensor[]>): void {
    this.live();
    for (const [ins, bufs] of this.staged) {
      const i = ins as { op: string; attrs: { name?: unknown } };
      if (i.op !== "input") continue;
      const pieces = feeds.get(String(i.attrs.name));
      if (!pieces) continue;
      bufs.forEach((d, r) => {
        const p = pieces[r];
        if (!p || p.shape.length !== d.shape.length || p.shape.some((n, k) => n !== d.shape[k]) || p.dtype !== d.dtype)
          throw new UsageError(`replay: input '${String(i.attrs.name)}' on rank ${r} must be ${d.dtype}[${d.shape.join(", ")}] as at capture, got ${p ? `${p.dtype}[${p.shape.join(", ")}]` : "nothing"}`);
        const bits = hostBits(p);
        if (bits.byteLength) this.gpu.addon.memcpyHtoD(d.ptr, bits, bits.byteLength);
      });
    }
  }

  /** Launches the graph (after feeding `feeds`, if given) and waits for it; throws what an index check flagged. */
  replay(feeds?: ReadonlyMap<string, LocalTensor[]>): void {
    if (feeds) this.feed(feeds);
    this.launch();
    this.sync();
    for (const c of this.checks) this.gpu.flagCheck(c, true);
  }

  /** Launches the graph on the executor's stream without waiting (for timing loops; `sync` after them). */
  launch(): void {
    const exec = this.live().exec;
    this.dist?.graphLaunched(`a captured step's replay (${this.plan.instrs.length} instructions)`);
    this.gpu.addon.graphLaunch(exec, this.gpu.stream);
    this.replays++;
  }

  /** Waits for every replay launched (rank-local: the collective watchdog then knows they completed). */
  sync(): void {
    this.gpu.addon.streamSynchronize(this.gpu.stream);
    this.dist?.drained();
  }

  /**
   * The outputs of the last replay (global values, assembled from every rank's piece). Rank-local, the
   * pieces are gathered over the world: every rank reads the same outputs at the same point.
   */
  read(which?: readonly number[]): (GlobalTensor | undefined)[] {
    this.live();
    const want = new Set(which ?? this.plan.outputs.map((_, i) => i)), d = this.dist;
    const pieces = (i: number) => (d ? d.allPieces(this.plan, this.plan.outputs[i]!, this.outputs[i]![d.rank]!) : this.outputs[i]!.map((t) => download(this.gpu.addon, t, this.gpu.stream)));
    const bySlot = new Map(this.plan.outputs.map((s, i) => [s, want.has(i) ? pieces(i) : []]));
    return this.plan.outputs.map((s, i) => (want.has(i) ? assemble(this.plan, s, bySlot.get(s)!, () => { throw new UsageError("a captured plan has no segmented values"); }) : undefined));
  }

  /** Frees the graph and every buffer it owns. */
  destroy(): void {
    if (!this.exec || !this.graph) return;
    const a = this.gpu.addon;
    a.streamSynchronize(this.gpu.stream);
    a.graphExecDestroy(this.exec);
    a.graphDestroy(this.graph);
    this.exec = this.graph = undefined;
    const owned = new Set<DeviceTensor>([...this.outputs.flat(), ...[...this.staged.values()].flat(), ...this.checks.map((c) => c.bad)]);
    for (const d of owned) if (!this.borrowed.has(d)) a.memFree(d.ptr);
    for (const p of this.pools) p.drain();
  }
}
