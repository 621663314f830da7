import { describe, it, expect } from "vitest";
import { philox4x32_10, randUniformAt, randNormalAt, fillRandom } from "../../../compiler/numeric/index.ts";

describe("philox4x32_10", () => {
  // Known-answer vectors from Random123's kat_vectors file.
  const kat: Array<[[number, number, number, number], [number, number], [number, number, number, number]]> = [
    [[0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]],
    [
      [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
      [0xffffffff, 0xffffffff],
      [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
    ],
    [
      [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
      [0xa4093822, 0x299f31d0],
      [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
    ],
  ];
  for (const [ctr, key, want] of kat) {
    it(`matches the Random123 known answer for counter ${ctr.map((w) => w.toString(16)).join(",")}`, () => {
      expect(philox4x32_10(ctr, key)).toEqual(want);
    });
  }
});

describe("randUniformAt / randNormalAt", () => {
  it("are deterministic and depend on seed and index", () => {
    expect(randUniformAt(1234, 99)).toBe(randUniformAt(1234, 99));
    expect(randNormalAt(1234, 99)).toBe(randNormalAt(1234, 99));
    expect(randUniformAt(1234, 99)).not.toBe(randUniformAt(1235, 99));
    expect(randUniformAt(1234, 99)).not.toBe(randUniformAt(1234, 100));
    expect(randNormalAt(1234, 99)).not.toBe(randNormalAt(1235, 99));
  });

  it("return float32-representable values; uniforms lie in [0, 1)", () => {
    for (let i = 0; i < 10_000; i++) {
      const u = randUniformAt(7, i);
      expect(u).toBeGreaterThanOrEqual(0);
      expect(u).toBeLessThan(1);
      expect(Math.fround(u)).toBe(u);
      const z = randNormalAt(7, i);
      expect(Number.isFinite(z)).toBe(true);
      expect(Math.fround(z)).toBe(z);
    }
  });

  it("handle indices up to 2^53 - 1, using the high counter word", () => {
    const big = Number.MAX_SAFE_INTEGER;
    const u = randUniformAt(3, big);
    expect(u).toBeGreaterThanOrEqual(0);
    expect(u).toBeLessThan(1);
    // Same low 32 counter bits, different high word: the values must differ.
    expect(randUniformAt(3, 5)).not.toBe(randUniformAt(3, 5 + 4 * 2 ** 32));
    expect(randNormalAt(3, 5)).not.toBe(randNormalAt(3, 5 + 4 * 2 ** 32));
  });

  it("accept negative and > 32-bit seeds, and reject unsafe inputs", () => {
    expect(randUniformAt(-1, 0)).not.toBe(randUniformAt(0xffffffff, 0)); // differ in the high key word
    expect(randUniformAt(2 ** 40, 0)).not.toBe(randUniformAt(0, 0));
    expect(() => randUniformAt(1.5, 0)).toThrow(RangeError);
    expect(() => randUniformAt(1, -1)).toThrow(RangeError);
    expect(() => randNormalAt(1, 2 ** 53)).toThrow(RangeError);
  });
});

describe("fillRandom", () => {
  it("matches the per-element functions at each global index", () => {
    const out = new Float32Array(6 * 7);
    fillRandom("uniform", 11, [6, 7], [0, 0], [6, 7], out);
    for (let i = 0; i < out.length; i++) expect(out[i]).toBe(randUniformAt(11, i));
    fillRandom("normal", 11, [6, 7], [0, 0], [6, 7], out);
    for (let i = 0; i < out.length; i++) expect(out[i]).toBe(randNormalAt(11, i));
  });

  for (const kind of ["normal", "uniform"] as const) {
    it(`${kind}: a [37, 53] tensor filled whole equals the same tensor filled as 3 uneven boxes`, () => {
      const [R, C] = [37, 53];
      const opts = { mean: 0.5, std: 2, low: -3, high: 5 };
      const whole = fillRandom(kind, 2024, [R, C], [0, 0], [R, C], new Float32Array(R * C), opts);
      // Boxes tile the tensor: top-left 37x20, top-right 15x33, bottom-right 22x33.
      const boxes: Array<[number[], number[]]> = [
        [[0, 0], [37, 20]],
        [[0, 20], [15, 33]],
        [[15, 20], [22, 33]],
      ];
      const seen = new Uint8Array(R * C);
      for (const [offset, local] of boxes) {
        const part = fillRandom(kind, 2024, [R, C], offset, local, new Float32Array(local[0] * local[1]), opts);
        for (let i = 0; i < local[0]; i++) {
          for (let j = 0; j < local[1]; j++) {
            const g = (offset[0] + i) * C + (offset[1] + j);
            seen[g]++;
            expect(part[i * local[1] + j]).toBe(whole[g]);
          }
        }
      }
      expect(seen.every((n) => n === 1)).toBe(true);
    });
  }

  it("is shard-independent in 3-D too, with boxes cutting philox blocks mid-way", () => {
    const shape = [5, 6, 7];
    const whole = fillRandom("normal", 9, shape, [0, 0, 0], shape, new Float32Array(210));
    const part = fillRandom("normal", 9, shape, [1, 2, 3], [3, 4, 3], new Float32Array(36));
    let k = 0;
    for (let a = 1; a < 4; a++)
      for (let b = 2; b < 6; b++) for (let c = 3; c < 6; c++) expect(part[k++]).toBe(whole[(a * 6 + b) * 7 + c]);
  });

  it("carries the counter across a 2^32 block boundary and handles indices near 2^53", () => {
    const n = 2 ** 34 + 8;
    const start = 2 ** 34 - 6; // philox blocks 2^32 - 2 .. 2^32 + 1
    const out = fillRandom("uniform", 5, [n], [start], [14], new Float32Array(14));
    for (let i = 0; i < 14; i++) expect(out[i]).toBe(randUniformAt(5, start + i));
    const shape = [2 ** 26, 2 ** 27]; // 2^53 elements
    const tail = fillRandom("normal", 5, shape, [2 ** 26 - 1, 2 ** 27 - 6], [1, 6], new Float32Array(6));
    for (let i = 0; i < 6; i++) expect(tail[i]).toBe(randNormalAt(5, 2 ** 53 - 6 + i));
  });

  it("applies mean/std and low/high", () => {
    const z = fillRandom("normal", 3, [100], [0], [100], new Float32Array(100));
    const scaled = fillRandom("normal", 3, [100], [0], [100], new Float32Array(100), { mean: 10, std: 0.5 });
    for (let i = 0; i < 100; i++) expect(scaled[i]).toBe(Math.fround(10 + 0.5 * z[i]));
    const u = fillRandom("uniform", 3, [100], [0], [100], new Float32Array(100), { low: -2, high: 2 });
    for (let i = 0; i < 100; i++) {
      expect(u[i]).toBe(Math.fround(-2 + 4 * randUniformAt(3, i)));
      expect(u[i]).toBeGreaterThanOrEqual(-2);
      expect(u[i]).toBeLessThan(2);
    }
  });

  it("handles rank-0 tensors and empty boxes, and rejects bad boxes", () => {
    const scalar = fillRandom("uniform", 1, [], [], [], new Float32Array(1));
    expect(scalar[0]).toBe(randUniformAt(1, 0));
    const untouched = new Float32Array([42]);
    fillRandom("normal", 1, [4, 0], [0, 0], [4, 0], untouched);
    expect(untouched[0]).toBe(42);
    expect(() => fillRandom("normal", 1, [4, 4], [2, 0], [3, 4], new Float32Array(12))).toThrow(RangeError);
    expect(() => fillRandom("normal", 1, [4, 4], [0], [4, 4], new Float32Array(16))).toThrow(RangeError);
    expect(() => fillRandom("normal", 1, [4, 4], [0, 0], [4, 4], new Float32Array(15))).toThrow(RangeError);
    expect(() => fillRandom("normal", 1, [2 ** 27, 2 ** 27], [0, 0], [1, 1], new Float32Array(1))).toThrow(RangeError);
  });

  it("1M normals have mean ~0 and std ~1; 1M uniforms lie in [0, 1) with mean ~1/2", () => {
    const n = 1 << 20;
    const out = new Float32Array(n);
    fillRandom("normal", 77, [1024, 1024], [0, 0], [1024, 1024], out);
    let sum = 0;
    let sumSq = 0;
    for (let i = 0; i < n; i++) {
      sum += out[i];
      sumSq += out[i] * out[i];
    }
    const mean = sum / n;
    const std = Math.sqrt(sumSq / n - mean * mean);
    expect(Math.abs(mean)).toBeLessThan(0.01);
    expect(Math.abs(std - 1)).toBeLessThan(0.01);

    fillRandom("uniform", 77, [n], [0], [n], out);
    let uSum = 0;
    let min = Infinity;
    let max = -Infinity;
    for (let i = 0; i < n; i++) {
      uSum += out[i];
      if (out[i] < min) min = out[i];
      if (out[i] > max) max = out[i];
    }
    expect(min).toBeGreaterThanOrEqual(0);
    expect(max).toBeLessThan(1);
    expect(Math.abs(uSum / n - 0.5)).toBeLessThan(0.01);
  });

  it("fills 1M elements in well under a second", () => {
    const out = new Float32Array(1 << 20);
    fillRandom("normal", 1, [1 << 20], [0], [1 << 20], out); // warm up the JIT
    for (const kind of ["normal", "uniform"] as const) {
      const t0 = performance.now();
      fillRandom(kind, 2, [1024, 1024], [0, 0], [1024, 1024], out);
      expect(performance.now() - t0).toBeLessThan(1000);
    }
  });
});

describe("mulhi32", () => {
  it("is the high word of the exact 64-bit product (BigInt), edge values and 20000 random pairs", async () => {
    const { mulhi32 } = await import("../../../compiler/numeric/rng.ts");
    const exact = (a: number, b: number) => Number((BigInt(a) * BigInt(b)) >> 32n);
    const edges = [0, 1, 2, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff, 0xd2511f53, 0xcd9e8d57];
    for (const a of edges) for (const b of edges) expect(mulhi32(a, b), `${a} * ${b}`).toBe(exact(a, b));
    let x = 0x12345678;
    const next = () => ((x = (Math.imul(x, 1664525) + 1013904223) >>> 0), x);
    for (let i = 0; i < 20000; i++) {
      const a = next(), b = next();
      expect(mulhi32(a, b)).toBe(exact(a, b));
    }
  });
});
