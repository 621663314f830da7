// bench/gpu/lib/power-phases.ts: nvidia-smi samples matched to bench phases by their timestamps.
import { describe, expect, it } from "vitest";
import { clocksByPhase, parseSamples, smiTime } from "../../bench/gpu/lib/power-phases.ts";

describe("power-phases", () => {
  it("reads nvidia-smi's local timestamps to the millisecond", () => {
    expect(smiTime("2026/11/24 05:40:01.123")).toBe(new Date(2026, 10, 24, 5, 40, 1, 123).getTime());
    expect(smiTime("2026/11/24 05:40:01")).toBe(new Date(2026, 10, 24, 5, 40, 1, 0).getTime());
    expect(smiTime("not a time")).toBeNaN();
  });

  it("gives each phase the median of its samples after the settling time, and says when none fell inside", () => {
    const t = (ms: number) => {
      const d = new Date(2026, 10, 24, 5, 0, 0, 0);
      d.setTime(d.getTime() + ms);
      const p = (n: number, w = 2) => String(n).padStart(w, "0");
      return `${d.getFullYear()}/${p(d.getMonth() + 1)}/${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
    };
    const base = new Date(2026, 10, 24, 5, 0, 0, 0).getTime();
    const lines = [
      `${t(100)}, 1980, 200.5, Not Active`, // phase a, inside its settling time: left out
      `${t(400)}, 1600, 690.0, Active`,
      `${t(450)}, 1620, 695.0, Active`,
      `${t(500)}, 1610, 700.0, Not Active`,
      "garbage line",
      `${t(1500)}, 1980, 300.0, Not Active`, // phase b
      `${t(1600)}, 1965, 310.0, Not Active`,
    ].join("\n");
    const samples = parseSamples(lines);
    expect(samples).toHaveLength(6);
    const [a, b, c] = clocksByPhase(
      [
        { label: "a", t0: base, t1: base + 1000 },
        { label: "b", t0: base + 1100, t1: base + 2000 },
        { label: "c", t0: base + 3000, t1: base + 4000 },
      ],
      samples,
    );
    expect(a).toEqual({ label: "a", samples: 3, smMHz: 1610, powerW: 695, capShare: 2 / 3 });
    expect(b).toMatchObject({ samples: 2, smMHz: 1980, powerW: 310, capShare: 0 });
    expect(c!.samples).toBe(0);
    expect(c!.smMHz).toBeNaN();
  });
});
