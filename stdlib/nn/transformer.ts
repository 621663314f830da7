// A decoder-only transformer LM assembled from the layers: embedding, then per layer
// x += attention(rmsnorm(x)); x += ffn(rmsnorm(x)) with the ffn a MoE block or a SwiGLU MLP; final
// rmsnorm, a vocab-parallel output head and the (vocab-parallel) cross-entropy. With micro-batches
// the batch arrives as several inputs that go through the layers as independent chains sharing the
// parameters (the schedule pass interleaves them so one's dispatch/combine overlaps the other's
// compute); the loss is the whole batch's.
import { UsageError } from "../../compiler/errors.ts";
import type { AnyDTensor } from "../dtensor.ts";
import { add, mul } from "./ops-internal.ts";
import { attention, crossEntropy, embedding, linear, rmsnorm, swiglu, toActivation } from "./layers.ts";
import { auxLoss, moe, type MoeConfig, type ReplicaMap } from "./moe.ts";
import type { ParamStore } from "./params.ts";

export interface LmConfig {
  vocab: number;
  model: number;
  heads: number;
  layers: number;
  seq: number;
  /** Dense MLP width, for layers without experts. */
  ffn: number;
  /** MoE in every layer from `moeFrom` on (DeepSeek keeps the first layers dense). */
  moe?: MoeConfig & { moeFrom?: number };
  /** The FP8 recipe for the MLPs and experts; embedding, attention, router and output head stay as they are. */
  fp8?: boolean;
  /**
   * Split the batch into this many equal micro-batches (default 1), each its own chain through the
   * layers: same loss and gradients up to f32 summation order (loads summed, score means and
   * cross-entropies averaged).
   */
  microBatches?: number;
}

/** One micro-batch's token ids and targets, [batch / microBatches, seq]. */
export interface MicroBatch {
  ids: AnyDTensor;
  targets: AnyDTensor;
}

export interface LmOut {
  /** Cross-entropy plus the auxiliary losses: what is minimised. */
  loss: AnyDTensor;
  ce: AnyDTensor;
  /** Per micro-batch. */
  logits: AnyDTensor[];
  /** Per MoE layer: tokens per expert. */
  loads: AnyDTensor[];
  /** Per MoE layer: tokens per physical expert slot (= `loads` without redundant experts). */
  slotLoads: AnyDTensor[];
}

export const moeLayers = (cfg: LmConfig): number[] =>
  cfg.moe ? Array.from({ length: cfg.layers }, (_, i) => i).filter((i) => i >= (cfg.moe!.moeFrom ?? 0)) : [];

/** The micro-batch count of `cfg`, checked against the global batch. */
export function microBatchesOf(cfg: LmConfig, batch: number): number {
  const m = cfg.microBatches ?? 1;
  if (!Number.isSafeInteger(m) || m < 1 || batch % m !== 0)
    throw new UsageError(`microBatches ${m} must be a positive integer dividing the batch (${batch}); pick a batch that is a multiple of it`);
  return m;
}

/**
 * `data`: the micro-batches (one for an unsplit batch), of equal size. `biases[i]` is the selection
 * bias ([experts], replicated) of the i-th MoE layer; `replicas[i]` its replica map, when
 * `cfg.moe.redundant` has slots. The chains are traced layer by layer, alternating.
 */
export function lm(ps: ParamStore, data: MicroBatch[], cfg: LmConfig, biases: AnyDTensor[], replicas?: ReplicaMap[]): LmOut {
  const M = data.length;
  if (M < 1 || data.some((d) => d.ids.dims.batch !== data[0]!.ids.dims.batch)) throw new UsageError(`lm(): ${M} micro-batches of batch sizes [${data.map((d) => d.ids.dims.batch)}]; give one or more of equal size`);
  // the first chain declares the parameters, the others reuse them
  const each = <T>(f: (m: number) => T): T[] => data.map((_, m) => (m === 0 ? f(m) : ps.sharing(() => f(m))));
  let xs = each((m) => embedding(ps, "embed", data[m]!.ids, cfg.vocab, cfg.model));
  const loads: AnyDTensor[] = [], slotLoads: AnyDTensor[] = [];
  let aux: AnyDTensor | undefined;
  const moeAt = moeLayers(cfg);
  const sumOf = (ts: AnyDTensor[]) => ts.reduce((a, b) => add(a, b));
  for (let l = 0; l < cfg.layers; l++) {
    xs = each((m) => add(xs[m]!, attention(ps, `l${l}.attn`, rmsnorm(ps, `l${l}.norm1`, xs[m]!, "model"), cfg.heads)));
    const hx = each((m) => rmsnorm(ps, `l${l}.norm2`, xs[m]!, "model"));
    if (moeAt.includes(l)) {
      const i = moeAt.indexOf(l), mcfg = { ...cfg.moe!, fp8: cfg.moe!.fp8 ?? cfg.fp8 };
      const ms = each((m) => moe(ps, `l${l}.moe`, hx[m]!, mcfg, biases[i]!, replicas?.[i]));
      xs = xs.map((x, m) => add(x, ms[m]!.y));
      loads.push(sumOf(ms.map((o) => o.load)));
      slotLoads.push(sumOf(ms.map((o) => o.slotLoad)));
      // the auxiliary loss is not linear in the batch: it takes the whole batch's statistics
      const a = M === 1 ? ms[0]!.aux : auxLoss(loads[loads.length - 1]!, mcfg.auxLoss > 0 ? mul(sumOf(ms.map((o) => o.scoreMean!)), 1 / M) : undefined, mcfg);
      aux = aux ? add(aux, a) : a;
    } else xs = each((m) => add(xs[m]!, swiglu(ps, `l${l}.mlp`, hx[m]!, cfg.ffn, cfg.fp8)));
  }
  const logits = each((m) => linear(ps, "head", rmsnorm(ps, "norm", xs[m]!, "model"), "model", "vocab", cfg.vocab, "column"));
  const ces = logits.map((lg, m) => crossEntropy(ps, lg, data[m]!.targets));
  const ce = M === 1 ? ces[0]! : toActivation(ps, mul(sumOf(ces), 1 / M));
  return { loss: toActivation(ps, aux ? add(ce, aux) : ce), ce, logits, loads, slotLoads };
}
