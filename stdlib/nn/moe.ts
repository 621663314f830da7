// A DeepSeek-style MoE block over [batch, seq, model]: router scores (softmax or sigmoid), optional
// node-limited routing, top-k with the auxiliary-loss-free selection bias, normalised gate weights,
// dropless routing per sequence (sort by expert), experts as grouped contractions over the
// data-dependent segments, shared experts, and the auxiliary load-balancing loss. With an expert
// axis in the layout the rows travel by all-to-all (dispatch) and back (combine).
import { UsageError } from "../../compiler/errors.ts";
import type { AnyDTensor } from "../dtensor.ts";
import { add, div, mul, sigmoid, silu, stop_gradient_ as stopGradient, sub } from "./ops-internal.ts";
import { trace } from "../ops/trace.ts";
import { dot, segmentDot } from "../ops/contraction.ts";
import { max, mean, softmax, sum } from "../ops/reduce.ts";
import { gather, scatterAdd, sortByKey, topk } from "../ops/routing.ts";
import { flatten, unflatten } from "../ops/movement.ts";
import { cast, where } from "../ops/elementwise.ts";
import { iota, ones } from "../ops/factories.ts";
import { redistribute } from "../ops/redistribute.ts";
import { moeCombine, moeDispatch } from "../ops/dispatch.ts";
import type { ParamStore } from "./params.ts";
import { swiglu, toActivation } from "./layers.ts";
import { fp8Dispatch, fp8SegmentDot, isFp8Rows, type Fp8Rows } from "./fp8.ts";

export interface MoeConfig {
  experts: number;
  topK: number;
  ffn: number;
  /** Shared experts, each a SwiGLU of `ffn`, applied to every token. */
  shared: number;
  score: "softmax" | "sigmoid";
  /** Coefficient of the auxiliary load-balancing loss (0 turns it off). */
  auxLoss: number;
  /** Node-limited routing: experts form `groups` groups; a token's experts lie in at most `maxGroups` of them. */
  nodeLimit?: { groups: number; maxGroups: number };
  /**
   * The FP8 recipe for the routed and shared experts (the router, gates and combine stay as they are).
   * With `fusedDispatch` the tokens are quantized before the dispatch and travel as e4m3 codes with
   * their 1x128 scales (fp8Dispatch, stdlib/nn/fp8.ts); the composed path moves them in their own
   * dtype and quantizes after. The results are the same bits.
   */
  fp8?: boolean;
  /**
   * Dispatch and combine as the single ops moe_dispatch / moe_combine (one plan step each) instead
   * of sort + gather + redistribute + scatter_add; the results are the same.
   */
  fusedDispatch?: boolean;
  /**
   * Redundant experts: `slots` extra physical expert slots hold replicas of the hottest experts; the
   * replica map is a program input (`ReplicaMap`), re-planned by the Trainer every `every` steps
   * from the observed load (stdlib/nn/moe-replicas.ts). The block computes the same as without
   * replicas (with `fp8`, a replicated expert's Wgrad is quantized per slot segment: equal within
   * FP8 rounding).
   */
  redundant?: { slots: number; every: number };
}

/**
 * The replica map, as i32 program inputs (replicated): `slotExpert` [eslots = experts + extra], the
 * logical expert of each physical slot; `count` [experts], replicas per expert; `table`
 * [erep = experts * (extra + 1)], expert e's j-th slot at e * (extra + 1) + j (replicaTables()).
 */
export interface ReplicaMap {
  slotExpert: AnyDTensor;
  count: AnyDTensor;
  table: AnyDTensor;
}

export interface MoeOut {
  y: AnyDTensor;
  /** The auxiliary loss (already scaled by its coefficient), 0-d. */
  aux: AnyDTensor;
  /** Tokens routed to each expert in this batch, [experts], f32. */
  load: AnyDTensor;
  /** The experts each token was routed to, [batch, seq, k], i32. */
  indices: AnyDTensor;
  /** With redundant experts: tokens routed to each physical slot, [eslots], f32 (else `load`). */
  slotLoad: AnyDTensor;
  /** Mean router score per expert over the batch, [experts] (the auxiliary loss's P); only with `auxLoss` > 0. */
  scoreMean?: AnyDTensor;
}

/**
 * `bias` ([experts], replicated) shifts only which experts are selected, never the gate weights.
 * `replicas`: the replica map, required when `cfg.redundant` has slots.
 */
export function moe(ps: ParamStore, name: string, x: AnyDTensor, cfg: MoeConfig, bias: AnyDTensor, replicas?: ReplicaMap): MoeOut {
  const { experts: E, topK: K } = cfg;
  const model = x.dims.model!;
  if (K < 1 || K > E) throw new UsageError(`moe '${name}': topK ${K} must be in [1, ${E}]`);
  const extra = cfg.redundant?.slots ?? 0;
  if (!Number.isSafeInteger(extra) || extra < 0) throw new UsageError(`moe '${name}': redundant.slots must be a non-negative integer, got ${extra}`);
  if (extra > 0 && !replicas) throw new UsageError(`moe '${name}': ${extra} redundant slots need a replica map; pass moe(..., replicas) (the Trainer feeds one per MoE layer)`);
  if (extra === 0 && replicas) throw new UsageError(`moe '${name}': a replica map was given but redundant.slots is 0; set redundant: { slots, every }`);
  // node-limited routing bounds a token's experts to M groups of ranks assuming expert e lives on its
  // home rank; replicas placed by load break that assumption, so the two are not combined
  if (extra > 0 && cfg.nodeLimit) throw new UsageError(`moe '${name}': node-limited routing and redundant experts cannot be combined (replicas move experts off their group's ranks); drop nodeLimit or redundant`);
  const ep = ps.layout.expertAxis;
  const router = ps.param(`${name}.router`, { model, experts: E }, { kind: "normal", std: 1 / Math.sqrt(model) });
  const logits = dot(x, router, "model") as AnyDTensor;
  const scores = cfg.score === "softmax" ? (softmax(logits, "experts") as AnyDTensor) : sigmoid(logits);

  let select = add(stopGradient(scores), bias);
  if (cfg.nodeLimit) {
    const { groups: G, maxGroups: M } = cfg.nodeLimit;
    if (E % G === 0 && K > M * (E / G)) throw new UsageError(`moe '${name}': top-${K} cannot fit in ${M} group(s) of ${E / G} experts; raise maxGroups or lower topK`);
    select = limitToGroups(ps, select, E, cfg.nodeLimit);
  }
  const { indices } = topk(select, "experts", K, "k") as { indices: AnyDTensor };
  const picked = gather(scores, indices, "experts") as AnyDTensor; // [batch, seq, k], unbiased scores
  const gate = div(picked, sum(picked, "k") as AnyDTensor);

  // with replicas the rows are grouped by physical slot ("eslots"), else by expert
  const groups = replicas ? "eslots" : "experts", numSlots = E + extra;
  const keys = replicas ? toSlots(ps, indices, replicas, extra + 1) : indices;
  const routed = cfg.fusedDispatch ? fusedRoute(x, keys, gate, numSlots, ep, groups, cfg.fp8 === true) : composedRoute(x, keys, gate, numSlots, K, ep, groups);
  const { rows, segCounts, counts } = routed;
  const expert = (p: string, a: string, an: number, b: string, bn: number) => {
    const w = ps.param(`${name}.${p}`, { experts: E, [a]: an, [b]: bn }, { kind: "normal", std: 1 / Math.sqrt(an) }, { ep: "experts" });
    return replicas ? physical(w, replicas.slotExpert, ep) : w;
  };
  const seg = { rows: "rows", groups } as const;
  const w1 = expert("w1", "model", model, "ffn", cfg.ffn), w3 = expert("w3", "model", model, "ffn", cfg.ffn), w2 = expert("w2", "ffn", cfg.ffn, "model", model);
  // fp8: the routed experts' contractions in FP8 (grouped, block-scaled; FP8 Dgrad and Wgrad too)
  const sdot = (a: AnyDTensor | Fp8Rows, w: AnyDTensor, k: string, n: string): AnyDTensor =>
    cfg.fp8 || isFp8Rows(a) ? fp8SegmentDot(a, w, segCounts, k, n) : (segmentDot(a, w, segCounts, k, seg) as AnyDTensor);
  const h = mul(silu(sdot(rows, w1, "model", "ffn")), sdot(rows, w3, "model", "ffn"));
  let y = routed.combine(sdot(h, w2, "ffn", "model"));
  for (let i = 0; i < cfg.shared; i++) y = add(y, swiglu(ps, `${name}.shared${i}`, x, cfg.ffn, cfg.fp8));

  // load of each expert (slot) over the whole batch (no gradient: it comes from integer counts)
  const slotLoad = toActivation(ps, sum(cast(counts, "f32"), "batch") as AnyDTensor);
  const load = replicas ? (scatterAdd(slotLoad, replicas.slotExpert, "eslots", { dim: "experts", size: E }) as AnyDTensor) : slotLoad;
  // only traced when the loss reads it (its reduction over a sharded batch is a collective)
  const scoreMean = cfg.auxLoss > 0 ? toActivation(ps, mean(scores, ["batch", "seq"]) as AnyDTensor) : undefined;
  return { y: toActivation(ps, y), aux: auxLoss(load, scoreMean, cfg), load, indices, slotLoad, scoreMean };
}

/**
 * Switch / DeepSeek: E * sum_e f_e P_e with f_e the fraction of routed slots and P_e the mean score
 * (times `cfg.auxLoss`; a zero of the load's graph when it is 0). Micro-batches pass their summed
 * loads and averaged score means, so the loss is the whole batch's.
 */
export function auxLoss(load: AnyDTensor, scoreMean: AnyDTensor | undefined, cfg: MoeConfig): AnyDTensor {
  if (!(cfg.auxLoss > 0) || !scoreMean) return mul(sum(load, "experts") as AnyDTensor, 0);
  const f = div(load, sum(load, "experts") as AnyDTensor);
  return mul(sum(mul(f, scoreMean), "experts") as AnyDTensor, cfg.auxLoss * cfg.experts);
}

/**
 * Each (token, k) assignment to logical expert e goes to replica j = t mod count[e] of e, with t the
 * token's flat index (batch, seq): deterministic, and even over the replicas for tokens spread over
 * positions. (A token's k experts are distinct, so k need not enter; with it, as t * K + k, an expert
 * with K replicas would send all its first choices to one replica and its second to another.)
 * Returns the physical slots, [batch, seq, k] i32.
 */
function toSlots(ps: ParamStore, indices: AnyDTensor, rep: ReplicaMap, maxReplicas: number): AnyDTensor {
  const pl = ps.placementsObject(indices.type.placements) as never;
  const at = (d: string) => iota(ps.mesh, indices.dims, "i32", d, pl) as AnyDTensor;
  const t = add(mul(at("batch"), indices.dims.seq!), at("seq"));
  const n = gather(rep.count, indices, "experts") as AnyDTensor;
  const j = sub(t, mul(div(t, n), n)); // t mod n (i32 division truncates; t >= 0, n >= 1)
  return gather(rep.table, add(mul(indices, maxReplicas), j), "erep") as AnyDTensor;
}

/**
 * The physical expert weights [eslots, ...] from the logical ones [experts, ...]: slot s holds
 * W[slotExpert[s]]. The parameters stay logical (checkpoints and optimizer state are unchanged and a
 * re-plan moves no state); the gather's gradient (scatter-add) sums the replicas' gradients into
 * their expert, which is the update a replicated expert must get. On an expert axis the gather of
 * the expert-sharded W gives a Partial [eslots, ...] (each rank fills the rows it holds) and the
 * redistribute to S(eslots) is a reduce-scatter; its transpose in the backward is an all-gather of
 * the slots' gradients. Cost per MoE layer and step: both collectives move about (ep-1)/ep of all
 * S = E + extra slots' weights, and each rank holds one full [eslots, ...] buffer, i.e. the whole
 * expert weights are rebuilt every step. A stored-replica scheme (replicas kept as extra weights,
 * copied once per re-plan, their gradients all-reduced among the copies of each expert) would move
 * only the replicated experts' gradients per step; this one trades that for unchanged parameters
 * and a re-plan that is only new input values.
 */
function physical(w: AnyDTensor, slotExpert: AnyDTensor, ep: string | undefined): AnyDTensor {
  const p = gather(w, slotExpert, "experts") as AnyDTensor;
  return ep ? (redistribute(p, { [ep]: "S(eslots)" } as never) as AnyDTensor) : p;
}

interface Routed {
  /** Rows grouped by expert (on the expert axis: each rank's own experts), and their counts there. */
  rows: AnyDTensor | Fp8Rows;
  segCounts: AnyDTensor;
  /** Tokens per expert in the tokens' own layout (for the load statistics). */
  counts: AnyDTensor;
  /** Expert outputs (laid out as `rows`) back to [batch, seq, model], gate-weighted and summed. */
  combine(out: AnyDTensor): AnyDTensor;
}

/** Sort by expert, gather, and the all-to-alls asked for with redistribute. */
function composedRoute(x: AnyDTensor, indices: AnyDTensor, gate: AnyDTensor, E: number, K: number, ep: string | undefined, groups: string): Routed {
  const { perm, counts } = sortByKey(flatten(indices, ["seq", "k"], "slots") as AnyDTensor, "slots", { rows: "rows", groups, numGroups: E }) as { perm: AnyDTensor; counts: AnyDTensor };
  const token = div(perm, K); // slot -> token (integer division)
  let rows = gather(x, token, "seq") as AnyDTensor; // [batch, rows, model]
  let segCounts = counts;
  if (ep) {
    rows = redistribute(rows, { [ep]: "S(rows)" } as never) as AnyDTensor; // dispatch
    segCounts = redistribute(counts, { [ep]: `S(${groups})` } as never) as AnyDTensor; // count exchange
  }
  const combine = (out: AnyDTensor) => {
    if (ep) out = redistribute(out, { [ep]: "S(batch)" } as never) as AnyDTensor; // combine
    const weight = gather(flatten(gate, ["seq", "k"], "slots") as AnyDTensor, perm, "slots") as AnyDTensor;
    return scatterAdd(mul(out, weight), token, "rows", { dim: "seq", size: x.dims.seq! }) as AnyDTensor;
  };
  return { rows, segCounts, counts, combine };
}

/** moe_dispatch / moe_combine: each one step of the plan. */
function fusedRoute(x: AnyDTensor, indices: AnyDTensor, gate: AnyDTensor, E: number, ep: string | undefined, groups: string, fp8: boolean): Routed {
  const axis = ep ?? null;
  const o = { axis, dim: "seq", k: "k", rows: "rows", groups, numGroups: E };
  const d = fp8 ? fp8Dispatch(x, indices, o, "model") : moeDispatch(x, indices, o);
  const combine = (out: AnyDTensor) => moeCombine(out, d.perm, gate, { axis, dim: "seq", size: x.dims.seq!, k: "k", numK: indices.dims.k! });
  return { rows: d.rows, segCounts: d.counts, counts: d.counts, combine };
}

/** Keeps, per token, only the experts of its best `maxGroups` groups (group score: its best expert). */
function limitToGroups(ps: ParamStore, select: AnyDTensor, E: number, nl: { groups: number; maxGroups: number }): AnyDTensor {
  const { groups: G, maxGroups: M } = nl;
  if (E % G !== 0 || M < 1 || M > G) throw new UsageError(`node-limited routing needs experts (${E}) divisible by groups (${G}) and 1 <= maxGroups (${M}) <= groups`);
  const grouped = unflatten(select, "experts", { egroup: G, eper: E / G }) as AnyDTensor;
  const { indices } = topk(max(grouped, "eper") as AnyDTensor, "egroup", M, "gk") as { indices: AnyDTensor };
  const one = ones(ps.mesh, indices.dims, "f32", ps.placementsObject(indices.type.placements) as never) as AnyDTensor;
  const chosen = scatterAdd(one, indices, "gk", { dim: "egroup", size: G }) as AnyDTensor; // 1 for kept groups
  const keep = trace("expand", [chosen], { dims: [["eper", E / G]] })[0]!;
  const masked = where(keep, grouped, -1e9) as AnyDTensor;
  return flatten(masked, ["egroup", "eper"], "experts") as AnyDTensor;
}
