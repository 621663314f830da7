// A small MoE dispatch -> combine plan run on the CPU reference, with what the CUDA permute leaves
// on each token-side rank (its rows sorted by expert, its counts): the shared set-up of the NVLink
// transport's layout test (test/unit) and kernel emulation (test/codegen).
import { Mesh } from "../../stdlib/mesh.ts";
import type { AnyDTensor } from "../../stdlib/dtensor.ts";
import { fromGlobal } from "../../stdlib/ops/factories.ts";
import { moeCombine, moeDispatch } from "../../stdlib/ops/dispatch.ts";
import { compile } from "../../compiler/pipeline.ts";
import type { Plan } from "../../compiler/plan.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { runPlanCpu } from "../../runtime/cpu/index.ts";
import { pieceOf } from "../../runtime/cpu/pieces.ts";
import { Extra, tokenSide } from "../../runtime/cuda/moe-exchange.ts";
import { mulberry32 } from "./prng.ts";

export type Routing = "random" | "skewed" | "empty";
export const S = 9, K = 3, D = 5;

function routeIds(r: Routing, n: number, E: number, rnd: () => number): number[] {
  return Array.from({ length: n }, () => {
    if (r === "skewed") return rnd() < 0.8 ? 1 : Math.floor(rnd() * E);
    if (r === "empty") return rnd() < 0.1 ? -1 : 2 + Math.floor(rnd() * 2); // most experts (and ranks) get nothing
    return Math.floor(rnd() * E);
  });
}

/** Mesh `axes`, tokens x[b:B, s:S, d] sharded by b on every axis, E experts over 'ep', f32. */
export function moeCase(axes: Record<string, number>, B: number, E: number, routing: Routing, d: number) {
  const rnd = mulberry32(B * 31 + E);
  const mesh = Mesh.of(axes);
  const on = Object.fromEntries(Object.keys(axes).map((a) => [a, "S(b)"])) as never;
  const gx = Array.from({ length: B * S * d }, () => rnd() - 0.5), gw = Array.from({ length: B * S * K }, () => rnd());
  const x = fromGlobal(mesh, { b: B, s: S, d }, "f32", gx, on) as AnyDTensor;
  const idx = fromGlobal(mesh, { b: B, s: S, k: K }, "i32", routeIds(routing, B * S * K, E, rnd), on) as AnyDTensor;
  const w = fromGlobal(mesh, { b: B, s: S, k: K }, "f32", gw, on) as AnyDTensor;
  const dd = moeDispatch(x, idx, { axis: "ep", dim: "s", k: "k", rows: "rows", groups: "e", numGroups: E });
  const y = moeCombine(dd.rows, dd.perm, w, { axis: "ep", dim: "s", size: S, k: "k", numK: K });
  const plan = compile(mesh.builder.graph, [dd.rows.ref, dd.perm.ref, dd.counts.ref, y.ref]);
  const res = runPlanCpu(plan);
  const ins = plan.instrs.find((i) => i.kind === "op" && i.op === "moe_dispatch") as Extract<Plan["instrs"][number], { kind: "op" }>;
  const [rowsSlot, , countsSlot] = ins.outputs as [number, number, number];
  const ti = plan.values[ins.inputs[1]!]!.type, tr = plan.values[rowsSlot]!.type, tc = plan.values[countsSlot]!.type;
  const [gRows, gPerm, gCounts] = res.outputs as [LocalTensor, LocalTensor, LocalTensor];
  const counts = () => gCounts;
  const ex = new Extra(plan), seg = { rows: countsSlot };
  const rowsSrc = ex.add({ ...tr, placements: tokenSide(tr.placements, ti.placements, ["rows"]) }, seg);
  const countsSrc = ex.add({ ...tc, placements: tokenSide(tc.placements, ti.placements, ["e"]) }, {});
  const world = Array.from({ length: plan.world }, (_, r) => r);
  const global = (shape: number[], data: number[]) => ({ dtype: "f32" as const, shape, data: Float32Array.from(data) });
  return {
    plan, ins, rowsSlot, countsSlot, res, gPerm, gCounts, gx: global([B, S, d], gx), gw: global([B, S, K], gw),
    /** Each rank's tokens x[lb, s, d] and gate weights w[lb, s, k]. */
    srcX: world.map((r) => pieceOf(plan, ins.inputs[0]!, global([B, S, d], gx), r, counts)),
    srcW: world.map((r) => pieceOf(plan, ins.inputs[1]!, global([B, S, K], gw), r, counts)),
    srcRows: world.map((r) => pieceOf(ex.full, rowsSrc, gRows, r, counts)),
    srcCounts: world.map((r) => pieceOf(ex.full, countsSrc, gCounts, r, counts)),
    pieceOfRows: (g: LocalTensor, r: number) => pieceOf(plan, rowsSlot, g, r, counts),
  };
}
