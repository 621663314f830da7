// Exhaustive redistribute checks on the CPU reference backend.
//
// For every (source, target) pair of placements on 1-D and 2-D meshes, a tensor with a known global
// value is built in the source placements (Partial sources from random per-rank parts), moved with
// `redistribute`, and checked two ways:
//   1. the read-back global value (public `evaluate`) equals the original;
//   2. every rank's local piece equals an independently computed expectation (the hand-written
//      nested balanced split below, not the library's), with Partial axes reduced across their
//      group. (2) catches what (1) cannot: `evaluate` reads only coordinate 0 of Replicate axes.
// Data is dyadic (multiples of 1/256, small magnitude) so Partial<sum> parts add up exactly in any
// order, and every comparison is bit-exact. A separate test uses generic floats for Partial<sum>
// sources and checks within 1e-6 relative, as summation order may differ.
import { describe, it, expect } from "vitest";
import { Mesh, fromLocal, redistribute, evaluate, maxRelDiff, GlobalValue } from "../../stdlib/index.ts";
import type { Placement, MeshSpec, TensorType } from "../../compiler/ir/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import { planRedistribute, fmtStep, type PlannedStep } from "../../compiler/passes/redistribute-plan.ts";
import { compile } from "../../compiler/pipeline.ts";
import { boxOf } from "../../compiler/passes/partition.ts";
import { runPlanCpu } from "../../runtime/cpu/index.ts";
import { mulberry32 } from "../helpers/prng.ts";

// ---- deterministic randomness ------------------------------------------------------------------

/** A multiple of 1/256 in [-4, 4]: sums of a few of these are exact in f32 and f64 alike. */
const dyadic = (rnd: () => number) => (Math.floor(rnd() * 2049) - 1024) / 256;

// ---- independent geometry (deliberately not the library's helpers) ----------------------------

type Dims = Record<string, number>;

/** [start, len] of `dim` on the rank at `coords`: nested balanced split, major mesh axis first. */
function expectRange(size: number, dim: string, pl: readonly Placement[], sizes: readonly number[], coords: readonly number[]): [number, number] {
  let start = 0, len = size;
  pl.forEach((p, a) => {
    if (p !== `S(${dim})`) return;
    const k = sizes[a]!, i = coords[a]!;
    const base = Math.floor(len / k), extra = len % k;
    start += i * base + Math.min(i, extra);
    len = base + (i < extra ? 1 : 0);
  });
  return [start, len];
}

function coordsOfRank(sizes: readonly number[], r: number): number[] {
  const c: number[] = [];
  for (let a = sizes.length - 1; a >= 0; a--) {
    c[a] = r % sizes[a]!;
    r = Math.floor(r / sizes[a]!);
  }
  return c;
}

/** Row-major slice of a global array by per-dim [start, len] ranges. */
function sliceGlobal(g: ArrayLike<number>, shape: number[], ranges: [number, number][]): number[] {
  const out: number[] = [];
  const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
  const rec = (d: number, off: number) => {
    if (d === shape.length) {
      out.push(g[off]!);
      return;
    }
    const [s, l] = ranges[d]!;
    for (let i = s; i < s + l; i++) rec(d + 1, off + i * strides[d]!);
  };
  rec(0, 0);
  return out;
}

const rangesOf = (dims: Dims, pl: readonly Placement[], sizes: readonly number[], c: readonly number[]) =>
  Object.entries(dims).map(([n, s]) => expectRange(s, n, pl, sizes, c));

const isP = (p: Placement) => p === "P(sum)" || p === "P(max)";

/**
 * Per-rank local data for `global` in placements `pl`. Along Partial axes the value is split into
 * K = (product of Partial axis sizes) parts: sum parts are random and the last one makes up the
 * rest; max parts hold the value at a random owner and something smaller elsewhere.
 * Replicate axes see identical data.
 */
function pieces(global: number[], dims: Dims, pl: readonly Placement[], sizes: readonly number[], rnd: () => number, generic = false): (r: number) => number[] {
  const partialAxes = pl.flatMap((p, a) => (isP(p) ? [a] : []));
  const ops = new Set(partialAxes.map((a) => pl[a]));
  if (ops.size > 1) throw new Error("test helper: mixed Partial ops are not built here");
  const K = partialAxes.reduce((k, a) => k * sizes[a]!, 1);
  const n = global.length;
  const parts: number[][] = Array.from({ length: K }, () => new Array<number>(n));
  if (K === 1) parts[0] = global.slice();
  else if (pl[partialAxes[0]!] === "P(sum)") {
    for (let i = 0; i < n; i++) {
      let acc = 0;
      for (let k = 0; k < K - 1; k++) {
        const v = generic ? Math.fround(rnd() * 2 - 1) : dyadic(rnd);
        parts[k]![i] = v;
        acc += v;
      }
      parts[K - 1]![i] = generic ? Math.fround(global[i]! - acc) : global[i]! - acc;
    }
  } else {
    for (let i = 0; i < n; i++) {
      const owner = Math.floor(rnd() * K);
      for (let k = 0; k < K; k++) parts[k]![i] = k === owner ? global[i]! : global[i]! - (1 + Math.floor(rnd() * 512)) / 256;
    }
  }
  const shape = Object.values(dims);
  return (r) => {
    const c = coordsOfRank(sizes, r);
    const k = partialAxes.reduce((acc, a) => acc * sizes[a]! + c[a]!, 0);
    return sliceGlobal(parts[k]!, shape, rangesOf(dims, pl, sizes, c));
  };
}

/** Checks every rank's piece of a value in placements `pl` against the global value. */
function checkLocals(locals: ArrayLike<number>[], global: number[], dims: Dims, pl: readonly Placement[], sizes: readonly number[], tol: number): string | null {
  const world = sizes.reduce((a, b) => a * b, 1);
  const partialAxes = pl.flatMap((p, a) => (isP(p) ? [a] : []));
  const op = partialAxes.length ? pl[partialAxes[0]!] : undefined;
  // group ranks by their coordinates on the non-Partial axes
  const groups = new Map<string, number[]>();
  for (let r = 0; r < world; r++) {
    const c = coordsOfRank(sizes, r);
    const key = c.map((x, a) => (partialAxes.includes(a) ? "*" : x)).join(",");
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  for (const [key, ranks] of groups) {
    const c = coordsOfRank(sizes, ranks[0]!);
    const want = sliceGlobal(global, Object.values(dims), rangesOf(dims, pl, sizes, c));
    for (const r of ranks) if (locals[r]!.length !== want.length) return `rank ${r} holds ${locals[r]!.length} elements, want ${want.length}`;
    for (let i = 0; i < want.length; i++) {
      let acc = op === "P(max)" ? -Infinity : 0;
      for (const r of ranks) acc = op === "P(max)" ? Math.max(acc, locals[r]![i]!) : acc + locals[r]![i]!;
      if (!op) acc = locals[ranks[0]!]![i]!;
      const got = Math.fround(acc);
      const bad = tol === 0 ? !Object.is(got, want[i]) : Math.abs(got - want[i]!) > tol * Math.max(Math.abs(want[i]!), 1e-3);
      if (bad) return `group ${key} element ${i}: got ${got}, want ${want[i]}`;
    }
  }
  return null;
}

// ---- one case: build, redistribute, evaluate, check ---------------------------------------------

interface CaseResult {
  plan: Plan;
  value: GlobalValue;
  steps: PlannedStep[];
}

async function runCase(meshSizes: Record<string, number>, dims: Dims, src: Placement[], dst: Placement[], seed: number, generic = false): Promise<{ err: string | null } & CaseResult> {
  const mesh = Mesh.of(meshSizes);
  const sizes = mesh.spec.sizes;
  const axes = mesh.spec.axes;
  const rnd = mulberry32(seed);
  const n = Object.values(dims).reduce((a, b) => a * b, 1);
  const global = Array.from({ length: n }, () => (generic ? Math.fround((1 + rnd()) * (rnd() < 0.5 ? -1 : 1)) : dyadic(rnd)));
  const srcMap = Object.fromEntries(axes.map((a, i) => [a, src[i]!]));
  const dstMap = Object.fromEntries(axes.map((a, i) => [a, dst[i]!]));
  const local = pieces(global, dims, src, sizes, rnd, generic);
  const x = (fromLocal as any)(mesh, dims, "f32", srcMap, (r: number) => local(r));
  const y = (redistribute as any)(x, dstMap);
  let plan: Plan | undefined;
  const [value] = await evaluate([y], { onPlan: (p) => (plan = p) });
  const steps = planRedistribute(x.type, src, dst, mesh.spec);
  const tol = generic ? 1e-6 : 0;
  const tag = `mesh ${JSON.stringify(meshSizes)} dims ${JSON.stringify(dims)} (${src.join(", ")}) -> (${dst.join(", ")})`;
  // 1. the global value read back
  if (!value!.shape.every((s, i) => s === Object.values(dims)[i])) return { err: `${tag}: shape ${value!.shape}`, plan: plan!, value: value!, steps };
  if (tol === 0) {
    for (let i = 0; i < n; i++) if (!Object.is(value!.data[i], global[i])) return { err: `${tag}: global element ${i} is ${value!.data[i]}, want ${global[i]}`, plan: plan!, value: value!, steps };
  } else {
    const want = new GlobalValue(Object.keys(dims), Object.values(dims), "f32", Float32Array.from(global));
    const d = maxRelDiff(value!, want);
    if (!(d <= tol)) return { err: `${tag}: maxRelDiff ${d}`, plan: plan!, value: value!, steps };
  }
  // 2. every rank's piece
  const res = runPlanCpu(plan!);
  const e = checkLocals(res.locals[0]!.map((t) => t.data), global, dims, dst, sizes, tol);
  return { err: e && `${tag}: ${e}`, plan: plan!, value: value!, steps };
}

const fmt = (steps: PlannedStep[], mesh: MeshSpec) => steps.map((s) => fmtStep(s, mesh));

/** Fails with the first problems listed one per line (vitest would elide a long array). */
function expectNone(errs: string[]): void {
  expect(errs.length === 0 ? "" : `${errs.length} problem(s):\n${errs.slice(0, 25).join("\n")}`).toBe("");
}

// ---- 1-D meshes ---------------------------------------------------------------------------------

const P1: Placement[] = ["R", "S(a)", "S(b)", "P(sum)", "P(max)"];
const SHAPES: Dims[] = [{ a: 5, b: 7 }, { a: 4, b: 6 }];

/** What a 1-D redistribute must plan, by (source, target), on axis `d`. */
const EXPECT_1D: Record<string, Record<string, string[]>> = {
  R: { R: [], "S(a)": ["local_slice[d](a)"], "S(b)": ["local_slice[d](b)"], "P(sum)": ["partialize[d](sum)"], "P(max)": ["partialize[d](max)"] },
  "S(a)": { R: ["all_gather[d](a)"], "S(a)": [], "S(b)": ["all_to_all[d](a -> b)"], "P(sum)": ["all_gather[d](a)", "partialize[d](sum)"], "P(max)": ["all_gather[d](a)", "partialize[d](max)"] },
  "S(b)": { R: ["all_gather[d](b)"], "S(a)": ["all_to_all[d](b -> a)"], "S(b)": [], "P(sum)": ["all_gather[d](b)", "partialize[d](sum)"], "P(max)": ["all_gather[d](b)", "partialize[d](max)"] },
  "P(sum)": { R: ["all_reduce[d](sum)"], "S(a)": ["reduce_scatter[d](sum -> a)"], "S(b)": ["reduce_scatter[d](sum -> b)"], "P(sum)": [], "P(max)": ["all_reduce[d](sum)", "partialize[d](max)"] },
  "P(max)": { R: ["all_reduce[d](max)"], "S(a)": ["reduce_scatter[d](max -> a)"], "S(b)": ["reduce_scatter[d](max -> b)"], "P(sum)": ["all_reduce[d](max)", "partialize[d](sum)"], "P(max)": [] },
};

const KIND_1D: Record<string, Record<string, string | null>> = {
  // the headline collective per pair: S→R all_gather, P(sum)→R all_reduce, P(sum)→S reduce_scatter,
  // S(a)→S(b) all_to_all, R→S local_slice, X→X nothing
  R: { R: null, "S(a)": "local_slice", "S(b)": "local_slice" },
  "S(a)": { R: "all_gather", "S(a)": null, "S(b)": "all_to_all" },
  "S(b)": { R: "all_gather", "S(a)": "all_to_all", "S(b)": null },
  "P(sum)": { R: "all_reduce", "S(a)": "reduce_scatter", "S(b)": "reduce_scatter", "P(sum)": null },
  "P(max)": { R: "all_reduce", "S(a)": "reduce_scatter", "S(b)": "reduce_scatter", "P(max)": null },
};

describe("redistribute on 1-D meshes: every (source, target) pair", () => {
  for (const k of [2, 3, 4]) {
    for (const dims of SHAPES) {
      it(`mesh d=${k}, dims ${JSON.stringify(dims)}: values exact, per-rank pieces exact, plans as expected`, async () => {
        const errs: string[] = [];
        let seed = 1000 * k + dims.a!;
        for (const src of P1) {
          for (const dst of P1) {
            const r = await runCase({ d: k }, dims, [src], [dst], seed++);
            if (r.err) errs.push(r.err);
            const got = fmt(r.steps, r.plan.mesh);
            if (got.join("; ") !== EXPECT_1D[src]![dst]!.join("; ")) errs.push(`plan ${src} -> ${dst}: [${got.join("; ")}], want [${EXPECT_1D[src]![dst]!.join("; ")}]`);
            const kind = KIND_1D[src]?.[dst];
            if (kind !== undefined) {
              const kinds = r.steps.map((s) => s.kind);
              if (kind === null ? kinds.length !== 0 : kinds.join() !== kind) errs.push(`plan ${src} -> ${dst}: kinds [${kinds}], want [${kind ?? ""}]`);
            }
            // the partition pass must emit exactly the planned steps as comm instructions
            const comm = r.plan.instrs.filter((i) => i.kind === "comm");
            if (comm.length !== r.steps.length) errs.push(`partition ${src} -> ${dst}: ${comm.length} comm instrs for ${r.steps.length} steps`);
          }
        }
        expectNone(errs);
      });
    }
  }

  it("Partial<sum> sources with generic (non-dyadic) floats agree within 1e-6", async () => {
    const errs: string[] = [];
    let seed = 77;
    for (const k of [2, 3, 4])
      for (const dims of SHAPES)
        for (const dst of P1) {
          const r = await runCase({ d: k }, dims, ["P(sum)"], [dst], seed++, true);
          if (r.err) errs.push(r.err);
        }
    expectNone(errs);
  });
});

// ---- 2-D meshes ---------------------------------------------------------------------------------

const P2: Placement[] = ["R", "S(a)", "S(b)", "P(sum)"];
const TUPLES: Placement[][] = P2.flatMap((p) => P2.map((q) => [p, q]));

describe("redistribute on 2-D meshes: all 16 x 16 placement-tuple pairs", () => {
  for (const ms of [{ x: 2, y: 2 }, { x: 2, y: 3 }]) {
    for (const dims of SHAPES) {
      it(`mesh ${JSON.stringify(ms)}, dims ${JSON.stringify(dims)}: values and per-rank pieces exact`, async () => {
        const errs: string[] = [];
        let seed = 31 * ms.y + dims.b!;
        let cases = 0;
        for (const src of TUPLES) {
          for (const dst of TUPLES) {
            cases++;
            let r;
            try {
              r = await runCase(ms, dims, src, dst, seed++);
            } catch (e) {
              errs.push(`(${src}) -> (${dst}): threw ${(e as Error).message}`);
              continue;
            }
            if (r.err) errs.push(r.err);
            if (src.join() === dst.join() && r.steps.length !== 0) errs.push(`(${src}) -> itself planned ${fmt(r.steps, r.plan.mesh)}`);
            // the last step leaves exactly the target placements
            if (r.steps.length && r.steps[r.steps.length - 1]!.after.join() !== dst.join()) errs.push(`(${src}) -> (${dst}): last step leaves (${r.steps[r.steps.length - 1]!.after})`);
          }
        }
        expect(cases).toBe(256);
        expectNone(errs);
      });
    }
  }

  it("a few 2-D plans, as fmtStep strings", () => {
    const mesh: MeshSpec = { axes: ["x", "y"], sizes: [2, 3] };
    const t: TensorType = { dims: [{ name: "a", size: 5 }, { name: "b", size: 7 }], dtype: "f32", placements: ["R", "R"] };
    const plan = (from: Placement[], to: Placement[]) => fmt(planRedistribute(t, from, to, mesh), mesh);
    expect(plan(["S(a)", "S(a)"], ["R", "R"])).toEqual(["all_gather[y](a)", "all_gather[x](a)"]);
    // the major axis changes how 'a' is split, so the minor axis's shard is undone and redone
    expect(plan(["S(a)", "S(a)"], ["R", "S(a)"])).toEqual(["all_gather[y](a)", "all_gather[x](a)", "local_slice[y](a)"]);
    expect(plan(["R", "S(a)"], ["S(a)", "S(a)"])).toEqual(["all_gather[y](a)", "local_slice[x](a)", "local_slice[y](a)"]);
    expect(plan(["P(sum)", "S(a)"], ["S(a)", "S(a)"])).toEqual(["all_gather[y](a)", "reduce_scatter[x](sum -> a)", "local_slice[y](a)"]);
    expect(plan(["S(b)", "S(a)"], ["S(a)", "S(b)"])).toEqual(["all_gather[y](a)", "all_to_all[x](b -> a)", "local_slice[y](b)"]);
    expect(plan(["S(a)", "R"], ["S(b)", "S(a)"])).toEqual(["all_to_all[x](a -> b)", "local_slice[y](a)"]);
    expect(plan(["P(sum)", "P(sum)"], ["R", "R"])).toEqual(["all_reduce[y](sum)", "all_reduce[x](sum)"]);
    expect(plan(["P(sum)", "P(sum)"], ["S(a)", "S(b)"])).toEqual(["all_reduce[y](sum)", "reduce_scatter[x](sum -> a)", "local_slice[y](b)"]);
    // a Partial major axis does not change how the minor axis splits 'a': nothing is redone
    expect(plan(["P(sum)", "S(a)"], ["R", "S(a)"])).toEqual(["all_reduce[x](sum)"]);
    expect(plan(["S(a)", "P(sum)"], ["S(a)", "S(a)"])).toEqual(["reduce_scatter[y](sum -> a)"]);
    // the minor axis alone changes dim: one all-to-all inside each major group
    expect(plan(["S(a)", "S(a)"], ["S(a)", "S(b)"])).toEqual(["all_to_all[y](a -> b)"]);
    expect(plan(["R", "R"], ["R", "R"])).toEqual([]);
  });
});

// ---- nested sharding: local shapes by hand --------------------------------------------------------

describe("nested sharding: local shapes and offsets by hand", () => {
  const cases: { ms: Record<string, number>; dims: Dims; pl: Placement[]; shapes: number[][]; offsets: number[][] }[] = [
    // x splits a=5 into [3, 2]; y splits 3 into [1, 1, 1] and 2 into [1, 1, 0]
    { ms: { x: 2, y: 3 }, dims: { a: 5, b: 7 }, pl: ["S(a)", "S(a)"], shapes: [[1, 7], [1, 7], [1, 7], [1, 7], [1, 7], [0, 7]], offsets: [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [5, 0]] },
    // nested differs from a flat 6-way split of 4 ([1,1,1,1,0,0]): x gives [2, 2], y splits each into [1, 1, 0]
    { ms: { x: 2, y: 3 }, dims: { a: 4, b: 6 }, pl: ["S(a)", "S(a)"], shapes: [[1, 6], [1, 6], [0, 6], [1, 6], [1, 6], [0, 6]], offsets: [[0, 0], [1, 0], [2, 0], [2, 0], [3, 0], [4, 0]] },
    // x splits b=7 into [4, 3]; y splits 4 into [2, 1, 1] and 3 into [1, 1, 1]
    { ms: { x: 2, y: 3 }, dims: { a: 5, b: 7 }, pl: ["S(b)", "S(b)"], shapes: [[5, 2], [5, 1], [5, 1], [5, 1], [5, 1], [5, 1]], offsets: [[0, 0], [0, 2], [0, 3], [0, 4], [0, 5], [0, 6]] },
    // different dims on the two axes: x splits b into [4, 3], y splits a into [2, 2, 1]
    { ms: { x: 2, y: 3 }, dims: { a: 5, b: 7 }, pl: ["S(b)", "S(a)"], shapes: [[2, 4], [2, 4], [1, 4], [2, 3], [2, 3], [1, 3]], offsets: [[0, 0], [2, 0], [4, 0], [0, 4], [2, 4], [4, 4]] },
    // 2x2, a=5: x gives [3, 2]; y splits 3 into [2, 1] and 2 into [1, 1]
    { ms: { x: 2, y: 2 }, dims: { a: 5, b: 7 }, pl: ["S(a)", "S(a)"], shapes: [[2, 7], [1, 7], [1, 7], [1, 7]], offsets: [[0, 0], [2, 0], [3, 0], [4, 0]] },
    // Partial and Replicate axes do not split
    { ms: { x: 2, y: 3 }, dims: { a: 5, b: 7 }, pl: ["P(sum)", "S(b)"], shapes: [[5, 3], [5, 2], [5, 2], [5, 3], [5, 2], [5, 2]], offsets: [[0, 0], [0, 3], [0, 5], [0, 0], [0, 3], [0, 5]] },
  ];

  for (const c of cases) {
    it(`${JSON.stringify(c.ms)} ${JSON.stringify(c.dims)} (${c.pl.join(", ")})`, async () => {
      const mesh = Mesh.of(c.ms);
      const pmap = Object.fromEntries(mesh.spec.axes.map((a, i) => [a, c.pl[i]!]));
      const n = Object.values(c.dims).reduce((a, b) => a * b, 1);
      const global = Array.from({ length: n }, (_, i) => i);
      const local = pieces(global, c.dims, c.pl, mesh.spec.sizes, mulberry32(5));
      // fromLocal itself checks each rank's element count against its placement
      const x = (fromLocal as any)(mesh, c.dims, "f32", pmap, (r: number) => local(r));
      // compiled plan: the slot of x
      const plan = compile(mesh.builder.graph, [x.ref]);
      const v = plan.values[plan.outputs[0]!]!;
      expect(v.shapes).toEqual(c.shapes);
      expect(v.boxes.map((b) => b.offset)).toEqual(c.offsets);
      // boxOf directly
      const t: TensorType = x.type;
      for (let r = 0; r < mesh.size; r++) {
        const bx = boxOf(t, mesh.spec, coordsOfRank(mesh.spec.sizes, r));
        expect(bx.shape).toEqual(c.shapes[r]);
        expect(bx.box.offset).toEqual(c.offsets[r]);
      }
      // and the data round-trips through a full gather
      const [g] = await evaluate([(redistribute as any)(x, Object.fromEntries(mesh.spec.axes.map((a) => [a, "R"])))]);
      expect(Array.from(g!.data)).toEqual(global);
    });
  }
});

// ---- planner purity and caching ------------------------------------------------------------------

describe("planRedistribute: pure and cached", () => {
  const mesh: MeshSpec = { axes: ["x", "y"], sizes: [2, 3] };
  const t: TensorType = { dims: [{ name: "a", size: 5 }, { name: "b", size: 7 }], dtype: "f32", placements: ["S(a)", "P(sum)"] };

  it("returns the identical cached array for the same call, and for equal (not identical) arguments", () => {
    const from: Placement[] = ["S(a)", "P(sum)"], to: Placement[] = ["S(b)", "S(a)"];
    const p1 = planRedistribute(t, from, to, mesh);
    const p2 = planRedistribute(t, from, to, mesh);
    expect(p2).toBe(p1);
    const p3 = planRedistribute(structuredClone(t), [...from], [...to], { axes: [...mesh.axes], sizes: [...mesh.sizes] });
    expect(p3).toBe(p1);
  });

  it("does not mutate its arguments", () => {
    const from = Object.freeze(["P(sum)", "S(a)"]) as readonly Placement[];
    const to = Object.freeze(["S(a)", "S(a)"]) as readonly Placement[];
    const tt = structuredClone(t);
    const before = JSON.stringify([tt, from, to, mesh]);
    expect(() => planRedistribute(tt, from, to, mesh)).not.toThrow();
    expect(JSON.stringify([tt, from, to, mesh])).toBe(before);
  });

  it("distinguishes different mesh sizes, dim sizes and placements in its cache", () => {
    const a = planRedistribute(t, ["S(a)", "R"], ["R", "R"], mesh);
    const b = planRedistribute(t, ["S(a)", "R"], ["R", "R"], { axes: ["x", "y"], sizes: [3, 2] });
    const c = planRedistribute({ ...t, dims: [{ name: "a", size: 6 }, { name: "b", size: 7 }] }, ["S(a)", "R"], ["R", "R"], mesh);
    const d = planRedistribute(t, ["S(b)", "R"], ["R", "R"], mesh);
    expect(b).not.toBe(a);
    expect(c).not.toBe(a);
    expect(fmt(d, mesh)).toEqual(["all_gather[x](b)"]);
    expect(fmt(a, mesh)).toEqual(["all_gather[x](a)"]);
  });

  it("records the placements each step leaves behind", () => {
    const steps = planRedistribute(t, ["S(a)", "P(sum)"], ["S(b)", "S(a)"], mesh);
    expect(steps.map((s) => [fmtStep(s, mesh), s.after.join(",")])).toEqual([
      ["all_reduce[y](sum)", "S(a),R"],
      ["all_to_all[x](a -> b)", "S(b),R"],
      ["local_slice[y](a)", "S(b),S(a)"],
    ]);
  });
});
