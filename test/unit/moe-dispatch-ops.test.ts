// The MoE dispatch/combine ops on their own: moe_dispatch against a brute-force reference (and each
// rank's piece holds exactly its experts' rows), bf16 combine and redispatch equal to the composed
// ops (mul, scatter_add, gather) bit for bit with their gradients, every one-axis placement of
// combine's and redispatch's inputs (legal ones equal the one-device run, illegal ones are
// ShardingErrors naming the axis), and the errors a user meets.
import { describe, expect, it } from "vitest";
import { Mesh } from "../../stdlib/mesh.ts";
import { DTensor, type AnyDTensor } from "../../stdlib/dtensor.ts";
import { fromGlobal } from "../../stdlib/ops/factories.ts";
import { evaluate } from "../../stdlib/run.ts";
import { moeCombine, moeDispatch } from "../../stdlib/ops/dispatch.ts";
import { gather, scatterAdd, sortByKey } from "../../stdlib/ops/routing.ts";
import { flatten } from "../../stdlib/ops/movement.ts";
import { redistribute } from "../../stdlib/ops/redistribute.ts";
import { sum } from "../../stdlib/ops/reduce.ts";
import { cast } from "../../stdlib/ops/elementwise.ts";
import { div, mul } from "../../stdlib/nn/ops-internal.ts";
import { grad } from "../../stdlib/autodiff.ts";
import { compile } from "../../compiler/pipeline.ts";
import { runPlanCpu } from "../../runtime/cpu/index.ts";
import { getOp, inferTypes } from "../../compiler/ops/index.ts";
import { ShardingError } from "../../compiler/errors.ts";
import type { DType, Placement } from "../../compiler/ir/types.ts";
import { roundToBf16 } from "../../compiler/numeric/index.ts";
import { mulberry32 } from "../helpers/prng.ts";

const G = 3, S = 5, K = 2, M = 4, E = 5;
const rnd = mulberry32(77);
const normal = (n: number, dtype: DType = "f32") => Array.from({ length: n }, () => (dtype === "bf16" ? roundToBf16 : (v: number) => v)((rnd() - 0.5) * 4));
/** Expert ids with repeats, experts 1 and 4 never chosen, and one dropped slot (-1). */
const IDX = Array.from({ length: G * S * K }, (_, i) => (i === 7 ? -1 : [0, 2, 3, 2, 0, 3][(i * 5 + Math.floor(i / 3)) % 6]!));
const X = normal(G * S * M);

const dispatchOpts = (axis: string | null) => ({ axis, dim: "s", k: "k", rows: "rows", groups: "e", numGroups: E });
const combineOpts = (axis: string | null) => ({ axis, dim: "s", size: S, k: "k", numK: K });

describe("moe_dispatch", () => {
  it("equals a brute-force permute: rows by expert (stable in slot order), perm, counts; each rank holds its experts' rows", async () => {
    for (const n of [1, 2, 3, 4]) {
      const mesh = Mesh.of({ ep: n });
      const x = fromGlobal(mesh, { g: G, s: S, m: M }, "f32", X, { ep: "S(g)" } as never) as AnyDTensor;
      const idx = fromGlobal(mesh, { g: G, s: S, k: K }, "i32", IDX, { ep: "S(g)" } as never) as AnyDTensor;
      const d = moeDispatch(x, idx, dispatchOpts("ep"));
      expect([d.rows.type.placements, d.perm.type.placements, d.counts.type.placements]).toEqual([["S(rows)"], ["S(g)"], ["S(e)"]]);
      const plan = compile(mesh.builder.graph, [d.rows.ref, d.perm.ref, d.counts.ref]);
      const res = runPlanCpu(plan);
      const [rows, perm, counts] = res.outputs.map((o) => o!);
      for (let g = 0; g < G; g++) {
        let j = 0;
        for (let e = 0; e < E; e++) {
          let c = 0;
          for (let s = 0; s < S * K; s++) {
            if (IDX[g * S * K + s] !== e) continue;
            expect(perm!.data[g * S * K + j], `perm g${g} row ${j}`).toBe(s);
            const t = Math.floor(s / K);
            expect(Array.from(rows!.data.slice((g * S * K + j) * M, (g * S * K + j + 1) * M))).toEqual(X.slice((g * S + t) * M, (g * S + t + 1) * M).map(Math.fround));
            j++, c++;
          }
          expect(counts!.data[g * E + e]).toBe(c);
        }
        for (; j < S * K; j++) expect(perm!.data[g * S * K + j], "padding").toBe(-1);
      }
      // rank r's piece: for every g, the rows of its experts packed from row 0
      for (let r = 0; r < n; r++) {
        const box = plan.values[plan.outputs[0]!]!.boxes[r]!.seg[1]!;
        const local = res.locals[0]![r]!;
        for (let g = 0; g < G; g++) {
          let start = 0, len = 0;
          for (let e = 0; e < box.firstGroup; e++) start += counts!.data[g * E + e]!;
          for (let e = box.firstGroup; e < box.firstGroup + box.numGroups; e++) len += counts!.data[g * E + e]!;
          const got = Array.from(local.data.slice(g * S * K * M, (g * S * K + len) * M));
          expect(got, `rank ${r} of ${n}, g${g}`).toEqual(Array.from(rows!.data.slice((g * S * K + start) * M, (g * S * K + start + len) * M)));
        }
      }
    }
  });

  it("moves FP8 (e4m3) rows unchanged", async () => {
    const mesh = Mesh.of({ ep: 3 });
    const x = fromGlobal(mesh, { g: G, s: S, m: M }, "f32", X, { ep: "S(g)" } as never) as AnyDTensor;
    const idx = fromGlobal(mesh, { g: G, s: S, k: K }, "i32", IDX, { ep: "S(g)" } as never) as AnyDTensor;
    const q = cast(x, "fp8e4m3") as AnyDTensor;
    const fp8 = moeDispatch(q, idx, dispatchOpts("ep")), f32 = moeDispatch(x, idx, dispatchOpts("ep"));
    expect(fp8.rows.type.dtype).toBe("fp8e4m3");
    const [a, b] = await evaluate([cast(fp8.rows, "f32") as AnyDTensor, cast(f32.rows, "fp8e4m3") as AnyDTensor]);
    expect(Array.from(a!.data)).toEqual(Array.from(b!.data));
    expect(Array.from(a!.data).some((v) => v !== 0)).toBe(true);
  });

  it("says what to do when the tokens are not sharded on a batch dim on the expert axis", () => {
    const mesh = Mesh.of({ ep: 2 });
    const idx = fromGlobal(mesh, { g: G, s: S, k: K }, "i32", IDX) as AnyDTensor;
    const bySeq = fromGlobal(mesh, { g: G, s: S, m: M }, "f32", X, { ep: "S(s)" } as never) as AnyDTensor;
    expect(() => moeDispatch(bySeq, idx, dispatchOpts("ep"))).toThrow(/mesh axis 'ep': moe_dispatch\(\) over 's' needs the whole dim/);
    const byModel = fromGlobal(mesh, { g: G, s: S, m: M }, "f32", X, { ep: "S(m)" } as never) as AnyDTensor;
    expect(() => moeDispatch(byModel, idx, dispatchOpts("ep"))).toThrow(ShardingError);
    expect(() => moeDispatch(byModel, idx, dispatchOpts("ep"))).toThrow(/on the expert axis tokens must be sharded on a batch dim \(g\) or replicated/);
    // on another axis a row's own dim may stay split
    expect(moeDispatch(byModel, idx, dispatchOpts(null)).rows.type.placements).toEqual(["S(m)"]);
    const x = fromGlobal(mesh, { g: G, s: S, m: M }, "f32", X) as AnyDTensor;
    expect(() => moeDispatch(x, fromGlobal(mesh, { g: G, s: S }, "i32", IDX.slice(0, G * S)) as AnyDTensor, dispatchOpts("ep"))).toThrow(/names dim 'k' but indices has no such dim/);
  });
});

/** The composed ops the fused ones replace: gather rows by token, scatter_add weighted rows back. */
function composedRoute(x: AnyDTensor, idx: AnyDTensor) {
  const { perm } = sortByKey(flatten(idx, ["s", "k"], "slots") as AnyDTensor, "slots", { rows: "rows", groups: "e", numGroups: E }) as { perm: AnyDTensor };
  const token = div(perm, K) as AnyDTensor;
  return { rows: gather(x, token, "s") as AnyDTensor, perm, token };
}

describe("moe_combine and moe_redispatch", () => {
  it("bf16: equal the composed mul + scatter_add (and gather + mul) bit for bit, with gradients, on ep=1..3", async () => {
    const Xb = normal(G * S * M, "bf16"), W = normal(G * S * K, "bf16"), R = normal(G * S * M, "bf16");
    for (const n of [1, 2, 3]) {
      const run = async (fused: boolean) => {
        const mesh = Mesh.of({ ep: n });
        const on = { ep: "S(g)" } as never;
        const x = fromGlobal(mesh, { g: G, s: S, m: M }, "bf16", Xb, on) as AnyDTensor;
        const w = fromGlobal(mesh, { g: G, s: S, k: K }, "bf16", W, on) as AnyDTensor;
        const r = fromGlobal(mesh, { g: G, s: S, m: M }, "bf16", R, on) as AnyDTensor;
        const idx = fromGlobal(mesh, { g: G, s: S, k: K }, "i32", IDX, on) as AnyDTensor;
        let y: AnyDTensor;
        if (fused) {
          const d = moeDispatch(x, idx, dispatchOpts("ep"));
          y = moeCombine(mul(d.rows, 0.75), d.perm, w, combineOpts("ep"));
        } else {
          const c = composedRoute(x, idx);
          const moved = redistribute(mul(redistribute(c.rows, { ep: "S(rows)" } as never), 0.75), { ep: "S(g)" } as never) as AnyDTensor;
          const weight = gather(flatten(w, ["s", "k"], "slots") as AnyDTensor, c.perm, "slots") as AnyDTensor;
          y = scatterAdd(mul(moved, weight), c.token, "rows", { dim: "s", size: S }) as AnyDTensor;
        }
        const loss = sum(mul(y, r), ["g", "s", "m"]) as AnyDTensor;
        const gr = grad(loss, { x, w });
        return (await evaluate([y, gr.x as AnyDTensor, gr.w as AnyDTensor])).map((v) => Array.from(v.data));
      };
      const [f, c] = [await run(true), await run(false)];
      expect(f[0], `y on ep=${n}`).toEqual(c[0]);
      expect(f[1], `dx on ep=${n}`).toEqual(c[1]);
      // the weight gradient sums a row's products over m in the same order: equal in bf16 too
      expect(f[2], `dw on ep=${n}`).toEqual(c[2]);
      expect(c[2]!.some((v) => v !== 0)).toBe(true);
    }
  });

  /** Every one-axis placement of (rows, perm, weights) / (src, perm, weights) on tp=2 and 3, as the expert axis or not. */
  for (const op of ["moe_combine", "moe_redispatch"] as const) {
    it(`${op}: every legal placement equals the one-device run, every illegal one is a ShardingError`, async () => {
      const Wt = normal(G * S * K), Src = normal(G * S * M);
      const build = (n: number, pr: Placement | null, pp: Placement | null, pw: Placement | null, axis: string | null) => {
        const mesh = Mesh.of({ tp: n });
        const x = fromGlobal(mesh, { g: G, s: S, m: M }, "f32", X) as AnyDTensor;
        const idx = fromGlobal(mesh, { g: G, s: S, k: K }, "i32", IDX) as AnyDTensor;
        const d = moeDispatch(x, idx, dispatchOpts(null));
        const w = fromGlobal(mesh, { g: G, s: S, k: K }, "f32", Wt) as AnyDTensor;
        const src = fromGlobal(mesh, { g: G, s: S, m: M }, "f32", Src) as AnyDTensor;
        const to = (t: AnyDTensor, p: Placement | null) => (p ? (redistribute(t, { tp: p } as never) as AnyDTensor) : t);
        const first = to(op === "moe_combine" ? d.rows : src, pr), perm = to(d.perm, pp), wt = to(w, pw);
        const attrs = { ...combineOpts(axis), keepK: false };
        return { mesh, first, perm, wt, attrs };
      };
      const ref = build(1, null, null, null, null);
      const refOut = new DTensor(ref.mesh, ref.mesh.builder.add(op, [ref.first.ref, ref.perm.ref, ref.wt.ref], ref.attrs)[0]!);
      const want = Array.from((await evaluate([refOut]))[0]!.data);
      const firstDims = op === "moe_combine" ? ["g", "rows", "m"] : ["g", "s", "m"];
      const opts = (dims: string[]): Placement[] => ["R", "P(sum)", ...dims.map((d) => `S(${d})` as Placement)];
      let legal = 0, illegal = 0;
      for (const [n, axis] of [[2, "tp"], [3, "tp"], [3, null]] as const) {
        for (const pr of opts(firstDims)) for (const pp of opts(["g", "rows"])) for (const pw of opts(["g", "s", "k"])) {
          const what = `${op}(${pr}, ${pp}, ${pw}) on tp=${n}${axis ? " (the expert axis)" : ""}`;
          const b = build(n, pr, pp, pw, axis);
          try {
            inferTypes(getOp(op), [b.first.type, b.perm.type, b.wt.type], b.attrs, b.mesh.spec);
          } catch (e) {
            expect(e, what).toBeInstanceOf(ShardingError);
            expect((e as Error).message, what).toMatch(/^mesh axis 'tp'/);
            illegal++;
            continue;
          }
          legal++;
          const out = new DTensor(b.mesh, b.mesh.builder.add(op, [b.first.ref, b.perm.ref, b.wt.ref], b.attrs)[0]!);
          const got = Array.from((await evaluate([out]))[0]!.data);
          const worst = got.reduce((a, v, i) => Math.max(a, Math.abs(v - want[i]!)), 0);
          expect(worst, what).toBeLessThanOrEqual(1e-5 * Math.max(...want.map(Math.abs)));
        }
      }
      expect(legal).toBeGreaterThanOrEqual(8);
      expect(illegal).toBeGreaterThan(legal);
    });
  }

  it("perm must be moe_dispatch's; weights must be [batch, seq, k] of the rows' dtype", () => {
    const mesh = Mesh.of({ ep: 2 });
    const x = fromGlobal(mesh, { g: G, s: S, m: M }, "f32", X, { ep: "S(g)" } as never) as AnyDTensor;
    const idx = fromGlobal(mesh, { g: G, s: S, k: K }, "i32", IDX, { ep: "S(g)" } as never) as AnyDTensor;
    const d = moeDispatch(x, idx, dispatchOpts("ep"));
    expect(() => moeCombine(d.rows, idx, null, combineOpts("ep"))).toThrow(/needs perm with a segmented rows dim/);
    const wrong = fromGlobal(mesh, { g: G, s: S }, "f32", X.slice(0, G * S), { ep: "S(g)" } as never) as AnyDTensor;
    expect(() => moeCombine(d.rows, d.perm, wrong, combineOpts("ep"))).toThrow(/weights must have dims \[g, s, k\]/);
    const bf = fromGlobal(mesh, { g: G, s: S, k: K }, "bf16", IDX.map(() => 0.5), { ep: "S(g)" } as never) as AnyDTensor;
    expect(() => moeCombine(d.rows, d.perm, bf, combineOpts("ep"))).toThrow(/got f32 and bf16/);
  });
});
