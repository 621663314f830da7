// A rank-local process initialises only its own ranks' parameters (ParamStore.initialise(seed, ranks)
// through runPlanCpu's `ranks`): the same values, bit for bit, as the whole mesh's run, holes elsewhere.
import { describe, expect, it } from "vitest";
import { traceLm } from "../../stdlib/train/trainer.ts";
import { layoutByName } from "../../stdlib/nn/index.ts";
import { runPlanCpu } from "../../runtime/cpu/executor.ts";
import { Mesh, type AnyDTensor } from "../../stdlib/index.ts";
import { input, Program } from "../../stdlib/program.ts";
import { redistribute } from "../../stdlib/ops/redistribute.ts";
import type { LmConfig } from "../../stdlib/nn/index.ts";

const model: LmConfig = { vocab: 64, model: 32, heads: 2, layers: 2, seq: 8, ffn: 64, moe: { experts: 4, topK: 2, ffn: 16, shared: 1, score: "softmax", auxLoss: 0 } };

describe("initialising some ranks only", () => {
  for (const [name, mesh] of [["fsdp-ep", { dp: 2, ep: 2 }], ["tp", { tp: 2 }], ["dp", { dp: 3 }]] as const)
    it(`${name}: each rank's own pieces equal the whole run's, the rest are holes`, () => {
      const { ps } = traceLm(layoutByName(name, mesh), model, 4);
      const all = ps.initialise(11), world = Object.values(mesh).reduce((a, b) => a * b, 1);
      for (let r = 0; r < world; r++) {
        const mine = ps.initialise(11, [r]);
        for (const [n, pieces] of Object.entries(all)) {
          expect(Object.keys(mine[n]!), n).toEqual([String(r)]);
          expect(mine[n]![r]!.shape).toEqual(pieces[r]!.shape);
          expect(Buffer.from(mine[n]![r]!.data.buffer).equals(Buffer.from(pieces[r]!.data.buffer)), `${n} rank ${r}`).toBe(true);
        }
      }
    });

  it("is refused for a plan whose ranks exchange data, for ranks outside the world, and with outputs to read", () => {
    const m = Mesh.of({ dp: 2 });
    const x = input(m, "x", { r: 4 }, "f32", { dp: "S(r)" } as never) as AnyDTensor;
    const plan = new Program(m, { y: redistribute(x, { dp: "R" } as never) as AnyDTensor }).plan;
    expect(() => runPlanCpu(plan, undefined, [], { ranks: [0] })).toThrow(/comm step/);
    const p2 = new Program(m, { y: x }).plan;
    expect(() => runPlanCpu(p2, undefined, [], { ranks: [2] })).toThrow(/not ranks of a world of 2/);
    expect(() => runPlanCpu(p2, undefined, [0], { ranks: [0] })).toThrow(/ranks or read/);
  });
});
