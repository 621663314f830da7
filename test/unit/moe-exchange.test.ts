// The exchanges the CUDA backend runs inside MoE dispatch/combine (runtime/cuda/moe-exchange.ts):
// rows in the tokens' layout (what the permute kernel leaves on each rank) moved by the planner's
// steps to the op's own layout must be exactly the op's pieces, and back; the same for the counts.
// Each step runs both as the CPU simulation and as its NCCL lowering (grouped send/recv, emulated on
// host buffers), on even, uneven and 2-D meshes, with f32 rows and with FP8 dispatch's e4m3 rows.
// The CPU simulation on one GPU downloads and uploads FP8 pieces as codes: each byte must survive.
import { describe, expect, it } from "vitest";
import { Mesh } from "../../stdlib/mesh.ts";
import type { AnyDTensor } from "../../stdlib/dtensor.ts";
import { fromGlobal } from "../../stdlib/ops/factories.ts";
import { moeCombine, moeDispatch } from "../../stdlib/ops/dispatch.ts";
import { compile } from "../../compiler/pipeline.ts";
import type { Plan } from "../../compiler/plan.ts";
import { runPlanCpu } from "../../runtime/cpu/index.ts";
import { runStep } from "../../runtime/cpu/collectives.ts";
import { pieceOf } from "../../runtime/cpu/pieces.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { Extra, move, tokenSide } from "../../runtime/cuda/moe-exchange.ts";
import { lowerStep } from "../../runtime/cuda/nccl/lower.ts";
import { emulate } from "./nccl/host-nccl.ts";
import { mulberry32 } from "../helpers/prng.ts";
import { e4m3FromBits, roundToE4M3 } from "../../compiler/numeric/fp8.ts";
import { hostBits } from "../../runtime/cuda/memory.ts";

const B = 6, S = 7, K = 3, D = 4, E = 7;

describe("MoE exchanges as plan steps", () => {
  const meshes: Record<string, number>[] = [{ ep: 2 }, { ep: 3 }, { dp: 2, ep: 3 }, { ep: 4, tp: 1 }];
  const cases = meshes.flatMap((axes) => (["f32", "fp8e4m3"] as const).map((dtype) => ({ axes, dtype })));
  for (const { axes, dtype } of cases) {
    it(`dispatch's ${dtype} rows and counts, and combine's way back, on ${JSON.stringify(axes)}`, () => {
      const rnd = mulberry32(5);
      const mesh = Mesh.of(axes);
      const on = Object.fromEntries(Object.keys(axes).filter((a) => a !== "tp").map((a) => [a, "S(b)"])) as never;
      const value = dtype === "f32" ? (v: number) => v : roundToE4M3;
      const x = fromGlobal(mesh, { b: B, s: S, d: D }, dtype, Array.from({ length: B * S * D }, () => value(rnd() - 0.5)), on) as AnyDTensor;
      const idx = fromGlobal(mesh, { b: B, s: S, k: K }, "i32", Array.from({ length: B * S * K }, () => (rnd() < 0.1 ? -1 : rnd() < 0.5 ? 2 : Math.floor(rnd() * E))), on) as AnyDTensor;
      const w = fromGlobal(mesh, { b: B, s: S, k: K }, "f32", Array.from({ length: B * S * K }, () => rnd()), on) as AnyDTensor;
      const d = moeDispatch(x, idx, { axis: "ep", dim: "s", k: "k", rows: "rows", groups: "e", numGroups: E });
      // combine computes in f32 or bf16; FP8 rows only travel
      const y = dtype === "f32" ? [moeCombine(d.rows, d.perm, w, { axis: "ep", dim: "s", size: S, k: "k", numK: K }).ref] : [];
      const plan = compile(mesh.builder.graph, [d.rows.ref, d.perm.ref, d.counts.ref, ...y]);
      const res = runPlanCpu(plan);
      const ins = plan.instrs.find((i) => i.kind === "op" && i.op === "moe_dispatch") as Extract<Plan["instrs"][number], { kind: "op" }>;
      const [rowsSlot, , countsSlot] = ins.outputs as [number, number, number];
      const [gRows, , gCounts] = res.outputs as [LocalTensor, LocalTensor, LocalTensor];
      const ti = plan.values[ins.inputs[1]!]!.type, tr = plan.values[rowsSlot]!.type, tc = plan.values[countsSlot]!.type;
      const counts = (s: number) => {
        if (s !== countsSlot) throw new Error(`unexpected counts slot ${s}`);
        return gCounts;
      };
      // each step both ways: the CPU simulation, and its NCCL lowering (grouped send/recv) emulated on host buffers
      let lowered = 0;
      const run = (p: Plan, step: Parameters<typeof runStep>[1], i: number, o: number, pieces: LocalTensor[]) => {
        const want = runStep(p, step, i, o, pieces, counts);
        const low = Array.from({ length: p.world }, (_, r) => lowerStep(p, step, i, o, r, counts));
        const got = emulate(low, pieces.map((q) => q.data), p.values[i]!.type.dtype);
        for (let r = 0; r < p.world; r++) expect(Array.from(got[r]!), `${low[r]!.what} on rank ${r}`).toEqual(Array.from(want[r]!.data));
        lowered += low.filter((l) => l.calls.some((c) => c.op === "send")).length;
        return want;
      };
      const ex = new Extra(plan), seg = { rows: countsSlot };
      const rowsSrc = ex.add({ ...tr, placements: tokenSide(tr.placements, ti.placements, ["rows"]) }, seg);
      const countsSrc = ex.add({ ...tc, placements: tokenSide(tc.placements, ti.placements, ["e"]) }, {});
      expect(ex.typeOf(rowsSrc).placements).toEqual(ti.placements);
      const world = Array.from({ length: plan.world }, (_, r) => r);
      // what the permute kernel leaves on each rank: its own batch entries' rows, grouped by expert
      const srcRows = world.map((r) => pieceOf(ex.full, rowsSrc, gRows, r, counts));
      const srcCounts = world.map((r) => pieceOf(ex.full, countsSrc, gCounts, r, counts));
      const movedCounts = move(ex, run, tc, countsSrc, ex.typeOf(countsSrc).placements, countsSlot, tc.placements, srcCounts, {}, true);
      const movedRows = move(ex, run, tr, rowsSrc, ex.typeOf(rowsSrc).placements, rowsSlot, tr.placements, srcRows, seg, true);
      for (const r of world) {
        expect(Array.from(movedCounts[r]!.data), `counts on rank ${r}`).toEqual(Array.from(res.locals[2]![r]!.data));
        expect(Array.from(movedRows[r]!.data), `rows on rank ${r}`).toEqual(Array.from(res.locals[0]![r]!.data));
      }
      // combine's way back: the op's rows to the tokens' layout
      const back = ex.add({ ...tr, placements: tokenSide(tr.placements, ti.placements, ["rows"]) }, seg);
      const returned = move(ex, run, tr, rowsSlot, tr.placements, back, ex.typeOf(back).placements, res.locals[0]!, seg, false);
      for (const r of world) expect(Array.from(returned[r]!.data), `rows back on rank ${r}`).toEqual(Array.from(srcRows[r]!.data));
      expect(srcRows.some((p) => p.data.some((v) => v !== 0))).toBe(true);
      expect(lowered, "ranks whose lowering sends to a peer").toBeGreaterThan(0);
    });
  }
  it("every e4m3 code survives the CPU simulation's download (decode) and upload (hostBits); -NaN comes back as NaN", () => {
    const codes = Array.from({ length: 256 }, (_, b) => b);
    const back = hostBits({ dtype: "fp8e4m3", shape: [256], data: Float32Array.from(codes, e4m3FromBits) }) as Uint8Array;
    expect(Array.from(back).filter((b, i) => b !== codes[i])).toEqual([0x7f]); // 0xFF, the only other NaN
  });
});
