// OCP FP8 emulation (E4M3 "fn" and E5M2), bit-exact with Hopper's conversions.
//
// References for the rounding and overflow rules implemented here:
//
// * PTX ISA, `cvt` instruction, `.satfinite` modifier: "For .f16, .f16x2,
//   .bf16, .bf16x2, .e4m3x2, .e5m2x2 and .tf32 destination formats, if the
//   input value is NaN, then the result is NaN in the specified destination
//   format. If the absolute value of input (ignoring sign) is greater than
//   MAX_NORM of the specified destination format, then the result is
//   sign-preserved MAX_NORM of the destination format."
//   |±Inf| is greater than MAX_NORM, so under satfinite ±Inf → ±MAX (448 for
//   E4M3, 57344 for E5M2), never Inf/NaN. (PTX has no non-saturating
//   f32→f8 form: `cvt.rn.satfinite.{e4m3x2,e5m2x2}.f32` requires .satfinite.)
//
// * CUDA's `cuda_fp8.hpp`, `__nv_cvt_double_to_fp8` (the software path that
//   `__nv_cvt_float_to_fp8` takes for __NV_NOSAT, and on the host): overflow is
//   decided against "maxnorm + 1/2 ulp" before rounding —
//     E4M3: |x| >  464   (0x1.Cp+8 + 0x1p+4) overflows; |x| == 464 takes the
//           normal RNE path and, being a tie, rounds to the even mantissa of
//           448 (0x7E, mantissa 110) rather than the odd 0x7F pattern (NaN).
//     E5M2: |x| >= 61440 (0x1.Ep+15) overflows: the tie between 57344 (0x7B,
//           odd mantissa) and 65536 (0x7C, even, = Inf) goes to Inf, exactly
//           as IEEE RNE would.
//   Overflow yields MAX under satfinite; under nosat, E4M3 (no Inf) yields NaN
//   (0x7F) and E5M2 yields Inf (0x7C). The sign is OR-ed back in for every
//   case except NaN, which the float entry point canonicalises to 0x7F.
//   Below half the smallest subnormal (2^-10 / 2^-17) the result is ±0, and
//   the exact half is an RNE tie that goes to the even code, 0.

export type Fp8SaturationMode = "satfinite" | "nosat";

export const E4M3_MAX = 448;
export const E5M2_MAX = 57344;

/** Canonical NaN code that the CUDA conversions produce for both formats. */
const FP8_NAN = 0x7f;

/** Per-format constants, all expressed on the float32 bit pattern. */
interface Fp8Format {
  /** Mantissa (fraction) bit count of the FP8 format. */
  readonly mantBits: number;
  readonly bias: number;
  /** f32 bits of the smallest normal FP8 value: below it we round as subnormal. */
  readonly minNormalBits: number;
  /** f32 bits of half the smallest subnormal: at or below it the result is ±0. */
  readonly halfMinSubBits: number;
  /** f32 bits of the largest magnitude that still rounds to a finite value. */
  readonly lastFiniteBits: number;
  readonly maxCode: number;
  /** Code produced by overflow in nosat mode. */
  readonly overflowCode: number;
}

const E4M3: Fp8Format = {
  mantBits: 3,
  bias: 7,
  minNormalBits: 0x3c800000, // 2^-6
  halfMinSubBits: 0x3a800000, // 2^-10
  lastFiniteBits: 0x43e80000, // 464: the tie that still rounds down to 448
  maxCode: 0x7e,
  overflowCode: FP8_NAN,
};

const E5M2: Fp8Format = {
  mantBits: 2,
  bias: 15,
  minNormalBits: 0x38800000, // 2^-14
  halfMinSubBits: 0x37000000, // 2^-17
  lastFiniteBits: 0x476fffff, // largest f32 below 61440, the tie that rounds to Inf
  maxCode: 0x7b,
  overflowCode: 0x7c, // +Inf
};

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** Rounds an unsigned integer right by `shift` bits with ties-to-even. */
function shiftRightRne(value: number, shift: number): number {
  const kept = value >>> shift;
  const rest = value & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  return rest > half || (rest === half && (kept & 1) === 1) ? kept + 1 : kept;
}

/** Encodes a float32 bit pattern into an FP8 code of the given format. */
function encodeBits(bits: number, fmt: Fp8Format, mode: Fp8SaturationMode): number {
  const sign = (bits >>> 24) & 0x80;
  const abs = bits & 0x7fffffff;
  if (abs > 0x7f800000) return FP8_NAN;
  if (abs > fmt.lastFiniteBits) {
    return sign | (mode === "satfinite" ? fmt.maxCode : fmt.overflowCode);
  }
  if (abs <= fmt.halfMinSubBits) return sign;

  const exp = abs >>> 23; // biased f32 exponent; >= 1 here since abs > halfMinSub
  const significand = (abs & 0x7fffff) | 0x800000; // with the implicit leading 1
  if (abs < fmt.minNormalBits) {
    // Subnormal target: count in units of the smallest subnormal,
    // 2^(1 - bias - mantBits). The f32 value is significand * 2^(exp - 150),
    // so the shift is (150 - exp) - (bias - 1 + mantBits). A round-up to
    // 1 << mantBits lands exactly on the smallest normal's code.
    const shift = 150 - exp - (fmt.bias - 1 + fmt.mantBits);
    return sign | shiftRightRne(significand, shift);
  }
  // Normal target: exponent field and the top mantissa bits concatenate into
  // the code, so a rounding carry out of the mantissa bumps the exponent for
  // free. Overflow past MAX was excluded above, so the carry can't reach NaN/Inf.
  const code = ((exp - 127 + fmt.bias) << fmt.mantBits) | ((abs & 0x7fffff) >>> (23 - fmt.mantBits));
  const dropped = 23 - fmt.mantBits;
  const rest = abs & ((1 << dropped) - 1);
  const half = 1 << (dropped - 1);
  return sign | (rest > half || (rest === half && (code & 1) === 1) ? code + 1 : code);
}

function buildDecodeTable(fmt: Fp8Format, hasInf: boolean): Float64Array {
  const table = new Float64Array(256);
  const expBits = 7 - fmt.mantBits;
  const expMax = (1 << expBits) - 1;
  const mantMask = (1 << fmt.mantBits) - 1;
  for (let code = 0; code < 256; code++) {
    const s = code & 0x80 ? -1 : 1;
    const e = (code >> fmt.mantBits) & expMax;
    const m = code & mantMask;
    let v: number;
    if (hasInf && e === expMax) {
      v = m === 0 ? Infinity : NaN; // E5M2: IEEE-style specials
    } else if (!hasInf && e === expMax && m === mantMask) {
      v = NaN; // E4M3fn: only S.1111.111 is NaN; the rest of the top binade is finite
    } else if (e === 0) {
      v = m * 2 ** (1 - fmt.bias - fmt.mantBits);
    } else {
      v = (1 + m / (mantMask + 1)) * 2 ** (e - fmt.bias);
    }
    table[code] = s * v; // s * 0 keeps -0 for code 0x80
  }
  return table;
}

const E4M3_DECODE = buildDecodeTable(E4M3, false);
const E5M2_DECODE = buildDecodeTable(E5M2, true);

function checkMode(mode: Fp8SaturationMode): void {
  if (mode !== "satfinite" && mode !== "nosat") {
    throw new RangeError(`unknown FP8 saturation mode: ${String(mode)}`);
  }
}

/** The 8-bit E4M3 code of `x` (rounded via float32, RNE). */
export function e4m3ToBits(x: number, mode: Fp8SaturationMode = "satfinite"): number {
  checkMode(mode);
  scratchF32[0] = x;
  return encodeBits(scratchU32[0], E4M3, mode);
}

/** The 8-bit E5M2 code of `x` (rounded via float32, RNE). */
export function e5m2ToBits(x: number, mode: Fp8SaturationMode = "satfinite"): number {
  checkMode(mode);
  scratchF32[0] = x;
  return encodeBits(scratchU32[0], E5M2, mode);
}

/** Decodes an E4M3 code; only the low 8 bits are used. */
export function e4m3FromBits(bits: number): number {
  return E4M3_DECODE[bits & 0xff];
}

/** Decodes an E5M2 code; only the low 8 bits are used. */
export function e5m2FromBits(bits: number): number {
  return E5M2_DECODE[bits & 0xff];
}

/** Rounds `x` to the nearest E4M3 value (see the file header for overflow rules). */
export function roundToE4M3(x: number, mode: Fp8SaturationMode = "satfinite"): number {
  return E4M3_DECODE[e4m3ToBits(x, mode)];
}

/** Rounds `x` to the nearest E5M2 value (see the file header for overflow rules). */
export function roundToE5M2(x: number, mode: Fp8SaturationMode = "satfinite"): number {
  return E5M2_DECODE[e5m2ToBits(x, mode)];
}

function roundArray(
  name: string,
  src: Float32Array,
  dst: Float32Array | undefined,
  fmt: Fp8Format,
  table: Float64Array,
  mode: Fp8SaturationMode,
): Float32Array {
  checkMode(mode);
  const out = dst ?? new Float32Array(src.length);
  if (out.length < src.length) {
    throw new RangeError(`${name}: dst has ${out.length} elements, src has ${src.length}`);
  }
  // Read bits straight from the source buffer; in-place is safe since each
  // element is read before it is overwritten.
  const srcBits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < srcBits.length; i++) {
    out[i] = table[encodeBits(srcBits[i], fmt, mode)];
  }
  return out;
}

/** Rounds every element to E4M3 into `dst` (allocated if omitted; may alias `src`). */
export function roundArrayToE4M3(src: Float32Array, dst?: Float32Array, mode: Fp8SaturationMode = "satfinite"): Float32Array {
  return roundArray("roundArrayToE4M3", src, dst, E4M3, E4M3_DECODE, mode);
}

/** Rounds every element to E5M2 into `dst` (allocated if omitted; may alias `src`). */
export function roundArrayToE5M2(src: Float32Array, dst?: Float32Array, mode: Fp8SaturationMode = "satfinite"): Float32Array {
  return roundArray("roundArrayToE5M2", src, dst, E5M2, E5M2_DECODE, mode);
}
