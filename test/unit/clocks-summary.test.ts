// bench/gpu/lib/clocks.py: the SM clock and power summary run.sh prints after each GPU entry, on
// synthetic nvidia-smi samples (busy and idle, two GPUs, a malformed line).
import { describe, expect, it } from "vitest";
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const PY = spawnSync("python3", ["--version"]).status === 0;
const summarize = (csv: string): string => {
  const f = join(mkdtempSync(join(tmpdir(), "shardts-clocks-")), "x-clocks.csv");
  writeFileSync(f, csv);
  const r = spawnSync("python3", ["bench/gpu/lib/clocks.py", f], { encoding: "utf8" });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout.trim();
};

describe.skipIf(!PY)("GPU clock log summary (bench/gpu/lib/clocks.py)", () => {
  it("counts busy samples only: median clock and power, the limit, and how often each reason held the clock back", () => {
    const row = (gpu: number, util: number, sm: number, w: number, cap: boolean) =>
      `${gpu}, ${util}, ${sm}, 1980, ${w}, 700.00, 61, ${cap ? "Active" : "Not Active"}, Not Active, Not Active`;
    const csv = [row(0, 0, 1980, 90, false), row(0, 100, 1600, 690, true), row(0, 99, 1500, 700, true), row(0, 98, 1700, 650, false), "garbage line", row(1, 0, 345, 80, false)].join("\n");
    const out = summarize(csv).split("\n");
    expect(out[0]).toBe("clocks gpu 0: 3 of 4 samples busy; SM clock median 1600 MHz (min 1500, max 1700; top 1980); power median 690 W (max 700; limit 700); temperature max 61 C; busy samples with the clock held back by: power cap 2, thermal 0, hw slowdown 0");
    expect(out[1]).toBe("clocks gpu 1: no busy samples (utilization >= 1%)");
  });

  it("--fields names the columns the summary reads, in its order (run.sh passes them to nvidia-smi)", () => {
    const r = spawnSync("python3", ["bench/gpu/lib/clocks.py", "--fields"], { encoding: "utf8" });
    expect(r.stdout.trim().split(",")).toEqual(["index", "utilization.gpu", "clocks.sm", "clocks.max.sm", "power.draw", "enforced.power.limit", "temperature.gpu", "clocks_event_reasons.sw_power_cap", "clocks_event_reasons.sw_thermal_slowdown", "clocks_event_reasons.hw_slowdown"]);
  });

  it("an empty log (no nvidia-smi, or fields it does not know) says so and exits 0", () => {
    expect(summarize("")).toMatch(/no samples/);
    expect(summarize("Field \"clocks_event_reasons.sw_power_cap\" is not a valid field to query.\n")).toMatch(/no samples/);
  });
});
