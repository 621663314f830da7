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
