// bfloat16 emulation, bit-exact with the GPU's `__float2bfloat16_rn(float)`
// (PTX `cvt.rn.bf16.f32`): the value is first a float32, then rounded to the
// top 16 bits with round-to-nearest-even. No flush-to-zero: f32 subnormals
// round like any other value, and overflow becomes ±Inf as RNE dictates.

// One shared scratch word: reinterpreting a float through a typed-array view
// is the only allocation-free way to reach its bits in JS.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** Canonical quiet NaN that the CUDA conversion produces for any NaN input. */
const BF16_CANONICAL_NAN = 0x7fff;

/**
 * Rounds `x` to bfloat16 using the f32 bit pattern and returns the 16-bit code.
 * Kept separate so the number- and bits-returning APIs share one rounding path.
 */
function roundBitsToBf16(bits: number): number {
  // NaN must be caught first: adding the rounding bias to a NaN whose payload
  // lives only in the low 16 bits would carry into the exponent and yield Inf.
  if ((bits & 0x7fffffff) > 0x7f800000) return BF16_CANONICAL_NAN;
  // RNE via the classic bias trick: adding 0x7FFF rounds up when the dropped
  // half exceeds one half-ulp, and the extra lsb term breaks exact ties toward
  // an even result. A carry out of the mantissa correctly bumps the exponent,
  // which also turns values at or past the overflow midpoint into ±Inf.
  const lsb = (bits >>> 16) & 1;
  return ((bits + 0x7fff + lsb) >>> 16) & 0xffff;
}

/** Rounds a JS number to the nearest bfloat16 value (via float32 first, as on the GPU). */
export function roundToBf16(x: number): number {
  scratchF32[0] = x;
  scratchU32[0] = roundBitsToBf16(scratchU32[0]) << 16;
  return scratchF32[0];
}

/** The 16-bit bfloat16 code of `x` after rounding (NaN → canonical 0x7FFF). */
export function bf16ToBits(x: number): number {
  scratchF32[0] = x;
  return roundBitsToBf16(scratchU32[0]);
}

/** Decodes a 16-bit bfloat16 code; only the low 16 bits of `bits` are used. */
export function bf16FromBits(bits: number): number {
  scratchU32[0] = (bits & 0xffff) << 16;
  return scratchF32[0];
}

/**
 * Rounds every element of `src` to bfloat16, writing into `dst` (allocated if
 * omitted). `dst` may be `src` itself for in-place rounding.
 */
export function roundArrayToBf16(src: Float32Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  if (dst.length < src.length) {
    throw new RangeError(`roundArrayToBf16: dst has ${dst.length} elements, src has ${src.length}`);
  }
  // Operate on both arrays' bits directly; aliasing is safe because each
  // element is read before it is written.
  const srcBits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const dstBits = new Uint32Array(dst.buffer, dst.byteOffset, src.length);
  for (let i = 0; i < srcBits.length; i++) {
    dstBits[i] = roundBitsToBf16(srcBits[i]) << 16;
  }
  return dst;
}
