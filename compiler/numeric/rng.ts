// Counter-based random numbers: every element's value is a pure function of
// (seed, global row-major index), so a tensor holds the same numbers however
// it is sharded, and a GPU kernel can reproduce any element independently.
//
// Stream definition (what a device kernel must replicate):
//   key     = [lo32(seed), hi32(seed)]           (seed as a 64-bit two's-complement integer)
//   block   = floor(i / 4), lane = i % 4
//   words   = philox4x32_10([lo32(block), hi32(block), stream, 0], key)
//             with stream = 0 for uniform, 1 for normal, so the two kinds are independent.
//   uniform = (words[lane] >>> 8) * 2^-24         exact in float32, in [0, 1)
//   normal  = Box–Muller on the lane's pair (a, b) = (words[2p], words[2p+1]), p = lane >> 1:
//             r = sqrt(-2 ln((a + 1) * 2^-32)),  θ = 2π * b * 2^-32,
//             z = lane even ? r cos θ : r sin θ, computed in float64 and rounded once to float32.
// The normal path relies on log/sqrt/cos/sin, which are not correctly rounded
// on either side, so device results can differ from these in the last float32
// bit in rare cases; uniforms are exact.

const PHILOX_M0 = 0xd2511f53;
const PHILOX_M1 = 0xcd9e8d57;
const PHILOX_W0 = 0x9e3779b9; // golden ratio
const PHILOX_W1 = 0xbb67ae85; // sqrt(3) - 1

const TWO_POW_32 = 4294967296;
const TWO_POW_NEG_24 = 2 ** -24;
const TWO_POW_NEG_32 = 2 ** -32;
const TWO_PI = 2 * Math.PI;

const STREAM_UNIFORM = 0;
const STREAM_NORMAL = 1;

/**
 * High 32 bits of the 64-bit product of two uint32 values. A float64 can't
 * hold a 64-bit product exactly, so multiply 16-bit halves (each partial
 * product < 2^32, exact) and propagate the carries by hand.
 */
export function mulhi32(a: number, b: number): number {
  const aLo = a & 0xffff;
  const aHi = a >>> 16;
  const bLo = b & 0xffff;
  const bHi = b >>> 16;
  const loLo = aLo * bLo;
  const loHi = aLo * bHi;
  const hiLo = aHi * bLo;
  const middle = (loLo >>> 16) + (loHi & 0xffff) + (hiLo & 0xffff);
  return (aHi * bHi + (loHi >>> 16) + (hiLo >>> 16) + (middle >>> 16)) >>> 0;
}

/** Philox4x32-10 into a caller-provided buffer, so hot loops allocate nothing. */
function philoxInto(c0: number, c1: number, c2: number, c3: number, k0: number, k1: number, out: Uint32Array): void {
  for (let round = 0; round < 10; round++) {
    if (round > 0) {
      k0 = (k0 + PHILOX_W0) >>> 0;
      k1 = (k1 + PHILOX_W1) >>> 0;
    }
    const hi0 = mulhi32(PHILOX_M0, c0);
    const lo0 = Math.imul(PHILOX_M0, c0) >>> 0;
    const hi1 = mulhi32(PHILOX_M1, c2);
    const lo1 = Math.imul(PHILOX_M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/** The standard Philox4x32 with 10 rounds (Salmon et al., Random123). */
export function philox4x32_10(
  counter: readonly [number, number, number, number],
  key: readonly [number, number],
): [number, number, number, number] {
  const out = new Uint32Array(4);
  philoxInto(counter[0] >>> 0, counter[1] >>> 0, counter[2] >>> 0, counter[3] >>> 0, key[0] >>> 0, key[1] >>> 0, out);
  return [out[0], out[1], out[2], out[3]];
}

const words = new Uint32Array(4);
const lanes = new Float64Array(4);

function seedKeyLo(seed: number): number {
  return seed >>> 0; // ToUint32 is exact modular reduction for safe integers
}

function seedKeyHi(seed: number): number {
  return Math.floor(seed / TWO_POW_32) >>> 0;
}

function checkSeed(seed: number): void {
  if (!Number.isSafeInteger(seed)) throw new RangeError(`random seed must be a safe integer, got ${seed}`);
}

function checkIndex(index: number): void {
  if (!Number.isSafeInteger(index) || index < 0) {
    throw new RangeError(`random index must be an integer in [0, 2^53), got ${index}`);
  }
}

/** Uniform lane values of one philox block (see the stream definition above). */
function uniformLanes(w: Uint32Array, dst: Float64Array): void {
  dst[0] = (w[0] >>> 8) * TWO_POW_NEG_24;
  dst[1] = (w[1] >>> 8) * TWO_POW_NEG_24;
  dst[2] = (w[2] >>> 8) * TWO_POW_NEG_24;
  dst[3] = (w[3] >>> 8) * TWO_POW_NEG_24;
}

/** Standard-normal lane values of one philox block, already float32-rounded. */
function normalLanes(w: Uint32Array, dst: Float64Array): void {
  for (let p = 0; p < 4; p += 2) {
    // (a + 1) * 2^-32 lies in (0, 1], keeping log finite; 32-bit inputs give
    // tails out to ~6.7 sigma instead of the ~5.8 a 24-bit uniform would.
    const r = Math.sqrt(-2 * Math.log((w[p] + 1) * TWO_POW_NEG_32));
    const theta = TWO_PI * (w[p + 1] * TWO_POW_NEG_32);
    dst[p] = Math.fround(r * Math.cos(theta));
    dst[p + 1] = Math.fround(r * Math.sin(theta));
  }
}

function laneValue(stream: number, seed: number, index: number): number {
  checkSeed(seed);
  checkIndex(index);
  const block = Math.floor(index / 4);
  const blockLo = block >>> 0;
  philoxInto(blockLo, (block - blockLo) / TWO_POW_32, stream, 0, seedKeyLo(seed), seedKeyHi(seed), words);
  if (stream === STREAM_UNIFORM) uniformLanes(words, lanes);
  else normalLanes(words, lanes);
  return lanes[index - block * 4];
}

/** Uniform value in [0, 1) (float32-representable) of element `index` under `seed`. */
export function randUniformAt(seed: number, index: number): number {
  return laneValue(STREAM_UNIFORM, seed, index);
}

/** Standard normal value (float32-rounded) of element `index` under `seed`. */
export function randNormalAt(seed: number, index: number): number {
  return laneValue(STREAM_NORMAL, seed, index);
}

export type RandomKind = "normal" | "uniform";

export interface FillRandomOptions {
  /** Normal: mean (default 0). */
  mean?: number;
  /** Normal: standard deviation (default 1). */
  std?: number;
  /** Uniform: lower bound (default 0). */
  low?: number;
  /** Uniform: upper bound (default 1). */
  high?: number;
}

/**
 * Writes the values of global indices [gStart, gStart + len) into
 * out[outStart ..]. Each element becomes `shift + scale * laneValue`, rounded
 * to float32 by the store.
 */
function fillRun(
  stream: number,
  k0: number,
  k1: number,
  gStart: number,
  len: number,
  out: Float32Array,
  outStart: number,
  shift: number,
  scale: number,
): void {
  const block = Math.floor(gStart / 4);
  let lane = gStart - block * 4;
  let ctrLo = block >>> 0;
  let ctrHi = (block - ctrLo) / TWO_POW_32;
  let o = outStart;
  const end = outStart + len;
  while (o < end) {
    philoxInto(ctrLo, ctrHi, stream, 0, k0, k1, words);
    if (stream === STREAM_UNIFORM) uniformLanes(words, lanes);
    else normalLanes(words, lanes);
    for (; lane < 4 && o < end; lane++) out[o++] = shift + scale * lanes[lane];
    lane = 0;
    ctrLo = (ctrLo + 1) >>> 0;
    if (ctrLo === 0) ctrHi++;
  }
}

/**
 * Fills `out` (row-major over the local box) with the random values of a
 * tensor of shape `globalShape`, for the box starting at `offset` with extent
 * `localShape`. Element values depend only on (seed, global index), so any
 * partition of the tensor into boxes reproduces the whole tensor exactly.
 */
export function fillRandom(
  kind: RandomKind,
  seed: number,
  globalShape: readonly number[],
  offset: readonly number[],
  localShape: readonly number[],
  out: Float32Array,
  opts: FillRandomOptions = {},
): Float32Array {
  if (kind !== "normal" && kind !== "uniform") throw new RangeError(`unknown random kind: ${String(kind)}`);
  checkSeed(seed);
  const rank = globalShape.length;
  if (offset.length !== rank || localShape.length !== rank) {
    throw new RangeError(
      `fillRandom: rank mismatch (global ${rank}, offset ${offset.length}, local ${localShape.length})`,
    );
  }
  let globalSize = 1;
  let localSize = 1;
  for (let d = 0; d < rank; d++) {
    const g = globalShape[d];
    const o = offset[d];
    const l = localShape[d];
    if (!Number.isSafeInteger(g) || !Number.isSafeInteger(o) || !Number.isSafeInteger(l) || g < 0 || o < 0 || l < 0) {
      throw new RangeError(`fillRandom: dimension ${d} has a non-integer or negative extent/offset`);
    }
    if (o + l > g) throw new RangeError(`fillRandom: box [${o}, ${o + l}) exceeds dimension ${d} of size ${g}`);
    globalSize *= g;
    localSize *= l;
  }
  // Global indices are float64 integers; beyond 2^53 they would silently collide.
  if (globalSize > Number.MAX_SAFE_INTEGER + 1) throw new RangeError("fillRandom: tensor has more than 2^53 elements");
  if (out.length < localSize) throw new RangeError(`fillRandom: out has ${out.length} elements, box needs ${localSize}`);
  if (localSize === 0) return out;

  const stream = kind === "uniform" ? STREAM_UNIFORM : STREAM_NORMAL;
  const low = opts.low ?? 0;
  const shift = kind === "uniform" ? low : (opts.mean ?? 0);
  const scale = kind === "uniform" ? (opts.high ?? 1) - low : (opts.std ?? 1);
  const k0 = seedKeyLo(seed);
  const k1 = seedKeyHi(seed);

  // Rows of the innermost dimension are contiguous in global index space, so
  // each row is one run; an odometer walks the outer dimensions of the box.
  const rowLen = rank === 0 ? 1 : localShape[rank - 1];
  const outer = Math.max(rank - 1, 0);
  const strides = new Array<number>(rank);
  for (let d = rank - 1, s = 1; d >= 0; d--) {
    strides[d] = s;
    s *= globalShape[d];
  }
  const pos = new Array<number>(outer).fill(0);
  const rows = localSize / rowLen;
  for (let row = 0, o = 0; row < rows; row++, o += rowLen) {
    let g = rank === 0 ? 0 : offset[rank - 1];
    for (let d = 0; d < outer; d++) g += (offset[d] + pos[d]) * strides[d];
    fillRun(stream, k0, k1, g, rowLen, out, o, shift, scale);
    for (let d = outer - 1; d >= 0; d--) {
      if (++pos[d] < localShape[d]) break;
      pos[d] = 0;
    }
  }
  return out;
}
