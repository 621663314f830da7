// The NVLink MoE transport's index math (runtime/cuda/moe-nvlink-layout.ts, mirrored by the kernels
// in kernels/moe-nvlink-sources.ts) against the CPU reference's pieces: rows pushed by every source
// into its peers' windows and copied out with zero padding must be exactly each expert rank's piece
// of moe_dispatch's rows and counts; the bounds redispatch reads from the lens table must equal the
// ones dispatch computes from its counts; combine's push back must rebuild each token-side rank's
// sorted rows. Random, skewed and empty-expert routings; ep=2, ep=4, uneven batch, dp=2 x ep=2.
import { describe, expect, it } from "vitest";
import { Mesh } from "../../stdlib/mesh.ts";
import type { AnyDTensor } from "../../stdlib/dtensor.ts";
import { fromGlobal } from "../../stdlib/ops/factories.ts";
import { moeDispatch } from "../../stdlib/ops/dispatch.ts";
import { compile } from "../../compiler/pipeline.ts";
import type { Plan } from "../../compiler/plan.ts";
import { coordsOf } from "../../compiler/ir/placement.ts";
import { boundsFromCounts, combineBack, NvlinkUnavailable, nvlGeometry, pushRows, windowLayout } from "../../runtime/cuda/moe-nvlink-layout.ts";
import { moeCase, S, K, D, type Routing } from "../helpers/moe-nvlink-case.ts";

const CASES: [Record<string, number>, number, number][] = [
  [{ ep: 2 }, 4, 7],
  [{ ep: 2 }, 5, 6], // uneven batch entries per rank
  [{ ep: 4 }, 8, 9], // uneven experts per rank
  [{ dp: 2, ep: 2 }, 8, 5], // the batch split over both axes: each dp group exchanges on its own
];

describe("NVLink MoE transport layout", () => {
  for (const [axes, B, E] of CASES)
    for (const routing of ["random", "skewed", "empty"] as Routing[]) {
      it(`${JSON.stringify(axes)} B=${B} E=${E} ${routing}: pushes rebuild the CPU reference's pieces`, () => {
        const { plan, ins, rowsSlot, res, srcRows, srcCounts } = moeCase(axes, B, E, routing, D);
        const n = S * K, ep = plan.mesh.axes.indexOf("ep");
        let moved = 0;
        for (let r = 0; r < plan.world; r++) {
          if (coordsOf(plan.mesh, r)[ep] !== 0) continue; // one group at a time, from its first rank
          const geo = nvlGeometry(plan, rowsSlot, ins.inputs[1]!, "ep", "rows", ["b"], r);
          const W = geo.ranks.length, src = (s: number) => geo.ranks[s]!;
          const dispatchBounds = (s: number, lb: number) => boundsFromCounts(srcCounts[src(s)]!.data, lb * E, E, geo.efirst);
          const win = pushRows(geo, n, D, (s, lb, j) => srcRows[src(s)]!.data.subarray((lb * n + j) * D, (lb * n + j + 1) * D), dispatchBounds);
          // consume: rows below the rank's length from the window, zeros after; counts of its experts
          for (let q = 0; q < W; q++) {
            const lenOf = (b: number) => {
              const st = dispatchBounds(geo.srcRank[b]!, geo.srcLb[b]!);
              return st[q + 1]! - st[q]!;
            };
            const out = win[q]!.map((v, i) => (Math.floor(i / D) % n < lenOf(Math.floor(i / (n * D))) ? v : 0));
            expect(Array.from(out), `rows on rank ${src(q)}`).toEqual(Array.from(res.locals[0]![src(q)]!.data));
            const ne = geo.efirst[q + 1]! - geo.efirst[q]!;
            const c = Array.from({ length: geo.Bdst * ne }, (_, i) => srcCounts[src(geo.srcRank[Math.floor(i / ne)]!)]!.data[geo.srcLb[Math.floor(i / ne)]! * E + geo.efirst[q]! + (i % ne)]!);
            expect(c, `counts on rank ${src(q)}`).toEqual(Array.from(res.locals[2]![src(q)]!.data));
            moved += geo.dstOf.reduce((a, m, s) => a + (s === q ? 0 : m.length), 0);
          }
          // the lens table (each expert rank's rows per batch entry, from its counts piece) gives the same bounds
          const lens = geo.ranks.map((rq) => {
            const p = res.locals[2]![rq]!.data, ne = p.length / geo.Bdst;
            return Array.from({ length: geo.Bdst }, (_, b) => Array.from(p.subarray(b * ne, (b + 1) * ne)).reduce((a, v) => a + v, 0));
          });
          for (let s = 0; s < W; s++)
            geo.dstOf[s]!.forEach((b, lb) => {
              const fromLens = [0];
              for (let q = 0; q < W; q++) fromLens.push(fromLens[q]! + lens[q]![b]!);
              expect(fromLens, `bounds of rank ${src(s)} entry ${lb}`).toEqual(dispatchBounds(s, lb));
            });
          // combine's way back rebuilds every kept row of the token side (the rest is never read)
          const back = combineBack(geo, n, D, geo.ranks.map((rq) => res.locals[0]![rq]!.data), lens);
          for (let s = 0; s < W; s++)
            geo.dstOf[s]!.forEach((_, lb) => {
              const kept = dispatchBounds(s, lb)[W]! * D, at = lb * n * D;
              expect(Array.from(back[s]!.subarray(at, at + kept)), `rows back on rank ${src(s)} entry ${lb}`).toEqual(Array.from(srcRows[src(s)]!.data.subarray(at, at + kept)));
            });
        }
        expect(moved).toBeGreaterThan(0);
        if (routing !== "empty") expect(srcRows.some((p) => p.data.some((v) => v !== 0))).toBe(true);
      });
    }

  it("refuses a layout with nothing to exchange (tokens replicated over the expert axis), saying why", () => {
    const mesh = Mesh.of({ ep: 2 });
    const x = fromGlobal(mesh, { b: 2, s: S, d: D }, "f32", new Array(2 * S * D).fill(1), {} as never) as AnyDTensor;
    const idx = fromGlobal(mesh, { b: 2, s: S, k: K }, "i32", new Array(2 * S * K).fill(1), {} as never) as AnyDTensor;
    const d = moeDispatch(x, idx, { axis: "ep", dim: "s", k: "k", rows: "rows", groups: "e", numGroups: 4 });
    const plan = compile(mesh.builder.graph, [d.rows.ref]);
    const ins = plan.instrs.find((i) => i.kind === "op" && i.op === "moe_dispatch") as Extract<Plan["instrs"][number], { kind: "op" }>;
    expect(() => nvlGeometry(plan, ins.outputs[0]!, ins.inputs[1]!, "ep", "rows", ["b"], 0)).toThrow(NvlinkUnavailable);
    expect(() => nvlGeometry(plan, ins.outputs[0]!, ins.inputs[1]!, "ep", "rows", ["b"], 0)).toThrow(/replicated/);
  });

  it("window layout: flags first, areas 256-byte aligned and disjoint", () => {
    const l = windowLayout(4, 20, 1000, 37, 12345);
    expect(l.flagN).toBe(0);
    const starts = [l.flagN, l.flagR, l.counts, l.counts + (l.lens - l.counts) / 2, l.lens, l.rows];
    for (const s of starts) expect(s % 256).toBe(0);
    expect(l.flagR).toBeGreaterThanOrEqual(4 * 20 * 8);
    expect(l.lens - l.counts).toBeGreaterThanOrEqual(2 * 1000 * 4);
    expect(l.rows - l.lens).toBeGreaterThanOrEqual(2 * 37 * 4);
    expect(l.bytes - l.rows).toBeGreaterThanOrEqual(12345);
  });
});
