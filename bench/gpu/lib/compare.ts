// How the GPU checks compare a result with its reference (bench/gpu/*.ts, bench/gpu/lib/*.ts).

/** max |got - ref| / max |ref| (max |got - ref| where ref is all zeros); NaN must meet NaN, else Infinity. */
export function relError(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    const a = got[i]!, b = ref[i]!;
    if (a !== a || b !== b) {
      if (a !== a && b !== b) continue;
      return Infinity;
    }
    num = Math.max(num, Math.abs(a - b));
    den = Math.max(den, Math.abs(b));
  }
  return den === 0 ? num : num / den;
}

/** Equal bit for bit as the checks read it: the same value (-0 apart from 0), or NaN against NaN. */
export const sameValue = (a: number, b: number): boolean => Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b));

/** How many elements of `got` are not sameValue as `ref`'s. */
export function countDiffers(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  let n = 0;
  for (let i = 0; i < ref.length; i++) if (!sameValue(got[i]!, ref[i]!)) n++;
  return n;
}

/** The first index where `got` is not sameValue as `ref`, or -1. */
export function firstDiffer(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  for (let i = 0; i < ref.length; i++) if (!sameValue(got[i]!, ref[i]!)) return i;
  return -1;
}
