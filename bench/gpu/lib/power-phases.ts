// The SM clock and board power while each phase of a bench ran: nvidia-smi samples (a line every 50 ms of
// `timestamp, clocks.sm [MHz], power.draw [W], clocks_event_reasons.sw_power_cap`) matched by their
// timestamps to the phases' wall-clock windows (bench/gpu/gemm-power.ts). The first `settleMs` of a
// phase are left out: the clock needs a moment to move after the work changes.

export interface Phase {
  label: string;
  /** Date.now() at the phase's start and end. */
  t0: number;
  t1: number;
}
export interface Sample {
  t: number;
  smMHz: number;
  powerW: number;
  powerCap: boolean;
}
export interface PhaseClocks {
  label: string;
  samples: number;
  smMHz: number;
  powerW: number;
  /** Share of the samples with the software power cap holding the clock back. */
  capShare: number;
}

/** nvidia-smi's "YYYY/MM/DD HH:MM:SS.mmm" (local time) as ms since the epoch, or NaN. */
export function smiTime(s: string): number {
  const m = /^(\d{4})\/(\d{2})\/(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?$/.exec(s.trim());
  if (!m) return NaN;
  const [, y, mo, d, h, mi, se, ms] = m;
  return new Date(+y!, +mo! - 1, +d!, +h!, +mi!, +se!, ms ? +ms.padEnd(3, "0") : 0).getTime();
}

/** The samples in nvidia-smi's csv,noheader,nounits output; lines that do not parse are skipped. */
export function parseSamples(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(",").map((x) => x.trim());
    if (f.length !== 4) continue;
    const t = smiTime(f[0]!), smMHz = Number(f[1]), powerW = Number(f[2]);
    if (!Number.isFinite(t) || !Number.isFinite(smMHz) || !Number.isFinite(powerW)) continue;
    out.push({ t, smMHz, powerW, powerCap: /^active$/i.test(f[3]!) });
  }
  return out;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)]! : NaN;
};

/** Each phase's median clock and power over its samples after the first settleMs (NaN where none fell inside). */
export function clocksByPhase(phases: Phase[], samples: Sample[], settleMs = 300): PhaseClocks[] {
  return phases.map((p) => {
    const inside = samples.filter((s) => s.t >= p.t0 + settleMs && s.t <= p.t1);
    return {
      label: p.label,
      samples: inside.length,
      smMHz: median(inside.map((s) => s.smMHz)),
      powerW: median(inside.map((s) => s.powerW)),
      capShare: inside.length ? inside.filter((s) => s.powerCap).length / inside.length : NaN,
    };
  });
}
