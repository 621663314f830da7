// Micro-batches: the LM with its batch split into two chains (stdlib/nn/transformer.ts) computes the
// loss, the expert loads and every parameter's gradient of the unsplit batch, up to f32 summation
// order, on the expert-parallel layouts with the composed and the fused dispatch (the auxiliary loss
// on: it is not linear in the batch, so it must see the whole batch's statistics).
import { describe, expect, it } from "vitest";
import { traceLm, dataInputs } from "../../stdlib/train/trainer.ts";
import { grad } from "../../stdlib/autodiff.ts";
import { piecesOf, Program, type Pieces } from "../../stdlib/program.ts";
import { layoutByName } from "../../stdlib/nn/layout.ts";
import { maxRelDiff, type GlobalValue } from "../../stdlib/value.ts";
import type { LmConfig } from "../../stdlib/nn/transformer.ts";
import { UsageError } from "../../compiler/errors.ts";

const base: LmConfig = {
  vocab: 40, model: 16, heads: 2, layers: 2, seq: 8, ffn: 24,
  moe: { experts: 4, topK: 2, ffn: 12, shared: 1, score: "softmax", auxLoss: 0.01, moeFrom: 1 },
};
const B = 8;
const ids = Int32Array.from({ length: B * base.seq }, (_, i) => (i * 7 + 3) % base.vocab);
const targets = Int32Array.from({ length: B * base.seq }, (_, i) => (i * 11 + 5) % base.vocab);

/** Loss, loads and gradients of one forward + backward on `layout` with `cfg`. */
function step(layoutName: string, cfg: LmConfig) {
  const layout = layoutByName(layoutName);
  const t = traceLm(layout, cfg, B);
  const grads = grad(t.out.loss, Object.fromEntries(t.ps.stored));
  const loads = Object.fromEntries(t.out.loads.map((l, i) => [`load.${i}`, l]));
  const prog = new Program(t.mesh, { loss: t.out.loss, ...loads, ...Object.fromEntries(Object.entries(grads).map(([n, g]) => [`grad.${n}`, g])) });
  const spec = t.mesh.spec, R = spec.axes.map(() => "R" as const);
  const feeds: Record<string, Pieces> = { ...t.ps.initialise(3) };
  const M = cfg.microBatches ?? 1, rows = B / M, n = rows * cfg.seq;
  const tok = { dims: [{ name: "batch", size: rows }, { name: "seq", size: cfg.seq }], dtype: "i32" as const, placements: layout.activation(["batch", "seq"]) };
  dataInputs(M).forEach(([i, tg], m) => {
    feeds[i] = piecesOf(spec, tok, ids.subarray(m * n, (m + 1) * n));
    feeds[tg] = piecesOf(spec, tok, targets.subarray(m * n, (m + 1) * n));
  });
  // a non-zero selection bias, so the routing is not the scores' alone
  t.biases.forEach((_, k) => (feeds[`bias.l${k + 1}`] = piecesOf(spec, { dims: [{ name: "experts", size: 4 }], dtype: "f32", placements: R }, Float32Array.from([0.01, -0.02, 0.03, 0]))));
  return prog.runGlobal(feeds).values as Record<string, GlobalValue>;
}

describe("two micro-batches equal the unsplit batch", () => {
  for (const layout of ["dp-ep", "ep"])
    for (const fusedDispatch of [false, true])
      it(`${layout}, ${fusedDispatch ? "fused" : "composed"} dispatch`, () => {
        const cfg = { ...base, moe: { ...base.moe!, fusedDispatch } };
        const one = step(layout, cfg), two = step(layout, { ...cfg, microBatches: 2 });
        expect(Object.keys(two).sort()).toEqual(Object.keys(one).sort());
        expect(maxRelDiff(two.loss!, one.loss!)).toBeLessThan(1e-6);
        expect([...two["load.0"]!.data]).toEqual([...one["load.0"]!.data]);
        for (const name of Object.keys(one).filter((k) => k.startsWith("grad.")))
          expect(maxRelDiff(two[name]!, one[name]!), name).toBeLessThan(1e-4);
      });
});

describe("micro-batch misuse", () => {
  it("refuses a count that does not divide the batch, saying how to fix it", () => {
    expect(() => traceLm(layoutByName("ep"), { ...base, microBatches: 3 }, B)).toThrow(UsageError);
    expect(() => traceLm(layoutByName("ep"), { ...base, microBatches: 3 }, B)).toThrow(/dividing the batch \(8\)/);
  });
});
