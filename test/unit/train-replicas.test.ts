// Redundant experts in training. Three training steps with replicas re-planned after every step, on
// every layout with an expert axis (slots uneven over the ranks included), give the losses and
// updated parameters of the unsharded run without replicas. A run saved mid-way between two re-plans
// and resumed through a checkpoint (replica maps and observed load restored) continues bit for bit.
// A re-plan feeds new maps without recompiling; node-limited routing with replicas is refused.
import { afterAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Trainer } from "../../stdlib/train/trainer.ts";
import { layoutByName, Layout, LAYOUTS } from "../../stdlib/nn/layout.ts";
import { ADAMW_DEFAULTS } from "../../stdlib/optim/adamw.ts";
import { maxRelDiff } from "../../stdlib/value.ts";
import { BatchLoader } from "../../stdlib/train/data.ts";
import { load, save } from "../../stdlib/checkpoint/index.ts";
import type { LmConfig } from "../../stdlib/nn/transformer.ts";

const root = mkdtempSync(join(tmpdir(), "replicas-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const plain: LmConfig = {
  vocab: 40, model: 16, heads: 2, layers: 2, seq: 8, ffn: 24,
  moe: { experts: 4, topK: 2, ffn: 12, shared: 1, score: "softmax", auxLoss: 0.01, moeFrom: 1 },
};
const withReplicas = (slots: number, every: number): LmConfig => ({ ...plain, moe: { ...plain.moe!, redundant: { slots, every } } });
const TOKENS = Int32Array.from({ length: 5000 }, (_, i) => (Math.imul(i + 17, 2654435761) >>> 9) % plain.vocab);

function trainer(model: LmConfig, layout: Layout, biasRate = 0.01): Trainer {
  return new Trainer({ model, layout, batch: 4, seed: 11, biasRate, opt: { ...ADAMW_DEFAULTS, lr: 1e-2 }, schedule: { peak: 1e-2, warmup: 2, total: 10, minRatio: 0.1 } });
}
function train(tr: Trainer, loader: BatchLoader, steps: number) {
  return Array.from({ length: steps }, () => {
    const b = loader.next();
    return tr.run(b.inputs, b.targets);
  });
}
const loader = () => new BatchLoader(TOKENS, { batch: 4, seq: plain.seq, seed: 5 });

describe("training with redundant experts", () => {
  const ref = trainer(plain, layoutByName("single"));
  ref.readParams = true;
  const refSteps = train(ref, loader(), 3);
  const layouts = [
    ...Object.keys(LAYOUTS).map((n) => layoutByName(n)).filter((l) => l.expertAxis),
    new Layout("dp1-ep3", { dp: 1, ep: 3 }, { dp: "data", ep: "expert" }),
    new Layout("hsdp-ep", { replica: 2, shard: 2, ep: 2 }, { replica: "data", shard: "fsdp", ep: "expert" }),
  ];
  for (const layout of layouts) {
    // 3 extra slots: 7 over ep=2 (4, 3), over ep=4 (2, 2, 2, 1), over ep=3 (3, 2, 2)
    it(`equals the unsharded run without replicas: ${layout}`, () => {
      const tr = trainer(withReplicas(3, 1), layout);
      tr.readParams = true;
      const instrs = tr.program.plan.instrs.length;
      const data = loader(), steps = train(tr, data, 2);
      const used = tr.replicas.maps[0]!.slice(); // the map step 3 runs with
      steps.push(...train(tr, data, 1));
      steps.forEach((m, i) => expect(Math.abs(m.loss - refSteps[i]!.loss) / refSteps[i]!.loss, `step ${i + 1} loss`).toBeLessThan(1e-5));
      for (const s of tr.ps.specs) expect(maxRelDiff(tr.last[s.name]!, ref.last[s.name]!), s.name).toBeLessThan(1e-3);
      expect(steps.every((m) => m.replanned)).toBe(true);
      expect(tr.replicas.maps[0]!.length).toBe(7);
      expect(tr.program.plan.instrs.length).toBe(instrs); // re-plans are fed, not compiled
      // the slots carry every routed token; the logical load is their sum per expert
      const m = steps[2]!;
      expect(m.slotLoads[0]!.reduce((a, b) => a + b, 0)).toBe(4 * plain.seq * 2);
      const back = new Float32Array(4);
      used.forEach((e, s) => (back[e]! += m.slotLoads[0]![s]!));
      expect(Array.from(back)).toEqual(Array.from(m.loads[0]!));
    });
  }

  it("resumes between two re-plans through a checkpoint, bit for bit", async () => {
    const bits = (x: number) => Buffer.from(new Float32Array([x]).buffer).readUInt32LE(0);
    const layout = layoutByName("dp-ep"), model = withReplicas(2, 3);
    // (the losses do not depend on the map: replicas change where experts run, not what they compute;
    // so the maps and the observed load are compared as well)
    const uninterrupted = trainer(model, layout);
    const whole = train(uninterrupted, loader(), 8).map((m) => bits(m.loss));
    const first = trainer(model, layout), data = loader();
    train(first, data, 4); // re-planned after step 3; step 4's load is observed, not yet used
    const initial = trainer(model, layout).replicas.maps[0]!;
    expect(Array.from(first.replicas.maps[0]!)).not.toEqual(Array.from(initial));
    expect(first.replicas.observed[0]!.reduce((a, b) => a + b, 0)).toBe(4 * plain.seq * 2);
    const dir = join(root, "ck");
    await save(dir, { ...first.exportState(), extras: { data: data.state() as never } });
    const second = trainer(model, layout);
    const ck = await load(dir, { mesh: { axes: layout.axes, sizes: layout.axes.map((a) => layout.mesh[a]!) }, tensors: second.stateTypes() });
    second.importState({ step: ck.step, tensors: ck.tensors });
    expect(Array.from(second.replicas.maps[0]!)).toEqual(Array.from(first.replicas.maps[0]!));
    expect(Array.from(second.replicas.observed[0]!)).toEqual(Array.from(first.replicas.observed[0]!));
    const rest = train(second, BatchLoader.fromState(TOKENS, ck.extras.data as never), 4).map((m) => bits(m.loss));
    expect(rest).toEqual(whole.slice(4));
    expect(second.replicas.maps.map((m) => Array.from(m))).toEqual(uninterrupted.replicas.maps.map((m) => Array.from(m)));
    expect(second.replicas.observed.map((m) => Array.from(m))).toEqual(uninterrupted.replicas.observed.map((m) => Array.from(m)));
  }, 60_000);

  it("refuses node-limited routing with replicas and bad settings", () => {
    const nl = { ...plain, moe: { ...plain.moe!, nodeLimit: { groups: 2, maxGroups: 1 }, redundant: { slots: 1, every: 1 } } };
    expect(() => trainer(nl, layoutByName("ep"))).toThrow(/node-limited routing and redundant experts cannot be combined/);
    expect(() => trainer(withReplicas(2, 0), layoutByName("ep"))).toThrow(/redundant.every .* must be a positive integer/);
  });
});
