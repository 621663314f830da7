// The training example runs end to end through the CLI on a short schedule: the loss falls, the
// held-out loss, the expert load and a sample are printed; with --redundant on a skewed routing the
// per-slot load evens out after the first re-plan; bad options are usage errors.
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

  it("--redundant: per-slot load max/mean drops after the first re-plan on a skewed routing", async () => {
    const r = await cli("run", "examples/train-moe-lm.ts", "--steps", "10", "--batch", "4", "--no-balance", "--redundant", "4", "--replan-every", "5", "--no-eval");
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    console.log(r.out.split("\n").filter((l) => /redundant|per slot|per rank|over all/.test(l)).join("\n"));
    expect(r.out).toMatch(/redundant experts: 4 extra slots per MoE layer \(12 slots over 2 expert-axis rank\(s\)\), re-planned every 5 steps/);
    const slot = /per slot +([\d.]+) → ([\d.]+) +\(per expert, i\.e\. without replicas: ([\d.]+) → ([\d.]+)\)/.exec(r.out);
    expect(slot, r.out).not.toBeNull();
    const [before, after, , without] = slot!.slice(1).map(Number) as [number, number, number, number];
    expect(after).toBeLessThan(before);
    expect(after).toBeLessThan(without); // and lower than the same steps' per-expert load without replicas
    expect(r.out).toMatch(/before the first re-plan \(steps 1-5\) → after it \(steps 6-10\)/);
  }, 120_000);

  it("prints its options and refuses unknown ones", async () => {
    const help = (await cli("run", "examples/train-moe-lm.ts", "--help")).out;
    expect(help).toMatch(/--no-balance/);
    expect(help).toMatch(/--redundant R/);
    expect(help).toMatch(/--replan-every N/);
    const bad = await cli("run", "examples/train-moe-lm.ts", "--frobnicate");
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/unknown option --frobnicate/);
    expect((await cli("run", "examples/train-moe-lm.ts", "--layout", "nope")).err).toMatch(/unknown layout 'nope'/);
  });
});
