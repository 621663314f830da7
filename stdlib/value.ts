// A tensor's global value read back from a backend, with its dim names.
import type { DType } from "../compiler/ir/types.ts";
import type { LocalData } from "../compiler/ir/local.ts";
import { stridesOf } from "../compiler/ir/local.ts";
import { UsageError } from "../compiler/errors.ts";

export class GlobalValue {
  constructor(
    readonly dimNames: string[],
    readonly shape: number[],
    readonly dtype: DType,
    readonly data: LocalData,
  ) {}

  get dims(): Record<string, number> {
    return Object.fromEntries(this.dimNames.map((n, i) => [n, this.shape[i]!]));
  }

  /** The element at named indices, e.g. `v.at({ tokens: 3, model: 0 })`. */
  at(idx: Record<string, number>): number {
    const st = stridesOf(this.shape);
    let o = 0;
    this.dimNames.forEach((n, i) => {
      const k = idx[n];
      if (k === undefined || !Number.isInteger(k) || k < 0 || k >= this.shape[i]!) throw new UsageError(`at(): index for '${n}' must be an integer in [0, ${this.shape[i]}), got ${k}`);
      o += k * st[i]!;
    });
    return this.data[o]!;
  }

  /** Nested arrays in dim order. */
  toArray(): unknown {
    const rec = (d: number, off: number): unknown => {
      if (d === this.shape.length) return this.data[off];
      const st = stridesOf(this.shape)[d]!;
      return Array.from({ length: this.shape[d]! }, (_, i) => rec(d + 1, off + i * st));
    };
    return rec(0, 0);
  }

  /** A short summary with the first values, for printing. */
  toString(maxValues = 6): string {
    const head = Array.from(this.data.subarray(0, maxValues), (v) => (this.dtype === "i32" ? String(v) : fmtNum(v)));
    const more = this.data.length > maxValues ? `, … (${this.data.length} values)` : "";
    return `${this.dtype}[${this.dimNames.map((n, i) => `${n}:${this.shape[i]}`).join(", ")}] [${head.join(", ")}${more}]`;
  }
}

export const fmtNum = (v: number) => (Number.isInteger(v) ? v.toFixed(1) : Math.abs(v) >= 1e-3 && Math.abs(v) < 1e4 ? v.toFixed(4) : v.toExponential(3));

/** Largest |a - b| / max(|b|, floor) over all elements; the floor keeps near-zero values from dominating. */
export function maxRelDiff(a: GlobalValue, b: GlobalValue, floor = 1e-3): number {
  if (a.data.length !== b.data.length) return Infinity;
  let scale = 0;
  for (let i = 0; i < b.data.length; i++) scale = Math.max(scale, Math.abs(b.data[i]!));
  const den = Math.max(floor, scale * 1e-3);
  let m = 0;
  for (let i = 0; i < a.data.length; i++) {
    const x = a.data[i]!, y = b.data[i]!;
    if (x !== x || y !== y) {
      if (x !== x && y !== y) continue;
      return Infinity;
    }
    m = Math.max(m, Math.abs(x - y) / Math.max(Math.abs(y), den));
  }
  return m;
}
