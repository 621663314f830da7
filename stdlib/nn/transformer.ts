// A decoder-only transformer LM assembled from the layers: embedding, then per layer
// x += attention(rmsnorm(x)); x += ffn(rmsnorm(x)) with the ffn a MoE block or a SwiGLU MLP; final
// rmsnorm, a vocab-parallel output head and the (vocab-parallel) cross-entropy.
import type { AnyDTensor } from "../dtensor.ts";
import { add } from "./ops-internal.ts";
import { attention, crossEntropy, embedding, linear, rmsnorm, swiglu, toActivation } from "./layers.ts";
import { moe, type MoeConfig, type ReplicaMap } from "./moe.ts";
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
}

export interface LmOut {
  /** Cross-entropy plus the auxiliary losses: what is minimised. */
  loss: AnyDTensor;
  ce: AnyDTensor;
  logits: AnyDTensor;
  /** Per MoE layer: tokens per expert. */
  loads: AnyDTensor[];
  /** Per MoE layer: tokens per physical expert slot (= `loads` without redundant experts). */
  slotLoads: AnyDTensor[];
}

export const moeLayers = (cfg: LmConfig): number[] =>
  cfg.moe ? Array.from({ length: cfg.layers }, (_, i) => i).filter((i) => i >= (cfg.moe!.moeFrom ?? 0)) : [];

/**
 * `biases[i]` is the selection bias ([experts], replicated) of the i-th MoE layer; `replicas[i]` its
 * replica map, when `cfg.moe.redundant` has slots.
 */
export function lm(ps: ParamStore, ids: AnyDTensor, targets: AnyDTensor, cfg: LmConfig, biases: AnyDTensor[], replicas?: ReplicaMap[]): LmOut {
  let x = embedding(ps, "embed", ids, cfg.vocab, cfg.model);
  const loads: AnyDTensor[] = [], slotLoads: AnyDTensor[] = [];
  let aux: AnyDTensor | undefined;
  const moeAt = moeLayers(cfg);
  for (let l = 0; l < cfg.layers; l++) {
    x = add(x, attention(ps, `l${l}.attn`, rmsnorm(ps, `l${l}.norm1`, x, "model"), cfg.heads));
    const hx = rmsnorm(ps, `l${l}.norm2`, x, "model");
    if (moeAt.includes(l)) {
      const i = moeAt.indexOf(l);
      const m = moe(ps, `l${l}.moe`, hx, { ...cfg.moe!, fp8: cfg.moe!.fp8 ?? cfg.fp8 }, biases[i]!, replicas?.[i]);
      x = add(x, m.y);
      loads.push(m.load);
      slotLoads.push(m.slotLoad);
      aux = aux ? add(aux, m.aux) : m.aux;
    } else x = add(x, swiglu(ps, `l${l}.mlp`, hx, cfg.ffn, cfg.fp8));
  }
  const logits = linear(ps, "head", rmsnorm(ps, "norm", x, "model"), "model", "vocab", cfg.vocab, "column");
  const ce = crossEntropy(ps, logits, targets);
  return { loss: toActivation(ps, aux ? add(ce, aux) : ce), ce, logits, loads, slotLoads };
}
