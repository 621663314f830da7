// Every op of the registry, run through the public API on a 1-device mesh with FRESH random inputs,
// against an independent float64 reference written here (plain loops over named dims; nothing from
// the library's CPU code). The inputs come from a small seeded PRNG whose base seed is drawn from
// Math.random() on each run (set SHARDTS_TEST_SEED to replay one); every failure prints it.
//
// Tolerances: f32 outputs 1e-5 relative, bf16 outputs 1e-2, both relative to max(|ref|, 1e-3·max|ref|);
// i32 and rounding ops (cast, movement, routing) exact.
import { afterAll, describe, expect, it } from "vitest";
import {
  Mesh, DTensor, Shard, Partial, Replicate, evaluate, fromGlobal, randn, rand, zeros, ones, full, iota, redistribute,
  abs, exp, gelu, log, neg, relu, rsqrt, sigmoid, silu, sqrt, add, sub, mul, div, maximum, minimum, where, cast,
  sum, mean, max, softmax, logSoftmax, rmsnorm, dot, segmentDot, topk, gather, embedding, scatterAdd, sortByKey,
  rename, flatten, unflatten, concat, split, quantize, dequantize, scaledDot, moeDispatch, moeCombine, type GlobalValue,
} from "../../stdlib/index.ts";
import { allOps } from "../../compiler/ops/index.ts";
import { roundToBf16, roundToE4M3, roundToE5M2 } from "../../compiler/numeric/index.ts";
import { mulberry32 } from "../helpers/prng.ts";

// ---- seeded randomness ----------------------------------------------------------------------

const BASE_SEED = process.env.SHARDTS_TEST_SEED !== undefined ? Number(process.env.SHARDTS_TEST_SEED) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
const SEED_NOTE = `(replay with SHARDTS_TEST_SEED=${BASE_SEED})`;

const hash = (s: string) => [...s].reduce((h, c) => Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0, 0x811c9dc5);
/** A generator per test, from the base seed and the test's name (tests stay independent). */
function rngFor(name: string) {
  const r = mulberry32(BASE_SEED ^ hash(name));
  return {
    uniform: (lo: number, hi: number) => lo + (hi - lo) * r(),
    int: (lo: number, hi: number) => lo + Math.floor((hi - lo + 1) * r()), // inclusive
    /** Nonzero, |v| in [lo, hi], random sign. */
    away: (lo: number, hi: number) => (r() < 0.5 ? -1 : 1) * (lo + (hi - lo) * r()),
  };
}

// ---- named-dim reference tensors ------------------------------------------------------------

type DimList = [string, number][];
type Idx = Record<string, number>;

/** A float64 tensor with named dims, row-major in the order of `dims`. */
class Ref {
  readonly data: Float64Array;
  constructor(readonly dims: DimList, data?: ArrayLike<number>) {
    this.data = data === undefined ? new Float64Array(numel(dims)) : Float64Array.from(data);
    if (this.data.length !== numel(dims)) throw new Error(`Ref: ${this.data.length} values for ${JSON.stringify(dims)}`);
  }
  static build(dims: DimList, f: (i: Idx) => number): Ref {
    const r = new Ref(dims);
    forEachIdx(dims, (i, o) => (r.data[o] = f(i)));
    return r;
  }
  offset(i: Idx): number {
    let o = 0;
    for (const [n, s] of this.dims) {
      const k = i[n];
      if (k === undefined || k < 0 || k >= s) throw new Error(`Ref.at: index of '${n}' is ${k}`);
      o = o * s + k;
    }
    return o;
  }
  /** The element at the named indices (extra names in `i` are ignored: that is broadcasting). */
  at(i: Idx): number {
    return this.data[this.offset(i)]!;
  }
  size(n: string): number {
    return this.dims.find(([d]) => d === n)![1];
  }
}
const numel = (dims: DimList) => dims.reduce((a, [, s]) => a * s, 1);

/** Visits every index of `dims` in row-major order, with its flat offset. */
function forEachIdx(dims: DimList, fn: (i: Idx, o: number) => void): void {
  const n = numel(dims);
  const i: Idx = Object.fromEntries(dims.map(([d]) => [d, 0]));
  for (let o = 0; o < n; o++) {
    fn(i, o);
    for (let d = dims.length - 1; d >= 0; d--) {
      const [name, size] = dims[d]!;
      if (++i[name]! < size) break;
      i[name] = 0;
    }
  }
}
const sub0 = (dims: DimList, names: string[]): DimList => dims.filter(([n]) => names.includes(n));
const without = (dims: DimList, names: string[]): DimList => dims.filter(([n]) => !names.includes(n));

// ---- inputs ---------------------------------------------------------------------------------

type DT = "f32" | "bf16" | "fp8e4m3" | "fp8e5m2" | "i32";
/** What a dtype stores for a float64 value (fromGlobal rounds exactly like this). */
function store(dtype: DT, v: number): number {
  switch (dtype) {
    case "f32": return Math.fround(v);
    case "bf16": return roundToBf16(v);
    case "fp8e4m3": return roundToE4M3(v);
    case "fp8e5m2": return roundToE5M2(v);
    case "i32": return Math.trunc(v) | 0;
  }
}

interface In {
  t: DTensor<any, any, any>;
  ref: Ref;
}
/** A fresh random input: fromGlobal of generated data, and the same values (as stored) for the reference. */
function input(mesh: Mesh<any>, dims: DimList, dtype: DT, gen: () => number, placements?: Record<string, string>): In {
  const ref = new Ref(dims);
  for (let o = 0; o < ref.data.length; o++) ref.data[o] = store(dtype, gen());
  const t = fromGlobal(mesh, Object.fromEntries(dims), dtype, ref.data, placements as never) as DTensor<any, any, any>;
  return { t, ref };
}

// ---- comparison -----------------------------------------------------------------------------

type Tol = "f32" | "bf16" | "exact";
const TOL = { f32: 1e-5, bf16: 1e-2, exact: 0 };

/** `got` must have `want`'s dims (names and order), dtype, and values within tolerance. */
function expectClose(got: GlobalValue, want: Ref, tol: Tol, what: string, dtype?: DT): void {
  const where = `${what} ${SEED_NOTE}`;
  expect(got.dimNames, `${where}: dims`).toEqual(want.dims.map(([n]) => n));
  expect(got.shape, `${where}: shape`).toEqual(want.dims.map(([, s]) => s));
  if (dtype) expect(got.dtype, `${where}: dtype`).toBe(dtype);
  let scale = 0;
  for (const v of want.data) scale = Math.max(scale, Math.abs(v));
  const floor = Math.max(1e-3 * scale, Number.MIN_VALUE);
  let worst = 0, at = -1;
  for (let o = 0; o < want.data.length; o++) {
    const g = got.data[o]!, w = want.data[o]!;
    if (Number.isNaN(w) && Number.isNaN(g)) continue;
    const err = tol === "exact" ? (Object.is(g, w) || g === w ? 0 : Infinity) : Math.abs(g - w) / Math.max(Math.abs(w), floor);
    if (!(err <= worst)) {
      worst = Number.isNaN(err) ? Infinity : err;
      at = o;
    }
  }
  if (worst > TOL[tol]) {
    const idx: Idx = {};
    forEachIdx(want.dims, (i, o) => {
      if (o === at) Object.assign(idx, i);
    });
    expect.fail(`${where}: at ${JSON.stringify(idx)} got ${got.data[at]} but the reference is ${want.data[at]} (relative error ${worst.toExponential(2)} > ${TOL[tol]})`);
  }
}

/**
 * An f32 accumulation of `n` terms against its float64 value: |got - want| <= (n + 2) * 2^-24 * sum|terms|
 * (the recursive-summation bound, plus the rounding of each product and of the scales). A relative
 * tolerance fails by chance where the terms cancel; this bound cannot.
 */
function expectWithinSumBound(got: GlobalValue, want: Ref, absSum: Ref, n: number, what: string, dtype?: DT): void {
  const where = `${what} ${SEED_NOTE}`;
  expect(got.dimNames, `${where}: dims`).toEqual(want.dims.map(([d]) => d));
  expect(got.shape, `${where}: shape`).toEqual(want.dims.map(([, s]) => s));
  if (dtype) expect(got.dtype, `${where}: dtype`).toBe(dtype);
  for (let o = 0; o < want.data.length; o++) {
    const bound = (n + 2) * 2 ** -24 * absSum.data[o]!;
    const err = Math.abs(got.data[o]! - want.data[o]!);
    if (!(err <= bound)) expect.fail(`${where}: element ${o} got ${got.data[o]} but the reference is ${want.data[o]} (|error| ${err.toExponential(2)} > bound ${bound.toExponential(2)})`);
  }
}

/** Every float32 of a bf16 tensor has zero low 16 bits. */
function expectBf16Representable(got: GlobalValue, what: string): void {
  const bits = new Uint32Array(Float32Array.from(got.data).buffer);
  const bad = bits.findIndex((b) => (b & 0xffff) !== 0);
  expect(bad, `${what}: element ${bad} (${got.data[bad]}) is not a bf16 value ${SEED_NOTE}`).toBe(-1);
}

// ---- coverage -------------------------------------------------------------------------------

const covered = new Set<string>();
/** Evaluates `outs` and records the ops of their graph as covered (they were compared). */
async function run(...outs: DTensor<any, any, any>[]): Promise<GlobalValue[]> {
  const vals = await evaluate(outs);
  const g = outs[0]!.mesh.builder.graph;
  const seen = new Set<number>();
  const visit = (n: number) => {
    if (seen.has(n)) return;
    seen.add(n);
    covered.add(g.nodes[n]!.op);
    for (const i of g.nodes[n]!.inputs) visit(i.node);
  };
  for (const t of outs) visit(t.ref.node);
  return vals;
}
/** An op of the registry that no stdlib function exposes (autodiff helpers), traced directly. */
function rawOp(op: string, ins: DTensor<any, any, any>[], attrs: Record<string, unknown> = {}): DTensor<any, any, any>[] {
  const mesh = ins[0]!.mesh;
  return mesh.builder.add(op, ins.map((t) => t.ref), attrs as never).map((r) => new DTensor(mesh, r));
}

const one = () => Mesh.of({ d: 1 });

// ---- independent float64 math ---------------------------------------------------------------

/** erf by its Maclaurin series (|x| < 3) or the Laplace continued fraction of erfc (beyond). */
function erfRef(x: number): number {
  const ax = Math.abs(x);
  if (ax < 3) {
    let s = 0;
    let p = ax; // x^(2n+1)/n!
    for (let n = 0; n < 120; n++) {
      s += ((n % 2 ? -1 : 1) * p) / (2 * n + 1);
      p *= (ax * ax) / (n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * s;
  }
  let k = ax;
  for (let n = 80; n >= 1; n--) k = ax + n / 2 / k;
  return Math.sign(x) * (1 - Math.exp(-ax * ax) / Math.sqrt(Math.PI) / k);
}
const sigm = (x: number) => 1 / (1 + Math.exp(-x));
const UNARY_REF: Record<string, (x: number) => number> = {
  abs: Math.abs,
  exp: Math.exp,
  gelu: (x) => 0.5 * x * (1 + erfRef(x / Math.SQRT2)),
  log: Math.log,
  neg: (x) => -x,
  relu: (x) => (x > 0 ? x : 0),
  rsqrt: (x) => 1 / Math.sqrt(x),
  sigmoid: sigm,
  silu: (x) => x * sigm(x),
  sqrt: Math.sqrt,
};
const UNARY_FN: Record<string, (x: any) => any> = { abs, exp, gelu, log, neg, relu, rsqrt, sigmoid, silu, sqrt };
/** Inputs each unary op is defined on. */
const UNARY_DOMAIN: Record<string, [number, number]> = { log: [0.05, 5], rsqrt: [0.05, 5], sqrt: [0, 5], exp: [-6, 6], gelu: [-6, 6] };
const BINARY_REF: Record<string, (a: number, b: number) => number> = {
  add: (a, b) => a + b, sub: (a, b) => a - b, mul: (a, b) => a * b, div: (a, b) => a / b, maximum: Math.max, minimum: Math.min,
};
const BINARY_FN: Record<string, (a: any, b: any) => any> = { add, sub, mul, div, maximum, minimum };

/** The name-broadcast union: a's dims, then b's dims a lacks. */
const unionOf = (a: DimList, b: DimList): DimList => [...a, ...b.filter(([n]) => !a.some(([m]) => m === n))];
function binaryRef(f: (a: number, b: number) => number, a: Ref, b: Ref): Ref {
  return Ref.build(unionOf(a.dims, b.dims), (i) => f(a.at(i), b.at(i)));
}

/** einsum by name: out = a's dims not contracted, then b's dims in neither; sum over `contract`. */
function dotRef(a: Ref, b: Ref, contract: string[]): Ref {
  const out: DimList = [...without(a.dims, contract), ...b.dims.filter(([n]) => !contract.includes(n) && !a.dims.some(([m]) => m === n))];
  const cdims = sub0(a.dims, contract);
  return Ref.build(out, (i) => {
    let s = 0;
    forEachIdx(cdims, (c) => {
      const j = { ...i, ...c };
      s += a.at(j) * b.at(j);
    });
    return s;
  });
}

// ============================================================================================

describe(`ops against a float64 reference, 1-device mesh ${SEED_NOTE}`, () => {
  it("the reference erf is right (erf(0.5), erf(1), erf(2), erf(3.5))", () => {
    // values from Abramowitz & Stegun table 7.1 / high-precision tables
    expect(erfRef(0.5)).toBeCloseTo(0.5204998778130465, 14);
    expect(erfRef(1)).toBeCloseTo(0.8427007929497149, 14);
    expect(erfRef(2)).toBeCloseTo(0.9953222650189527, 14);
    expect(erfRef(-3.5)).toBeCloseTo(-0.9999992569016276, 14);
    expect(erfRef(2.9999)).toBeCloseTo(erfRef(3.0001), 6);
  });

  describe("unary (f32)", () => {
    for (const op of Object.keys(UNARY_REF)) {
      it(op, async () => {
        const r = rngFor(`unary ${op}`);
        const mesh = one();
        const [lo, hi] = UNARY_DOMAIN[op] ?? [-4, 4];
        const x = input(mesh, [["b", 3], ["t", 5], ["m", 7]], "f32", () => r.uniform(lo, hi));
        const [got] = await run(UNARY_FN[op]!(x.t));
        expectClose(got!, Ref.build(x.ref.dims, (i) => UNARY_REF[op]!(x.ref.at(i))), "f32", op, "f32");
      });
    }
    it("i32: abs, neg, relu", async () => {
      const r = rngFor("unary i32");
      const mesh = one();
      const x = input(mesh, [["n", 6], ["m", 5]], "i32", () => r.int(-100, 100));
      const outs = await run(abs(x.t), neg(x.t), relu(x.t));
      (["abs", "neg", "relu"] as const).forEach((op, k) => expectClose(outs[k]!, Ref.build(x.ref.dims, (i) => UNARY_REF[op]!(x.ref.at(i)) + 0), "exact", `${op} i32`, "i32"));
    });
  });

  describe("binary with broadcasting by name", () => {
    for (const op of Object.keys(BINARY_REF)) {
      it(`${op}: same dims, dims in another order, new dims on either side, a scalar`, async () => {
        const r = rngFor(`binary ${op}`);
        const mesh = one();
        const g = () => (op === "div" ? r.away(0.25, 3) : r.uniform(-3, 3));
        const a = input(mesh, [["x", 3], ["y", 4], ["z", 5]], "f32", () => r.uniform(-3, 3));
        const same = input(mesh, [["x", 3], ["y", 4], ["z", 5]], "f32", g);
        const scrambled = input(mesh, [["z", 5], ["x", 3]], "f32", g); // a subset, in another order
        const other = input(mesh, [["w", 2], ["y", 4]], "f32", g); // one shared dim, one new
        const f = BINARY_FN[op]!, fr = BINARY_REF[op]!;
        const outs = await run(f(a.t, same.t), f(a.t, scrambled.t), f(scrambled.t, a.t), f(a.t, other.t), f(other.t, a.t), f(a.t, 1.75));
        expectClose(outs[0]!, binaryRef(fr, a.ref, same.ref), "f32", `${op}(a, same)`, "f32");
        expectClose(outs[1]!, binaryRef(fr, a.ref, scrambled.ref), "f32", `${op}(a[x,y,z], b[z,x])`, "f32");
        expectClose(outs[2]!, binaryRef(fr, scrambled.ref, a.ref), "f32", `${op}(b[z,x], a[x,y,z])`, "f32");
        expectClose(outs[3]!, binaryRef(fr, a.ref, other.ref), "f32", `${op}(a[x,y,z], b[w,y])`, "f32");
        expectClose(outs[4]!, binaryRef(fr, other.ref, a.ref), "f32", `${op}(b[w,y], a[x,y,z])`, "f32");
        expectClose(outs[5]!, Ref.build(a.ref.dims, (i) => fr(a.ref.at(i), 1.75)), "f32", `${op}(a, 1.75)`, "f32");
      });
    }

    it("i32 arithmetic: add sub mul div (truncating toward zero) maximum minimum", async () => {
      const r = rngFor("binary i32");
      const mesh = one();
      const a = input(mesh, [["n", 7], ["m", 6]], "i32", () => r.int(-1000, 1000));
      const b = input(mesh, [["m", 6], ["n", 7]], "i32", () => (r.int(0, 1) ? 1 : -1) * r.int(1, 40));
      const intRef: Record<string, (x: number, y: number) => number> = { ...BINARY_REF, div: (x, y) => Math.trunc(x / y) };
      const ops = Object.keys(BINARY_FN);
      const outs = await run(...ops.map((op) => BINARY_FN[op]!(a.t, b.t)), div(a.t, 7), div(neg(a.t), 7));
      ops.forEach((op, k) => expectClose(outs[k]!, binaryRef((x, y) => intRef[op]!(x, y) + 0, a.ref, b.ref), "exact", `${op} i32`, "i32"));
      expectClose(outs[ops.length]!, Ref.build(a.ref.dims, (i) => Math.trunc(a.ref.at(i) / 7) + 0), "exact", "div(i32, 7)", "i32");
      expectClose(outs[ops.length + 1]!, Ref.build(a.ref.dims, (i) => Math.trunc(-a.ref.at(i) / 7) + 0), "exact", "div(-i32, 7)", "i32");
      // the truncation is visible: -7 / 2 is -3, not -4
      const [q] = await run(div(fromGlobal(mesh, { n: 4 }, "i32", [-7, 7, -1, 5]), fromGlobal(mesh, { n: 4 }, "i32", [2, -2, 2, -5])));
      expect(Array.from(q!.data)).toEqual([-3, -3, 0, -1]);
    });
  });

  it("where: a condition, two values and broadcasting (cond != 0 picks a)", async () => {
    const r = rngFor("where");
    const mesh = one();
    const c = input(mesh, [["y", 4], ["x", 3]], "f32", () => (r.uniform(0, 1) < 0.4 ? 0 : r.uniform(-2, 2)));
    const a = input(mesh, [["x", 3], ["y", 4], ["z", 2]], "f32", () => r.uniform(-2, 2));
    const b = input(mesh, [["z", 2]], "f32", () => r.uniform(-2, 2));
    const [got, got2] = await run(where(c.t, a.t, b.t), where(c.t, a.t, -0.5));
    const dims = unionOf(c.ref.dims, unionOf(a.ref.dims, b.ref.dims));
    expectClose(got!, Ref.build(dims, (i) => (c.ref.at(i) !== 0 ? a.ref.at(i) : b.ref.at(i))), "exact", "where", "f32");
    expectClose(got2!, Ref.build(unionOf(c.ref.dims, a.ref.dims), (i) => (c.ref.at(i) !== 0 ? a.ref.at(i) : Math.fround(-0.5))), "exact", "where(c, a, -0.5)", "f32");
  });

  describe("cast", () => {
    it("f32 → bf16 is round-to-nearest-even of the f32 value; f32 → fp8 matches roundToE4M3/E5M2 (saturating); f32 → i32 truncates", async () => {
      const r = rngFor("cast");
      const mesh = one();
      // a spread of magnitudes, bf16 ties (low 16 bits exactly 0x8000), FP8 overflow and tiny values
      const gen = () => {
        const k = r.int(0, 5);
        if (k === 0) return r.away(400, 2000) * (r.uniform(0, 1) < 0.5 ? 1 : 60); // past FP8 max
        if (k === 1) return r.away(1e-6, 1e-2);
        if (k === 2) {
          const f = new Float32Array([r.away(0.5, 100)]);
          const u = new Uint32Array(f.buffer);
          u[0] = (u[0]! & 0xffff0000) | 0x8000; // exactly halfway between two bf16 values
          return f[0]!;
        }
        return r.away(0.01, 300);
      };
      const x = input(mesh, [["n", 64], ["m", 8]], "f32", gen);
      const outs = await run(cast(x.t, "bf16"), cast(x.t, "fp8e4m3"), cast(x.t, "fp8e5m2"), cast(x.t, "i32"), cast(cast(x.t, "bf16"), "f32"));
      expectClose(outs[0]!, Ref.build(x.ref.dims, (i) => roundToBf16(x.ref.at(i))), "exact", "cast bf16", "bf16");
      expectClose(outs[1]!, Ref.build(x.ref.dims, (i) => roundToE4M3(x.ref.at(i))), "exact", "cast fp8e4m3", "fp8e4m3");
      expectClose(outs[2]!, Ref.build(x.ref.dims, (i) => roundToE5M2(x.ref.at(i))), "exact", "cast fp8e5m2", "fp8e5m2");
      expectClose(outs[3]!, Ref.build(x.ref.dims, (i) => Math.trunc(x.ref.at(i)) + 0), "exact", "cast i32", "i32");
      expectClose(outs[4]!, Ref.build(x.ref.dims, (i) => roundToBf16(x.ref.at(i))), "exact", "cast bf16 → f32", "f32");
    });

    it("bf16 rounding is to nearest, ties to even (independent bit arithmetic)", async () => {
      const mesh = one();
      // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even → 1; 1 + 3·2^-8 → 1 + 2^-6 (even)
      const vals = [1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 1 + 2 ** -8 + 2 ** -20, 3.140625, 65504];
      const [got] = await run(cast(fromGlobal(mesh, { n: vals.length }, "f32", vals), "bf16"));
      expect(Array.from(got!.data)).toEqual([1, 1 + 2 ** -6, -1, 1 + 2 ** -7, 3.140625, 65536]);
    });

    it("i32 → f32 is exact", async () => {
      const r = rngFor("cast i32");
      const mesh = one();
      const x = input(mesh, [["n", 20]], "i32", () => r.int(-(2 ** 24), 2 ** 24));
      const [got] = await run(cast(x.t, "f32"));
      expectClose(got!, x.ref, "exact", "cast i32 → f32", "f32");
    });
  });

  describe("reductions", () => {
    const red = (kind: "sum" | "mean" | "max", x: Ref, dims: string[]): Ref => {
      const kept = without(x.dims, dims), rd = sub0(x.dims, dims);
      return Ref.build(kept, (i) => {
        let acc = kind === "max" ? -Infinity : 0;
        forEachIdx(rd, (j) => {
          const v = x.at({ ...i, ...j });
          acc = kind === "max" ? Math.max(acc, v) : acc + v;
        });
        return kind === "mean" ? acc / numel(rd) : acc;
      });
    };
    for (const kind of ["sum", "mean", "max"] as const) {
      it(`${kind} over one dim (first, middle, last) and over two dims`, async () => {
        const r = rngFor(`reduce ${kind}`);
        const mesh = one();
        const x = input(mesh, [["a", 3], ["b", 4], ["c", 5]], "f32", () => r.uniform(-3, 3));
        const f = { sum, mean, max }[kind] as (x: any, d: any) => any;
        const cases = [["a"], ["b"], ["c"], ["a", "c"], ["c", "b"]];
        const outs = await run(...cases.map((d) => f(x.t, d.length === 1 ? d[0] : d)));
        cases.forEach((d, k) => expectClose(outs[k]!, red(kind, x.ref, d), "f32", `${kind} over [${d}]`, "f32"));
      });
    }
    it("sum and max of i32", async () => {
      const r = rngFor("reduce i32");
      const mesh = one();
      const x = input(mesh, [["a", 3], ["b", 4]], "i32", () => r.int(-500, 500));
      const outs = await run(sum(x.t, "b"), max(x.t, ["a", "b"]));
      expectClose(outs[0]!, red("sum", x.ref, ["b"]), "exact", "sum i32", "i32");
      expectClose(outs[1]!, red("max", x.ref, ["a", "b"]), "exact", "max i32", "i32");
    });
  });

  describe("row ops", () => {
    const rowRef = (x: Ref, dim: string, f: (row: number[]) => number[]): Ref => {
      const out = new Ref(x.dims);
      forEachIdx(without(x.dims, [dim]), (i) => {
        const row = Array.from({ length: x.size(dim) }, (_, k) => x.at({ ...i, [dim]: k }));
        f(row).forEach((v, k) => (out.data[out.offset({ ...i, [dim]: k })] = v));
      });
      return out;
    };
    const softmaxRow = (row: number[]) => {
      const m = Math.max(...row);
      const e = row.map((v) => Math.exp(v - m));
      const s = e.reduce((a, b) => a + b, 0);
      return e.map((v) => v / s);
    };
    const logSoftmaxRow = (row: number[]) => {
      const m = Math.max(...row);
      const lse = m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0));
      return row.map((v) => v - lse);
    };

    it("softmax and logSoftmax over the last and a middle dim", async () => {
      const r = rngFor("softmax");
      const mesh = one();
      const x = input(mesh, [["t", 3], ["v", 11], ["h", 4]], "f32", () => r.uniform(-8, 8));
      const outs = await run(softmax(x.t, "h"), softmax(x.t, "v"), logSoftmax(x.t, "h"), logSoftmax(x.t, "v"));
      expectClose(outs[0]!, rowRef(x.ref, "h", softmaxRow), "f32", "softmax h", "f32");
      expectClose(outs[1]!, rowRef(x.ref, "v", softmaxRow), "f32", "softmax v", "f32");
      expectClose(outs[2]!, rowRef(x.ref, "h", logSoftmaxRow), "f32", "log_softmax h", "f32");
      expectClose(outs[3]!, rowRef(x.ref, "v", logSoftmaxRow), "f32", "log_softmax v", "f32");
    });

    it("rmsnorm (eps 1e-6) over the last and a middle dim", async () => {
      const r = rngFor("rmsnorm");
      const mesh = one();
      // t = 0 holds tiny values, where eps matters: mean(x²) ~ 1e-6
      let n = 0;
      const x = input(mesh, [["t", 3], ["m", 16], ["h", 5]], "f32", () => r.uniform(-2, 2) * (n++ < 80 ? 1e-3 : 1));
      const wm = input(mesh, [["m", 16]], "f32", () => r.uniform(0.5, 1.5));
      const wh = input(mesh, [["h", 5]], "f32", () => r.uniform(0.5, 1.5));
      const norm = (w: Ref, dim: string) => (row: number[]) => {
        const ms = row.reduce((a, v) => a + v * v, 0) / row.length;
        return row.map((v, k) => (v / Math.sqrt(ms + 1e-6)) * w.at({ [dim]: k }));
      };
      const outs = await run(rmsnorm(x.t, wh.t, "h"), rmsnorm(x.t, wm.t, "m", 1e-6));
      expectClose(outs[0]!, rowRef(x.ref, "h", norm(wh.ref, "h")), "f32", "rmsnorm h", "f32");
      expectClose(outs[1]!, rowRef(x.ref, "m", norm(wm.ref, "m")), "f32", "rmsnorm m", "f32");
    });
  });

  describe("dot", () => {
    it("plain, several contracted dims, batch dims, operands in scrambled dim order", async () => {
      const r = rngFor("dot f32");
      const mesh = one();
      const g = () => r.uniform(-2, 2);
      const a = input(mesh, [["m", 5], ["k", 7]], "f32", g);
      const b = input(mesh, [["k", 7], ["n", 3]], "f32", g);
      const a2 = input(mesh, [["m", 4], ["k1", 3], ["k2", 5]], "f32", g);
      const b2 = input(mesh, [["k2", 5], ["n", 6], ["k1", 3]], "f32", g);
      const qa = input(mesh, [["h", 2], ["s", 4], ["d", 6]], "f32", g);
      const kb = input(mesh, [["d", 6], ["h", 2], ["t", 5]], "f32", g);
      const sa = input(mesh, [["k", 6], ["b", 3], ["m", 4]], "f32", g); // scrambled: contract first, batch in the middle
      const sb = input(mesh, [["n", 5], ["k", 6], ["b", 3]], "f32", g);
      const outs = await run(dot(a.t, b.t, "k"), dot(a2.t, b2.t, ["k1", "k2"]), dot(qa.t, kb.t, "d"), dot(sa.t, sb.t, ["k"]), dot(b.t, a.t, "k"));
      expectClose(outs[0]!, dotRef(a.ref, b.ref, ["k"]), "f32", "dot [m,k]·[k,n]", "f32");
      expectClose(outs[1]!, dotRef(a2.ref, b2.ref, ["k1", "k2"]), "f32", "dot over [k1,k2]", "f32");
      expectClose(outs[2]!, dotRef(qa.ref, kb.ref, ["d"]), "f32", "dot with batch dim h", "f32");
      expectClose(outs[3]!, dotRef(sa.ref, sb.ref, ["k"]), "f32", "dot scrambled", "f32");
      expectClose(outs[4]!, dotRef(b.ref, a.ref, ["k"]), "f32", "dot [k,n]·[m,k]", "f32");
    });

    it("fp8 operands give bf16 (or f32 when asked); mixed FP8 formats allowed", async () => {
      const r = rngFor("dot fp8");
      const mesh = one();
      const a = input(mesh, [["m", 6], ["k", 16]], "fp8e4m3", () => r.uniform(-4, 4));
      const b = input(mesh, [["k", 16], ["n", 5]], "fp8e4m3", () => r.uniform(-4, 4));
      const b5 = input(mesh, [["n", 5], ["k", 16]], "fp8e5m2", () => r.uniform(-4, 4));
      const outs = await run(dot(a.t, b.t, "k"), dot(a.t, b.t, "k", { out: "f32" }), dot(a.t, b5.t, "k"));
      const want = dotRef(a.ref, b.ref, ["k"]);
      expectClose(outs[0]!, want, "bf16", "dot fp8e4m3 → bf16", "bf16");
      expectBf16Representable(outs[0]!, "dot fp8 → bf16");
      expectClose(outs[1]!, want, "f32", "dot fp8e4m3 → f32", "f32");
      expectClose(outs[2]!, dotRef(a.ref, b5.ref, ["k"]), "bf16", "dot e4m3 · e5m2", "bf16");
    });
  });

  describe("routing", () => {
    /** Stable counting sort by key: rows of each key in order, then -1 for keys outside [0, G). */
    const sortRef = (keys: number[], G: number) => {
      const perm: number[] = [], counts = new Array<number>(G).fill(0);
      for (let g = 0; g < G; g++) keys.forEach((k, j) => k === g && (perm.push(j), counts[g]!++));
      while (perm.length < keys.length) perm.push(-1);
      return { perm, counts };
    };

    it("sortByKey → gather → segmentDot (MoE), with batch dims and out-of-range keys", async () => {
      const r = rngFor("segment");
      const mesh = one();
      const B = 2, T = 13, G = 4, K = 6, N = 3;
      // keys in [0, G), a few out of range (dropped: their rows go to the end as -1)
      const keys = input(mesh, [["b", B], ["tok", T]], "i32", () => (r.uniform(0, 1) < 0.1 ? (r.int(0, 1) ? -1 : G) : r.int(0, G - 1)));
      const x = input(mesh, [["b", B], ["tok", T], ["model", K]], "f32", () => r.uniform(-2, 2));
      const w = input(mesh, [["g", G], ["model", K], ["ffn", N]], "f32", () => r.uniform(-2, 2));
      const routed = sortByKey(keys.t, "tok", { rows: "slot", groups: "g", numGroups: G });
      const xs = gather(x.t, routed.perm, "tok");
      const y = segmentDot(xs, w.t, routed.counts, "model", { rows: "slot", groups: "g" });
      const [perm, counts, xsv, yv] = await run(routed.perm, routed.counts, xs, y);

      const permRef = new Ref([["b", B], ["slot", T]]), countsRef = new Ref([["b", B], ["g", G]]);
      for (let bi = 0; bi < B; bi++) {
        const s = sortRef(Array.from({ length: T }, (_, j) => keys.ref.at({ b: bi, tok: j })), G);
        s.perm.forEach((p, j) => (permRef.data[permRef.offset({ b: bi, slot: j })] = p));
        s.counts.forEach((c, g) => (countsRef.data[countsRef.offset({ b: bi, g })] = c));
      }
      expectClose(perm!, permRef, "exact", "sort_by_key perm", "i32");
      expectClose(counts!, countsRef, "exact", "sort_by_key counts", "i32");
      const xsRef = Ref.build([["b", B], ["slot", T], ["model", K]], (i) => {
        const p = permRef.at(i);
        return p < 0 ? 0 : x.ref.at({ ...i, tok: p });
      });
      expectClose(xsv!, xsRef, "exact", "gather rows by perm (-1 → zeros)");
      // y[b, slot, n] = sum_k xs[b, slot, k] w[g(slot), k, n], g(slot) from the running counts
      const yRef = Ref.build([["b", B], ["slot", T], ["ffn", N]], (i) => {
        let start = 0, g = 0;
        while (g < G && i.slot! >= start + countsRef.at({ b: i.b!, g })) start += countsRef.at({ b: i.b!, g: g++ });
        if (g === G) return 0; // past the last segment: dropped rows
        let s = 0;
        for (let k = 0; k < K; k++) s += xsRef.at({ ...i, model: k }) * w.ref.at({ g, model: k, ffn: i.ffn! });
        return s;
      });
      const yAbs = Ref.build([["b", B], ["slot", T], ["ffn", N]], (i) => {
        let start = 0, g = 0;
        while (g < G && i.slot! >= start + countsRef.at({ b: i.b!, g })) start += countsRef.at({ b: i.b!, g: g++ });
        if (g === G) return 0;
        let s = 0;
        for (let k = 0; k < K; k++) s += Math.abs(xsRef.at({ ...i, model: k }) * w.ref.at({ g, model: k, ffn: i.ffn! }));
        return s;
      });
      expectWithinSumBound(yv!, yRef, yAbs, K, "segment_dot", "f32");
    });

    it("sortByKey is stable and counts each key", async () => {
      const mesh = one();
      const keys = fromGlobal(mesh, { n: 10 }, "i32", [2, 0, 2, 1, 0, 2, 5, 1, 0, -3]);
      const s = sortByKey(keys, "n", { rows: "r", groups: "g", numGroups: 3 });
      const [perm, counts] = await run(s.perm, s.counts);
      expect(Array.from(perm!.data)).toEqual([1, 4, 8, 3, 7, 0, 2, 5, -1, -1]);
      expect(Array.from(counts!.data)).toEqual([3, 2, 3]);
    });

    it("moe_dispatch / moe_combine / moe_redispatch: rows by expert, weighted sum back, weighted rows out", async () => {
      const r = rngFor("moe_dispatch");
      const mesh = one();
      const B = 2, T = 5, K = 2, M = 3, G = 4;
      // ids in [0, G) with a few dropped slots (-1)
      const ids = input(mesh, [["b", B], ["tok", T], ["k", K]], "i32", () => (r.uniform(0, 1) < 0.1 ? -1 : r.int(0, G - 1)));
      const x = input(mesh, [["b", B], ["tok", T], ["model", M]], "f32", () => r.uniform(-2, 2));
      const w = input(mesh, [["b", B], ["tok", T], ["k", K]], "f32", () => r.uniform(-2, 2));
      const d = moeDispatch(x.t as never, ids.t as never, { axis: null, dim: "tok", k: "k", rows: "slot", groups: "g", numGroups: G });
      const y = moeCombine(d.rows, d.perm, w.t as never, { axis: null, dim: "tok", size: T, k: "k", numK: K });
      const attrs = { axis: null, dim: "tok", size: T, k: "k", numK: K, keepK: false };
      const z = new DTensor(mesh, mesh.builder.add("moe_redispatch", [x.t.ref, d.perm.ref, w.t.ref], attrs)[0]!);
      const [rows, perm, counts, yv, zv] = await run(d.rows as never, d.perm as never, d.counts as never, y as never, z);
      const permRef = new Ref([["b", B], ["slot", T * K]]), countsRef = new Ref([["b", B], ["g", G]]);
      for (let bi = 0; bi < B; bi++) {
        const s = sortRef(Array.from({ length: T * K }, (_, j) => ids.ref.at({ b: bi, tok: Math.floor(j / K), k: j % K })), G);
        s.perm.forEach((p, j) => (permRef.data[permRef.offset({ b: bi, slot: j })] = p));
        s.counts.forEach((c, g) => (countsRef.data[countsRef.offset({ b: bi, g })] = c));
      }
      expectClose(perm!, permRef, "exact", "moe_dispatch perm", "i32");
      expectClose(counts!, countsRef, "exact", "moe_dispatch counts", "i32");
      const at = (i: Idx) => permRef.at({ b: i.b!, slot: i.slot! });
      expectClose(rows!, Ref.build([["b", B], ["slot", T * K], ["model", M]], (i) => (at(i) < 0 ? 0 : x.ref.at({ ...i, tok: Math.floor(at(i) / K) }))), "exact", "moe_dispatch rows", "f32");
      // y[b, t] = sum over t's kept slots of w * x[b, t]
      const yRef = Ref.build([["b", B], ["tok", T], ["model", M]], (i) => {
        let s = 0;
        for (let k = 0; k < K; k++) if (ids.ref.at({ ...i, k }) >= 0) s += w.ref.at({ ...i, k }) * x.ref.at(i);
        return s;
      });
      // an f32 sum of K weighted rows: within the summation bound (they may cancel)
      const yAbs = Ref.build([["b", B], ["tok", T], ["model", M]], (i) => {
        let s = 0;
        for (let k = 0; k < K; k++) if (ids.ref.at({ ...i, k }) >= 0) s += Math.abs(w.ref.at({ ...i, k }) * x.ref.at(i));
        return s;
      });
      expectWithinSumBound(yv!, yRef, yAbs, K, "moe_combine", "f32");
      const zRef = Ref.build([["b", B], ["slot", T * K], ["model", M]], (i) => {
        const p = at(i);
        return p < 0 ? 0 : x.ref.at({ ...i, tok: Math.floor(p / K) }) * w.ref.at({ b: i.b!, tok: Math.floor(p / K), k: p % K });
      });
      expectClose(zv!, zRef, "f32", "moe_redispatch", "f32");
    });

    it("topk: values and indices along a middle dim, ties to the lower index", async () => {
      const r = rngFor("topk");
      const mesh = one();
      const V = 9, k = 4;
      // small integers: ties are frequent
      const x = input(mesh, [["t", 5], ["v", V], ["h", 3]], "f32", () => r.int(-3, 3));
      const tk = topk(x.t, "v", k, "kk");
      const [vals, idxs] = await run(tk.values, tk.indices);
      const dims: DimList = [["t", 5], ["kk", k], ["h", 3]];
      const order = (i: Idx) => Array.from({ length: V }, (_, j) => j).sort((p, q) => x.ref.at({ ...i, v: q }) - x.ref.at({ ...i, v: p }) || p - q);
      expectClose(idxs!, Ref.build(dims, (i) => order(i)[i.kk!]!), "exact", "topk indices", "i32");
      expectClose(vals!, Ref.build(dims, (i) => x.ref.at({ ...i, v: order(i)[i.kk!]! })), "exact", "topk values", "f32");
    });

    it("gather with batch dims and -1 padding; embedding", async () => {
      const r = rngFor("gather");
      const mesh = one();
      const x = input(mesh, [["b", 3], ["n", 7], ["d", 4]], "f32", () => r.uniform(-2, 2));
      const idx = input(mesh, [["b", 3], ["j", 5]], "i32", () => r.int(-1, 6)); // -1: padding
      const table = input(mesh, [["vocab", 11], ["model", 6]], "f32", () => r.uniform(-2, 2));
      const ids = input(mesh, [["s", 2], ["t", 4]], "i32", () => r.int(-1, 10));
      const [g1, g2] = await run(gather(x.t, idx.t, "n"), embedding(table.t, ids.t, "vocab"));
      expectClose(g1!, Ref.build([["b", 3], ["j", 5], ["d", 4]], (i) => (idx.ref.at(i) < 0 ? 0 : x.ref.at({ ...i, n: idx.ref.at(i) }))), "exact", "gather", "f32");
      expectClose(g2!, Ref.build([["s", 2], ["t", 4], ["model", 6]], (i) => (ids.ref.at(i) < 0 ? 0 : table.ref.at({ ...i, vocab: ids.ref.at(i) }))), "exact", "embedding", "f32");
    });

    it("scatterAdd: rows added into a new dim, -1 skipped, with a batch dim", async () => {
      const r = rngFor("scatter");
      const mesh = one();
      const S = 4;
      const src = input(mesh, [["b", 2], ["tok", 9], ["d", 3]], "f32", () => r.uniform(-2, 2));
      const idx = input(mesh, [["b", 2], ["tok", 9]], "i32", () => r.int(-1, S - 1));
      const [got] = await run(scatterAdd(src.t, idx.t, "tok", { dim: "slot", size: S }));
      const want = Ref.build([["b", 2], ["slot", S], ["d", 3]], (i) => {
        let s = 0;
        for (let j = 0; j < 9; j++) if (idx.ref.at({ b: i.b!, tok: j }) === i.slot) s += src.ref.at({ ...i, tok: j });
        return s;
      });
      expectClose(got!, want, "f32", "scatter_add", "f32");
    });
  });

  describe("movement", () => {
    it("rename, flatten, unflatten, concat, split", async () => {
      const r = rngFor("movement");
      const mesh = one();
      const x = input(mesh, [["a", 2], ["b", 3], ["c", 4]], "f32", () => r.uniform(-2, 2));
      const y = input(mesh, [["a", 3], ["b", 3], ["c", 4]], "f32", () => r.uniform(-2, 2));
      const fl = flatten(x.t, ["b", "c"], "bc");
      const parts = split(y.t, "a", [1, 2]);
      const outs = await run(rename(x.t, "b", "q"), fl, unflatten(fl, "bc", { b: 3, c: 4 }), unflatten(x.t, "c", { c1: 2, c2: 2 }), concat([x.t, y.t], "a"), concat([x.t, x.t], "c"), parts[0]!, parts[1]!);
      expectClose(outs[0]!, new Ref([["a", 2], ["q", 3], ["c", 4]], x.ref.data), "exact", "rename");
      expectClose(outs[1]!, Ref.build([["a", 2], ["bc", 12]], (i) => x.ref.at({ a: i.a!, b: Math.floor(i.bc! / 4), c: i.bc! % 4 })), "exact", "flatten [b,c]");
      expectClose(outs[2]!, x.ref, "exact", "unflatten(flatten)");
      expectClose(outs[3]!, Ref.build([["a", 2], ["b", 3], ["c1", 2], ["c2", 2]], (i) => x.ref.at({ ...i, c: i.c1! * 2 + i.c2! })), "exact", "unflatten c → [c1,c2]");
      expectClose(outs[4]!, Ref.build([["a", 5], ["b", 3], ["c", 4]], (i) => (i.a! < 2 ? x.ref.at(i) : y.ref.at({ ...i, a: i.a! - 2 }))), "exact", "concat along a");
      expectClose(outs[5]!, Ref.build([["a", 2], ["b", 3], ["c", 8]], (i) => x.ref.at({ ...i, c: i.c! % 4 })), "exact", "concat along c");
      expectClose(outs[6]!, Ref.build([["a", 1], ["b", 3], ["c", 4]], (i) => y.ref.at(i)), "exact", "split part 0");
      expectClose(outs[7]!, Ref.build([["a", 2], ["b", 3], ["c", 4]], (i) => y.ref.at({ ...i, a: i.a! + 1 })), "exact", "split part 1");
    });

    it("flatten of dims not adjacent or not in layout order (row-major in the order given, at the first one's place); three-way concat/split", async () => {
      const r = rngFor("movement 2");
      const mesh = one();
      const x = input(mesh, [["a", 2], ["b", 3], ["c", 4]], "f32", () => r.uniform(-2, 2));
      const parts = split(x.t, "c", [1, 2, 1]);
      const outs = await run(flatten(x.t, ["c", "a"], "ca"), flatten(x.t, ["a", "c"], "ac"), concat([parts[2]!, parts[0]!, parts[1]!], "c"), ...parts);
      expectClose(outs[0]!, Ref.build([["b", 3], ["ca", 8]], (i) => x.ref.at({ b: i.b!, c: Math.floor(i.ca! / 2), a: i.ca! % 2 })), "exact", "flatten [c,a]");
      expectClose(outs[1]!, Ref.build([["ac", 8], ["b", 3]], (i) => x.ref.at({ b: i.b!, a: Math.floor(i.ac! / 4), c: i.ac! % 4 })), "exact", "flatten [a,c]");
      const reorder = [3, 0, 1, 2]; // parts 2, 0, 1 of sizes 1, 1, 2 along c
      expectClose(outs[2]!, Ref.build(x.ref.dims, (i) => x.ref.at({ ...i, c: reorder[i.c!]! })), "exact", "concat of 3 parts");
      expectClose(outs[3]!, Ref.build([["a", 2], ["b", 3], ["c", 1]], (i) => x.ref.at(i)), "exact", "split 3-way, part 0");
      expectClose(outs[4]!, Ref.build([["a", 2], ["b", 3], ["c", 2]], (i) => x.ref.at({ ...i, c: i.c! + 1 })), "exact", "split 3-way, part 1");
      expectClose(outs[5]!, Ref.build([["a", 2], ["b", 3], ["c", 1]], (i) => x.ref.at({ ...i, c: 3 })), "exact", "split 3-way, part 2");
    });
  });

  describe("ops with no stdlib function (used by autodiff), traced directly", () => {
    it("eq, ge, gt (1 or 0 in the operands' dtype), sign, gelu_deriv, stop_gradient (identity)", async () => {
      const r = rngFor("internal elementwise");
      const mesh = one();
      const a = input(mesh, [["n", 6], ["m", 5]], "f32", () => r.int(-2, 2) / 2);
      const b = input(mesh, [["m", 5]], "f32", () => r.int(-2, 2) / 2);
      const x = input(mesh, [["n", 6], ["m", 5]], "f32", () => r.uniform(-5, 5));
      const xi = input(mesh, [["n", 6]], "i32", () => r.int(-50, 50));
      const outs = await run(rawOp("eq", [a.t, b.t])[0]!, rawOp("ge", [a.t, b.t])[0]!, rawOp("gt", [a.t, b.t])[0]!, rawOp("sign", [a.t])[0]!, rawOp("gelu_deriv", [x.t])[0]!,
        rawOp("stop_gradient", [x.t])[0]!, rawOp("stop_gradient", [xi.t])[0]!, rawOp("sign", [xi.t])[0]!);
      expectClose(outs[0]!, binaryRef((p, q) => +(p === q), a.ref, b.ref), "exact", "eq", "f32");
      expectClose(outs[1]!, binaryRef((p, q) => +(p >= q), a.ref, b.ref), "exact", "ge", "f32");
      expectClose(outs[2]!, binaryRef((p, q) => +(p > q), a.ref, b.ref), "exact", "gt", "f32");
      expectClose(outs[3]!, Ref.build(a.ref.dims, (i) => Math.sign(a.ref.at(i)) + 0), "exact", "sign", "f32");
      // d/dx 0.5 x (1 + erf(x/√2)) = Φ(x) + x φ(x)
      const dg = (v: number) => 0.5 * (1 + erfRef(v / Math.SQRT2)) + (v * Math.exp(-v * v / 2)) / Math.sqrt(2 * Math.PI);
      expectClose(outs[4]!, Ref.build(x.ref.dims, (i) => dg(x.ref.at(i))), "f32", "gelu_deriv", "f32");
      expectClose(outs[5]!, x.ref, "exact", "stop_gradient", "f32");
      expectClose(outs[6]!, xi.ref, "exact", "stop_gradient i32", "i32");
      expectClose(outs[7]!, Ref.build(xi.ref.dims, (i) => Math.sign(xi.ref.at(i)) + 0), "exact", "sign i32", "i32");
      // and gelu_deriv is the derivative of gelu (a central difference of the reference)
      for (const v of [-2, -0.3, 0.7, 3]) expect(dg(v)).toBeCloseTo((UNARY_REF.gelu!(v + 1e-5) - UNARY_REF.gelu!(v - 1e-5)) / 2e-5, 6);
    });

    it("expand broadcasts over appended dims", async () => {
      const r = rngFor("expand");
      const mesh = one();
      const x = input(mesh, [["n", 3], ["m", 2]], "f32", () => r.uniform(-2, 2));
      const [got] = await run(rawOp("expand", [x.t], { dims: [["p", 4], ["q", 2]] })[0]!);
      expectClose(got!, Ref.build([["n", 3], ["m", 2], ["p", 4], ["q", 2]], (i) => x.ref.at(i)), "exact", "expand", "f32");
    });

    it("permute reorders the layout, every named element unchanged", async () => {
      const r = rngFor("permute");
      const mesh = one();
      const x = input(mesh, [["n", 3], ["m", 2], ["k", 4]], "f32", () => r.uniform(-2, 2));
      const [got] = await run(rawOp("permute", [x.t], { order: ["k", "n", "m"] })[0]!);
      expectClose(got!, Ref.build([["k", 4], ["n", 3], ["m", 2]], (i) => x.ref.at(i)), "exact", "permute", "f32");
    });

    it("segment_wgrad: per-segment sums of outer products", async () => {
      const r = rngFor("segment_wgrad");
      const mesh = one();
      const T = 11, G = 3, K = 4, N = 5;
      const keys = input(mesh, [["tok", T]], "i32", () => r.int(0, G - 1));
      const x = input(mesh, [["tok", T], ["model", K]], "f32", () => r.uniform(-2, 2));
      const routed = sortByKey(keys.t, "tok", { rows: "slot", groups: "g", numGroups: G });
      const xs = gather(x.t, routed.perm, "tok");
      const gy = input(mesh, [["slot", T], ["ffn", N]], "f32", () => r.uniform(-2, 2));
      const [gw, perm] = await run(rawOp("segment_wgrad", [xs, gy.t, routed.counts], { k: "model", n: "ffn" })[0]!, routed.perm);
      const group = Array.from({ length: T }, (_, s) => keys.ref.at({ tok: perm!.data[s]! }));
      const want = Ref.build([["g", G], ["model", K], ["ffn", N]], (i) => {
        let s = 0;
        for (let row = 0; row < T; row++) if (group[row] === i.g) s += x.ref.at({ tok: perm!.data[row]!, model: i.model! }) * gy.ref.at({ slot: row, ffn: i.ffn! });
        return s;
      });
      expectClose(gw!, want, "f32", "segment_wgrad", "f32");
    });
  });

  describe("factories", () => {
    it("iota, full, zeros, ones (on a sharded mesh too)", async () => {
      for (const mesh of [one(), Mesh.of({ a: 2, b: 3 })]) {
        const sh = mesh.axes.length > 1 ? { a: Shard("x"), b: Shard("y") } : {};
        const outs = await run(iota(mesh, { x: 5, y: 7 }, "i32", "y", sh as never), iota(mesh, { x: 5, y: 7 }, "f32", "x", sh as never), full(mesh, { x: 5, y: 7 }, "bf16", 2.3, sh as never), zeros(mesh, { x: 5, y: 7 }, "f32", sh as never), ones(mesh, { x: 5, y: 7 }, "i32", sh as never));
        const dims: DimList = [["x", 5], ["y", 7]];
        expectClose(outs[0]!, Ref.build(dims, (i) => i.y!), "exact", `iota y on ${mesh}`, "i32");
        expectClose(outs[1]!, Ref.build(dims, (i) => i.x!), "exact", `iota x on ${mesh}`, "f32");
        expectClose(outs[2]!, Ref.build(dims, () => roundToBf16(2.3)), "exact", `full bf16 on ${mesh}`, "bf16");
        expectClose(outs[3]!, Ref.build(dims, () => 0), "exact", `zeros on ${mesh}`, "f32");
        expectClose(outs[4]!, Ref.build(dims, () => 1), "exact", `ones on ${mesh}`, "i32");
      }
    });

    it("randn / rand: the same seed gives bit-identical values on Mesh.of({d:1}) and a sharded Mesh.of({a:2,b:3})", async () => {
      const seed = (BASE_SEED % 100000) + 1;
      const dims = { x: 5, y: 7 }; // uneven splits on both axes
      const m1 = one(), m6 = Mesh.of({ a: 2, b: 3 });
      const [n1, u1, h1, n1b] = await run(
        randn(m1, dims, "f32", {}, { seed }), rand(m1, dims, "f32", {}, { seed, low: -2, high: 3 }), randn(m1, dims, "bf16", {}, { seed, mean: 1, std: 0.5 }), randn(m1, dims, "f32", {}, { seed }),
      );
      const [n6, u6, h6, n6t] = await run(
        randn(m6, dims, "f32", { a: Shard("x"), b: Shard("y") }, { seed }),
        rand(m6, dims, "f32", { a: Shard("y"), b: Shard("x") }, { seed, low: -2, high: 3 }),
        randn(m6, dims, "bf16", { b: Shard("x") }, { seed, mean: 1, std: 0.5 }),
        redistribute(randn(m6, dims, "f32", { a: Shard("x"), b: Shard("y") }, { seed }), { a: Replicate, b: Replicate }),
      );
      const bits = (v: GlobalValue) => Array.from(new Uint32Array(Float32Array.from(v.data).buffer));
      expect(bits(n6!), `randn f32 ${SEED_NOTE}`).toEqual(bits(n1!));
      expect(bits(u6!), `rand f32 ${SEED_NOTE}`).toEqual(bits(u1!));
      expect(bits(h6!), `randn bf16 ${SEED_NOTE}`).toEqual(bits(h1!));
      expect(bits(n6t!), `randn after redistribute ${SEED_NOTE}`).toEqual(bits(n1!));
      expect(bits(n1b!)).toEqual(bits(n1!)); // the same seed twice on one mesh
      expectBf16Representable(h1!, "randn bf16");
      // a real sample: not constant, roughly standard normal, uniform within bounds
      const mean = Array.from(n1!.data).reduce((s, v) => s + v, 0) / n1!.data.length;
      expect(new Set(n1!.data).size).toBe(35);
      expect(Math.abs(mean)).toBeLessThan(1);
      expect(Array.from(u1!.data).every((v) => v >= -2 && v < 3)).toBe(true);
      const [other] = await run(randn(m1, dims, "f32", {}, { seed: seed + 1 }));
      expect(bits(other!)).not.toEqual(bits(n1!));
    });

    it("randn with a Partial<sum> placement reads back the same global value", async () => {
      const seed = (BASE_SEED % 100000) + 7;
      const dims = { x: 5, y: 7 };
      const [ref] = await run(randn(Mesh.of({ d: 1 }), dims, "f32", {}, { seed }));
      const [got] = await run(redistribute(randn(Mesh.of({ a: 2, b: 3 }), dims, "f32", { a: Partial("sum"), b: Shard("y") }, { seed }), { a: Replicate, b: Replicate }));
      expect(Array.from(got!.data)).toEqual(Array.from(ref!.data));
    });
  });

  describe("bf16 execution", () => {
    const close = (got: GlobalValue, want: Ref, what: string) => {
      expectClose(got, want, "bf16", `${what} (bf16)`, "bf16");
      expectBf16Representable(got, what);
    };
    it("unary ops", async () => {
      const r = rngFor("bf16 unary");
      const mesh = one();
      for (const op of Object.keys(UNARY_REF)) {
        const [lo, hi] = UNARY_DOMAIN[op] ?? [-4, 4];
        const x = input(mesh, [["t", 4], ["m", 9]], "bf16", () => r.uniform(lo, hi));
        const [got] = await run(UNARY_FN[op]!(x.t));
        close(got!, Ref.build(x.ref.dims, (i) => UNARY_REF[op]!(x.ref.at(i))), op);
      }
    });
    it("binary ops with broadcasting", async () => {
      const r = rngFor("bf16 binary");
      const mesh = one();
      for (const op of Object.keys(BINARY_REF)) {
        const a = input(mesh, [["x", 3], ["y", 5]], "bf16", () => r.uniform(-3, 3));
        const b = input(mesh, [["y", 5], ["w", 2]], "bf16", () => (op === "div" ? r.away(0.25, 3) : r.uniform(-3, 3)));
        const [got] = await run(BINARY_FN[op]!(a.t, b.t));
        close(got!, binaryRef(BINARY_REF[op]!, a.ref, b.ref), op);
      }
    });
    it("dot, sum, softmax, rmsnorm", async () => {
      const r = rngFor("bf16 dot");
      const mesh = one();
      const a = input(mesh, [["b", 2], ["m", 5], ["k", 16]], "bf16", () => r.uniform(-2, 2));
      const w = input(mesh, [["k", 16], ["n", 4], ["b", 2]], "bf16", () => r.uniform(-2, 2));
      const g = input(mesh, [["k", 16]], "bf16", () => r.uniform(0.5, 1.5));
      const outs = await run(dot(a.t, w.t, "k"), sum(a.t, "k"), softmax(a.t, "k"), rmsnorm(a.t, g.t, "k"));
      close(outs[0]!, dotRef(a.ref, w.ref, ["k"]), "dot");
      const rows = (f: (row: number[], i: Idx) => number[]) => {
        const out = new Ref(a.ref.dims);
        forEachIdx(without(a.ref.dims, ["k"]), (i) => {
          const row = Array.from({ length: 16 }, (_, k) => a.ref.at({ ...i, k }));
          f(row, i).forEach((v, k) => (out.data[out.offset({ ...i, k })] = v));
        });
        return out;
      };
      close(outs[1]!, Ref.build(without(a.ref.dims, ["k"]), (i) => Array.from({ length: 16 }, (_, k) => a.ref.at({ ...i, k })).reduce((s, v) => s + v, 0)), "sum");
      close(outs[2]!, rows((row) => {
        const m = Math.max(...row), e = row.map((v) => Math.exp(v - m)), s = e.reduce((p, q) => p + q, 0);
        return e.map((v) => v / s);
      }), "softmax");
      close(outs[3]!, rows((row) => {
        const ms = row.reduce((p, v) => p + v * v, 0) / 16;
        return row.map((v, k) => (v / Math.sqrt(ms + 1e-6)) * g.ref.at({ k }));
      }), "rmsnorm");
    });
  });

  // FP8 block quantization (the edge cases and more shapes: test/unit/fp8-quantize.test.ts)
  describe("quantize, dequantize, scaled_dot", () => {
    it("1x128 activations and 128x128 weights: bytes and scales exact, the contraction to f32 accumulation", async () => {
      const r = rngFor("fp8");
      const mesh = one();
      const x = input(mesh, [["t", 3], ["m", 200]], "bf16", () => r.away(1e-3, 3));
      const w = input(mesh, [["m", 200], ["n", 5]], "bf16", () => r.away(1e-3, 0.5));
      const qx = quantize(x.t as never, "1x128", "m") as any, qw = quantize(w.t as never, "128x128", ["n", "m"]) as any;
      const [q, s, dq, y] = await run(qx.q, qx.scales, dequantize(qx.q, qx.scales, { out: "f32" }), scaledDot(qx, qw, "m", { out: "f32" }));
      // float64 reference: amax per (t, m/128), f32(448/amax), e4m3 of the f32 product
      const amax = (ref: Ref, keyOf: (i: Idx) => string) => {
        const m = new Map<string, number>();
        forEachIdx(ref.dims, (i, o) => m.set(keyOf(i), Math.max(m.get(keyOf(i)) ?? 0, Math.abs(ref.data[o]!))));
        return m;
      };
      const kx = (i: Idx) => `${i.t},${Math.floor(i.m! / 128)}`, kw = (i: Idx) => `${Math.floor(i.n! / 128)},${Math.floor(i.m! / 128)}`;
      const ax = amax(x.ref, kx), aw = amax(w.ref, kw);
      const qOf = (v: number, a: number) => roundToE4M3(Math.fround(v * Math.fround(448 / a)));
      const qRef = Ref.build(x.ref.dims, (i) => qOf(x.ref.at(i), ax.get(kx(i))!));
      expectClose(q!, qRef, "exact", "quantize q", "fp8e4m3");
      expectClose(s!, Ref.build([["t", 3], ["m_tiles", 2]], (i) => Math.fround(ax.get(`${i.t},${i.m_tiles}`)! / 448)), "exact", "quantize scales", "f32");
      expectClose(dq!, Ref.build(x.ref.dims, (i) => Math.fround(qRef.at(i) * Math.fround(ax.get(kx(i))! / 448))), "exact", "dequantize", "f32");
      const wq = (i: Idx) => roundToE4M3(Math.fround(w.ref.at(i) * Math.fround(448 / aw.get(kw(i))!))) * Math.fround(aw.get(kw(i))! / 448);
      const term = (i: Idx, m: number) => qRef.at({ t: i.t!, m }) * Math.fround(ax.get(kx({ t: i.t!, m }))! / 448) * wq({ m, n: i.n! });
      const yRef = Ref.build([["t", 3], ["n", 5]], (i) => Array.from({ length: 200 }, (_, m) => term(i, m)).reduce((s, v) => s + v, 0));
      const yAbs = Ref.build([["t", 3], ["n", 5]], (i) => Array.from({ length: 200 }, (_, m) => Math.abs(term(i, m))).reduce((s, v) => s + v, 0));
      expectWithinSumBound(y!, yRef, yAbs, 200, "scaled_dot", "f32");
    });

    // the routed experts' FP8 ops (the promotion emulation itself: test/unit/fp8-moe.test.ts)
    it("scaled_segment_dot and scaled_segment_wgrad: per-segment products of the FP8 values (f32 out)", async () => {
      const r = rngFor("scaled_segment");
      const mesh = one();
      const T = 40, G = 3, K = 150, N = 6;
      const keys = input(mesh, [["tok", T]], "i32", () => r.int(0, G - 1));
      const x = input(mesh, [["tok", T], ["model", K]], "f32", () => r.away(1e-3, 2));
      const w = input(mesh, [["g", G], ["model", K], ["ffn", N]], "f32", () => r.away(1e-3, 0.5));
      const gy = input(mesh, [["tok", T], ["ffn", N]], "f32", () => r.away(1e-3, 2));
      const routed = sortByKey(keys.t, "tok", { rows: "slot", groups: "g", numGroups: G });
      const xs = gather(x.t, routed.perm, "tok");
      const qx = quantize(xs as never, "1x128", "model") as any, qw = quantize(w.t as never, "128x128", ["ffn", "model"]) as any;
      const gys = gather(gy.t, routed.perm, "tok");
      const [y, gw, perm, dx, dw] = await run(
        rawOp("scaled_segment_dot", [qx.q, qx.scales, qw.q, qw.scales, routed.counts], { contract: "model", out: "f32" })[0]!,
        rawOp("scaled_segment_wgrad", [qx.q, qx.scales, gys, routed.counts], { k: "model", n: "ffn", out: "f32" })[0]!,
        routed.perm, dequantize(qx.q, qx.scales, { out: "f32" }), dequantize(qw.q, qw.scales, { out: "f32" }));
      const group = Array.from({ length: T }, (_, s) => keys.ref.at({ tok: perm!.data[s]! }));
      const yRef = Ref.build([["slot", T], ["ffn", N]], (i) => {
        let acc = 0;
        for (let k = 0; k < K; k++) acc += dx!.data[i.slot! * K + k]! * dw!.data[(group[i.slot!]! * K + k) * N + i.ffn!]!;
        return acc;
      });
      // the promotion rounds each 128-chunk and the accumulator to f32 (2^-24 of the chunk sums, not of an
      // output that cancels): compare against the largest output, as the FP8 GEMM's error model does
      expect(y!.dimNames).toEqual(["slot", "ffn"]);
      const big = yRef.data.reduce((a, v) => Math.max(a, Math.abs(v)), 0);
      const worst = yRef.data.reduce((a, v, i) => Math.max(a, Math.abs(y!.data[i]! - v)), 0);
      expect(worst / big, `scaled_segment_dot ${SEED_NOTE}`).toBeLessThan(1e-6);
      // Wgrad: x's FP8 rows (their dequantized values) and gy (gathered by perm) quantized 128x1 along each
      // group's rows (< 128 rows: one tile per column)
      const q1 = (vals: number[]) => {
        const amax = Math.max(...vals.map(Math.abs));
        return vals.map((v) => (amax === 0 ? 0 : roundToE4M3(Math.fround(v * Math.fround(448 / amax))) * Math.fround(amax / 448)));
      };
      const rowsOf = (g: number) => group.flatMap((gg, s) => (gg === g ? [s] : []));
      const wRef = Ref.build([["g", G], ["model", K], ["ffn", N]], (i) => {
        const rows = rowsOf(i.g!);
        const a = q1(rows.map((s) => dx!.data[s * K + i.model!]!));
        const b = q1(rows.map((s) => gy.ref.at({ tok: perm!.data[s]!, ffn: i.ffn! })));
        return a.reduce((acc, v, j) => acc + v * b[j]!, 0);
      });
      const wAbs = Ref.build([["g", G], ["model", K], ["ffn", N]], (i) => {
        const rows = rowsOf(i.g!);
        const a = q1(rows.map((s) => dx!.data[s * K + i.model!]!));
        const b = q1(rows.map((s) => gy.ref.at({ tok: perm!.data[s]!, ffn: i.ffn! })));
        return a.reduce((acc, v, j) => acc + Math.abs(v * b[j]!), 0);
      });
      expectWithinSumBound(gw!, wRef, wAbs, T, "scaled_segment_wgrad", "f32");
    });

    // the dense FP8 Wgrad: x's FP8 values (dequantized) and gy quantized 128x1 along seq (tiles restart at
    // every b; seq = 200 leaves a 72-row last tile), contracted over [b, seq]
    it("scaled_dot_wgrad: x's FP8 values and gy requantized 128x1 along the tokens, contracted over them (f32 out)", async () => {
      const r = rngFor("scaled_dot_wgrad");
      const mesh = one();
      const B = 2, S = 200, K = 150, N = 6;
      const x = input(mesh, [["b", B], ["seq", S], ["model", K]], "bf16", () => r.away(1e-3, 2));
      const gy = input(mesh, [["b", B], ["seq", S], ["ffn", N]], "f32", () => r.away(1e-3, 2));
      const qx = quantize(x.t as never, "1x128", "model") as any;
      const [gw, dx] = await run(rawOp("scaled_dot_wgrad", [qx.q, qx.scales, gy.t], { contract: ["b", "seq"], out: "f32" })[0]!, dequantize(qx.q, qx.scales, { out: "f32" }));
      const q1 = (vals: number[]) => {
        const amax = Math.max(...vals.map(Math.abs));
        return vals.map((v) => (amax === 0 ? 0 : roundToE4M3(Math.fround(v * Math.fround(448 / amax))) * Math.fround(amax / 448)));
      };
      /** Column (model or ffn) values of batch b, quantized in 128-row tiles along seq. */
      const tiles = (at: (b: number, s: number) => number) => Array.from({ length: B }, (_, b) =>
        Array.from({ length: Math.ceil(S / 128) }, (_, t) => q1(Array.from({ length: Math.min(128, S - t * 128) }, (_, j) => at(b, t * 128 + j)))).flat());
      const terms = (i: Idx) => {
        const a = tiles((b, s) => dx!.data[(b * S + s) * K + i.model!]!), g = tiles((b, s) => gy.ref.at({ b, seq: s, ffn: i.ffn! }));
        return a.flatMap((row, b) => row.map((v, s) => v * g[b]![s]!));
      };
      const dims: [string, number][] = [["model", K], ["ffn", N]];
      const wRef = Ref.build(dims, (i) => terms(i).reduce((acc, v) => acc + v, 0));
      const wAbs = Ref.build(dims, (i) => terms(i).reduce((acc, v) => acc + Math.abs(v), 0));
      expectWithinSumBound(gw!, wRef, wAbs, B * S, "scaled_dot_wgrad", "f32");
    });
  });

  // Runs last (vitest runs a file's tests in order): every op that computes something was compared.
  describe("coverage", () => {
    it("every non-factory, non-redistribute op of the registry was run and compared above", () => {
      const ops = allOps().filter((o) => o.family !== "factory" && o.name !== "redistribute").map((o) => o.name);
      expect(ops.length).toBeGreaterThan(30);
      expect(ops.filter((o) => !covered.has(o)), "ops never compared against the reference").toEqual([]);
    });
  });
});

afterAll(() => {
  // a one-line note in the output, so a failing run can be replayed
  console.log(`ops-reference base seed: ${BASE_SEED}`);
});
