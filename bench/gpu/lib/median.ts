// The median the GPU benches report: the upper middle of the sorted values (NaN for none), one helper for
// the benches that time a step N times (runtime/cuda/gemm-tune.ts and lib/power-phases.ts average the two middles).
export const median = (xs: readonly number[]): number => (xs.length ? [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]! : NaN);
