// The lowering of plan comm steps to NCCL calls (runtime/cuda/nccl/lower.ts), run by a host NCCL
// emulator, equals the CPU reference's simulation (runtime/cpu/collectives.ts) bit for bit: every
// redistribute pair on 1-D and 2-D meshes with even and uneven sizes, and every comm step of the MoE
// layer (segmented rows: all-to-all-v) on even and uneven meshes.
import { describe, it, expect } from "vitest";
import type { MeshSpec, Placement, TensorType } from "../../compiler/ir/types.ts";
import type { Plan, PlanValue } from "../../compiler/plan.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { allocLocal } from "../../compiler/ir/local.ts";
import { coordsOf } from "../../compiler/ir/placement.ts";
import { boxOf } from "../../compiler/passes/partition.ts";
import { planRedistribute } from "../../compiler/passes/redistribute-plan.ts";
import { compile } from "../../compiler/pipeline.ts";
import { getOp } from "../../compiler/ops/index.ts";
import { runStep } from "../../runtime/cpu/collectives.ts";
import { assemble, type GlobalTensor } from "../../runtime/cpu/assemble.ts";
import { cpuCtx } from "../../runtime/cpu/executor.ts";
import { lowerStep, type Lowered } from "../../runtime/cuda/nccl/lower.ts";
import { buildOn } from "../../stdlib/model.ts";
import moeLayer from "../../examples/moe-layer.ts";
import { emulate } from "./nccl/host-nccl.ts";
import { mulberry32 } from "../helpers/prng.ts";

const same = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  if (a.length !== b.length) return `length ${a.length} vs ${b.length}`;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i]) && !(a[i] !== a[i] && b[i] !== b[i])) return `element ${i}: ${a[i]} vs ${b[i]}`;
  return "";
};

/** Runs one comm step both ways for every rank; returns a mismatch description or "". */
function checkStep(plan: Plan, step: Parameters<typeof runStep>[1], inSlot: number, outSlot: number, pieces: LocalTensor[], counts: (s: number) => GlobalTensor): { err: string; lowered: Lowered[]; out: LocalTensor[] } {
  const want = runStep(plan, step, inSlot, outSlot, pieces, counts);
  const lowered = Array.from({ length: plan.world }, (_, r) => lowerStep(plan, step, inSlot, outSlot, r, counts));
  const got = emulate(lowered, pieces.map((p) => p.data), plan.values[inSlot]!.type.dtype);
  for (let r = 0; r < plan.world; r++) {
    const e = same(got[r]!, want[r]!.data);
    if (e) return { err: `rank ${r}: ${e}`, lowered, out: want };
  }
  return { err: "", lowered, out: want };
}

function valueOf(t: TensorType, mesh: MeshSpec, placements: Placement[]): PlanValue {
  const tt = { ...t, placements };
  const per = Array.from({ length: mesh.sizes.reduce((a, b) => a * b, 1) }, (_, r) => boxOf(tt, mesh, coordsOf(mesh, r)));
  return { type: tt, boxes: per.map((p) => p.box), shapes: per.map((p) => p.shape), segCounts: {} };
}

const PLACEMENTS = (dims: string[]): Placement[] => ["R", ...dims.map((d) => `S(${d})` as Placement), "P(sum)", "P(max)"];

describe("redistribute steps lowered to NCCL calls equal the CPU simulation", () => {
  const cases: { mesh: MeshSpec; dims: Record<string, number> }[] = [
    { mesh: { axes: ["x"], sizes: [2] }, dims: { a: 4, b: 6 } },
    { mesh: { axes: ["x"], sizes: [3] }, dims: { a: 5, b: 7 } },
    { mesh: { axes: ["x", "y"], sizes: [2, 2] }, dims: { a: 4, b: 6 } },
    { mesh: { axes: ["x", "y"], sizes: [2, 3] }, dims: { a: 5, b: 7 } },
  ];
  for (const { mesh, dims } of cases)
    it(`mesh ${mesh.axes.map((a, i) => `${a}=${mesh.sizes[i]}`).join(",")} dims ${JSON.stringify(dims)}`, () => {
      const names = Object.keys(dims);
      const t: TensorType = { dims: names.map((n) => ({ name: n, size: dims[n]! })), dtype: "f32", placements: [] };
      const per = PLACEMENTS(names);
      const all: Placement[][] = mesh.sizes.length === 1 ? per.map((p) => [p]) : per.flatMap((p) => per.map((q) => [p, q]));
      const rnd = mulberry32(7);
      let steps = 0, collectives = 0;
      const failures: string[] = [];
      for (const from of all)
        for (const to of all) {
          const planned = planRedistribute(t, from, to, mesh);
          let cur = from;
          let pieces = valueOf(t, mesh, from).shapes.map((s) => {
            const x = allocLocal("f32", s);
            for (let i = 0; i < x.data.length; i++) x.data[i] = (Math.floor(rnd() * 2049) - 1024) / 256;
            return x;
          });
          for (const st of planned) {
            const plan: Plan = { mesh, world: pieces.length, values: [valueOf(t, mesh, cur), valueOf(t, mesh, st.after)], instrs: [], outputs: [], lastUse: [] };
            const { err, lowered, out } = checkStep(plan, st, 0, 1, pieces, () => { throw new Error("no counts here"); });
            steps++;
            collectives += lowered[0]!.calls.filter((c) => c.op === "all_gather" || c.op === "reduce_scatter" || c.op === "all_reduce").length;
            if (err) failures.push(`(${from}) -> (${to}) step ${lowered[0]!.what}: ${err}`);
            pieces = out;
            cur = st.after;
          }
        }
      expect(failures).toEqual([]);
      expect(steps).toBeGreaterThan(all.length);
      expect(collectives).toBeGreaterThan(0);
    });

  it("an even gather of the outermost dim is one ncclAllGather straight into the output, no staging", () => {
    const mesh = { axes: ["x"], sizes: [4] };
    const t: TensorType = { dims: [{ name: "a", size: 8 }, { name: "b", size: 3 }], dtype: "bf16", placements: [] };
    const plan: Plan = { mesh, world: 4, values: [valueOf(t, mesh, ["S(a)"]), valueOf(t, mesh, ["R"])], instrs: [], outputs: [], lastUse: [] };
    const l = lowerStep(plan, { kind: "all_gather", axis: 0, dim: "a", after: ["R"] }, 0, 1, 1, () => { throw new Error(); });
    expect(l.calls).toEqual([{ op: "all_gather", send: { buf: "in", at: 0 }, recv: { buf: "out", at: 0 }, count: 6 }]);
    const a2a = lowerStep({ ...plan, values: [valueOf({ ...t, dims: [{ name: "b", size: 4 }, { name: "a", size: 8 }] }, mesh, ["S(a)"]), valueOf({ ...t, dims: [{ name: "b", size: 4 }, { name: "a", size: 8 }] }, mesh, ["S(b)"])] }, { kind: "all_to_all", axis: 0, from: "a", to: "b", after: ["S(b)"] }, 0, 1, 1, () => { throw new Error(); });
    // dims [b, a]: S(a) -> S(b) with b = the group size: every chunk contiguous, no packing
    expect(a2a.calls.filter((c) => c.op === "copy")).toEqual([]);
    // three peers and this rank's own chunk, a send to itself inside the group (no copy before it)
    expect(a2a.calls.filter((c) => c.op === "send").map((c) => (c as { peer: number }).peer).sort()).toEqual([0, 1, 2, 3]);
    expect(a2a.calls.filter((c) => c.op === "recv").map((c) => (c as { peer: number }).peer).sort()).toEqual([0, 1, 2, 3]);
  });
});

/** The CPU executor's loop, checking every comm step against the lowering on the way. */
function checkPlan(plan: Plan): { steps: string[]; failures: string[] } {
  const slots: (LocalTensor[] | undefined)[] = new Array(plan.values.length);
  const cache = new Map<number, GlobalTensor>();
  const counts = (s: number): GlobalTensor => cache.get(s) ?? (cache.set(s, assemble(plan, s, slots[s]!, counts)), cache.get(s)!);
  const steps: string[] = [], failures: string[] = [];
  for (const ins of plan.instrs) {
    if (ins.kind === "comm") {
      const { err, lowered, out } = checkStep(plan, ins.step, ins.input, ins.output, slots[ins.input]!, counts);
      steps.push(`${lowered[0]!.what}${lowered[0]!.calls.some((c) => c.op === "send") ? " (send/recv)" : ""}`);
      if (err) failures.push(`${lowered[0]!.what}: ${err}`);
      slots[ins.output] = out;
      continue;
    }
    const per: LocalTensor[][] = ins.outputs.map(() => []);
    for (let r = 0; r < plan.world; r++) getOp(ins.op).cpu(ins.inputs.map((s) => slots[s]![r]!), ins.attrs, cpuCtx(plan, ins, r, coordsOf(plan.mesh, r))).forEach((o, k) => (per[k]![r] = o));
    ins.outputs.forEach((s, k) => (slots[s] = per[k]));
  }
  return { steps, failures };
}

describe("the MoE layer's comm steps (segmented rows: all-to-all-v) lowered to NCCL calls equal the CPU simulation", () => {
  for (const sizes of [{ dp: 2, ep: 2 }, { dp: 1, ep: 3 }, { dp: 1, ep: 4 }])
    it(`mesh ${JSON.stringify(sizes)}`, () => {
      const { mesh, outputs } = buildOn(moeLayer, sizes);
      const plan = compile(mesh.builder.graph, Object.values(outputs).map((t) => t.ref));
      const { steps, failures } = checkPlan(plan);
      expect(failures).toEqual([]);
      expect(steps.some((s) => s.startsWith("all_to_all[ep](batch -> rows)") || s.includes("-> rows"))).toBe(true);
      expect(steps.filter((s) => s.includes("send/recv")).length).toBeGreaterThan(0);
    });
});
