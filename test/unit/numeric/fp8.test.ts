import { describe, it, expect } from "vitest";
import {
  E4M3_MAX,
  E5M2_MAX,
  roundToE4M3,
  roundToE5M2,
  e4m3ToBits,
  e4m3FromBits,
  e5m2ToBits,
  e5m2FromBits,
  roundArrayToE4M3,
  roundArrayToE5M2,
  type Fp8SaturationMode,
} from "../../../compiler/numeric/index.ts";
import { mulberry32Bits as mulberry32 } from "../../helpers/prng.ts";

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const fromBits = (b: number): number => ((u32[0] = b >>> 0), f32[0]);
const bitsOf = (x: number): number => ((f32[0] = x), u32[0]);
const nextUp = (x: number): number => fromBits(bitsOf(x) + (x >= 0 ? 1 : -1));
const nextDown = (x: number): number => fromBits(bitsOf(x) - (x > 0 ? 1 : -1));


interface FormatUnderTest {
  name: string;
  toBits: (x: number, mode?: Fp8SaturationMode) => number;
  fromBits: (b: number) => number;
  round: (x: number, mode?: Fp8SaturationMode) => number;
  roundArray: (src: Float32Array, dst?: Float32Array, mode?: Fp8SaturationMode) => Float32Array;
  max: number;
  mantBits: number;
  bias: number;
  /** Magnitude of the step past MAX (480 / 65536) and whether its code is even. */
  beyondMax: number;
  beyondMaxEven: boolean;
  /** What overflow (and, for E4M3, ±Inf) becomes without saturation. */
  nosatOverflow: (sign: number) => number;
  /** Smallest exponent (log2) worth sampling and largest. */
  sampleExp: [number, number];
}

const formats: FormatUnderTest[] = [
  {
    name: "E4M3",
    toBits: e4m3ToBits,
    fromBits: e4m3FromBits,
    round: roundToE4M3,
    roundArray: roundArrayToE4M3,
    max: E4M3_MAX,
    mantBits: 3,
    bias: 7,
    beyondMax: 480, // would be code 0x7F (odd mantissa 111), which is NaN
    beyondMaxEven: false,
    nosatOverflow: () => NaN,
    sampleExp: [-12, 10],
  },
  {
    name: "E5M2",
    toBits: e5m2ToBits,
    fromBits: e5m2FromBits,
    round: roundToE5M2,
    roundArray: roundArrayToE5M2,
    max: E5M2_MAX,
    mantBits: 2,
    bias: 15,
    beyondMax: 65536, // code 0x7C (even mantissa 00), which is Inf
    beyondMaxEven: true,
    nosatOverflow: (sign) => sign * Infinity,
    sampleExp: [-19, 17],
  },
];

/**
 * Brute-force reference: nearest among all finite decoded values of the
 * input's sign (so ±0 keep their sign), ties to the even code. A virtual
 * candidate one step past MAX, carrying the parity of the code that would
 * hold it, decides overflow exactly as RNE on an unbounded exponent would.
 */
function referenceRound(fmt: FormatUnderTest, x: number, mode: Fp8SaturationMode): number {
  const f = Math.fround(x);
  if (Number.isNaN(f)) return NaN;
  const negative = f < 0 || Object.is(f, -0);
  const sign = negative ? -1 : 1;
  if (!Number.isFinite(f)) return mode === "satfinite" ? sign * fmt.max : fmt.nosatOverflow(sign);
  const a = Math.abs(f);
  let bestValue = NaN;
  let bestDist = Infinity;
  let bestEven = false;
  const consider = (value: number, even: boolean): void => {
    const d = Math.abs(a - value);
    if (d < bestDist || (d === bestDist && even && !bestEven)) {
      bestDist = d;
      bestValue = value;
      bestEven = even;
    }
  };
  for (let code = 0; code < 0x80; code++) {
    const v = fmt.fromBits(code);
    if (Number.isFinite(v)) consider(v, (code & 1) === 0);
  }
  consider(fmt.beyondMax, fmt.beyondMaxEven);
  if (bestValue === fmt.beyondMax) return mode === "satfinite" ? sign * fmt.max : fmt.nosatOverflow(sign);
  return sign * bestValue;
}

describe("FP8 decoding", () => {
  it("E4M3 spot checks", () => {
    expect(e4m3FromBits(0x7e)).toBe(448);
    expect(e4m3FromBits(0xfe)).toBe(-448);
    expect(e4m3FromBits(0x08)).toBe(2 ** -6);
    expect(e4m3FromBits(0x01)).toBe(2 ** -9);
    expect(e4m3FromBits(0x07)).toBe(7 * 2 ** -9);
    expect(e4m3FromBits(0x38)).toBe(1);
    expect(e4m3FromBits(0x78)).toBe(256); // top binade is finite in the fn variant
    expect(e4m3FromBits(0x7f)).toBeNaN();
    expect(e4m3FromBits(0xff)).toBeNaN();
    expect(Object.is(e4m3FromBits(0x80), -0)).toBe(true);
  });

  it("E5M2 spot checks", () => {
    expect(e5m2FromBits(0x7b)).toBe(57344);
    expect(e5m2FromBits(0x7c)).toBe(Infinity);
    expect(e5m2FromBits(0xfc)).toBe(-Infinity);
    expect(e5m2FromBits(0x01)).toBe(2 ** -16);
    expect(e5m2FromBits(0x04)).toBe(2 ** -14);
    expect(e5m2FromBits(0x3c)).toBe(1);
    for (const nan of [0x7d, 0x7e, 0x7f, 0xfd, 0xfe, 0xff]) expect(e5m2FromBits(nan)).toBeNaN();
    expect(Object.is(e5m2FromBits(0x80), -0)).toBe(true);
  });

  for (const fmt of formats) {
    it(`${fmt.name}: all 256 codes decode to sign * significand * 2^exponent`, () => {
      const expBits = 7 - fmt.mantBits;
      for (let code = 0; code < 256; code++) {
        const s = code >> 7;
        const e = (code >> fmt.mantBits) & ((1 << expBits) - 1);
        const m = code & ((1 << fmt.mantBits) - 1);
        const topExp = e === (1 << expBits) - 1;
        let expected: number;
        if (fmt.name === "E4M3" && topExp && m === 7) expected = NaN;
        else if (fmt.name === "E5M2" && topExp) expected = m === 0 ? Infinity : NaN;
        else if (e === 0) expected = m * 2 ** (1 - fmt.bias - fmt.mantBits);
        else expected = (2 ** fmt.mantBits + m) * 2 ** (e - fmt.bias - fmt.mantBits);
        if (s) expected = -expected;
        expect(Object.is(fmt.fromBits(code), expected), `code 0x${code.toString(16)}`).toBe(true);
      }
    });

    it(`${fmt.name}: positive codes are strictly increasing up to MAX, and MAX is the constant`, () => {
      const maxCode = fmt.toBits(fmt.max);
      expect(fmt.fromBits(maxCode)).toBe(fmt.max);
      for (let code = 1; code <= maxCode; code++) {
        expect(fmt.fromBits(code)).toBeGreaterThan(fmt.fromBits(code - 1));
      }
    });

    it(`${fmt.name}: decode -> encode round-trips every non-NaN code`, () => {
      for (let code = 0; code < 256; code++) {
        const v = fmt.fromBits(code);
        if (Number.isNaN(v)) continue;
        expect(fmt.toBits(v, "nosat"), `code 0x${code.toString(16)}`).toBe(code);
        if (Number.isFinite(v)) expect(fmt.toBits(v, "satfinite")).toBe(code);
      }
    });
  }
});

describe("FP8 rounding", () => {
  for (const fmt of formats) {
    it(`${fmt.name}: every midpoint between neighbours ties to the even code`, () => {
      const maxCode = fmt.toBits(fmt.max);
      for (let code = 0; code < maxCode; code++) {
        const lo = fmt.fromBits(code);
        const hi = fmt.fromBits(code + 1);
        const mid = (lo + hi) / 2;
        expect(Math.fround(mid)).toBe(mid); // exact, so the tie really reaches the rounding
        const even = code % 2 === 0 ? code : code + 1;
        for (const sign of [1, -1]) {
          expect(fmt.toBits(sign * mid), `mid of 0x${code.toString(16)}`).toBe(even | (sign < 0 ? 0x80 : 0));
          expect(fmt.round(sign * nextDown(mid))).toBe(sign * lo);
          expect(fmt.round(sign * nextUp(mid))).toBe(sign * hi);
        }
      }
    });

    it(`${fmt.name}: NaN gives NaN (canonical code 0x7F) in both modes`, () => {
      for (const mode of ["satfinite", "nosat"] as const) {
        expect(fmt.round(NaN, mode)).toBeNaN();
        expect(fmt.toBits(NaN, mode)).toBe(0x7f);
        expect(fmt.round(fromBits(0xff800001), mode)).toBeNaN();
      }
    });

    it(`${fmt.name}: signed zeros and underflow keep their sign`, () => {
      expect(Object.is(fmt.round(0), 0)).toBe(true);
      expect(Object.is(fmt.round(-0), -0)).toBe(true);
      expect(fmt.toBits(-0)).toBe(0x80);
      expect(Object.is(fmt.round(-1e-30), -0)).toBe(true);
      expect(Object.is(fmt.round(2 ** -149), 0)).toBe(true);
    });

    it(`${fmt.name}: satfinite clamps finite overflow and ±Inf to ±MAX`, () => {
      for (const sign of [1, -1]) {
        expect(fmt.round(sign * nextUp(fmt.max))).toBe(sign * fmt.max);
        expect(fmt.round(sign * fmt.beyondMax)).toBe(sign * fmt.max);
        expect(fmt.round(sign * 1e30)).toBe(sign * fmt.max);
        expect(fmt.round(sign * fromBits(0x7f7fffff))).toBe(sign * fmt.max);
        expect(fmt.round(sign * Infinity)).toBe(sign * fmt.max);
        expect(fmt.round(sign * Infinity, "satfinite")).toBe(sign * fmt.max);
      }
    });
  }

  it("E4M3 overflow: (448, 464] rounds to 448, beyond 464 overflows (NaN in nosat)", () => {
    // 464 is the midpoint between 448 (0x7E, even) and the would-be 480 (0x7F, NaN):
    // the tie goes to 448, matching cuda_fp8.hpp's threshold |x| > 464.
    for (const mode of ["satfinite", "nosat"] as const) {
      expect(roundToE4M3(449, mode)).toBe(448);
      expect(roundToE4M3(464, mode)).toBe(448);
      expect(roundToE4M3(-464, mode)).toBe(-448);
    }
    expect(roundToE4M3(nextUp(464), "nosat")).toBeNaN();
    expect(e4m3ToBits(nextUp(464), "nosat")).toBe(0x7f);
    expect(e4m3ToBits(-nextUp(464), "nosat")).toBe(0xff);
    expect(roundToE4M3(1e6, "nosat")).toBeNaN();
    expect(roundToE4M3(Infinity, "nosat")).toBeNaN();
    expect(roundToE4M3(-Infinity, "nosat")).toBeNaN();
    expect(e4m3ToBits(465)).toBe(0x7e);
  });

  it("E5M2 overflow: below 61440 rounds to 57344, 61440 and above overflow (Inf in nosat)", () => {
    // 61440 is the midpoint between 57344 (0x7B, odd) and 65536 (0x7C = Inf, even): ties to Inf.
    for (const mode of ["satfinite", "nosat"] as const) {
      expect(roundToE5M2(nextDown(61440), mode)).toBe(57344);
      expect(roundToE5M2(-nextDown(61440), mode)).toBe(-57344);
    }
    expect(roundToE5M2(61440, "nosat")).toBe(Infinity);
    expect(roundToE5M2(-61440, "nosat")).toBe(-Infinity);
    expect(roundToE5M2(61440, "satfinite")).toBe(57344);
    expect(roundToE5M2(Infinity, "nosat")).toBe(Infinity);
    expect(roundToE5M2(-Infinity, "nosat")).toBe(-Infinity);
    expect(e5m2ToBits(-Infinity, "nosat")).toBe(0xfc);
    expect(e5m2ToBits(-Infinity, "satfinite")).toBe(0xfb);
  });

  it("E4M3 subnormals", () => {
    expect(roundToE4M3(2 ** -9)).toBe(2 ** -9);
    expect(roundToE4M3(2 ** -10)).toBe(0); // tie between 0 and 2^-9 goes to 0
    expect(roundToE4M3(nextUp(2 ** -10))).toBe(2 ** -9);
    expect(roundToE4M3(3 * 2 ** -10)).toBe(2 ** -8); // tie between codes 1 and 2
    expect(roundToE4M3(5 * 2 ** -10)).toBe(2 ** -8); // tie between codes 2 and 3
    expect(roundToE4M3(7.5 * 2 ** -9)).toBe(2 ** -6); // tie from largest subnormal into the smallest normal
    expect(roundToE4M3(-3 * 2 ** -9)).toBe(-3 * 2 ** -9);
  });

  it("E5M2 subnormals", () => {
    expect(roundToE5M2(2 ** -16)).toBe(2 ** -16);
    expect(roundToE5M2(2 ** -17)).toBe(0);
    expect(roundToE5M2(nextUp(2 ** -17))).toBe(2 ** -16);
    expect(roundToE5M2(3 * 2 ** -17)).toBe(2 ** -15);
    expect(roundToE5M2(3.5 * 2 ** -16)).toBe(2 ** -14);
    expect(roundToE5M2(-(2 ** -16))).toBe(-(2 ** -16));
  });

  it("rounds from the float32 value, not the float64 one", () => {
    // 1 + 2^-4 is the E4M3 tie between 1 and 1.125; the 2^-40 nudge would
    // break it in float64 but vanishes in float32.
    expect(roundToE4M3(1 + 2 ** -4 + 2 ** -40)).toBe(1);
    expect(roundToE5M2(1 + 2 ** -3 + 2 ** -40)).toBe(1);
  });

  it("rejects an unknown mode", () => {
    expect(() => roundToE4M3(1, "wrap" as Fp8SaturationMode)).toThrow(RangeError);
  });
});

describe("FP8 property check against the brute-force reference", () => {
  for (const fmt of formats) {
    it(`${fmt.name}: 100k random float32 values across the range, both modes`, () => {
      const rand = mulberry32(fmt.mantBits * 7919);
      const [minExp, maxExp] = fmt.sampleExp;
      const dropped = 23 - fmt.mantBits;
      const failures: string[] = [];
      for (let i = 0; i < 100_000; i++) {
        const exp = minExp + (rand() % (maxExp - minExp + 1));
        let bits = ((rand() & 0x80000000) | ((127 + exp) << 23) | (rand() & 0x7fffff)) >>> 0;
        // A quarter of samples sit exactly on a normal-range tie, another
        // quarter one float32 ulp either side of it.
        if ((i & 3) === 1) bits = ((bits >>> dropped) << dropped) | (1 << (dropped - 1));
        if ((i & 3) === 2) bits = ((bits >>> dropped) << dropped) | ((1 << (dropped - 1)) + (rand() & 1 ? 1 : -1));
        const x = fromBits(bits >>> 0);
        for (const mode of ["satfinite", "nosat"] as const) {
          const got = fmt.round(x, mode);
          const want = referenceRound(fmt, x, mode);
          if (!Object.is(got, want) && failures.length < 5) {
            failures.push(`${mode} 0x${(bits >>> 0).toString(16)} (${x}): got ${got}, want ${want}`);
          }
        }
      }
      expect(failures).toEqual([]);
    });
  }
});

describe("FP8 array rounding", () => {
  for (const fmt of formats) {
    it(`${fmt.name}: matches the scalar path, new array and in place, both modes`, () => {
      const rand = mulberry32(99);
      const src = new Float32Array(2048);
      for (let i = 0; i < src.length; i++) src[i] = fromBits(rand());
      src[0] = Infinity;
      src[1] = -Infinity;
      src[2] = NaN;
      for (const mode of ["satfinite", "nosat"] as const) {
        const copy = src.slice();
        const expected = Array.from(copy, (v) => Math.fround(fmt.round(v, mode)));
        const fresh = fmt.roundArray(copy, undefined, mode);
        const inPlace = fmt.roundArray(copy, copy, mode);
        expect(inPlace).toBe(copy);
        for (let i = 0; i < src.length; i++) {
          expect(Object.is(fresh[i], expected[i])).toBe(true);
          expect(Object.is(copy[i], expected[i])).toBe(true);
        }
      }
      expect(() => fmt.roundArray(new Float32Array(4), new Float32Array(3))).toThrow(RangeError);
    });
  }
});
