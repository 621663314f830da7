// Gradient checks for the reverse-mode autodiff pass (compiler/autodiff/grad.ts) and every op's
// `grad` rule.
//
// 1. Per op (every op of the registry with a `grad` rule; the last test asserts each was covered):
//    small random float inputs from a seeded PRNG, kept away from points where the op is not
//    differentiable; a scalar loss L = sum(op(x...) * R) with a fixed random R of the output's shape;
//    the AD gradient `grad(L, { x0, x1, ... })` on a 1-device mesh (float32) is compared, for EVERY
//    input element, with central finite differences of L computed in float64 on an independent
//    float64 forward (test/unit/grad-helpers/ref64.ts: plain loops over named dims, no library code).
//    Tolerance: |ad - fd| <= 2e-3 * max(|fd|, 1e-2 * max|fd| over that input).
// 2. Sharded gradients: small representative programs (DP×TP MLP, vocab-parallel embedding, an MoE
//    routing chain with expert parallelism) give the same gradients on several meshes as on one
//    device (1e-5 relative), each in its parameter's placements.
// 3. Errors and edge cases: autodiff through Partial<max> is a clear CompileError; the gradient of an
//    unused parameter is zeros in the parameter's placements.
//
import { describe, it, expect, afterAll } from "vitest";
import {
  Mesh, DTensor, fromGlobal, randn, grad, evaluate, redistribute, Shard, Replicate, Partial, CompileError,
  add, sub, mul, div, maximum, minimum, where, cast, abs, exp, gelu, log, neg, relu, rsqrt, sigmoid, silu, sqrt,
  sum, mean, max, softmax, logSoftmax, rmsnorm, dot, segmentDot, gather, embedding, scatterAdd, topk, sortByKey,
  flatten, unflatten, rename, concat, split, moeDispatch, moeCombine,
} from "../../stdlib/index.ts";
import { allOps } from "../../compiler/ops/index.ts";
import * as R from "./grad-helpers/ref64.ts";
import { T64, Rng, type Dim } from "./grad-helpers/ref64.ts";

type AnyT = DTensor<any, any, any>;
type FDType = "f32" | "bf16";
const numel = (dims: readonly Dim[]) => dims.reduce((a, [, s]) => a * s, 1);
const dimsObj = (dims: readonly Dim[]): Record<string, number> => Object.fromEntries(dims);
const dimsOf = (t: AnyT): Dim[] => t.type.dims.map((d) => [d.name, d.size] as const);
/** A registry op with no stdlib function (comparisons, sign, stop_gradient, gelu_deriv, expand). */
const raw = (op: string, xs: AnyT[], attrs: Record<string, unknown> = {}): AnyT[] =>
  xs[0]!.mesh.builder.add(op, xs.map((x) => x.ref), attrs as never).map((r) => new DTensor(xs[0]!.mesh, r));
/** A string hash as the seed of a case, so each case's data is fixed whatever else changes. */
const seedOf = (s: string) => [...s].reduce((h, c) => Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0, 2166136261);

// ---- the per-op cases -----------------------------------------------------------------------------

interface In {
  dims: Dim[];
  values: number[];
  dtype?: FDType | "i32";
  /** Take the gradient with respect to it (default: every float input). */
  diff?: boolean;
}

interface OpCase {
  /** The registry op whose gradient rule is under test (the graph must contain it). */
  op: string;
  name: string;
  inputs: In[];
  /** The float outputs that enter the loss. */
  lib: (xs: AnyT[]) => AnyT[];
  /** The same outputs in float64, from ref64. */
  ref: (xs: T64[]) => T64[];
}

const mk = (name: string, f: (r: Rng) => Omit<OpCase, "name">): OpCase => ({ name, ...f(new Rng(seedOf(name))) });
const uni = (r: Rng, dims: Dim[], lo = -1, hi = 1): In => ({ dims, values: r.uniforms(numel(dims), lo, hi) });
const away = (r: Rng, dims: Dim[], lo = 0.15, hi = 2): In => ({ dims, values: Array.from({ length: numel(dims) }, () => r.awayFromZero(lo, hi)) });
const distinct = (r: Rng, dims: Dim[], lo = -2, hi = 2, gap = 0.03): In => ({ dims, values: r.distinct(numel(dims), lo, hi, gap) });
const ints = (dims: Dim[], values: number[]): In => ({ dims, values, dtype: "i32" });
/** b's values each at least `gap` from every one of a's (no ties between any broadcast pair). */
function apart(r: Rng, a: In, dims: Dim[], lo: number, hi: number, gap = 0.05): In {
  const values = Array.from({ length: numel(dims) }, () => {
    for (;;) {
      const v = r.uniform(lo, hi);
      if (a.values.every((x) => Math.abs(x - v) >= gap)) return v;
    }
  });
  return { dims, values };
}

const A3x4: Dim[] = [["a", 3], ["b", 4]];
const UNARY_FNS: Record<string, (x: AnyT) => AnyT> = { abs, exp, gelu, log, neg, relu, rsqrt, sigmoid, silu, sqrt } as never;
const UNARY_DOMAIN: Record<string, (r: Rng) => In> = {
  abs: (r) => away(r, A3x4),
  relu: (r) => away(r, A3x4),
  log: (r) => uni(r, A3x4, 0.3, 3),
  rsqrt: (r) => uni(r, A3x4, 0.3, 3),
  sqrt: (r) => uni(r, A3x4, 0.3, 3),
  exp: (r) => uni(r, A3x4, -2, 2),
  gelu: (r) => uni(r, A3x4, -3, 3),
  neg: (r) => uni(r, A3x4, -3, 3),
  sigmoid: (r) => uni(r, A3x4, -3, 3),
  silu: (r) => uni(r, A3x4, -3, 3),
};

const BIN_FNS: Record<string, (a: AnyT, b: AnyT) => AnyT> = { add, sub, mul, div, maximum, minimum } as never;
/** Operand b for each binary op: positive denominators, no ties for maximum/minimum. */
const binB = (op: string, r: Rng, a: In, dims: Dim[]): In =>
  op === "div" ? uni(r, dims, 0.4, 2) : op === "maximum" || op === "minimum" ? apart(r, a, dims, -1.5, 1.5) : uni(r, dims, -1.5, 1.5);

const CASES: OpCase[] = [
  // ---- unary
  ...Object.keys(UNARY_FNS).map((op) =>
    mk(`${op}`, (r) => ({ op, inputs: [UNARY_DOMAIN[op]!(r)], lib: ([x]) => [UNARY_FNS[op]!(x!)], ref: ([x]) => [R.map([x!], R.UNARY64[op]!)] })),
  ),
  // ---- binary, broadcasting by name
  ...Object.keys(BIN_FNS).flatMap((op) => [
    mk(`${op} broadcast [a,b] . [b,c]`, (r) => {
      const a = uni(r, [["a", 3], ["b", 4]], -1.5, 1.5);
      return { op, inputs: [a, binB(op, r, a, [["b", 4], ["c", 2]])], lib: ([x, y]) => [BIN_FNS[op]!(x!, y!)], ref: ([x, y]) => [R.map([x!, y!], R.BINARY64[op]!)] };
    }),
    mk(`${op} same dims in another order [a,b] . [b,a]`, (r) => {
      const a = uni(r, [["a", 3], ["b", 4]], -1.5, 1.5);
      return { op, inputs: [a, binB(op, r, a, [["b", 4], ["a", 3]])], lib: ([x, y]) => [BIN_FNS[op]!(x!, y!)], ref: ([x, y]) => [R.map([x!, y!], R.BINARY64[op]!)] };
    }),
    mk(`${op} with a 0-d operand`, (r) => {
      const a = uni(r, [["a", 2], ["b", 3]], -1.5, 1.5);
      return { op, inputs: [binB(op, r, a, []), a], lib: ([x, y]) => [BIN_FNS[op]!(x!, y!)], ref: ([x, y]) => [R.map([x!, y!], R.BINARY64[op]!)] };
    }),
  ]),
  // ---- a value used twice: the contributions add up
  mk("mul x * x (one value as both operands)", (r) => ({ op: "mul", inputs: [uni(r, A3x4, -2, 2)], lib: ([x]) => [mul(x!, x!)], ref: ([x]) => [R.map([x!], (v) => v * v)] })),
  mk("add exp(x) + x * y (x fans out to two ops)", (r) => ({
    op: "add",
    inputs: [uni(r, A3x4), uni(r, [["b", 4]])],
    lib: ([x, y]) => [add(exp(x!), mul(x!, y!))],
    ref: ([x, y]) => [R.map([x!, y!], (u, v) => Math.exp(u) + u * v)],
  })),
  // ---- comparisons, sign, stop_gradient: rules that pass no gradient on purpose (gelu_deriv too, a bug)
  ...(["eq", "ge", "gt"] as const).flatMap((op) => [
    // y = c * cmp(a, b): c's gradient is masked, a's and b's are zero (the loss is flat in them)
    mk(`${op}: c * ${op}(a, b), no ties`, (r) => {
      const a = uni(r, [["a", 3], ["b", 4]], -1, 1);
      return {
        op,
        inputs: [a, apart(r, a, [["b", 4]], -1, 1), uni(r, [["a", 3], ["b", 4]])],
        lib: ([x, y, c]) => [mul(c!, raw(op, [x!, y!])[0]!)],
        ref: ([x, y, c]) => [R.map([c!, R.map([x!, y!], R.BINARY64[op]!)], (u, v) => u * v)],
      };
    }),
  ]),
  // eq with exact ties (a, b not differentiated there): the mask selects the tied entries
  mk("eq: c * eq(a, b) with ties", (r) => ({
    op: "eq",
    inputs: [
      { dims: [["a", 4]], values: [0.5, -1, 2, 0.25], diff: false },
      { dims: [["a", 4]], values: [0.5, 1, 2, 0.75], diff: false },
      uni(r, [["a", 4], ["c", 2]]),
    ],
    lib: ([x, y, c]) => [mul(c!, raw("eq", [x!, y!])[0]!)],
    ref: ([x, y, c]) => [R.map([c!, R.map([x!, y!], R.BINARY64.eq!)], (u, v) => u * v)],
  })),
  mk("sign: x * sign(x) (= |x|)", (r) => ({
    op: "sign",
    inputs: [away(r, A3x4)],
    lib: ([x]) => [mul(x!, raw("sign", [x!])[0]!)],
    ref: ([x]) => [R.map([x!], (v) => v * R.UNARY64.sign!(v))],
  })),
  (() => {
    // stop_gradient(x) * x: the gradient flows through the second factor only, so the reference
    // holds the first factor at the unperturbed x
    const c = mk("stop_gradient: stop_gradient(x) * x", (r) => ({ op: "stop_gradient", inputs: [uni(r, A3x4, -2, 2)], lib: () => [], ref: () => [] }));
    const frozen = new T64(c.inputs[0]!.dims, c.inputs[0]!.values);
    return { ...c, lib: ([x]: AnyT[]) => [mul(raw("stop_gradient", [x!])[0]!, x!)], ref: ([x]: T64[]) => [R.map([frozen, x!], (u, v) => u * v)] };
  })(),
  // regression (found here): gelu_deriv had no rule, so second-order gradients through gelu were 0
  mk("gelu_deriv", (r) => ({
    op: "gelu_deriv",
    inputs: [uni(r, A3x4, -3, 3)],
    lib: ([x]) => raw("gelu_deriv", [x!]),
    ref: ([x]) => [R.map([x!], R.UNARY64.gelu_deriv!)],
  })),
  // ---- where
  mk("where cond[a] ? x[a,b] : y[b]", (r) => ({
    op: "where",
    inputs: [{ dims: [["a", 3]], values: [1, 0, 1], diff: false }, uni(r, A3x4), uni(r, [["b", 4]])],
    lib: ([c, x, y]) => [where(c!, x!, y!)],
    ref: ([c, x, y]) => [R.where(c!, x!, y!)],
  })),
  mk("where cond[a,b] ? x[a] : y[b]", (r) => ({
    op: "where",
    inputs: [{ dims: A3x4, values: Array.from({ length: 12 }, () => r.int(0, 2)), diff: false }, uni(r, [["a", 3]]), uni(r, [["b", 4]])],
    lib: ([c, x, y]) => [where(c!, x!, y!)],
    ref: ([c, x, y]) => [R.where(c!, x!, y!)],
  })),
  // ---- cast (f32 -> f32; the bf16 paths are checked separately below)
  mk("cast f32 -> f32", (r) => ({ op: "cast", inputs: [uni(r, A3x4)], lib: ([x]) => [cast(x!, "f32")], ref: ([x]) => [x!] })),
  // ---- reductions
  ...(["sum", "mean", "max"] as const).flatMap((op) => {
    const fn = { sum, mean, max }[op] as (x: AnyT, d: string | string[]) => AnyT;
    const dims: Dim[] = [["a", 3], ["b", 4], ["c", 2]];
    const input = (r: Rng) => (op === "max" ? distinct(r, dims, -2, 2, 0.02) : uni(r, dims));
    return [
      mk(`${op} over b`, (r) => ({ op, inputs: [input(r)], lib: ([x]) => [fn(x!, "b")], ref: ([x]) => [R.reduce(x!, ["b"], op)] })),
      mk(`${op} over [a, c]`, (r) => ({ op, inputs: [input(r)], lib: ([x]) => [fn(x!, ["a", "c"])], ref: ([x]) => [R.reduce(x!, ["a", "c"], op)] })),
      mk(`${op} over every dim`, (r) => ({ op, inputs: [input(r)], lib: ([x]) => [fn(x!, ["a", "b", "c"])], ref: ([x]) => [R.reduce(x!, ["a", "b", "c"], op)] })),
    ];
  }),
  // ---- row ops
  ...(["softmax", "log_softmax"] as const).flatMap((op) => {
    const fn = (op === "softmax" ? softmax : logSoftmax) as (x: AnyT, d: string) => AnyT;
    const rf = op === "softmax" ? R.softmax : R.logSoftmax;
    return [
      mk(`${op} over the last dim`, (r) => ({ op, inputs: [uni(r, [["a", 3], ["b", 5]], -2, 2)], lib: ([x]) => [fn(x!, "b")], ref: ([x]) => [rf(x!, "b")] })),
      mk(`${op} over the first dim`, (r) => ({ op, inputs: [uni(r, [["a", 4], ["b", 3]], -2, 2)], lib: ([x]) => [fn(x!, "a")], ref: ([x]) => [rf(x!, "a")] })),
    ];
  }),
  mk("rmsnorm over the last dim (x and weight)", (r) => ({
    op: "rmsnorm",
    inputs: [uni(r, [["t", 3], ["m", 5]], -2, 2), uni(r, [["m", 5]], 0.5, 1.5)],
    lib: ([x, w]) => [rmsnorm(x!, w!, "m")],
    ref: ([x, w]) => [R.rmsnorm(x!, w!, "m")],
  })),
  mk("rmsnorm over the first of three dims, eps 0.1", (r) => ({
    op: "rmsnorm",
    inputs: [uni(r, [["m", 4], ["t", 3], ["u", 2]], -2, 2), uni(r, [["m", 4]], -1.5, 1.5)],
    lib: ([x, w]) => [rmsnorm(x!, w!, "m", 0.1)],
    ref: ([x, w]) => [R.rmsnorm(x!, w!, "m", 0.1)],
  })),
  // ---- contractions
  mk("dot plain [m,k].[k,n]", (r) => ({
    op: "dot",
    inputs: [uni(r, [["m", 3], ["k", 4]]), uni(r, [["k", 4], ["n", 2]])],
    lib: ([a, b]) => [dot(a!, b!, "k")],
    ref: ([a, b]) => [R.dot(a!, b!, ["k"])],
  })),
  mk("dot transposed layouts [k,m].[n,k]", (r) => ({
    op: "dot",
    inputs: [uni(r, [["k", 4], ["m", 3]]), uni(r, [["n", 2], ["k", 4]])],
    lib: ([a, b]) => [dot(a!, b!, "k")],
    ref: ([a, b]) => [R.dot(a!, b!, ["k"])],
  })),
  mk("dot multi-contract [m,k1,k2].[k2,n,k1]", (r) => ({
    op: "dot",
    inputs: [uni(r, [["m", 2], ["k1", 3], ["k2", 2]]), uni(r, [["k2", 2], ["n", 3], ["k1", 3]])],
    lib: ([a, b]) => [dot(a!, b!, ["k1", "k2"])],
    ref: ([a, b]) => [R.dot(a!, b!, ["k1", "k2"])],
  })),
  mk("dot batched [bt,m,k].[bt,k,n]", (r) => ({
    op: "dot",
    inputs: [uni(r, [["bt", 2], ["m", 3], ["k", 4]]), uni(r, [["bt", 2], ["k", 4], ["n", 2]])],
    lib: ([a, b]) => [dot(a!, b!, "k")],
    ref: ([a, b]) => [R.dot(a!, b!, ["k"])],
  })),
  mk("dot full contraction to a scalar [i,j].[j,i]", (r) => ({
    op: "dot",
    inputs: [uni(r, [["i", 3], ["j", 4]]), uni(r, [["j", 4], ["i", 3]])],
    lib: ([a, b]) => [dot(a!, b!, ["i", "j"])],
    ref: ([a, b]) => [R.dot(a!, b!, ["i", "j"])],
  })),
  // ---- segment_dot: rows = gather(source, sortByKey(keys).perm) are segmented by expert; the check
  // perturbs the source tensor (through gather) and w. The rows are combined back to tokens with
  // scatter_add, as an MoE layer does. Keys: expert 1 empty, one key dropped (-1, its row is padding).
  mk("segment_dot (x via sort_by_key + gather, and w; combined back to tokens)", (r) => ({
    op: "segment_dot",
    inputs: [uni(r, [["tokens", 6], ["model", 3]]), ints([["tokens", 6]], [2, 0, 2, -1, 0, 2]), uni(r, [["experts", 3], ["model", 3], ["ffn", 2]])],
    lib: ([x, keys, w]) => {
      const { perm, counts } = sortByKey(keys!, "tokens", { rows: "rows", groups: "experts", numGroups: 3 });
      const y = segmentDot(gather(x!, perm, "tokens"), w!, counts, "model", { rows: "rows", groups: "experts" } as never);
      return [scatterAdd(y, perm, "rows", { dim: "tokens", size: 6 })];
    },
    ref: ([x, keys, w]) => {
      const { perm, counts } = R.sortByKey(keys!, "tokens", "rows", "experts", 3);
      const y = R.segmentDot(R.gather(x!, perm, "tokens"), w!, counts, "rows", "experts", "model");
      return [R.scatterAdd(y, perm, ["rows"], "tokens", 6)];
    },
  })),
  mk("segment_dot with a batch dim [group, rows, model]", (r) => ({
    op: "segment_dot",
    inputs: [
      uni(r, [["group", 2], ["tokens", 5], ["model", 2]]),
      ints([["group", 2], ["tokens", 5]], [1, 0, 1, 2, 1, 2, 2, 0, 2, 2]),
      uni(r, [["experts", 3], ["model", 2], ["ffn", 3]]),
    ],
    lib: ([x, keys, w]) => {
      const { perm, counts } = sortByKey(keys!, "tokens", { rows: "rows", groups: "experts", numGroups: 3 });
      const y = segmentDot(gather(x!, perm, "tokens"), w!, counts, "model", { rows: "rows", groups: "experts" } as never);
      return [scatterAdd(y, perm, "rows", { dim: "tokens", size: 5 })];
    },
    ref: ([x, keys, w]) => {
      const { perm, counts } = R.sortByKey(keys!, "tokens", "rows", "experts", 3);
      const y = R.segmentDot(R.gather(x!, perm, "tokens"), w!, counts, "rows", "experts", "model");
      return [R.scatterAdd(y, perm, ["rows"], "tokens", 5)];
    },
  })),
  // regression (found here): a loss read straight off segment_dot lost the rows' segments through expand
  mk("segment_dot with the loss read directly off the segmented rows", (r) => ({
    op: "segment_dot",
    inputs: [uni(r, [["tokens", 6], ["model", 3]]), ints([["tokens", 6]], [2, 0, 2, -1, 0, 2]), uni(r, [["experts", 3], ["model", 3], ["ffn", 2]])],
    lib: ([x, keys, w]) => {
      const { perm, counts } = sortByKey(keys!, "tokens", { rows: "rows", groups: "experts", numGroups: 3 });
      return [segmentDot(gather(x!, perm, "tokens"), w!, counts, "model", { rows: "rows", groups: "experts" } as never)];
    },
    ref: ([x, keys, w]) => {
      const { perm, counts } = R.sortByKey(keys!, "tokens", "rows", "experts", 3);
      return [R.segmentDot(R.gather(x!, perm, "tokens"), w!, counts, "rows", "experts", "model")];
    },
  })),
  // ---- MoE dispatch / combine / redispatch: rows by expert (expert 2 empty, one slot dropped), back
  // to tokens weighted; the reference is the composed sort + gather + scatter_add in float64.
  ...(() => {
    const IDS = ints([["b", 2], ["s", 3], ["k", 2]], [1, 0, 3, 1, -1, 0, 0, 3, 3, 1, 1, 0]);
    const dOpts = { axis: null, dim: "s", k: "k", rows: "rows", groups: "e", numGroups: 4 };
    const cOpts = { axis: null, dim: "s", size: 3, k: "k", numK: 2 };
    const refRoute = (ids: T64) => {
      const { perm } = R.sortByKey(R.flatten(ids, ["s", "k"], "slots"), "slots", "rows", "e", 4);
      return { perm, token: R.map([perm], (v) => (v < 0 ? -1 : Math.floor(v / 2))) };
    };
    const refWeight = (w: T64, perm: T64) => R.gather(R.flatten(w, ["s", "k"], "slots"), perm, "slots");
    return [
      mk("moe_dispatch x[b,s,m] by ids[b,s,k]", (r) => ({
        op: "moe_dispatch",
        inputs: [uni(r, [["b", 2], ["s", 3], ["m", 2]]), IDS],
        lib: ([x, ids]) => [moeDispatch(x!, ids!, dOpts).rows],
        ref: ([x, ids]) => [R.gather(x!, refRoute(ids!).token, "s")],
      })),
      mk("moe_combine rows (dispatched x) weighted by w[b,s,k]", (r) => ({
        op: "moe_combine",
        inputs: [uni(r, [["b", 2], ["s", 3], ["m", 2]]), IDS, uni(r, [["b", 2], ["s", 3], ["k", 2]])],
        lib: ([x, ids, w]) => {
          const d = moeDispatch(x!, ids!, dOpts);
          return [moeCombine(mul(d.rows, d.rows), d.perm, w!, cOpts)];
        },
        ref: ([x, ids, w]) => {
          const { perm, token } = refRoute(ids!);
          const rows = R.gather(x!, token, "s");
          return [R.scatterAdd(R.map([rows, rows, refWeight(w!, perm)], (a, b, c) => a * b * c), token, ["rows"], "s", 3)];
        },
      })),
      mk("moe_redispatch src[b,s,m] weighted by w[b,s,k] into dispatch's rows", (r) => ({
        op: "moe_redispatch",
        inputs: [{ ...uni(r, [["b", 2], ["s", 3], ["m", 2]]), diff: false }, IDS, uni(r, [["b", 2], ["s", 3], ["k", 2]]), uni(r, [["b", 2], ["s", 3], ["m", 2]])],
        lib: ([x, ids, w, src]) => {
          const d = moeDispatch(x!, ids!, dOpts);
          return raw("moe_redispatch", [src!, d.perm, w!], { ...cOpts, keepK: false });
        },
        ref: ([, ids, w, src]) => {
          const { perm, token } = refRoute(ids!);
          return [R.map([R.gather(src!, token, "s"), refWeight(w!, perm)], (a, b) => a * b)];
        },
      })),
    ];
  })(),
  // ---- gather / embedding: a repeated row and a -1 (padding)
  mk("gather rows [v,f] by index[n] (repeat, -1)", (r) => ({
    op: "gather",
    inputs: [uni(r, [["v", 5], ["f", 3]]), ints([["n", 6]], [3, 0, 3, -1, 4, 1])],
    lib: ([x, i]) => [gather(x!, i!, "v")],
    ref: ([x, i]) => [R.gather(x!, i!, "v")],
  })),
  mk("gather with a batch dim [b,v,f] by index[b,n]", (r) => ({
    op: "gather",
    inputs: [uni(r, [["b", 2], ["v", 4], ["f", 2]]), ints([["b", 2], ["n", 3]], [1, 1, -1, 3, 0, 2])],
    lib: ([x, i]) => [gather(x!, i!, "v")],
    ref: ([x, i]) => [R.gather(x!, i!, "v")],
  })),
  mk("gather one entry per row (label pick) [b,c] by index[b]", (r) => ({
    op: "gather",
    inputs: [uni(r, [["b", 3], ["c", 4]]), ints([["b", 3]], [0, 3, 3])],
    lib: ([x, i]) => [gather(x!, i!, "c")],
    ref: ([x, i]) => [R.gather(x!, i!, "c")],
  })),
  mk("embedding table[vocab,model] by ids[s,t]", (r) => ({
    op: "gather",
    inputs: [uni(r, [["vocab", 6], ["model", 3]]), ints([["s", 2], ["t", 3]], [5, 1, 5, -1, 0, 2])],
    lib: ([x, i]) => [embedding(x!, i!, "vocab")],
    ref: ([x, i]) => [R.gather(x!, i!, "vocab")],
  })),
  // ---- scatter_add
  mk("scatter_add src[n,f] by index[n] (repeat, -1)", (r) => ({
    op: "scatter_add",
    inputs: [uni(r, [["n", 5], ["f", 3]]), ints([["n", 5]], [2, 0, 2, -1, 3])],
    lib: ([s, i]) => [scatterAdd(s!, i!, "n", { dim: "t", size: 4 })],
    ref: ([s, i]) => [R.scatterAdd(s!, i!, ["n"], "t", 4)],
  })),
  mk("scatter_add over two dims ['a','b']", (r) => ({
    op: "scatter_add",
    inputs: [uni(r, [["a", 2], ["b", 3], ["f", 2]]), ints([["a", 2], ["b", 3]], [0, 4, 4, -1, 2, 0])],
    lib: ([s, i]) => [scatterAdd(s!, i!, ["a", "b"] as never, { dim: "t", size: 5 })],
    ref: ([s, i]) => [R.scatterAdd(s!, i!, ["a", "b"], "t", 5)],
  })),
  mk("scatter_add with a batch dim", (r) => ({
    op: "scatter_add",
    inputs: [uni(r, [["bt", 2], ["n", 3], ["f", 2]]), ints([["bt", 2], ["n", 3]], [1, 1, 0, 2, -1, 2])],
    lib: ([s, i]) => [scatterAdd(s!, i!, "n", { dim: "t", size: 3 })],
    ref: ([s, i]) => [R.scatterAdd(s!, i!, ["n"], "t", 3)],
  })),
  // regression (found here): scatter_add whose target dim has the scattered dim's name had no working gradient
  mk("scatter_add into the scattered dim's own name (to == dim)", (r) => ({
    op: "scatter_add",
    inputs: [uni(r, [["n", 4], ["f", 3]]), ints([["n", 4]], [0, 2, 2, -1])],
    lib: ([s, i]) => [scatterAdd(s!, i!, "n", { dim: "n", size: 5 })],
    ref: ([s, i]) => [R.scatterAdd(s!, i!, ["n"], "n", 5)],
  })),
  // ---- topk: the values' gradient (distinct values)
  mk("topk values, new dim k", (r) => ({
    op: "topk",
    inputs: [distinct(r, [["r", 3], ["e", 6]], -2, 2, 0.03)],
    lib: ([x]) => [topk(x!, "e", 2, "k").values],
    ref: ([x]) => [R.topk(x!, "e", 2, "k").values],
  })),
  mk("topk values, kDim = dim, over the first dim", (r) => ({
    op: "topk",
    inputs: [distinct(r, [["e", 5], ["r", 2]], -2, 2, 0.03)],
    lib: ([x]) => [topk(x!, "e", 3, "e").values],
    ref: ([x]) => [R.topk(x!, "e", 3, "e").values],
  })),
  // ---- movement
  mk("flatten [b,c] -> bc", (r) => ({
    op: "flatten",
    inputs: [uni(r, [["a", 2], ["b", 3], ["c", 2]])],
    lib: ([x]) => [flatten(x!, ["b", "c"], "bc")],
    ref: ([x]) => [R.flatten(x!, ["b", "c"], "bc")],
  })),
  mk("flatten [c,a] -> ca (not in layout order)", (r) => ({
    op: "flatten",
    inputs: [uni(r, [["a", 2], ["b", 3], ["c", 2]])],
    lib: ([x]) => [flatten(x!, ["c", "a"], "ca")],
    ref: ([x]) => [R.flatten(x!, ["c", "a"], "ca")],
  })),
  mk("unflatten bc -> {b:3, c:2}", (r) => ({
    op: "unflatten",
    inputs: [uni(r, [["a", 2], ["bc", 6]])],
    lib: ([x]) => [unflatten(x!, "bc", { b: 3, c: 2 })],
    ref: ([x]) => [R.unflatten(x!, "bc", [["b", 3], ["c", 2]])],
  })),
  mk("rename a -> z", (r) => ({ op: "rename", inputs: [uni(r, A3x4)], lib: ([x]) => [rename(x!, "a", "z")], ref: ([x]) => [R.rename(x!, "a", "z")] })),
  mk("concat three along b", (r) => ({
    op: "concat",
    inputs: [uni(r, [["a", 2], ["b", 3]]), uni(r, [["a", 2], ["b", 2]]), uni(r, [["a", 2], ["b", 1]])],
    lib: (xs) => [concat(xs, "b")],
    ref: (xs) => [R.concat(xs, "b")],
  })),
  mk("split b into [2, 3], both parts used", (r) => ({
    op: "split",
    inputs: [uni(r, [["a", 2], ["b", 5]])],
    lib: ([x]) => split(x!, "b", [2, 3]),
    ref: ([x]) => R.split(x!, "b", [2, 3]),
  })),
  mk("split b into [1, 3, 1], only the middle part used", (r) => ({
    op: "split",
    inputs: [uni(r, [["b", 5], ["a", 2]])],
    lib: ([x]) => [split(x!, "b", [1, 3, 1])[1]!],
    ref: ([x]) => [R.split(x!, "b", [1, 3, 1])[1]!],
  })),
  mk("expand [a] by b:2, c:3", (r) => ({
    op: "expand",
    inputs: [uni(r, [["a", 3]])],
    lib: ([x]) => raw("expand", [x!], { dims: [["b", 2], ["c", 3]] }),
    ref: ([x]) => [R.expand(x!, [["b", 2], ["c", 3]])],
  })),
  mk("permute [a,b] -> [b,a] (layout only)", (r) => ({
    op: "permute",
    inputs: [uni(r, A3x4)],
    lib: ([x]) => raw("permute", [x!], { order: ["b", "a"] }),
    ref: ([x]) => {
      const out = new R.T64([...x!.dims].reverse());
      for (const idx of R.indices(out.dims)) out.set(idx, x!.get(idx));
      return [out];
    },
  })),
  mk("redistribute (identity in the global view), then exp", (r) => ({
    op: "redistribute",
    inputs: [uni(r, A3x4)],
    lib: ([x]) => [exp(redistribute(x!, { d: Replicate } as never))],
    ref: ([x]) => [R.map([x!], Math.exp)],
  })),
];

// ---- the runner -------------------------------------------------------------------------------------

const isDiff = (i: In) => i.dtype !== "i32" && i.diff !== false;
/** Largest |ad - fd| / max(|fd|, 1e-2 max|fd|) over one input's elements, per op. */
const maxRelByOp = new Map<string, number>();
const TOL = 2e-3;

interface CheckResult {
  worst: number;
  failures: string[];
}

async function checkCase(c: OpCase): Promise<CheckResult> {
  const mesh = Mesh.of({ d: 1 });
  const xs = c.inputs.map((inp) => fromGlobal(mesh, dimsObj(inp.dims), inp.dtype ?? "f32", inp.values) as AnyT);
  const ys = c.lib(xs);
  expect(ys.length).toBeGreaterThan(0);
  expect(mesh.builder.graph.nodes.some((n) => n.op === c.op), `the graph of '${c.name}' has no ${c.op} node`).toBe(true);

  // the loss: sum over outputs of sum(y * R), R fixed random of y's shape
  const rng = new Rng(seedOf(`R:${c.name}`));
  const Rs = ys.map((y) => new T64(dimsOf(y), rng.uniforms(numel(dimsOf(y)))));
  let L: AnyT | undefined;
  ys.forEach((y, i) => {
    const names = dimsOf(y).map(([n]) => n);
    const p = mul(y, fromGlobal(mesh, dimsObj(Rs[i]!.dims), y.dtype, Rs[i]!.data) as AnyT);
    const s = names.length ? sum(p, names) : p;
    L = L ? add(L, s) : s;
  });
  const diffIdx = c.inputs.map((inp, i) => (isDiff(inp) ? i : -1)).filter((i) => i >= 0);
  const g = grad(L!, Object.fromEntries(diffIdx.map((i) => [`x${i}`, xs[i]!])));
  const gs = diffIdx.map((i) => g[`x${i}`] as AnyT);
  const vals = await evaluate([L!, ...ys, ...gs]);
  const yVals = vals.slice(1, 1 + ys.length), gVals = vals.slice(1 + ys.length);

  // the float64 forward agrees with the library's (so the reference is the same function)
  const x64 = c.inputs.map((inp) => new T64(inp.dims, inp.values));
  const ref0 = c.ref(x64);
  expect(ref0.length).toBe(ys.length);
  ref0.forEach((y64, k) => {
    expect(new Set(y64.dims.map(([n, s]) => `${n}:${s}`)), `output ${k} dims`).toEqual(new Set(dimsOf(ys[k]!).map(([n, s]) => `${n}:${s}`)));
    let scale = 0;
    for (const v of y64.data) scale = Math.max(scale, Math.abs(v));
    for (const idx of R.indices(y64.dims)) {
      const want = y64.get(idx), got = yVals[k]!.at(idx);
      expect(Math.abs(got - want), `forward ${c.name} output ${k} at ${JSON.stringify(idx)}: ${got} vs ${want}`).toBeLessThanOrEqual(1e-5 * Math.max(Math.abs(want), 1e-2 * scale, 1e-6));
    }
  });

  // central differences of the float64 loss, every element of every differentiated input
  const loss64 = (xsIn: T64[]) =>
    c.ref(xsIn).reduce((acc, y64, k) => {
      let s = 0;
      for (const idx of R.indices(y64.dims)) s += y64.get(idx) * Rs[k]!.get(idx);
      return acc + s;
    }, 0);
  const failures: string[] = [];
  let worst = 0;
  diffIdx.forEach((i, gi) => {
    const inp = x64[i]!;
    const gv = gVals[gi]!;
    expect(new Set(gv.dimNames), `gradient of x${i} has the input's dims`).toEqual(new Set(inp.names));
    expect(gv.dtype).toBe(c.inputs[i]!.dtype ?? "f32");
    const fd: number[] = [], ad: number[] = [];
    const idxs = R.indices(inp.dims);
    idxs.forEach((idx, e) => {
      const h = 1e-5 * Math.max(1, Math.abs(inp.data[e]!));
      const plus = x64.map((t) => t.clone()), minus = x64.map((t) => t.clone());
      plus[i]!.data[e]! += h;
      minus[i]!.data[e]! -= h;
      fd.push((loss64(plus) - loss64(minus)) / (2 * h));
      ad.push(gv.at(idx));
    });
    const scale = Math.max(...fd.map(Math.abs));
    fd.forEach((f, e) => {
      const den = Math.max(Math.abs(f), 1e-2 * scale);
      const err = Math.abs(ad[e]! - f);
      const rel = den > 0 ? err / den : err === 0 ? 0 : Infinity;
      worst = Math.max(worst, rel);
      if (!(err <= TOL * den)) failures.push(`x${i}${JSON.stringify(idxs[e])}: ad ${ad[e]} fd ${f}`);
    });
  });
  return { worst, failures };
}

describe("gradient of every op vs float64 finite differences (1 device)", () => {
  for (const c of CASES) {
    const run = async () => {
      const { worst, failures } = await checkCase(c);
      expect(failures, `${c.name}: ${failures.length} elements off`).toEqual([]);
      maxRelByOp.set(c.op, Math.max(maxRelByOp.get(c.op) ?? 0, worst));
    };
    it(`${c.op}: ${c.name}`, run);
  }

  // cast to bf16 is straight-through: the gradient is the output's gradient cast back to f32
  it("cast: f32 -> bf16 gradient is straight-through (R rounded to bf16, cast back)", async () => {
    const mesh = Mesh.of({ d: 1 });
    const r = new Rng(seedOf("cast bf16"));
    const xv = r.uniforms(12, -3, 3), rv = r.uniforms(12, -3, 3);
    const x = fromGlobal(mesh, dimsObj(A3x4), "f32", xv) as AnyT;
    const y = cast(x, "bf16");
    const L = sum(mul(y, fromGlobal(mesh, dimsObj(A3x4), "bf16", rv)), ["a", "b"]);
    const g = grad(L, { x }).x as AnyT;
    expect(g.dtype).toBe("f32");
    const [yv, gv] = await evaluate([y, g]);
    expect(Array.from(yv!.data)).toEqual(xv.map(R.bf16));
    expect(Array.from(gv!.data)).toEqual(rv.map(R.bf16));
    // our bf16 rounding really rounds (the check is not vacuous)
    expect(rv.some((v) => R.bf16(v) !== v)).toBe(true);
    maxRelByOp.set("cast", Math.max(maxRelByOp.get("cast") ?? 0, 0));
  });

  it("cast: bf16 -> f32 gradient comes back in bf16", async () => {
    const mesh = Mesh.of({ d: 1 });
    const r = new Rng(seedOf("cast from bf16"));
    const xv = r.uniforms(12, -3, 3).map(R.bf16), rv = r.uniforms(12, -3, 3);
    const x = fromGlobal(mesh, dimsObj(A3x4), "bf16", xv) as AnyT;
    const L = sum(mul(cast(x, "f32"), fromGlobal(mesh, dimsObj(A3x4), "f32", rv)), ["a", "b"]);
    const g = grad(L, { x }).x as AnyT;
    expect(g.dtype).toBe("bf16");
    const [gv] = await evaluate([g]);
    expect(Array.from(gv!.data)).toEqual(rv.map(R.bf16));
  });

  // The gradients come back in the parameter's placements, but not always in its dims order: the
  // rules build gradients in the order of whatever op produced them (dot's gradient of a [k,m] is
  // [m,k]; mul's gradient of the second operand takes the first operand's order). Named reads (`at`)
  // are right, but `.data` of the gradient is laid out unlike the parameter's.
  // regression (found here): gradients came back with their dims in another order than the parameter's
  it("gradients come back in their parameter's dims order", () => {
    const mesh = Mesh.of({ d: 1 });
    const a = randn(mesh, { k: 3, m: 2 }, "f32", {}, { seed: 1 }) as AnyT;
    const b = randn(mesh, { n: 4, k: 3 }, "f32", {}, { seed: 2 }) as AnyT;
    const c = randn(mesh, { j: 2, i: 3 }, "f32", {}, { seed: 3 }) as AnyT;
    const e = randn(mesh, { i: 3, j: 2 }, "f32", {}, { seed: 4 }) as AnyT;
    const g = grad(add(sum(dot(a, b, "k"), ["m", "n"]), sum(mul(e, c), ["i", "j"])), { a, b, c, e });
    for (const [n, p] of Object.entries({ a, b, c, e })) expect(dimsOf((g as Record<string, AnyT>)[n]!), n).toEqual(dimsOf(p));
  });
});

// ---- sharded programs: same gradients on every mesh, in the parameters' placements ------------------

interface Built {
  loss: AnyT;
  params: Record<string, AnyT>;
  /** Fixed tensors the float64 loss needs besides the parameters. */
  consts: Record<string, AnyT>;
  /** The loss in float64 from the parameters' and constants' values (ref64 only). */
  ref: (p: Record<string, T64>, c: Record<string, T64>) => number;
}
type Prog = (mesh: Mesh<any>, ax: string) => Built;
const on = (ax: string, p: string) => ({ [ax]: p }) as never;

/** DP × TP MLP with rmsnorm, a bias, and a softmax loss (as .cache/gradsmoke.ts). */
const mlp: Prog = (mesh, ax) => {
  const x = randn(mesh, { batch: 6, model: 8 }, "f32", { dp: Shard("batch") } as never, { seed: 11 }) as AnyT;
  const w1 = randn(mesh, { model: 8, ffn: 10 }, "f32", on(ax, Shard("ffn")), { seed: 12, std: 0.4 }) as AnyT;
  const b1 = randn(mesh, { ffn: 10 }, "f32", on(ax, Shard("ffn")), { seed: 13, std: 0.1 }) as AnyT;
  const w2 = randn(mesh, { ffn: 10, model: 8 }, "f32", on(ax, Shard("ffn")), { seed: 14, std: 0.4 }) as AnyT;
  const nw = randn(mesh, { model: 8 }, "f32", {}, { seed: 15, mean: 1, std: 0.2 }) as AnyT;
  const y = dot(silu(add(dot(rmsnorm(x, nw, "model"), w1, "model"), b1)), w2, "ffn");
  const z = add(redistribute(y, on(ax, Replicate)), x);
  const loss = redistribute(mean(mul(softmax(z, "model"), z), ["batch", "model"]), { dp: Replicate } as never) as AnyT;
  const ref = (p: Record<string, T64>) => {
    const a = R.map([R.dot(R.rmsnorm(p.x!, p.nw!, "model"), p.w1!, ["model"]), p.b1!], (u, v) => u + v);
    const z = R.map([R.dot(R.map([a], R.UNARY64.silu!), p.w2!, ["ffn"]), p.x!], (u, v) => u + v);
    return R.reduce(R.map([R.softmax(z, "model"), z], (u, v) => u * v), ["batch", "model"], "mean").data[0]!;
  };
  return { loss, params: { x, w1, b1, w2, nw }, consts: {}, ref };
};

/** Vocab-parallel embedding: table sharded over vocab, ids replicated over that axis (split over dp). */
const vocabEmbedding: Prog = (mesh, ax) => {
  const table = randn(mesh, { vocab: 10, model: 4 }, "f32", on(ax, Shard("vocab")), { seed: 21 }) as AnyT;
  const ids = fromGlobal(mesh, { seq: 6 }, "i32", [3, 7, 3, 0, 9, 5], { dp: Shard("seq") } as never) as AnyT;
  const head = randn(mesh, { model: 4, cls: 3 }, "f32", {}, { seed: 22 }) as AnyT;
  const e = redistribute(embedding(table, ids, "vocab"), on(ax, Replicate));
  const logits = dot(silu(e), head, "model");
  const tgt = randn(mesh, { seq: 6, cls: 3 }, "f32", { dp: Shard("seq") } as never, { seed: 23 }) as AnyT;
  const loss = redistribute(sum(mul(logSoftmax(logits, "cls"), tgt), ["seq", "cls"]), { dp: Replicate } as never) as AnyT;
  const ref = (p: Record<string, T64>, c: Record<string, T64>) => {
    const logits = R.dot(R.map([R.gather(p.table!, c.ids!, "vocab")], R.UNARY64.silu!), p.head!, ["model"]);
    return R.reduce(R.map([R.logSoftmax(logits, "cls"), c.tgt!], (u, v) => u * v), ["seq", "cls"], "sum").data[0]!;
  };
  return { loss, params: { table, head }, consts: { ids, tgt }, ref };
};

/** MoE routing chain (examples/moe-layer.ts, scaled down): top-k → sort → gather → segment_dot on ep. */
const moe: Prog = (mesh, ax) => {
  const G = 6, T = 4, M = 4, FF = 3, E = 5, K = 2;
  const both = { dp: Shard("group"), [ax]: Shard("group") } as never;
  const x = randn(mesh, { group: G, tokens: T, model: M }, "f32", both, { seed: 31 }) as AnyT;
  const router = randn(mesh, { model: M, experts: E }, "f32", {}, { seed: 32, std: 0.6 }) as AnyT;
  const w1 = randn(mesh, { experts: E, model: M, ffn: FF }, "f32", on(ax, Shard("experts")), { seed: 33, std: 0.5 }) as AnyT;
  const w3 = randn(mesh, { experts: E, model: M, ffn: FF }, "f32", on(ax, Shard("experts")), { seed: 34, std: 0.5 }) as AnyT;
  const w2 = randn(mesh, { experts: E, ffn: FF, model: M }, "f32", on(ax, Shard("experts")), { seed: 35, std: 0.5 }) as AnyT;
  const scores = softmax(dot(x, router, "model"), "experts");
  const { values, indices } = topk(scores, "experts", K, "k");
  const gate = div(values, sum(values, "k"));
  const { perm, counts } = sortByKey(flatten(indices, ["tokens", "k"], "slots"), "slots", { rows: "rows", groups: "experts", numGroups: E });
  const token = div(perm, K);
  const rows = gather(x, token, "tokens");
  const dispatched = redistribute(rows, on(ax, Shard("rows")));
  const localCounts = redistribute(counts, on(ax, Shard("experts")));
  const seg = { rows: "rows", groups: "experts" } as never;
  const h = mul(silu(segmentDot(dispatched, w1, localCounts, "model", seg)), segmentDot(dispatched, w3, localCounts, "model", seg));
  const out = segmentDot(h, w2, localCounts, "ffn", seg);
  const back = redistribute(out, on(ax, Shard("group")));
  const weight = gather(flatten(gate, ["tokens", "k"], "slots"), perm, "slots");
  const routed = scatterAdd(mul(back, weight), token, "rows", { dim: "tokens", size: T });
  const y = add(routed, x);
  const rr = randn(mesh, { group: G, tokens: T, model: M }, "f32", both, { seed: 36 }) as AnyT;
  const loss = redistribute(sum(mul(y, rr), ["group", "tokens", "model"]), { dp: Replicate, [ax]: Replicate } as never) as AnyT;
  const ref = (p: Record<string, T64>, c: Record<string, T64>) => {
    const scores = R.softmax(R.dot(p.x!, p.router!, ["model"]), "experts");
    const tk = R.topk(scores, "experts", K, "k");
    const gate = R.map([tk.values, R.reduce(tk.values, ["k"], "sum")], (u, v) => u / v);
    const { perm, counts } = R.sortByKey(R.flatten(tk.indices, ["tokens", "k"], "slots"), "slots", "rows", "experts", E);
    const token = R.map([perm], (v) => (v < 0 ? -1 : Math.floor(v / K)));
    const rows = R.gather(p.x!, token, "tokens");
    const hh = R.map([R.map([R.segmentDot(rows, p.w1!, counts, "rows", "experts", "model")], R.UNARY64.silu!), R.segmentDot(rows, p.w3!, counts, "rows", "experts", "model")], (u, v) => u * v);
    const o = R.segmentDot(hh, p.w2!, counts, "rows", "experts", "ffn");
    const wgt = R.gather(R.flatten(gate, ["tokens", "k"], "slots"), perm, "slots");
    const yy = R.map([R.scatterAdd(R.map([o, wgt], (u, v) => u * v), token, ["rows"], "tokens", T), p.x!], (u, v) => u + v);
    return R.reduce(R.map([yy, c.rr!], (u, v) => u * v), ["group", "tokens", "model"], "sum").data[0]!;
  };
  return { loss, params: { x, router, w1, w2, w3 }, consts: { rr }, ref };
};

/** max_i |a_i - b_i| / max(|b_i|, 1e-3 max|b|). */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let scale = 0;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]!));
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    const den = Math.max(Math.abs(b[i]!), 1e-3 * scale);
    m = Math.max(m, den > 0 ? d / den : d === 0 ? 0 : Infinity);
  }
  return m;
}

async function gradsOn(prog: Prog, ax: string, dp: number, n: number) {
  const mesh = Mesh.of({ dp, [ax]: n });
  const { loss, params } = prog(mesh, ax);
  const names = Object.keys(params);
  const g = grad(loss, params);
  const vals = await evaluate([loss, ...names.map((k) => g[k] as AnyT)]);
  return {
    loss: vals[0]!,
    grads: Object.fromEntries(names.map((k, i) => [k, vals[i + 1]!])),
    placements: Object.fromEntries(names.map((k) => [k, [(g[k] as AnyT).type.placements, params[k]!.type.placements]])),
  };
}

describe("sharded gradients equal the 1-device gradients, in the parameters' placements", () => {
  const PROGS: [string, Prog, string, [number, number][]][] = [
    ["DP×TP MLP (rmsnorm, bias, softmax loss)", mlp, "tp", [[2, 2], [1, 3]]],
    ["vocab-parallel embedding", vocabEmbedding, "tp", [[2, 2], [1, 3]]],
    ["MoE routing (topk → sortByKey → gather → segmentDot, experts on ep)", moe, "ep", [[2, 2], [3, 5]]],
  ];
  // the 1-device gradients themselves, against float64 finite differences of the whole program
  // (catches what a per-op check cannot: accumulation where a value fans out, rules composing)
  for (const [label, prog, ax] of PROGS) {
    it(`${label}: 1-device gradients match float64 finite differences`, async () => {
      const mesh = Mesh.of({ dp: 1, [ax]: 1 });
      const b = prog(mesh, ax);
      const pn = Object.keys(b.params), cn = Object.keys(b.consts);
      const g = grad(b.loss, b.params);
      const vals = await evaluate([b.loss, ...pn.map((k) => b.params[k]!), ...cn.map((k) => b.consts[k]!), ...pn.map((k) => g[k] as AnyT)]);
      const t64 = (v: (typeof vals)[number]) => new T64(v.dimNames.map((n, i) => [n, v.shape[i]!] as const), v.data);
      const p64 = Object.fromEntries(pn.map((k, i) => [k, t64(vals[1 + i]!)]));
      const c64 = Object.fromEntries(cn.map((k, i) => [k, t64(vals[1 + pn.length + i]!)]));
      const ad = pn.map((_, i) => vals[1 + pn.length + cn.length + i]!);
      expect(Math.abs(b.ref(p64, c64) - vals[0]!.data[0]!)).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(vals[0]!.data[0]!)));
      pn.forEach((k, i) => {
        const base = p64[k]!;
        const fd = Array.from(base.data, (v, e) => {
          const h = 1e-5 * Math.max(1, Math.abs(v));
          const pl = { ...p64, [k]: base.clone() }, mi = { ...p64, [k]: base.clone() };
          pl[k]!.data[e]! += h;
          mi[k]!.data[e]! -= h;
          return (b.ref(pl, c64) - b.ref(mi, c64)) / (2 * h);
        });
        const scale = Math.max(...fd.map(Math.abs));
        expect(scale, `the gradient of ${k} is not all zero`).toBeGreaterThan(0);
        const off = fd.flatMap((f, e) => (Math.abs(ad[i]!.data[e]! - f) <= TOL * Math.max(Math.abs(f), 1e-2 * scale) ? [] : [`${k}[${e}]: ad ${ad[i]!.data[e]} fd ${f}`]));
        expect(off, `gradient of ${k}`).toEqual([]);
      });
    });
  }
  for (const [label, prog, ax, meshes] of PROGS) {
    for (const [dp, n] of meshes) {
      it(`${label} on {dp:${dp}, ${ax}:${n}}`, async () => {
        const ref = await gradsOn(prog, ax, 1, 1);
        const got = await gradsOn(prog, ax, dp, n);
        expect(relErr(got.loss.data, ref.loss.data), "loss").toBeLessThanOrEqual(1e-5);
        for (const k of Object.keys(ref.grads)) {
          const [gp, pp] = got.placements[k]!;
          expect(gp, `placements of the gradient of ${k}`).toEqual(pp);
          expect(got.grads[k]!.dimNames).toEqual(ref.grads[k]!.dimNames);
          let nz = 0;
          for (const v of ref.grads[k]!.data) nz = Math.max(nz, Math.abs(v));
          expect(nz, `the gradient of ${k} is not all zero`).toBeGreaterThan(0);
          expect(relErr(got.grads[k]!.data, ref.grads[k]!.data), `gradient of ${k}`).toBeLessThanOrEqual(1e-5);
        }
      });
    }
  }
});

// ---- errors and edge cases -----------------------------------------------------------------------------

describe("autodiff errors and edge cases", () => {
  it("a gradient flowing into a Partial<max> value is a CompileError that says to redistribute first", () => {
    const mesh = Mesh.of({ tp: 2 });
    const x = randn(mesh, { a: 3, d: 4 }, "f32", { tp: Shard("d") }, { seed: 41 }) as AnyT;
    const m = max(x, "d"); // Partial<max> over tp
    expect(m.type.placements).toEqual(["P(max)"]);
    const loss = sum(redistribute(m, { tp: Replicate } as never), "a");
    let err: unknown;
    try {
      grad(loss, { x });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CompileError);
    expect((err as Error).message).toMatch(/Partial<max>/);
    expect((err as Error).message).toMatch(/redistribute/);
  });

  it("the same loss works once the max is taken over a whole dim (reference for the error above)", async () => {
    const mesh = Mesh.of({ tp: 2 });
    const x = randn(mesh, { a: 3, d: 4 }, "f32", { tp: Shard("d") }, { seed: 41 }) as AnyT;
    const loss = sum(max(redistribute(x, { tp: Replicate } as never), "d"), "a");
    const g = grad(loss, { x }).x as AnyT;
    expect(g.type.placements).toEqual(["S(d)"]);
    const [xv, gv] = await evaluate([x, g]);
    for (let a = 0; a < 3; a++) {
      let best = 0;
      for (let d = 1; d < 4; d++) if (xv!.at({ a, d }) > xv!.at({ a, d: best })) best = d;
      for (let d = 0; d < 4; d++) expect(gv!.at({ a, d })).toBe(d === best ? 1 : 0);
    }
  });

  it("Partial<max> parameter: grad raises the same CompileError", () => {
    const mesh = Mesh.of({ tp: 2 });
    const p = randn(mesh, { a: 3 }, "f32", { tp: Partial("max") }, { seed: 42 }) as AnyT;
    const loss = sum(redistribute(p, { tp: Replicate } as never), "a");
    expect(() => grad(loss, { p })).toThrow(CompileError);
  });

  it("grad of an unused parameter is zeros in the parameter's placements", async () => {
    const mesh = Mesh.of({ dp: 2, tp: 2 });
    const x = randn(mesh, { batch: 4, model: 6 }, "f32", { dp: Shard("batch") }, { seed: 43 }) as AnyT;
    const used = randn(mesh, { model: 6, ffn: 4 }, "f32", { tp: Shard("ffn") }, { seed: 44 }) as AnyT;
    const unused = randn(mesh, { ffn: 4, model: 6 }, "f32", { dp: Shard("model"), tp: Shard("ffn") }, { seed: 45 }) as AnyT;
    const unusedBf = randn(mesh, { model: 6 }, "bf16", {}, { seed: 46 }) as AnyT;
    const loss = redistribute(sum(dot(x, used, "model"), ["batch", "ffn"]), { dp: Replicate, tp: Replicate } as never) as AnyT;
    const g = grad(loss, { used, unused, unusedBf });
    for (const [k, p] of [["unused", unused], ["unusedBf", unusedBf]] as const) {
      const gk = g[k] as AnyT;
      expect(gk.type.placements, k).toEqual(p.type.placements);
      expect(gk.dtype, k).toBe(p.dtype);
      expect(dimsOf(gk), k).toEqual(dimsOf(p));
    }
    const [gu, gb, gused] = await evaluate([g.unused as AnyT, g.unusedBf as AnyT, g.used as AnyT]);
    expect(Array.from(gu!.data).every((v) => v === 0)).toBe(true);
    expect(Array.from(gb!.data).every((v) => v === 0)).toBe(true);
    expect(Array.from(gused!.data).some((v) => v !== 0)).toBe(true);
  });
});

// ---- coverage ----------------------------------------------------------------------------------------

describe("coverage", () => {
  it("every op with a gradient rule has a finite-difference case", () => {
    // FP8's rules are by design not derivatives (straight-through quantize, FP8 Dgrad/Wgrad):
    // test/unit/fp8-recipe.test.ts and fp8-moe.test.ts check them against the unquantized computation instead
    const FP8 = ["dequantize", "quantize", "scaled_dot", "scaled_segment_dot"];
    const withGrad = allOps().filter((o) => o.grad && !FP8.includes(o.name)).map((o) => o.name).sort();
    const covered = new Set(CASES.map((c) => c.op));
    expect(withGrad.filter((n) => !covered.has(n)), "ops with a grad rule but no case").toEqual([]);
    expect([...covered].filter((n) => !withGrad.includes(n)), "cases for ops without a grad rule").toEqual([]);
  });
});

afterAll(() => {
  const rows = [...maxRelByOp.entries()].sort(([a], [b]) => a.localeCompare(b));
  if (rows.length) console.log(`max relative error |ad - fd| / max(|fd|, 1e-2 max|fd|) per op (${rows.length} ops):\n` + rows.map(([op, e]) => `  ${op.padEnd(14)} ${e.toExponential(2)}`).join("\n"));
});
