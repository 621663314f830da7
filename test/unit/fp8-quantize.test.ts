// Block-scaled FP8: quantize / dequantize / scaled_dot through the public API against references
// written here with plain loops over named dims (float64, with the f32 roundings the GPU makes
// spelled out), on fresh random inputs; the edge cases (amax 0, NaN, Inf, saturation); sharding.
import { describe, expect, it } from "vitest";
import { Mesh, Shard, fromGlobal, evaluate, quantize, dequantize, scaledDot, cast, ShardingError, ShapeError, type GlobalValue } from "../../stdlib/index.ts";
import { roundToBf16, roundToE4M3, e4m3ToBits } from "../../compiler/numeric/index.ts";
import { mulberry32 } from "../helpers/prng.ts";

const SEED = process.env.SHARDTS_TEST_SEED !== undefined ? Number(process.env.SHARDTS_TEST_SEED) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
const NOTE = `(replay with SHARDTS_TEST_SEED=${SEED})`;
const one = () => Mesh.of({ d: 1 });
type D = [string, number][];

/** bf16 values with magnitudes spread over 2^-12 .. 2^6 (each row its own range), never all zero. */
function randomBf16(n: number, seed: number): Float32Array {
  const r = mulberry32(SEED ^ seed);
  return Float32Array.from({ length: n }, (_, i) => roundToBf16((r() - 0.5) * 2 ** (Math.floor(i / 37) % 18 - 12) * (1 + r())));
}

/** The reference quantizer: tile id of each element from its named index, amax, f32(448/amax), e4m3(f32(x*inv)). */
function refQuantize(dims: D, x: Float32Array, tiled: string[]) {
  const tileKey = (idx: number[]) => dims.map(([n], i) => (tiled.includes(n) ? Math.floor(idx[i]! / 128) : idx[i]!)).join(",");
  const keys: string[] = [];
  const idx = dims.map(() => 0);
  for (let o = 0; o < x.length; o++) {
    keys.push(tileKey(idx));
    for (let d = dims.length - 1; d >= 0 && ++idx[d]! === dims[d]![1]; d--) idx[d] = 0;
  }
  const amax = new Map<string, number>();
  keys.forEach((k, o) => {
    const a = Math.abs(x[o]!);
    if (!Number.isNaN(a)) amax.set(k, Math.max(amax.get(k) ?? 0, a));
  });
  const scaleOf = (k: string) => ((amax.get(k) ?? 0) === 0 ? 1 : Math.fround(amax.get(k)! / 448));
  const q = Float32Array.from(x, (v, o) => {
    const m = amax.get(keys[o]!) ?? 0;
    return roundToE4M3(Math.fround(v * (m === 0 ? 1 : Math.fround(448 / m))));
  });
  return { q, keys, scaleOf };
}

async function quantized(dims: D, x: Float32Array, tiling: "1x128" | "128x1" | "128x128", tiled: string[], dtype: "bf16" | "f32" = "bf16") {
  const t = fromGlobal(one(), Object.fromEntries(dims), dtype, x) as never;
  const { q, scales } = quantize(t, tiling, tiled as never) as any;
  const [gq, gs, gd] = await evaluate([q, scales, dequantize(q, scales, { out: "f32" })]);
  return { q: gq!, s: gs!, deq: gd! };
}

const bitsEqual = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i]) && !(Number.isNaN(a[i]) && Number.isNaN(b[i]))) return i;
  return -1;
};

describe("quantize: bit-exact against the reference", () => {
  const cases: { name: string; dims: D; tiling: "1x128" | "128x1" | "128x128"; tiled: string[] }[] = [
    { name: "1x128 along model, ragged last tile", dims: [["tokens", 5], ["model", 300]], tiling: "1x128", tiled: ["model"] },
    { name: "128x1 along tokens (Wgrad's transposed tiling)", dims: [["tokens", 260], ["model", 6]], tiling: "128x1", tiled: ["tokens"] },
    { name: "128x128 weight blocks over [ffn, model]", dims: [["model", 130], ["ffn", 200]], tiling: "128x128", tiled: ["ffn", "model"] },
    { name: "1x128 on a 3-d activation", dims: [["batch", 2], ["seq", 3], ["model", 256]], tiling: "1x128", tiled: ["model"] },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const n = c.dims.reduce((a, [, s]) => a * s, 1);
      const x = randomBf16(n, n);
      const got = await quantized(c.dims, x, c.tiling, c.tiled);
      const ref = refQuantize(c.dims, x, c.tiled);
      expect(got.q.dtype).toBe("fp8e4m3");
      expect(got.s.dimNames).toEqual(c.dims.map(([nm]) => (c.tiled.includes(nm) ? `${nm}_tiles` : nm)));
      expect(got.s.shape).toEqual(c.dims.map(([nm, s]) => (c.tiled.includes(nm) ? Math.ceil(s / 128) : s)));
      const bad = bitsEqual(got.q.data, ref.q);
      expect(bad, `q[${bad}] = ${got.q.data[bad]}, reference ${ref.q[bad]} ${NOTE}`).toBe(-1);
      // every element's scale, looked up through its tile
      const sIdx = [...new Set(ref.keys)];
      sIdx.forEach((k, i) => expect(got.s.data[i], `scale of tile ${k} ${NOTE}`).toBe(ref.scaleOf(k)));
      // the FP8 error model: |deq - x| <= 2^-4 |x| in the normal range, plus half the smallest subnormal times the scale
      x.forEach((v, o) => {
        const s = ref.scaleOf(ref.keys[o]!);
        expect(Math.abs(got.deq.data[o]! - v), `element ${o} ${NOTE}`).toBeLessThanOrEqual(2 ** -4 * Math.abs(v) + s * 2 ** -10 + 1e-30);
      });
      // the largest element of each tile lands on ±448
      const amaxAt = new Map<string, number>();
      x.forEach((v, o) => { if (Math.abs(v) > Math.abs(x[amaxAt.get(ref.keys[o]!) ?? o]!) || !amaxAt.has(ref.keys[o]!)) amaxAt.set(ref.keys[o]!, o); });
      for (const o of amaxAt.values()) expect(Math.abs(got.q.data[o]!)).toBe(448);
    });
  }
});

describe("quantize: edge cases", () => {
  it("an all-zero tile gets scale 1 and quantizes to 0; f32 input works the same", async () => {
    const x = new Float32Array(256);
    for (let i = 128; i < 256; i++) x[i] = i - 200;
    const got = await quantized([["t", 1], ["k", 256]], x, "1x128", ["k"], "f32");
    expect(Array.from(got.s.data)).toEqual([1, Math.fround(72 / 448)]); // max |i - 200| over 128..255
    expect(got.q.data.subarray(0, 128).every((v) => v === 0)).toBe(true);
  });

  it("NaN: the element becomes NaN, amax ignores it; Inf poisons its own tile only", async () => {
    const x = Float32Array.from({ length: 384 }, (_, i) => (i % 7) - 3);
    x[5] = NaN;
    x[130] = Infinity;
    const got = await quantized([["t", 1], ["k", 384]], x, "1x128", ["k"]);
    expect(got.s.data[0]).toBe(Math.fround(3 / 448)); // NaN ignored
    expect(Number.isNaN(got.q.data[5]!)).toBe(true);
    expect(e4m3ToBits(got.q.data[5]!)).toBe(0x7f);
    expect(got.q.data[6]).toBe(roundToE4M3(Math.fround(x[6]! * Math.fround(448 / 3))));
    expect(got.s.data[1]).toBe(Infinity);
    expect(Number.isNaN(got.q.data[130]!)).toBe(true); // Inf * (448/Inf = 0)
    expect(Array.from(got.deq.data.subarray(128, 256)).every(Number.isNaN)).toBe(true);
    expect(Array.from(got.deq.data.subarray(256)).every(Number.isFinite)).toBe(true); // the next tile is untouched
  });

  it("saturates: values whose product rounds past 448 stay at 448, never NaN", async () => {
    // amax = 3*2^-126-ish subnormal-free case: inv rounds up so x*inv for the amax element exceeds 448 slightly
    const x = Float32Array.from([3, -3, 1, Math.fround(3 * (1 - 2 ** -24))]);
    const got = await quantized([["t", 1], ["k", 4]], x, "1x128", ["k"], "f32");
    expect(Array.from(got.q.data.subarray(0, 2))).toEqual([448, -448]);
    expect(got.q.data[3]).toBe(448);
  });
});

describe("scaled_dot: the block-scaled contraction", () => {
  /** float64 GEMM of the dequantized operands, and the exact product of the unquantized ones. */
  async function check(M: number, K: number, N: number) {
    const x = randomBf16(M * K, 11 + K), w = Float32Array.from(randomBf16(K * N, 13 + N), (v) => v / 8);
    const mesh = one();
    const X = fromGlobal(mesh, { tokens: M, model: K }, "bf16", x) as never;
    const W = fromGlobal(mesh, { model: K, ffn: N }, "bf16", w) as never;
    const qx = quantize(X, "1x128", "model") as any, qw = quantize(W, "128x128", ["ffn", "model"]) as any;
    const [y, dx, dw] = await evaluate([scaledDot(qx, qw, "model", { out: "f32" }), dequantize(qx.q, qx.scales, { out: "f32" }), dequantize(qw.q, qw.scales, { out: "f32" })]) as GlobalValue[];
    let worstDeq = 0, worstModel = 0;
    for (let i = 0; i < M; i++) for (let j = 0; j < N; j++) {
      let deq = 0, exact = 0, mag = 0;
      for (let k = 0; k < K; k++) {
        deq += dx!.data[i * K + k]! * dw!.data[k * N + j]!;
        exact += x[i * K + k]! * w[k * N + j]!;
        mag += Math.abs(x[i * K + k]! * w[k * N + j]!);
      }
      const got = y!.data[i * N + j]!;
      worstDeq = Math.max(worstDeq, Math.abs(got - deq) / mag);
      worstModel = Math.max(worstModel, Math.abs(got - exact) / mag);
    }
    return { worstDeq, worstModel };
  }
  it("equals a float64 GEMM of the dequantized operands to f32 accumulation, and the exact product within the FP8 model", async () => {
    for (const [M, K, N] of [[7, 384, 130], [3, 200, 5]] as const) {
      const r = await check(M, K, N);
      expect(r.worstDeq, `${M}x${K}x${N} ${NOTE}`).toBeLessThan(2 ** -20);
      // two e4m3 roundings of 2^-4 relative each bound |error| by ~2^-3 of sum |x||w|
      expect(r.worstModel, `${M}x${K}x${N} ${NOTE}`).toBeLessThan(2 ** -3);
      expect(r.worstModel).toBeGreaterThan(0); // it did quantize
    }
  });

  it("rejects operands without a common 128-tiled contracted dim", async () => {
    const mesh = one();
    const X = fromGlobal(mesh, { tokens: 2, model: 4 }, "bf16", new Float32Array(8).fill(1)) as never;
    const W = fromGlobal(mesh, { model: 4, ffn: 3 }, "bf16", new Float32Array(12).fill(1)) as never;
    const qx = quantize(X, "128x1", "tokens") as any, qw = quantize(W, "128x128", ["ffn", "model"]) as any;
    expect(() => scaledDot(qx, qw, "model")).toThrow(ShapeError);
    expect(() => scaledDot(qx, qw, "model")).toThrow(/exactly one contracted dim cut into 128-tiles on both sides/);
    expect(() => quantize(cast(X, "fp8e4m3") as never, "1x128", "model")).toThrow(/quantize\(\) does not take fp8e4m3; it needs f32 or bf16/);
  });
});

describe("sharding", () => {
  it("a sharded tiled dim keeps whole tiles per rank and equals the unsharded run; scales follow as d_tiles", async () => {
    const x = randomBf16(3 * 512, 5);
    const ref = await quantized([["tokens", 3], ["model", 512]], x, "1x128", ["model"]);
    const mesh = Mesh.of({ tp: 2 });
    const X = fromGlobal(mesh, { tokens: 3, model: 512 }, "bf16", x, { tp: Shard("model") }) as never;
    const { q, scales } = quantize(X, "1x128", "model") as any;
    expect(scales.type.placements).toEqual(["S(model_tiles)"]);
    const [gq, gs] = await evaluate([q, scales]);
    expect(bitsEqual(gq!.data, ref.q.data)).toBe(-1);
    expect(Array.from(gs!.data)).toEqual(Array.from(ref.s.data));
  });

  it("refuses a shard boundary inside a tile, naming the axis, the dim and the fix", () => {
    const mesh = Mesh.of({ tp: 2 });
    const X = fromGlobal(mesh, { tokens: 3, model: 384 }, "bf16", new Float32Array(3 * 384).fill(1), { tp: Shard("model") }) as never;
    expect(() => quantize(X, "1x128", "model")).toThrow(ShardingError);
    expect(() => quantize(X, "1x128", "model")).toThrow("mesh axis 'tp': quantize() tiles dim 'model' by 128 but Shard<model> splits its 384 into 2 pieces; a tile must not straddle a shard boundary, so the local size must be a multiple of 128 (make 'model' a multiple of 256 or shard another dim)");
    // sharding an untiled dim is fine
    const Y = fromGlobal(mesh, { tokens: 4, model: 384 }, "bf16", new Float32Array(4 * 384).fill(1), { tp: Shard("tokens") }) as never;
    expect((quantize(Y, "1x128", "model") as any).scales.type.placements).toEqual(["S(tokens)"]);
  });
});
