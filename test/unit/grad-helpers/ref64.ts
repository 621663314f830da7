// Float64 reference implementations for the gradient tests: a tiny named-dim tensor and plain loops
// for every differentiable op's forward. Deliberately independent of the library (no imports from
// compiler/ or stdlib/): the finite-difference gradients are taken of these functions.

export type Dim = readonly [name: string, size: number];

// ---- deterministic randomness ------------------------------------------------------------------

import { mulberry32 } from "../../helpers/prng.ts";
export { mulberry32 };

export class Rng {
  private readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  /** Uniform in [lo, hi), rounded to float32 (the library stores f32). */
  uniform(lo: number, hi: number): number {
    return Math.fround(lo + (hi - lo) * this.next());
  }
  /** Uniform magnitude in [lo, hi) with a random sign: keeps values away from 0. */
  awayFromZero(lo: number, hi: number): number {
    const m = this.uniform(lo, hi);
    return this.next() < 0.5 ? -m : m;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor((hi - lo) * this.next());
  }
  uniforms(n: number, lo = -1, hi = 1): number[] {
    return Array.from({ length: n }, () => this.uniform(lo, hi));
  }
  /** n distinct values with pairwise gaps >= gap (no ties for max/topk). */
  distinct(n: number, lo: number, hi: number, gap: number): number[] {
    for (;;) {
      const v = this.uniforms(n, lo, hi);
      const s = [...v].sort((a, b) => a - b);
      if (s.every((x, i) => i === 0 || x - s[i - 1]! >= gap)) return v;
    }
  }
  shuffle<T>(xs: T[]): T[] {
    const a = [...xs];
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(0, i + 1);
      [a[i], a[j]] = [a[j]!, a[i]!];
    }
    return a;
  }
}

/** Round-to-nearest-even of a float32 value to bfloat16 (written from the bit layout, not the library's). */
export function bf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  const bits = u[0]!;
  if ((bits & 0x7f800000) === 0x7f800000) return x; // inf / nan
  const lsb = (bits >>> 16) & 1;
  u[0] = ((bits + 0x7fff + lsb) >>> 16) << 16;
  return f[0]!;
}

// ---- the named tensor ----------------------------------------------------------------------------

export type Idx = Record<string, number>;

export class T64 {
  readonly data: Float64Array;
  constructor(readonly dims: Dim[], data?: ArrayLike<number>) {
    const n = dims.reduce((a, [, s]) => a * s, 1);
    this.data = new Float64Array(n);
    if (data) {
      if (data.length !== n) throw new Error(`T64: ${n} elements expected, got ${data.length}`);
      this.data.set(data);
    }
  }
  get names(): string[] {
    return this.dims.map(([n]) => n);
  }
  get numel(): number {
    return this.data.length;
  }
  has(name: string): boolean {
    return this.dims.some(([n]) => n === name);
  }
  size(name: string): number {
    const d = this.dims.find(([n]) => n === name);
    if (!d) throw new Error(`T64: no dim '${name}' in [${this.names}]`);
    return d[1];
  }
  dim(name: string): Dim {
    return [name, this.size(name)];
  }
  /** Flat offset of a named index (names not in this tensor are ignored: broadcasting). */
  offset(idx: Idx): number {
    let o = 0;
    for (const [n, s] of this.dims) {
      const k = idx[n];
      if (k === undefined || k < 0 || k >= s) throw new Error(`T64: index ${n}=${k} out of [0, ${s})`);
      o = o * s + k;
    }
    return o;
  }
  get(idx: Idx): number {
    return this.data[this.offset(idx)]!;
  }
  set(idx: Idx, v: number): void {
    this.data[this.offset(idx)] = v;
  }
  clone(): T64 {
    return new T64(this.dims, this.data);
  }
}

/** Every index of `dims`, row-major. */
export function indices(dims: readonly Dim[]): Idx[] {
  const out: Idx[] = [];
  const cur: Idx = {};
  const rec = (d: number) => {
    if (d === dims.length) {
      out.push({ ...cur });
      return;
    }
    const [n, s] = dims[d]!;
    for (let i = 0; i < s; i++) {
      cur[n] = i;
      rec(d + 1);
    }
  };
  rec(0);
  return out;
}

export const without = (dims: readonly Dim[], names: readonly string[]): Dim[] => dims.filter(([n]) => !names.includes(n));
export const union = (...ds: (readonly Dim[])[]): Dim[] => {
  const out: Dim[] = [];
  for (const dims of ds) for (const d of dims) if (!out.some(([n]) => n === d[0])) out.push(d);
  return out;
};

// ---- elementwise ---------------------------------------------------------------------------------

export function map(xs: T64[], f: (...v: number[]) => number): T64 {
  const out = new T64(union(...xs.map((x) => x.dims)));
  for (const idx of indices(out.dims)) out.set(idx, f(...xs.map((x) => x.get(idx))));
  return out;
}

/** erf via its Maclaurin series (|x| small) or the continued fraction of erfc (|x| large), to ~1e-15. */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 2.5) {
    let term = x, sum = x;
    for (let n = 1; n < 200; n++) {
      term *= (-x * x) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...)))) (Lentz, evaluated backwards)
  let f = ax;
  for (let k = 60; k >= 1; k--) f = ax + k / 2 / f;
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
  return Math.sign(x) * (1 - erfc);
}

const sig = (x: number) => 1 / (1 + Math.exp(-x));
const phi = (x: number) => Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI);
const Phi = (x: number) => 0.5 * (1 + erf(x / Math.SQRT2));

export const UNARY64: Record<string, (x: number) => number> = {
  abs: Math.abs,
  exp: Math.exp,
  gelu: (x) => x * Phi(x),
  gelu_deriv: (x) => Phi(x) + x * phi(x),
  log: Math.log,
  neg: (x) => -x,
  relu: (x) => (x > 0 ? x : 0),
  rsqrt: (x) => 1 / Math.sqrt(x),
  sigmoid: sig,
  sign: (x) => (x > 0 ? 1 : x < 0 ? -1 : 0),
  silu: (x) => x * sig(x),
  sqrt: Math.sqrt,
};

export const BINARY64: Record<string, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  maximum: (a, b) => (a > b ? a : b),
  minimum: (a, b) => (a < b ? a : b),
  eq: (a, b) => (a === b ? 1 : 0),
  ge: (a, b) => (a >= b ? 1 : 0),
  gt: (a, b) => (a > b ? 1 : 0),
};

export const where = (c: T64, a: T64, b: T64): T64 => map([c, a, b], (cv, av, bv) => (cv !== 0 ? av : bv));

// ---- reductions ----------------------------------------------------------------------------------

export function reduce(x: T64, dims: string[], kind: "sum" | "mean" | "max"): T64 {
  const out = new T64(without(x.dims, dims));
  if (kind === "max") out.data.fill(-Infinity);
  let count = 1;
  for (const d of dims) count *= x.size(d);
  for (const idx of indices(x.dims)) {
    const o = out.offset(idx), v = x.get(idx);
    out.data[o] = kind === "max" ? Math.max(out.data[o]!, v) : out.data[o]! + v;
  }
  if (kind === "mean") for (let i = 0; i < out.numel; i++) out.data[i]! /= count;
  return out;
}

/** Calls f on each row along `dim` (all other dims fixed) with the row's values; f returns the new row. */
function rowwise(x: T64, dim: string, f: (row: number[]) => number[]): T64 {
  const out = new T64(x.dims);
  const n = x.size(dim);
  for (const base of indices(without(x.dims, [dim]))) {
    const at = (i: number) => ({ ...base, [dim]: i });
    const row = Array.from({ length: n }, (_, i) => x.get(at(i)));
    f(row).forEach((v, i) => out.set(at(i), v));
  }
  return out;
}

export const softmax = (x: T64, dim: string) =>
  rowwise(x, dim, (r) => {
    const m = Math.max(...r);
    const e = r.map((v) => Math.exp(v - m));
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / s);
  });

export const logSoftmax = (x: T64, dim: string) =>
  rowwise(x, dim, (r) => {
    const m = Math.max(...r);
    const lse = m + Math.log(r.reduce((a, v) => a + Math.exp(v - m), 0));
    return r.map((v) => v - lse);
  });

export function rmsnorm(x: T64, w: T64, dim: string, eps = 1e-6): T64 {
  const n = x.size(dim);
  const out = new T64(x.dims);
  for (const base of indices(without(x.dims, [dim]))) {
    let ss = 0;
    for (let i = 0; i < n; i++) ss += x.get({ ...base, [dim]: i }) ** 2;
    const r = 1 / Math.sqrt(ss / n + eps);
    for (let i = 0; i < n; i++) out.set({ ...base, [dim]: i }, x.get({ ...base, [dim]: i }) * r * w.get({ [dim]: i }));
  }
  return out;
}

// ---- contractions --------------------------------------------------------------------------------

export function dot(a: T64, b: T64, contract: string[]): T64 {
  const out = new T64([...without(a.dims, contract), ...without(b.dims, [...contract, ...a.names])]);
  const cdims = contract.map((c) => a.dim(c));
  for (const idx of indices(out.dims)) {
    let s = 0;
    for (const k of indices(cdims)) {
      const i = { ...idx, ...k };
      s += a.get(i) * b.get(i);
    }
    out.set(idx, s);
  }
  return out;
}

/** Stable sort of keys along `dim` into `groups` segments: perm (-1 for dropped keys) and counts. */
export function sortByKey(keys: T64, dim: string, rows: string, groups: string, numGroups: number): { perm: T64; counts: T64 } {
  const batch = without(keys.dims, [dim]);
  const n = keys.size(dim);
  const perm = new T64([...batch, [rows, n]]);
  const counts = new T64([...batch, [groups, numGroups]]);
  for (const b of indices(batch)) {
    const order: number[] = [];
    for (let g = 0; g < numGroups; g++) {
      let c = 0;
      for (let j = 0; j < n; j++)
        if (keys.get({ ...b, [dim]: j }) === g) {
          order.push(j);
          c++;
        }
      counts.set({ ...b, [groups]: g }, c);
    }
    for (let r = 0; r < n; r++) perm.set({ ...b, [rows]: r }, r < order.length ? order[r]! : -1);
  }
  return { perm, counts };
}

/** y[batch, rows, n] = x[batch, rows, k] . w[group(row), k, n], rows in consecutive segments of counts. */
export function segmentDot(x: T64, w: T64, counts: T64, rows: string, groups: string, k: string): T64 {
  const batch = without(counts.dims, [groups]);
  const ns = without(w.dims, [groups, k]);
  const out = new T64([...without(x.dims, [k]), ...ns]);
  for (const b of indices(batch)) {
    let r = 0;
    for (let g = 0; g < counts.size(groups); g++) {
      const cnt = counts.get({ ...b, [groups]: g });
      for (let i = 0; i < cnt && r < x.size(rows); i++, r++) {
        for (const nIdx of indices(ns)) {
          let s = 0;
          for (let kk = 0; kk < x.size(k); kk++) s += x.get({ ...b, [rows]: r, [k]: kk }) * w.get({ ...nIdx, [groups]: g, [k]: kk });
          out.set({ ...b, [rows]: r, ...nIdx }, s);
        }
      }
    }
  }
  return out;
}

// ---- routing -------------------------------------------------------------------------------------

/** out[index dims..., rest...] = x[dim = index[...]] (0 where the index is -1); dims shared with index are batch. */
export function gather(x: T64, index: T64, dim: string): T64 {
  const rest = x.dims.filter(([n]) => n !== dim && !index.has(n));
  const out = new T64([...index.dims, ...rest]);
  for (const idx of indices(out.dims)) {
    const j = index.get(idx);
    out.set(idx, j === -1 ? 0 : x.get({ ...idx, [dim]: j }));
  }
  return out;
}

/** out[batch, to, rest] = sum of src[batch, dims..., rest] over the entries whose index is `to` (-1 skipped). */
export function scatterAdd(src: T64, index: T64, dims: string[], to: string, size: number): T64 {
  const batch = without(index.dims, dims);
  const rest = src.dims.filter(([n]) => !index.has(n));
  const out = new T64([...batch, [to, size], ...rest]);
  for (const idx of indices(src.dims)) {
    const t = index.get(idx);
    if (t === -1) continue;
    const o: Idx = { ...idx, [to]: t };
    out.set(o, out.get(o) + src.get(idx));
  }
  return out;
}

/** The k largest along dim (descending) as a new dim kDim. */
export function topk(x: T64, dim: string, k: number, kDim: string): { values: T64; indices: T64 } {
  const dims: Dim[] = x.dims.map(([n, s]) => (n === dim ? [kDim, k] : [n, s]));
  const values = new T64(dims), idxs = new T64(dims);
  const n = x.size(dim);
  for (const base of indices(without(x.dims, [dim]))) {
    const row = Array.from({ length: n }, (_, i) => ({ v: x.get({ ...base, [dim]: i }), i }));
    row.sort((a, b) => b.v - a.v || a.i - b.i);
    for (let j = 0; j < k; j++) {
      const o = { ...base, [kDim]: j };
      values.set(o, row[j]!.v);
      idxs.set(o, row[j]!.i);
    }
  }
  return { values, indices: idxs };
}

// ---- movement ------------------------------------------------------------------------------------

/** Merges `dims` (row-major in the order given) into `to`, placed where dims[0] was. */
export function flatten(x: T64, dims: string[], to: string): T64 {
  const size = dims.reduce((a, d) => a * x.size(d), 1);
  const outDims: Dim[] = x.dims.filter(([n]) => n === dims[0] || !dims.includes(n)).map(([n, s]) => (n === dims[0] ? [to, size] : [n, s]));
  const out = new T64(outDims);
  for (const idx of indices(x.dims)) {
    let f = 0;
    for (const d of dims) f = f * x.size(d) + idx[d]!;
    out.set({ ...idx, [to]: f }, x.get(idx));
  }
  return out;
}

export function unflatten(x: T64, dim: string, into: [string, number][]): T64 {
  const outDims: Dim[] = x.dims.flatMap(([n, s]): Dim[] => (n === dim ? into : [[n, s]]));
  const out = new T64(outDims);
  for (const idx of indices(outDims)) {
    let f = 0;
    for (const [n, s] of into) f = f * s + idx[n]!;
    out.set(idx, x.get({ ...idx, [dim]: f }));
  }
  return out;
}

export function rename(x: T64, from: string, to: string): T64 {
  return new T64(x.dims.map(([n, s]) => (n === from ? [to, s] : [n, s])), x.data);
}

export function concat(xs: T64[], dim: string): T64 {
  const total = xs.reduce((a, x) => a + x.size(dim), 0);
  const out = new T64(xs[0]!.dims.map(([n, s]) => (n === dim ? [n, total] : [n, s])));
  let at = 0;
  for (const x of xs) {
    for (const idx of indices(x.dims)) out.set({ ...idx, [dim]: idx[dim]! + at }, x.get(idx));
    at += x.size(dim);
  }
  return out;
}

export function split(x: T64, dim: string, sizes: number[]): T64[] {
  let at = 0;
  return sizes.map((s) => {
    const out = new T64(x.dims.map(([n, z]) => (n === dim ? [n, s] : [n, z])));
    for (const idx of indices(out.dims)) out.set(idx, x.get({ ...idx, [dim]: idx[dim]! + at }));
    at += s;
    return out;
  });
}

export function expand(x: T64, add: Dim[]): T64 {
  const out = new T64([...x.dims, ...add]);
  for (const idx of indices(out.dims)) out.set(idx, x.get(idx));
  return out;
}
