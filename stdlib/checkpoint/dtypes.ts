// Element encodings on disk (safetensors dtypes): F32 and I32 as 4 little-endian bytes, BF16 as the
// top 16 bits of the float32 (exact: the CPU reference keeps bf16 values bf16-representable), FP8 as
// the OCP E4M3 / E5M2 byte. Decoding writes the destination's bits directly, so values (NaN
// payloads included, for F32/I32) come back bit for bit.
import type { DType } from "../../compiler/ir/types.ts";
import type { LocalData } from "../../compiler/ir/local.ts";
import { e4m3FromBits, e4m3ToBits, e5m2FromBits, e5m2ToBits } from "../../compiler/numeric/fp8.ts";

export const ST_DTYPE: Record<DType, string> = { f32: "F32", bf16: "BF16", fp8e4m3: "F8_E4M3", fp8e5m2: "F8_E5M2", i32: "I32" };
export const FROM_ST: ReadonlyMap<string, DType> = new Map(Object.entries(ST_DTYPE).map(([k, v]) => [v, k as DType]));
export const ITEM_BYTES: Record<DType, number> = { f32: 4, bf16: 2, fp8e4m3: 1, fp8e5m2: 1, i32: 4 };

const LITTLE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

const bytesOf = (d: LocalData) => new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
const bitsOf = (d: LocalData) => new Uint32Array(d.buffer, d.byteOffset, d.length);

/**
 * The on-disk bytes of `data` in `dtype` (a fresh copy). Returns the index of the first element that
 * the dtype cannot represent exactly instead, when there is one (a caller bug: pieces of bf16/FP8
 * tensors must hold representable values).
 */
export function encode(dtype: DType, data: LocalData): Uint8Array | { bad: number } {
  const n = data.length;
  if (dtype === "f32" || dtype === "i32") {
    if (LITTLE) return bytesOf(data).slice();
    const out = new Uint8Array(n * 4), dv = new DataView(out.buffer), bits = bitsOf(data);
    for (let i = 0; i < n; i++) dv.setUint32(i * 4, bits[i]!, true);
    return out;
  }
  if (dtype === "bf16") {
    const bits = bitsOf(data), out = new Uint8Array(n * 2);
    for (let i = 0; i < n; i++) {
      const b = bits[i]!;
      if ((b & 0xffff) !== 0) return { bad: i };
      out[2 * i] = (b >>> 16) & 0xff;
      out[2 * i + 1] = b >>> 24;
    }
    return out;
  }
  const [to, from] = dtype === "fp8e4m3" ? [e4m3ToBits, e4m3FromBits] : [e5m2ToBits, e5m2FromBits];
  const f = data as Float32Array, out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const v = f[i]!, c = to(v), back = from(c);
    if (!(back === v || (Number.isNaN(back) && Number.isNaN(v)))) return { bad: i };
    out[i] = c;
  }
  return out;
}

/** Decodes `count` elements from `src[at..]` into `dst[dstAt..]`. */
export function decodeInto(dtype: DType, src: Uint8Array, at: number, count: number, dst: LocalData, dstAt: number): void {
  if (dtype === "f32" || dtype === "i32") {
    if (LITTLE) {
      bytesOf(dst).set(src.subarray(at, at + count * 4), dstAt * 4);
      return;
    }
    const dv = new DataView(src.buffer, src.byteOffset), bits = bitsOf(dst);
    for (let i = 0; i < count; i++) bits[dstAt + i] = dv.getUint32(at + i * 4, true);
    return;
  }
  if (dtype === "bf16") {
    const bits = bitsOf(dst);
    for (let i = 0; i < count; i++) bits[dstAt + i] = ((src[at + 2 * i]! | (src[at + 2 * i + 1]! << 8)) << 16) >>> 0;
    return;
  }
  const from = dtype === "fp8e4m3" ? e4m3FromBits : e5m2FromBits, f = dst as Float32Array;
  for (let i = 0; i < count; i++) f[dstAt + i] = from(src[at + i]!);
}
