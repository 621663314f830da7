import { describe, it, expect } from "vitest";
import { roundToBf16, bf16ToBits, bf16FromBits, roundArrayToBf16 } from "../../../compiler/numeric/index.ts";
import { mulberry32Bits as mulberry32 } from "../../helpers/prng.ts";

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const bitsOf = (x: number): number => ((f32[0] = x), u32[0]);
const fromBits = (b: number): number => ((u32[0] = b), f32[0]);

/**
 * Independent reference: pure float64 arithmetic, no bit tricks. Find the
 * bf16 grid spacing at |x|, the two neighbours by truncation, and pick the
 * nearer one, ties to the even multiple of the spacing. 2^128 stands in for
 * the "next value" past the largest finite bf16, i.e. overflow to Inf.
 */
function referenceBf16(x: number): number {
  const f = Math.fround(x);
  if (Number.isNaN(f) || !Number.isFinite(f) || f === 0) return f;
  const a = Math.abs(f);
  let e = Math.max(Math.floor(Math.log2(a)), -126);
  while (e > -126 && 2 ** e > a) e--;
  while (2 ** (e + 1) <= a) e++;
  const ulp = 2 ** (e - 7); // 8 significant bits; subnormals share the 2^-126 binade's spacing
  const n = Math.floor(a / ulp);
  const lo = n * ulp;
  const hi = (n + 1) * ulp;
  const dLo = a - lo;
  const dHi = hi - a;
  const pick = dLo < dHi ? lo : dHi < dLo ? hi : n % 2 === 0 ? lo : hi;
  const r = pick >= 2 ** 128 ? Infinity : pick;
  return f < 0 ? -r : r;
}


const BF16_MAX = fromBits(0x7f7f0000); // (2 - 2^-7) * 2^127
const OVERFLOW_MIDPOINT = fromBits(0x7f7f8000); // halfway to 2^128: ties to even = Inf

describe("roundToBf16: hand-checked cases", () => {
  const cases: Array<[string, number, number]> = [
    ["1.0", 1, 1],
    ["1 + 2^-8 (tie, lower neighbour 1.0 is even)", 1 + 2 ** -8, 1],
    ["1 + 3*2^-8 (tie, upper neighbour is even)", 1 + 3 * 2 ** -8, 1 + 2 ** -6],
    ["1 + 3*2^-9 (above the midpoint)", 1 + 3 * 2 ** -9, 1 + 2 ** -7],
    ["1 + 2^-9 (below the midpoint)", 1 + 2 ** -9, 1],
    ["-(1 + 2^-8) ties symmetrically", -(1 + 2 ** -8), -1],
    ["max finite f32 overflows to Inf", fromBits(0x7f7fffff), Infinity],
    ["-max finite f32 overflows to -Inf", -fromBits(0x7f7fffff), -Infinity],
    ["max finite bf16 is exact", BF16_MAX, BF16_MAX],
    ["just below the overflow midpoint stays finite", fromBits(0x7f7f7fff), BF16_MAX],
    ["the overflow midpoint ties to Inf (even)", OVERFLOW_MIDPOINT, Infinity],
    ["smallest f32 subnormal rounds to +0", 2 ** -149, 0],
    ["f32 subnormal 2^-133 is representable", 2 ** -133, 2 ** -133],
    ["subnormal tie 3*2^-134 goes to even 2^-132", 3 * 2 ** -134, 2 ** -132],
    ["largest f32 subnormal rounds up to the smallest normal", fromBits(0x007fffff), 2 ** -126],
    ["-0 is preserved", -0, -0],
    ["+Inf", Infinity, Infinity],
    ["-Inf", -Infinity, -Infinity],
    ["float64 input is first rounded to float32", 1 + 2 ** -8 + 2 ** -30, 1],
  ];
  for (const [name, input, expected] of cases) {
    it(name, () => {
      expect(Object.is(roundToBf16(input), expected)).toBe(true);
    });
  }

  it("NaN stays NaN, including NaNs whose payload is only in the low 16 bits", () => {
    expect(roundToBf16(NaN)).toBeNaN();
    expect(roundToBf16(fromBits(0x7f800001))).toBeNaN();
    expect(roundToBf16(fromBits(0xff800001))).toBeNaN();
    expect(bf16ToBits(NaN)).toBe(0x7fff);
  });
});

describe("bf16 bit patterns", () => {
  it("encodes and decodes known codes", () => {
    expect(bf16ToBits(1)).toBe(0x3f80);
    expect(bf16ToBits(-2)).toBe(0xc000);
    expect(bf16ToBits(-0)).toBe(0x8000);
    expect(bf16ToBits(Infinity)).toBe(0x7f80);
    expect(bf16FromBits(0x3f80)).toBe(1);
    expect(bf16FromBits(0xff80)).toBe(-Infinity);
    expect(Object.is(bf16FromBits(0x8000), -0)).toBe(true);
    expect(bf16FromBits(0x0001)).toBe(2 ** -133);
  });

  it("round-trips every non-NaN code", () => {
    for (let code = 0; code < 0x10000; code++) {
      const v = bf16FromBits(code);
      if (Number.isNaN(v)) continue;
      expect(bf16ToBits(v)).toBe(code);
    }
  });
});

describe("roundToBf16: property check against the float64 reference", () => {
  it("matches on 200k random float32 bit patterns and always yields a bf16 value", () => {
    const rand = mulberry32(0xbf16);
    let mismatches = 0;
    let firstMismatch = "";
    for (let i = 0; i < 200_000; i++) {
      let bits = rand();
      // Random patterns almost never hit exact ties or near-ties; force them
      // on half of the samples.
      switch (i & 3) {
        case 1:
          bits = (bits & 0xffff0000) | 0x8000;
          break;
        case 2:
          bits = (bits & 0xffff0000) | (rand() & 1 ? 0x7fff : 0x8001);
          break;
      }
      const x = fromBits(bits >>> 0);
      const got = roundToBf16(x);
      const want = referenceBf16(x);
      if (!Object.is(got, want)) {
        if (mismatches++ === 0) firstMismatch = `bits 0x${(bits >>> 0).toString(16)}: got ${got}, want ${want}`;
      }
      if (!Number.isNaN(got) && (bitsOf(got) & 0xffff) !== 0) {
        throw new Error(`not bf16-representable: 0x${bitsOf(got).toString(16)}`);
      }
    }
    expect(firstMismatch).toBe("");
    expect(mismatches).toBe(0);
  });
});

describe("roundArrayToBf16", () => {
  it("matches the scalar path, into a new array and in place", () => {
    const rand = mulberry32(7);
    const src = new Float32Array(4096);
    const srcBits = new Uint32Array(src.buffer);
    for (let i = 0; i < src.length; i++) srcBits[i] = rand();
    const expected = Array.from(src, (v) => roundToBf16(v));
    const fresh = roundArrayToBf16(src);
    expect(fresh).not.toBe(src);
    for (let i = 0; i < src.length; i++) expect(Object.is(fresh[i], expected[i])).toBe(true);
    const same = roundArrayToBf16(src, src);
    expect(same).toBe(src);
    for (let i = 0; i < src.length; i++) expect(Object.is(src[i], expected[i])).toBe(true);
  });

  it("works on a subarray view and rejects a short destination", () => {
    const base = new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 5]);
    const view = base.subarray(1, 2);
    roundArrayToBf16(view, view);
    expect(Array.from(base)).toEqual([Math.fround(1 + 2 ** -8), 1 + 2 ** -6, 5]);
    expect(() => roundArrayToBf16(new Float32Array(3), new Float32Array(2))).toThrow(RangeError);
  });
});
