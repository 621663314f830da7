// The bad programs of test/types/cases, run as plain JS (every call through `any`, so tsc checks
// nothing): each must throw at trace time with the SAME text tsc prints for it (built here with the
// runtime builders of compiler/messages.ts, which test/types/messages.test.ts ties to the types),
// the right error class, and the user's file:line (the `site`) appended to the message.
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import * as shardts from "../../stdlib/index.ts";
import { DTypeError, ShapeError, ShardingError } from "../../stdlib/index.ts";
import {
  msgAgree, msgContractOneSide, msgDimExists, msgDType, msgFp8, msgMissingDim, msgNeedsDType, msgNoAxis, msgNonlinear,
  msgPartialIndex, msgReduceFirst, msgShardNoDim, msgSize, msgTwoShards, msgUnsupported, msgWholeDim,
} from "../../compiler/messages.ts";

const L: any = shardts; // untyped, as a plain-JS user would call it
const HERE = fileURLToPath(import.meta.url);
const SOURCE = readFileSync(HERE, "utf8").split("\n");
const { Shard, Replicate, Partial } = L;

const mesh = L.Mesh.of({ dp: 2, tp: 2 });
// shared inputs (the names of test/types/cases/bad-*.ts)
const a = L.randn(mesh, { tokens: 8, hidden: 16 }, "f32", { tp: Shard("hidden") });
const part = L.sum(a, "hidden"); // { tokens }, tp: Partial<sum>
const repTok = L.randn(mesh, { tokens: 8 }, "f32");
const hid = L.randn(mesh, { hidden: 16 }, "f32");
const byTok = L.randn(mesh, { tokens: 8, hidden: 16 }, "f32", { tp: Shard("tokens") });
const tokShard = L.randn(mesh, { tokens: 8 }, "f32", { tp: Shard("tokens") });
const byOut = L.randn(mesh, { out: 4 }, "f32", { tp: Shard("out") });
const wRep = L.randn(mesh, { hidden: 16, out: 4 }, "f32");
const wShard = L.randn(mesh, { hidden: 16, out: 4 }, "f32", { tp: Shard("hidden") });
const xRep = L.randn(mesh, { tokens: 8, hidden: 16 }, "f32");
const px = L.sum(L.randn(mesh, { tokens: 8, hidden: 16, r: 2 }, "f32", { tp: Shard("r") }), "r");
const pw = L.sum(L.randn(mesh, { hidden: 16, out: 4, r: 2 }, "f32", { tp: Shard("r") }), "r");
const q = L.randn(mesh, { head: 4, seq: 8, d: 16 }, "f32", { dp: Shard("head") });
const k = L.randn(mesh, { head: 4, kseq: 8, d: 16 }, "f32");
const wo = L.randn(mesh, { hidden: 16, out: 4 }, "f32", { tp: Shard("out") });
const part3 = L.sum(L.randn(mesh, { r: 4, tokens: 8, model: 16 }, "f32", { tp: Shard("r") }), "r");
const pmax = L.max(L.randn(mesh, { r: 4, model: 16 }, "f32", { tp: Shard("r") }), "r");
const logits = L.randn(mesh, { tokens: 8, vocab: 32 }, "f32", { dp: Shard("tokens"), tp: Shard("vocab") });
const hModel = L.randn(mesh, { tokens: 8, model: 16 }, "f32", { tp: Shard("model") });
const gamma = L.randn(mesh, { model: 16 }, "f32");
const xb = L.zeros(mesh, { batch: 8, model: 16 }, "f32", { dp: Shard("batch") });
const x = L.randn(mesh, { tokens: 8, model: 16 }, "f32");
const xbf = L.randn(mesh, { tokens: 8, model: 16 }, "bf16");
const x8 = L.cast(x, "fp8e4m3");
const w8 = L.cast(L.randn(mesh, { model: 16, out: 4 }, "f32"), "fp8e4m3");
const w12 = L.randn(mesh, { model: 12, out: 4 }, "f32");
const ids = L.iota(mesh, { tokens: 8 }, "i32", "tokens");
const table = L.randn(mesh, { vocab: 32, model: 16 }, "f32", { tp: Shard("vocab") });
const pidx = L.sum(L.zeros(mesh, { r: 2, tokens: 8 }, "i32", { tp: Shard("r") }), "r");
const xbatch = L.randn(mesh, { b: 4, n: 8, d: 2 }, "f32", { dp: Shard("b") });
const ib = L.zeros(mesh, { b: 4, k: 3 }, "i32");
const src = L.randn(mesh, { tok: 8, d: 4 }, "f32", { dp: Shard("tok") });
const toIdx = L.zeros(mesh, { tok: 8 }, "i32");
const routed = L.sortByKey(L.zeros(mesh, { tok: 8 }, "i32"), "tok", { rows: "slot", groups: "g", numGroups: 4 });
const xs = L.gather(L.randn(mesh, { tok: 8, model: 16 }, "f32"), routed.perm, "tok");
const wE = L.randn(mesh, { g: 4, model: 16, ffn: 8 }, "f32", { tp: Shard("g") });
const xbt = L.randn(mesh, { batch: 8, model: 16 }, "f32", { tp: Shard("batch") });
const rep = L.randn(mesh, { batch: 8, model: 16 }, "f32");

type ErrClass = typeof ShardingError | typeof ShapeError | typeof DTypeError;
interface Case {
  name: string;
  run: () => unknown;
  cls: ErrClass;
  msg: string;
}

// Each case's `run` is on the line that names it, so the line its error must point at is known.
const CASES: Case[] = [
  // elementwise (bad-elementwise.ts)
  { name: "add: Partial meets Replicate", run: () => L.add(part, repTok), cls: ShardingError, msg: msgReduceFirst("add", "tp", "P(sum)", "R", "a") },
  { name: "sub: Replicate meets Partial", run: () => L.sub(repTok, part), cls: ShardingError, msg: msgReduceFirst("sub", "tp", "R", "P(sum)", "b") },
  { name: "mul: Partial times Partial", run: () => L.mul(part, part), cls: ShardingError, msg: msgReduceFirst("mul", "tp", "P(sum)", "P(sum)", "b") },
  { name: "div: by a Partial", run: () => L.div(repTok, part), cls: ShardingError, msg: msgReduceFirst("div", "tp", "R", "P(sum)", "b") },
  { name: "maximum: of a Partial", run: () => L.maximum(part, repTok), cls: ShardingError, msg: msgNonlinear("maximum", "tp", "P(sum)") },
  { name: "add: Shard vs Replicate on a shared dim", run: () => L.add(a, hid), cls: ShardingError, msg: msgAgree("add", "tp", "S(hidden)", "R", "b", "S(hidden)") },
  { name: "mul: Replicate vs Shard on a shared dim", run: () => L.mul(hid, a), cls: ShardingError, msg: msgAgree("mul", "tp", "R", "S(hidden)", "a", "S(hidden)") },
  { name: "add: two shards of shared dims", run: () => L.add(a, byTok), cls: ShardingError, msg: msgAgree("add", "tp", "S(hidden)", "S(tokens)", "b", "S(hidden)") },
  { name: "add: two shards of unshared dims", run: () => L.add(tokShard, byOut), cls: ShardingError, msg: msgTwoShards("add", "tp", "S(tokens)", "S(out)") },
  // contraction (bad-contraction.ts)
  { name: "dot: contracted dim sharded on a only", run: () => L.dot(a, wRep, "hidden"), cls: ShardingError, msg: msgContractOneSide("tp", "hidden", "b", "R") },
  { name: "dot: contracted dim sharded on b only", run: () => L.dot(xRep, wShard, "hidden"), cls: ShardingError, msg: msgContractOneSide("tp", "hidden", "a", "R") },
  { name: "dot: Partial with Partial", run: () => L.dot(px, pw, "hidden"), cls: ShardingError, msg: msgReduceFirst("dot", "tp", "P(sum)", "P(sum)", "b") },
  { name: "dot: batch dim sharded on one side", run: () => L.dot(q, k, "d"), cls: ShardingError, msg: msgAgree("dot", "dp", "S(head)", "R", "b", "S(head)") },
  { name: "dot: two free dims sharded", run: () => L.dot(byTok, wo, "hidden"), cls: ShardingError, msg: msgTwoShards("dot", "tp", "S(tokens)", "S(out)") },
  // nonlinear ops on a Partial (bad-nonlinear.ts)
  { name: "exp of Partial<sum>", run: () => L.exp(part3), cls: ShardingError, msg: msgNonlinear("exp", "tp", "P(sum)") },
  { name: "silu of Partial<sum>", run: () => L.silu(part3), cls: ShardingError, msg: msgNonlinear("silu", "tp", "P(sum)") },
  { name: "gelu of Partial<sum>", run: () => L.gelu(part3), cls: ShardingError, msg: msgNonlinear("gelu", "tp", "P(sum)") },
  { name: "softmax of Partial<sum>", run: () => L.softmax(part3, "model"), cls: ShardingError, msg: msgNonlinear("softmax", "tp", "P(sum)") },
  { name: "max-reduce of Partial<sum>", run: () => L.max(part3, "model"), cls: ShardingError, msg: msgNonlinear("max", "tp", "P(sum)") },
  { name: "sum-reduce of Partial<max>", run: () => L.sum(pmax, "model"), cls: ShardingError, msg: msgNonlinear("sum", "tp", "P(max)") },
  // whole-dim row ops (bad-wholedim.ts)
  { name: "softmax over a sharded dim", run: () => L.softmax(logits, "vocab"), cls: ShardingError, msg: msgWholeDim("softmax", "tp", "vocab") },
  { name: "softmax over a dp-sharded dim", run: () => L.softmax(logits, "tokens"), cls: ShardingError, msg: msgWholeDim("softmax", "dp", "tokens") },
  { name: "logSoftmax over a sharded dim", run: () => L.logSoftmax(logits, "vocab"), cls: ShardingError, msg: msgWholeDim("log_softmax", "tp", "vocab") },
  { name: "topk over a sharded dim", run: () => L.topk(logits, "vocab", 2, "k"), cls: ShardingError, msg: msgWholeDim("topk", "tp", "vocab") },
  { name: "rmsnorm over a sharded dim", run: () => L.rmsnorm(hModel, gamma, "model"), cls: ShardingError, msg: msgWholeDim("rmsnorm", "tp", "model") },
  // sizes (bad-sizes.ts)
  { name: "add: disagreeing sizes", run: () => L.add(x, L.randn(mesh, { model: 12 }, "f32")), cls: ShapeError, msg: msgSize("add", "model", 16, 12) },
  { name: "dot: disagreeing contracted sizes", run: () => L.dot(x, w12, "model"), cls: ShapeError, msg: msgSize("dot", "model", 16, 12) },
  { name: "dot: disagreeing batch sizes", run: () => L.dot(x, L.randn(mesh, { tokens: 6, model: 16 }, "f32"), "model"), cls: ShapeError, msg: msgSize("dot", "tokens", 8, 6) },
  // two mistakes at once: sizes before dtypes, in the types as at trace time
  { name: "add: a size and a dtype mismatch", run: () => L.add(x, L.randn(mesh, { model: 12 }, "bf16")), cls: ShapeError, msg: msgSize("add", "model", 16, 12) },
  { name: "dot: a size and a dtype mismatch", run: () => L.dot(x, L.randn(mesh, { model: 12, out: 4 }, "bf16"), "model"), cls: ShapeError, msg: msgSize("dot", "model", 16, 12) },
  { name: "where: disagreeing sizes", run: () => L.where(x, L.randn(mesh, { model: 12 }, "f32"), 0), cls: ShapeError, msg: msgSize("where", "model", 16, 12) },
  { name: "gather: disagreeing batch sizes", run: () => L.gather(x, L.zeros(mesh, { tokens: 6, k: 2 }, "i32"), "model"), cls: ShapeError, msg: msgSize("gather", "tokens", 8, 6) },
  // dtypes (bad-dtypes.ts)
  { name: "add: f32 + bf16", run: () => L.add(x, xbf), cls: DTypeError, msg: msgDType("add", "f32", "bf16") },
  { name: "add: FP8", run: () => L.add(x8, x8), cls: DTypeError, msg: msgFp8("add", "fp8e4m3") },
  { name: "exp: FP8", run: () => L.exp(x8), cls: DTypeError, msg: msgFp8("exp", "fp8e4m3") },
  { name: "softmax: FP8", run: () => L.softmax(x8, "model"), cls: DTypeError, msg: msgNeedsDType("softmax", "fp8e4m3", "f32 or bf16") },
  { name: "dot: FP8 with f32", run: () => L.dot(x8, L.randn(mesh, { model: 16, out: 4 }, "f32"), "model"), cls: DTypeError, msg: msgDType("dot", "fp8e4m3", "f32") },
  { name: "exp: i32", run: () => L.exp(ids), cls: DTypeError, msg: msgNeedsDType("exp", "i32", "f32 or bf16") },
  { name: "dot: i32", run: () => L.dot(ids, ids, "tokens"), cls: DTypeError, msg: msgNeedsDType("dot", "i32", "f32, bf16 or FP8") },
  { name: "mean of i32", run: () => L.mean(ids, "tokens"), cls: DTypeError, msg: msgNeedsDType("mean", "i32", "f32 or bf16") },
  { name: "topk of FP8", run: () => L.topk(x8, "model", 2, "k"), cls: DTypeError, msg: msgFp8("topk", "fp8e4m3") },
  { name: "where with an FP8 cond", run: () => L.where(x8, 1, 0), cls: DTypeError, msg: msgFp8("where", "fp8e4m3") },
  { name: "scatterAdd of FP8 src", run: () => L.scatterAdd(x8, ids, "tokens", { dim: "m", size: 4 }), cls: DTypeError, msg: msgFp8("scatter_add", "fp8e4m3") },
  // missing dims (bad-dims.ts)
  { name: "sum over a missing dim", run: () => L.sum(x, "hidden"), cls: ShapeError, msg: msgMissingDim("sum", "hidden", "x") },
  { name: "mean over a list with a missing dim", run: () => L.mean(x, ["tokens", "batch"]), cls: ShapeError, msg: msgMissingDim("mean", "batch", "x") },
  { name: "max over a missing dim", run: () => L.max(x, "vocab"), cls: ShapeError, msg: msgMissingDim("max", "vocab", "x") },
  { name: "softmax over a missing dim", run: () => L.softmax(x, "vocab"), cls: ShapeError, msg: msgMissingDim("softmax", "vocab", "x") },
  { name: "dot contracting a dim b lacks", run: () => L.dot(xRep, x, "hidden"), cls: ShapeError, msg: msgMissingDim("dot", "hidden", "b") },
  { name: "gather along a missing dim", run: () => L.gather(x, L.zeros(mesh, { n: 4 }, "i32"), "vocab"), cls: ShapeError, msg: msgMissingDim("gather", "vocab", "x") },
  { name: "sortByKey over a missing dim names keys", run: () => L.sortByKey(ids, "m", { rows: "r", groups: "g", numGroups: 2 }), cls: ShapeError, msg: msgMissingDim("sort_by_key", "m", "keys") },
  { name: "sortByKey rows onto an existing dim", run: () => L.sortByKey(L.zeros(mesh, { b: 2, tok: 8 }, "i32"), "b", { rows: "tok", groups: "g", numGroups: 2 }), cls: ShapeError, msg: msgDimExists("sort_by_key", "tok") },
  { name: "rename onto an existing dim", run: () => L.rename(x, "tokens", "model"), cls: ShapeError, msg: msgDimExists("rename", "model") },
  { name: "flatten onto an existing dim", run: () => L.flatten(L.randn(mesh, { tokens: 8, a: 2, b: 3, model: 4 }, "f32"), ["a", "b"], "model"), cls: ShapeError, msg: msgDimExists("flatten", "model") },
  { name: "unflatten onto an existing dim", run: () => L.unflatten(x, "model", { tokens: 4, m2: 4 }), cls: ShapeError, msg: msgDimExists("unflatten", "tokens") },
  { name: "topk onto an existing dim", run: () => L.topk(x, "model", 2, "tokens"), cls: ShapeError, msg: msgDimExists("topk", "tokens") },
  { name: "scatterAdd onto an existing dim", run: () => L.scatterAdd(x, L.zeros(mesh, { tokens: 8 }, "i32"), "tokens", { dim: "model", size: 4 }), cls: ShapeError, msg: msgDimExists("scatter_add", "model") },
  { name: "scatterAdd with an index dim src lacks", run: () => L.scatterAdd(x, L.zeros(mesh, { tokens: 8, k: 2 }, "i32"), "tokens", { dim: "slot", size: 4 }), cls: ShapeError, msg: msgMissingDim("scatter_add", "k", "src") },
  // routing (bad-routing.ts)
  { name: "embedding with f32 ids", run: () => L.embedding(table, L.randn(mesh, { tokens: 8 }, "f32"), "vocab"), cls: DTypeError, msg: msgNeedsDType("gather", "f32", "i32") },
  { name: "gather with a Partial index", run: () => L.gather(table, pidx, "vocab"), cls: ShardingError, msg: msgPartialIndex("gather", "tp", "P(sum)") },
  { name: "scatterAdd with a Partial index", run: () => L.scatterAdd(L.randn(mesh, { tokens: 8, d: 4 }, "f32"), pidx, "tokens", { dim: "slot", size: 4 }), cls: ShardingError, msg: msgPartialIndex("scatter_add", "tp", "P(sum)") },
  { name: "gather: batch dim sharded on x only", run: () => L.gather(xbatch, ib, "n"), cls: ShardingError, msg: msgAgree("gather", "dp", "S(b)", "R", "index", "S(b)") },
  { name: "scatterAdd: rows sharded, index not", run: () => L.scatterAdd(src, toIdx, "tok", { dim: "slot", size: 8 }), cls: ShardingError, msg: msgAgree("scatter_add", "dp", "S(tok)", "R", "index", "S(tok)") },
  { name: "sortByKey of f32 keys", run: () => L.sortByKey(L.randn(mesh, { tok: 8 }, "f32"), "tok", { rows: "slot", groups: "g", numGroups: 4 }), cls: DTypeError, msg: msgNeedsDType("sort_by_key", "f32", "i32") },
  { name: "sortByKey over a sharded dim", run: () => L.sortByKey(L.zeros(mesh, { tok: 8 }, "i32", { dp: Shard("tok") }), "tok", { rows: "slot", groups: "g", numGroups: 4 }), cls: ShardingError, msg: msgWholeDim("sort_by_key", "dp", "tok") },
  { name: "segmentDot with Partial counts", run: () => L.segmentDot(xs, wE, L.redistribute(routed.counts, { tp: Partial("sum") }), "model", { rows: "slot", groups: "g" }), cls: ShardingError, msg: msgUnsupported("segment_dot", "tp", "P(sum)") },
  // movement (bad-wholedim.ts, bad-movement.ts)
  { name: "concat along a sharded dim", run: () => L.concat([xb, xb], "batch"), cls: ShardingError, msg: msgWholeDim("concat", "dp", "batch") },
  { name: "flatten of a sharded dim", run: () => L.flatten(xbt, ["model", "batch"], "mb"), cls: ShardingError, msg: msgWholeDim("flatten", "tp", "batch") },
  { name: "unflatten of a sharded dim", run: () => L.unflatten(xbt, "batch", { b1: 2, b2: 4 }), cls: ShardingError, msg: msgWholeDim("unflatten", "tp", "batch") },
  { name: "split of a sharded dim", run: () => L.split(xbt, "batch", [4, 4]), cls: ShardingError, msg: msgWholeDim("split", "tp", "batch") },
  { name: "concat of disagreeing placements", run: () => L.concat([xb, L.zeros(mesh, { batch: 8, model: 16 }, "f32")], "model"), cls: ShardingError, msg: msgAgree("concat", "dp", "S(batch)", "R", "xs[1]", "S(batch)") },
  { name: "concat: xs[2] differs", run: () => L.concat([xbt, xbt, L.redistribute(rep, { tp: Partial("sum") }), rep], "model"), cls: ShardingError, msg: msgAgree("concat", "tp", "S(batch)", "P(sum)", "xs[2]", "S(batch)") },
  { name: "concat: Replicate then Shard", run: () => L.concat([rep, L.redistribute(rep, { dp: Shard("model") })], "batch"), cls: ShardingError, msg: msgAgree("concat", "dp", "R", "S(model)", "xs[1]", "R") },
  { name: "concat along a dim xs[0] lacks", run: () => L.concat([rep, rep], "vocab"), cls: ShapeError, msg: msgMissingDim("concat", "vocab", "xs[0]") },
  { name: "concat along a dim xs[1] lacks", run: () => L.concat([rep, L.randn(mesh, { batch: 8 }, "f32")], "model"), cls: ShapeError, msg: msgMissingDim("concat", "model", "xs[1]") },
];

/** The 1-based line of this file that names the case. */
function lineOf(name: string): number {
  const hits = SOURCE.flatMap((l, i) => (l.includes(`name: ${JSON.stringify(name)}`) ? [i + 1] : []));
  if (hits.length !== 1) throw new Error(`case name ${JSON.stringify(name)} must appear on exactly one line, found ${hits.length}`);
  return hits[0]!;
}

function thrown(run: () => unknown): Error {
  try {
    run();
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected the call to throw, but it traced fine");
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

describe("trace-time errors carry the type error's text and the user's line", () => {
  it.each(CASES.map((c) => [c.name, c] as const))("%s", (_n, c) => {
    const e = thrown(c.run) as Error & { site?: string };
    expect(e).toBeInstanceOf(c.cls);
    expect(e.name).toBe(c.cls.name);
    const line = lineOf(c.name);
    // message = the type error's text, then "\n    at <file>:<line>:<col>" of the user's call
    expect(e.message).toMatch(new RegExp(`^${escape(c.msg)}\\n    at ${escape(HERE)}:${line}:\\d+$`));
    expect(e.site).toMatch(new RegExp(`^${escape(HERE)}:${line}:\\d+$`));
  });
});

describe("placement errors of factories and redistribute", () => {
  // The text matches the type error (bad-placements.ts)...
  const cases = [
    { name: "randn: Shard of a missing dim", run: () => L.randn(mesh, { batch: 8, model: 16 }, "f32", { tp: Shard("ffn") }), msg: msgShardNoDim("tp", "ffn") },
    { name: "redistribute: Shard of a missing dim", run: () => L.redistribute(xb, { dp: Shard("tokens") }), msg: msgShardNoDim("dp", "tokens") },
    { name: "randn: an axis the mesh lacks", run: () => L.randn(mesh, { batch: 8, model: 16 }, "f32", { ep: Shard("batch") }), msg: msgNoAxis("ep") },
    { name: "redistribute: an axis the mesh lacks", run: () => L.redistribute(xb, { pp: Replicate }), msg: msgNoAxis("pp") },
    { name: "zeros: an axis the mesh lacks", run: () => L.zeros(mesh, { n: 4 }, "i32", { ep: Replicate }), msg: msgNoAxis("ep") },
  ];
  it.each(cases.map((c) => [c.name, c] as const))("%s: ShardingError with the type error's text", (_n, c) => {
    const e = thrown(c.run);
    expect(e).toBeInstanceOf(ShardingError);
    expect(e.message.split("\n")[0]).toBe(c.msg);
  });
  // ...and, though stdlib/ops/factories.ts resolvePlacements throws before GraphBuilder.add (which
  // attaches the site to rule errors), it attaches the user's file:line itself.
  it.each(cases.map((c) => [c.name, c] as const))("%s: the message names the user's file:line", (_n, c) => {
    const e = thrown(c.run) as Error & { site?: string };
    const line = lineOf(c.name);
    expect(e.message).toMatch(new RegExp(`^${escape(c.msg)}\\n    at ${escape(HERE)}:${line}:\\d+$`));
    expect(e.site).toMatch(new RegExp(`^${escape(HERE)}:${line}:\\d+$`));
  });
});

describe("the corrected programs trace", () => {
  it("each fix of the bad-*.ts fixtures traces without error", () => {
    expect(() => {
      L.add(L.redistribute(part, { tp: Replicate }), repTok);
      L.mul(part, L.redistribute(part, { tp: Replicate }));
      L.div(part, repTok);
      L.add(a, L.redistribute(hid, { tp: Shard("hidden") }));
      L.add(a, L.redistribute(byTok, { tp: Shard("hidden") }));
      L.dot(a, L.redistribute(wRep, { tp: Shard("hidden") }), "hidden");
      L.dot(a, wShard, "hidden");
      L.dot(px, wRep, "hidden");
      L.dot(q, L.redistribute(k, { dp: Shard("head") }), "d");
      L.exp(L.redistribute(part3, { tp: Replicate }));
      L.neg(L.sum(part3, "model"));
      L.softmax(L.redistribute(logits, { tp: Replicate }), "vocab");
      L.topk(L.redistribute(logits, { tp: Replicate }), "vocab", 2, "k");
      L.rmsnorm(L.redistribute(hModel, { tp: Replicate }), gamma, "model");
      L.dot(x8, w8, "model");
      L.relu(L.neg(ids));
      L.gather(table, L.redistribute(pidx, { tp: Replicate }), "vocab");
      L.gather(xbatch, L.redistribute(ib, { dp: Shard("b") }), "n");
      L.scatterAdd(src, L.redistribute(toIdx, { dp: Shard("tok") }), "tok", { dim: "slot", size: 8 });
      L.segmentDot(xs, wE, routed.counts, "model", { rows: "slot", groups: "g" });
    }).not.toThrow();
  });

  it("movement ops pass a Partial through (good.ts: so do the types)", () => {
    const p = L.sum(L.randn(mesh, { a: 2, b: 3, c: 4 }, "f32", { tp: Shard("a") }), "a");
    expect(L.flatten(p, ["b", "c"], "bc").placements).toEqual({ dp: "R", tp: "P(sum)" });
    expect(L.unflatten(p, "c", { c1: 2, c2: 2 }).placements).toEqual({ dp: "R", tp: "P(sum)" });
    expect(L.split(p, "b", [1, 2]).map((t: any) => t.placements.tp)).toEqual(["P(sum)", "P(sum)"]);
    expect(L.concat([p, p], "b").placements).toEqual({ dp: "R", tp: "P(sum)" });
    expect(L.flatten(p, ["c", "b"], "cb").dims).toEqual({ cb: 12 });
  });

  it("topk takes i32 (good.ts: so do the types)", () => {
    expect(L.topk(ids, "tokens", 2, "k").indices.dtype).toBe("i32");
  });
});
