// bench/gpu/lib/compare.ts's bit-for-bit helpers, which the GPU checks count mismatches with.
import { describe, expect, it } from "vitest";
import { countDiffers, firstDiffer, sameValue } from "../../bench/gpu/lib/compare.ts";

describe("bench compare helpers", () => {
  it("NaN meets NaN, -0 differs from 0, values must be equal", () => {
    expect(sameValue(NaN, NaN)).toBe(true);
    expect(sameValue(-0, 0)).toBe(false);
    expect(sameValue(1.5, 1.5)).toBe(true);
    expect(sameValue(1.5, NaN)).toBe(false);
  });
  it("count and locate the differing elements", () => {
    const ref = [1, NaN, 0, 3, 4], got = Float32Array.from([1, NaN, -0, 3, 5]);
    expect(countDiffers(got, ref)).toBe(2);
    expect(firstDiffer(got, ref)).toBe(2);
    expect(firstDiffer(ref, ref)).toBe(-1);
    expect(countDiffers(ref, ref)).toBe(0);
  });
});
