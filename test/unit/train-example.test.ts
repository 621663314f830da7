// The training example runs end to end through the CLI on a short schedule: the loss falls, the
// held-out loss, the expert load and a sample are printed; bad options are usage errors.
import { describe, expect, it } from "vitest";
import { main } from "../../stdlib/cli/main.ts";

async function cli(...argv: string[]) {
  const out: string[] = [], err: string[] = [];
  const code = await main(argv, (s) => out.push(s), (s) => err.push(s));
  return { code, out: out.join("\n"), err: err.join("\n") };
}

describe("examples/train-moe-lm.ts", () => {
  it("trains a few steps on dp=2 x ep=2 and reports loss, load and a sample", async () => {
    const r = await cli("run", "examples/train-moe-lm.ts", "--steps", "6", "--batch", "4", "--sample", "8");
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const m = /loss \(nats\/byte\): first ([\d.]+), middle ([\d.]+), last ([\d.]+); held-out ([\d.]+)/.exec(r.out);
    expect(m, r.out).not.toBeNull();
    expect(Number(m![3])).toBeLessThan(Number(m![1]));
    expect(r.out).toMatch(/layout: dp-ep \(dp=2:data, ep=2:expert\)/);
    expect(r.out).toMatch(/expert load max\/mean/);
    expect(r.out).toMatch(/sample: "The /);
  }, 120_000);

  it("prints its options and refuses unknown ones", async () => {
    expect((await cli("run", "examples/train-moe-lm.ts", "--help")).out).toMatch(/--no-balance/);
    const bad = await cli("run", "examples/train-moe-lm.ts", "--frobnicate");
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/unknown option --frobnicate/);
    expect((await cli("run", "examples/train-moe-lm.ts", "--layout", "nope")).err).toMatch(/unknown layout 'nope'/);
  });
});
