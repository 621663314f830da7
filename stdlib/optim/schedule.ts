// Learning-rate schedule: linear warmup, then cosine decay to `minRatio` of the peak.
export interface Schedule {
  peak: number;
  warmup: number;
  total: number;
  minRatio: number;
}

export function lrAt(s: Schedule, step: number): number {
  if (step < s.warmup) return (s.peak * (step + 1)) / s.warmup;
  const t = Math.min(1, (step - s.warmup) / Math.max(1, s.total - s.warmup));
  return s.peak * (s.minRatio + (1 - s.minRatio) * 0.5 * (1 + Math.cos(Math.PI * t)));
}
