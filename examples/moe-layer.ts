// A DeepSeek-style MoE layer with expert parallelism, written in the global view:
// router → top-k → sort tokens by expert → dispatch (all-to-all over ep) → per-expert SwiGLU as a
// grouped contraction over data-dependent segments → combine (all-to-all back) → weighted
// un-permute, plus a shared expert. Tokens come in groups; each (dp, ep) rank holds one group.
//   npx shardts run examples/moe-layer.ts          (mesh dp=2, ep=2; checked against one device)
import {
  defineModel, randn, dot, softmax, topk, div, sum, flatten, sortByKey, gather, segmentDot,
  scatterAdd, mul, silu, add, redistribute, Shard,
} from "shardts";

const GROUPS = 4, TOKENS = 16, MODEL = 32, FFN = 64, EXPERTS = 8, TOP_K = 2;

export default defineModel({ dp: 2, ep: 2 }, (mesh) => {
  const x = randn(mesh, { group: GROUPS, tokens: TOKENS, model: MODEL }, "f32", { dp: Shard("group"), ep: Shard("group") }, { seed: 1 });
  const router = randn(mesh, { model: MODEL, experts: EXPERTS }, "f32", {}, { seed: 2, std: 0.2 });
  const ep = { ep: Shard("experts") };
  const w1 = randn(mesh, { experts: EXPERTS, model: MODEL, ffn: FFN }, "f32", ep, { seed: 3, std: 0.18 });
  const w3 = randn(mesh, { experts: EXPERTS, model: MODEL, ffn: FFN }, "f32", ep, { seed: 4, std: 0.18 });
  const w2 = randn(mesh, { experts: EXPERTS, ffn: FFN, model: MODEL }, "f32", ep, { seed: 5, std: 0.125 });
  const s1 = randn(mesh, { model: MODEL, ffn: FFN }, "f32", {}, { seed: 6, std: 0.18 });
  const s3 = randn(mesh, { model: MODEL, ffn: FFN }, "f32", {}, { seed: 7, std: 0.18 });
  const s2 = randn(mesh, { ffn: FFN, model: MODEL }, "f32", {}, { seed: 8, std: 0.125 });

  // route: softmax scores, top-k experts per token, weights normalised over the k picks
  const scores = softmax(dot(x, router, "model"), "experts");
  const { values, indices } = topk(scores, "experts", TOP_K, "k");
  const gate = div(values, sum(values, "k"));

  // permute: the group's (token, k) slots sorted by expert; counts = tokens per expert
  const { perm, counts } = sortByKey(flatten(indices, ["tokens", "k"], "slots"), "slots", { rows: "rows", groups: "experts", numGroups: EXPERTS });
  const token = div(perm, TOP_K); // slot → token
  const rows = gather(x, token, "tokens"); // [group, rows, model], rows segmented by expert

  // dispatch: each ep rank receives, from every group of its dp shard, the rows of its own experts
  const dispatched = redistribute(rows, { ep: Shard("rows") });
  const localCounts = redistribute(counts, { ep: Shard("experts") }); // the count exchange
  const seg = { rows: "rows", groups: "experts" } as const;
  const h = mul(silu(segmentDot(dispatched, w1, localCounts, "model", seg)), segmentDot(dispatched, w3, localCounts, "model", seg));
  const out = segmentDot(h, w2, localCounts, "ffn", seg);

  // combine: rows go back to their group's rank, are weighted and added into their tokens
  const back = redistribute(out, { ep: Shard("group") });
  const weight = gather(flatten(gate, ["tokens", "k"], "slots"), perm, "slots");
  const routed = scatterAdd(mul(back, weight), token, "rows", { dim: "tokens", size: TOKENS });

  const shared = dot(mul(silu(dot(x, s1, "model")), dot(x, s3, "model")), s2, "ffn");
  return { y: add(routed, shared), tokensPerExpert: counts };
}, "MoE layer: 8 experts top-2 plus a shared expert, experts sharded over ep");
