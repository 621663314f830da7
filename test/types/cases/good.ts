// Well-sharded programs: every line here must type-check with no diagnostics at all.
import {
  Mesh, DTensor, Replicate, Shard, Partial, randn, zeros, ones, full, iota, fromGlobal,
  add, sub, mul, div, maximum, neg, exp, silu, gelu, relu, where, cast,
  sum, mean, max, softmax, logSoftmax, rmsnorm, dot, segmentDot, topk, gather, embedding, scatterAdd, sortByKey,
  rename, flatten, unflatten, concat, split, redistribute,
} from "../../../stdlib/index.ts";

const mesh = Mesh.of({ dp: 2, tp: 2 });

// --- the DESIGN example: x·w1 → silu → ·w2 → redistribute → add -----------------------------
const x = randn(mesh, { batch: 8, model: 16 }, "f32", { dp: Shard("batch") });
const w1 = randn(mesh, { model: 16, ffn: 32 }, "f32", { tp: Shard("ffn") });
const w2 = randn(mesh, { ffn: 32, model: 16 }, "f32", { tp: Shard("ffn") });
const h = silu(dot(x, w1, "model"));
const y = dot(h, w2, "ffn");
export const design = add(redistribute(y, { tp: Replicate }), x);
const designCheck: DTensor<{ batch: 8; model: 16 }, "f32", { dp: "S(batch)"; tp: "R" }> = design;

// --- reductions producing Partial and being reduced -----------------------------------------
const s1 = sum(x, "batch");
const s1Check: DTensor<{ model: 16 }, "f32", { dp: "P(sum)"; tp: "R" }> = s1;
export const s1r = redistribute(s1, { dp: Replicate });
const m1 = max(x, ["batch", "model"]);
const m1Check: DTensor<{}, "f32", { dp: "P(max)"; tp: "R" }> = m1;
export const m1r = redistribute(m1, { dp: Replicate });
export const mean1 = redistribute(mean(x, "batch"), { dp: Replicate });
// a Partial<sum> passes through linear ops: sum of a Partial<sum>, neg, add of two Partial<sum>
export const lin = add(neg(sum(s1, "model")), sum(s1, "model"));
// Partial<sum> times a Replicate is still a Partial<sum>; dividing it by a Replicate too
export const scaled = div(mul(s1, ones(mesh, { model: 16 }, "f32")), 4);
// reduce-scatter: Partial<sum> → Shard
export const rs = redistribute(s1, { dp: Shard("model") });

// --- a dot over a dim sharded alike on both sides gives Partial<sum> ------------------------
const a2 = randn(mesh, { tokens: 8, hidden: 16 }, "f32", { tp: Shard("hidden") });
const b2 = randn(mesh, { hidden: 16, out: 4 }, "f32", { tp: Shard("hidden") });
const ab = dot(a2, b2, "hidden");
const abCheck: DTensor<{ tokens: 8; out: 4 }, "f32", { dp: "R"; tp: "P(sum)" }> = ab;
export const abR = redistribute(ab, { tp: Replicate });
// batch dims sharded alike on both sides
const q = randn(mesh, { head: 4, seq: 8, d: 16 }, "f32", { tp: Shard("head") });
const k = randn(mesh, { head: 4, kseq: 8, d: 16 }, "f32", { tp: Shard("head") });
const scores = dot(q, k, "d");
const scoresCheck: DTensor<{ head: 4; seq: 8; kseq: 8 }, "f32", { dp: "R"; tp: "S(head)" }> = scores;
export const attn = softmax(scores, "kseq");

// --- vocab-parallel embedding ---------------------------------------------------------------
const table = randn(mesh, { vocab: 64, model: 16 }, "f32", { tp: Shard("vocab") });
const ids = zeros(mesh, { tokens: 8 }, "i32", { dp: Shard("tokens") });
const emb = embedding(table, ids, "vocab");
const embCheck: DTensor<{ tokens: 8; model: 16 }, "f32", { dp: "S(tokens)"; tp: "P(sum)" }> = emb;
export const embR = redistribute(emb, { tp: Replicate });
export const rows = gather(table, ids, "vocab");

// --- a MoE routing chain: topk → sortByKey → gather → segmentDot ----------------------------
const tokens = randn(mesh, { tok: 8, model: 16 }, "f32");
const router = randn(mesh, { tok: 8, expert: 4 }, "f32");
const probs = softmax(router, "expert");
const top = topk(probs, "expert", 1, "choice");
const topCheck: DTensor<{ tok: 8; choice: 1 }, "i32", { dp: "R"; tp: "R" }> = top.indices;
const keys = sum(top.indices, "choice");
const routed = sortByKey(keys, "tok", { rows: "slot", groups: "exp", numGroups: 4 });
const permCheck: DTensor<{ slot: 8 }, "i32", { dp: "R"; tp: "R" }> = routed.perm;
const countsCheck: DTensor<{ exp: 4 }, "i32", { dp: "R"; tp: "R" }> = routed.counts;
const xs = gather(tokens, routed.perm, "tok");
const wE = randn(mesh, { exp: 4, model: 16, ffn: 8 }, "f32", { tp: Shard("ffn") });
const moe = segmentDot(xs, wE, routed.counts, "model", { rows: "slot", groups: "exp" });
const moeCheck: DTensor<{ slot: 8; ffn: 8 }, "f32", { dp: "R"; tp: "S(ffn)" }> = moe;
export const back = scatterAdd(redistribute(moe, { tp: Replicate }), routed.perm, "slot", { dim: "tok", size: 8 });

// --- redistribute among all kinds -----------------------------------------------------------
const r0 = randn(mesh, { batch: 8, model: 16 }, "f32");
const r1 = redistribute(r0, { dp: Shard("batch"), tp: Shard("model") }); // R → S (local slice)
const r2 = redistribute(r1, { dp: Shard("model"), tp: Shard("batch") }); // S → S (all-to-all)
const r3 = redistribute(r2, { dp: Replicate }); // S → R (all-gather)
const r4 = redistribute(r3, { dp: Partial("sum") }); // R → P (hold on one rank)
const r5 = redistribute(r4, { dp: Replicate, tp: Partial("max") });
const r6 = redistribute(r5, { tp: Shard("model") });
const r6Check: DTensor<{ batch: 8; model: 16 }, "f32", { dp: "R"; tp: "S(model)" }> = r6;

// --- broadcast of a Replicate tensor lacking the sharded dim --------------------------------
const bias = randn(mesh, { model: 16 }, "f32");
const xb = add(x, bias); // x is Shard<batch> on dp; bias has no 'batch'
const xbCheck: DTensor<{ batch: 8; model: 16 }, "f32", { dp: "S(batch)"; tp: "R" }> = xb;
export const xb2 = mul(bias, x);
export const xb3 = where(x, bias, 0);

// --- FP8 is allowed in dot and cast ---------------------------------------------------------
const a8 = cast(randn(mesh, { tokens: 8, model: 16 }, "f32"), "fp8e4m3");
const b8 = cast(randn(mesh, { model: 16, out: 4 }, "bf16"), "fp8e4m3");
const c8 = dot(a8, b8, "model");
const c8Check: DTensor<{ tokens: 8; out: 4 }, "bf16", { dp: "R"; tp: "R" }> = c8;
export const c8f = dot(a8, b8, "model", { out: "f32" });
export const back8 = exp(cast(a8, "bf16"));

// --- i32 arithmetic, row ops, movement ------------------------------------------------------
const io = iota(mesh, { n: 8 }, "i32", "n");
export const iarith = div(add(io, full(mesh, { n: 8 }, "i32", 3)), 2);
export const irelu = relu(io);
export const ls = logSoftmax(x, "model");
export const rn = rmsnorm(x, randn(mesh, { model: 16 }, "f32"), "model");
export const ge = gelu(sub(x, maximum(x, 0)));
const rr = rename(x, "batch", "b");
const rrCheck: DTensor<{ model: 16; b: 8 }, "f32", { dp: "S(b)"; tp: "R" }> = rr;
const fl = flatten(randn(mesh, { a: 2, b: 3, c: 4 }, "f32", { dp: Shard("a") }), ["b", "c"], "bc");
export const uf = unflatten(fl, "bc", { b: 3, c: 4 });
export const cc = concat([x, x], "model");
export const sp = split(x, "model", [4, 12]);
export const fg = fromGlobal(mesh, { n: 4 }, "f32", [1, 2, 3, 4], { tp: Shard("n") });
// movement ops only move data: a Partial<sum> passes through (compiler/ops/movement.ts passThrough)
const part = sum(randn(mesh, { a: 2, b: 3, c: 4 }, "f32", { tp: Shard("a") }), "a");
const pfl = flatten(part, ["c", "b"], "cb"); // dims need not be adjacent or in layout order
const pflCheck: DTensor<{ cb: number }, "f32", { dp: "R"; tp: "P(sum)" }> = pfl;
export const puf = unflatten(part, "c", { c1: 2, c2: 2 });
export const psp = split(part, "b", [1, 2]);
export const pcc = concat([part, part], "b");
const pccCheck: DTensor<{ b: number; c: 4 }, "f32", { dp: "R"; tp: "P(sum)" }> = pcc;
// a shard of a dim the op does not restructure passes too
export const scc = concat([x, x], "model");
const sccCheck: DTensor<{ batch: 8; model: number }, "f32", { dp: "S(batch)"; tp: "R" }> = scc;
// topk takes i32 (its values keep the dtype)
const itop = topk(io, "n", 2, "k");
const itopCheck: DTensor<{ k: 2 }, "i32", { dp: "R"; tp: "R" }> = itop.values;
// concat of a plain array (not a tuple): checked on its element type
const many: (typeof x)[] = [x, x, x];
export const cm = concat(many, "model");

export const checks = [designCheck, s1Check, m1Check, abCheck, scoresCheck, embCheck, topCheck, permCheck, countsCheck, moeCheck, r6Check, xbCheck, c8Check, rrCheck, pflCheck, pccCheck, sccCheck, itopCheck];
