// Layout equivalence: one training step (forward, autodiff, clipping, AdamW with BF16 moments) from
// the same seed and data under every parallel layout gives the loss and the updated parameters of
// the unsharded step, within float32 tolerance. Parameters come back in their own layouts
// (FSDP-sharded, tensor-parallel, expert-parallel) and are compared as global values.
import { afterAll, describe, expect, it } from "vitest";
import { Trainer } from "../../stdlib/train/trainer.ts";
import { layoutByName, Layout, LAYOUTS } from "../../stdlib/nn/layout.ts";
import { ADAMW_DEFAULTS } from "../../stdlib/optim/adamw.ts";
import { maxRelDiff } from "../../stdlib/value.ts";
import type { LmConfig } from "../../stdlib/nn/transformer.ts";

const model: LmConfig = {
  vocab: 40, model: 16, heads: 2, layers: 2, seq: 8, ffn: 24,
  moe: { experts: 4, topK: 2, ffn: 12, shared: 1, score: "softmax", auxLoss: 0.01, moeFrom: 1 },
};
const B = 6; // uneven over 4 ranks
const ids = Int32Array.from({ length: B * model.seq }, (_, i) => (i * 7 + 3) % model.vocab);
const targets = Int32Array.from({ length: B * model.seq }, (_, i) => (i * 11 + 5) % model.vocab);

function oneStep(layout: Layout) {
  const tr = new Trainer({ model, layout, batch: B, opt: ADAMW_DEFAULTS, schedule: { peak: 1e-2, warmup: 1, total: 10, minRatio: 0.1 }, seed: 7, biasRate: 0 });
  tr.readParams = true;
  const m = tr.run(ids, targets);
  return { m, tr };
}

const reference = oneStep(layoutByName("single"));
const report: string[] = [];

describe("one training step under each layout equals the unsharded step", () => {
  const layouts: Layout[] = [
    ...Object.keys(LAYOUTS).filter((n) => n !== "single").map((n) => layoutByName(n)),
    new Layout("dp3-uneven", { dp: 3 }, { dp: "fsdp" }),
    new Layout("hsdp-ep", { replica: 2, shard: 2, ep: 2 }, { replica: "data", shard: "fsdp", ep: "expert" }),
  ];
  for (const layout of layouts) {
    it(layout.toString(), () => {
      const { m, tr } = oneStep(layout);
      expect(Math.abs(m.loss - reference.m.loss) / Math.abs(reference.m.loss)).toBeLessThan(1e-5);
      let worst = 0, worstName = "";
      for (const s of tr.ps.specs) {
        const d = maxRelDiff(tr.last[s.name]!, reference.tr.last[s.name]!);
        if (d > worst) (worst = d), (worstName = s.name);
        // Adam's first step moves each element by lr * g/(|g| + eps): where a gradient element is at
        // float32 noise level (measured: |g| ~ 2e-8 in l1.moe.shared0.w2 under tp), summation order
        // changes its update by a visible fraction, so parameters get 1e-3; the loss gets 1e-5.
        expect(d, `parameter ${s.name}`).toBeLessThan(1e-3);
      }
      // updated parameters and moments come back in their parameter's own placements
      for (const s of tr.ps.specs) {
        const out = tr.program.plan.values[tr.program.plan.outputs[tr.program.outputNames.indexOf(s.name)]!]!;
        expect(out.type.placements, s.name).toEqual(s.storage);
      }
      report.push(`${layout.toString().padEnd(52)} loss ${m.loss.toFixed(6)} (ref ${reference.m.loss.toFixed(6)})  max rel diff of updated params ${worst.toExponential(2)} (${worstName})`);
    });
  }
  afterAll(() => console.log(["layout equivalence after one step:", ...report].join("\n")));
});
