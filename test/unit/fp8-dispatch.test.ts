// FP8 dispatch (stdlib/nn/fp8.ts fp8Dispatch): the tokens quantized 1x128 before moe_dispatch, their
// e4m3 codes dispatched and their scales redispatched by the same perm. A 1x128 tile is within one
// row, so the rows must be bit for bit those of quantizing after the dispatch; the MoE block with
// fp8 + fusedDispatch must equal the fp8 path that dispatches the activations and quantizes after,
// forward and every gradient bit for bit, on meshes with an expert axis and random, skewed and
// empty-expert routings; the tokens' gradient returns through dispatch's transpose in their dtype;
// and the fusion pass makes the tokens' quantize the epilogue of the kernel that produces them.
import { describe, expect, it } from "vitest";
import { Mesh } from "../../stdlib/mesh.ts";
import { ParamStore } from "../../stdlib/nn/params.ts";
import { Layout } from "../../stdlib/nn/layout.ts";
import { moe, type MoeConfig } from "../../stdlib/nn/moe.ts";
import { fp8Dispatch, fp8SegmentDot } from "../../stdlib/nn/fp8.ts";
import { input, piecesOf, Program } from "../../stdlib/program.ts";
import { grad } from "../../stdlib/autodiff.ts";
import { fromGlobal, ones, randn } from "../../stdlib/ops/factories.ts";
import { moeCombine, moeDispatch, type DispatchOpts } from "../../stdlib/ops/dispatch.ts";
import { quantize } from "../../stdlib/ops/quantize.ts";
import { evaluate } from "../../stdlib/index.ts";
import type { AnyDTensor } from "../../stdlib/dtensor.ts";
import { rmsnorm, sum } from "../../stdlib/ops/reduce.ts";
import { add, mul } from "../../stdlib/nn/ops-internal.ts";
import { toActivation } from "../../stdlib/nn/layers.ts";
import { DTypeError } from "../../compiler/errors.ts";
import { compile } from "../../compiler/pipeline.ts";
import { fuse } from "../../compiler/codegen/fuse.ts";
import { roundToBf16 } from "../../compiler/numeric/bf16.ts";
import { mulberry32 } from "../helpers/prng.ts";

type Routing = "random" | "skewed" | "empty";
const B = 6, S = 5, E = 8;

/** The selection bias that makes each routing: none; most tokens to expert 2; experts 0, 3, 6, 7 never chosen. */
function biasFor(r: Routing): Float32Array {
  const b = new Float32Array(E);
  if (r === "skewed") b[2] = 0.6;
  if (r === "empty") for (const e of [0, 3, 6, 7]) b[e] = -10;
  return b;
}

/** The MoE block's output and the gradients of x and of every parameter, and the ops traced. */
function block(layout: Layout, cfg: MoeConfig, routing: Routing, D: number) {
  const mesh = Mesh.of(layout.mesh);
  const ps = new ParamStore(mesh, layout);
  const at = ps.placementsObject(layout.activation(["batch", "seq", "model"])) as never;
  const x = randn(mesh, { batch: B, seq: S, model: D }, "f32", at, { seed: 3 }) as AnyDTensor;
  const r = randn(mesh, { batch: B, seq: S, model: D }, "f32", at, { seed: 4 }) as AnyDTensor;
  const out = moe(ps, "m", x, cfg, input(mesh, "bias", { experts: E }, "f32") as AnyDTensor);
  const loss = add(toActivation(ps, sum(mul(out.y, r), ["batch", "seq", "model"]) as AnyDTensor), out.aux);
  const g = grad(loss, { x, ...Object.fromEntries(ps.stored) } as Record<string, AnyDTensor>);
  const outs = { y: out.y, load: out.load, gx: g.x!, router: g["m.router"]!, w1: g["m.w1"]!, w2: g["m.w2"]!, w3: g["m.w3"]! };
  const feeds = { ...ps.initialise(5), bias: piecesOf(mesh.spec, { dims: [{ name: "experts", size: E }], dtype: "f32", placements: mesh.spec.axes.map(() => "R") }, biasFor(routing)) };
  const nodes = mesh.builder.graph.nodes;
  return { values: new Program(mesh, outs).runGlobal(feeds).values, nodes };
}

const LAYOUTS = [
  new Layout("one", { d: 1 }, { d: "data" }),
  new Layout("dp1-ep2", { dp: 1, ep: 2 }, { dp: "data", ep: "expert" }),
  new Layout("dp2-ep2", { dp: 2, ep: 2 }, { dp: "data", ep: "expert" }),
  new Layout("dp2-ep3", { dp: 2, ep: 3 }, { dp: "data", ep: "expert" }),
];

describe("the MoE block with FP8 dispatch", () => {
  // D 136: a whole 128-tile and a ragged one per row
  const cfg: MoeConfig = { experts: E, topK: 2, ffn: 6, shared: 0, score: "softmax", auxLoss: 0.1, fp8: true };
  for (const routing of ["random", "skewed", "empty"] as Routing[])
    for (const layout of LAYOUTS)
      it(`${routing} routing on ${layout.name}: equals dispatching f32 and quantizing after, forward and gradients bit for bit`, () => {
        const c = { ...cfg, topK: routing === "skewed" ? 3 : 2 };
        const after = block(layout, c, routing, 136).values; // the composed path: rows in f32, quantized after the dispatch
        const { values: before, nodes } = block(layout, { ...c, fusedDispatch: true }, routing, 136);
        for (const k of Object.keys(after) as (keyof typeof after)[]) {
          expect(Array.from(before[k].data), k).toEqual(Array.from(after[k].data));
          expect(Array.from(after[k].data).some((v) => v !== 0), `${k} is not all zero`).toBe(true);
        }
        // what travels: e4m3 codes and f32 scales out; the gradient back through combine in the tokens' f32
        const dispatch = nodes.find((n) => n.op === "moe_dispatch")!;
        expect(nodes[dispatch.inputs[0]!.node]!.outputs[dispatch.inputs[0]!.out]!.dtype).toBe("fp8e4m3");
        expect(nodes.filter((n) => n.op === "moe_redispatch").map((n) => n.outputs[0]!.dtype)).toContain("f32");
        expect(nodes.filter((n) => n.op === "quantize").length, "the tokens once (not once each for w1 and w3), h, three weights, three Dgrads").toBe(8);
        const load = Array.from(after.load.data);
        if (routing === "empty") for (const e of [0, 3, 6, 7]) expect(load[e], `expert ${e} is empty`).toBe(0);
        if (routing === "skewed") expect(load[2]).toBe(B * S);
      });
  it("the fused plan quantizes the tokens in the RMSNorm kernel's epilogue: no quantize of activations stands alone", () => {
    const layout = LAYOUTS[2]!, mesh = Mesh.of(layout.mesh), ps = new ParamStore(mesh, layout);
    const at = ps.placementsObject(layout.activation(["batch", "seq", "model"])) as never;
    const h = randn(mesh, { batch: 4, seq: 8, model: 256 }, "f32", at, { seed: 3 }) as AnyDTensor;
    const x = rmsnorm(h as never, ones(mesh, { model: 256 }, "f32") as never, "model") as AnyDTensor;
    const out = moe(ps, "m", x, { ...cfg, experts: 4, ffn: 128, fusedDispatch: true }, input(mesh, "bias", { experts: 4 }, "f32") as AnyDTensor);
    const instrs = fuse(compile(mesh.builder.graph, [out.y.ref])).instrs;
    const kernels = instrs.flatMap((i) => (i.kind === "kernel" ? [i.spec] : []));
    expect(kernels.some((k) => k.kind === "row" && k.ops.join() === "rmsnorm,quantize" && k.results.some((r) => r.dtype === "fp8e4m3"))).toBe(true);
    const alone = instrs.flatMap((i) => (i.kind === "op" && i.op === "quantize" ? [i.attrs.tiling] : []));
    expect(alone, "only the weights' 128x128 blocks").toEqual(["128x128", "128x128", "128x128"]);
  });
});

describe("fp8Dispatch and fp8SegmentDot on pre-quantized rows, bf16 and f32 tokens", () => {
  const K = 3, D = 200, N = 24;
  const o: DispatchOpts = { axis: "ep", dim: "s", k: "k", rows: "rows", groups: "e", numGroups: E };
  for (const dtype of ["bf16", "f32"] as const)
    for (const axes of [{ dp: 1, ep: 2 }, { dp: 2, ep: 2 }] as Record<string, number>[])
      it(`${dtype} on ${JSON.stringify(axes)}: codes and scales, the expert output, dx, dw and the gate's gradient equal quantizing after the dispatch`, async () => {
        const rnd = mulberry32(9);
        const val = () => (dtype === "bf16" ? roundToBf16 : Math.fround)((rnd() - 0.5) * 4);
        const xs = Array.from({ length: B * S * D }, val), ws = Array.from({ length: E * D * N }, () => val() / 8);
        const ids = Array.from({ length: B * S * K }, () => (rnd() < 0.05 ? -1 : rnd() < 0.5 ? 5 : Math.floor(rnd() * (E - 1)))); // skewed; expert 7 empty
        const gs = Array.from({ length: B * S * K }, val), rs = Array.from({ length: B * S * N }, val);
        const run = async (before: boolean) => {
          const mesh = Mesh.of(axes);
          const on = { dp: "S(b)", ep: "S(b)" } as never;
          const x = fromGlobal(mesh, { b: B, s: S, d: D }, dtype, xs, on) as AnyDTensor;
          const idx = fromGlobal(mesh, { b: B, s: S, k: K }, "i32", ids, on) as AnyDTensor;
          const gate = fromGlobal(mesh, { b: B, s: S, k: K }, dtype, gs, on) as AnyDTensor;
          const w = fromGlobal(mesh, { e: E, d: D, n: N }, dtype, ws, { ep: "S(e)" } as never) as AnyDTensor;
          const d = before ? fp8Dispatch(x, idx, o, "d") : moeDispatch(x, idx, o);
          const y = moeCombine(fp8SegmentDot(d.rows, w, d.counts, "d", "n"), d.perm, gate, { axis: "ep", dim: "s", size: S, k: "k", numK: K });
          const loss = sum(mul(y, fromGlobal(mesh, { b: B, s: S, n: N }, dtype, rs, on) as AnyDTensor), ["b", "s", "n"]) as AnyDTensor;
          const g = grad(loss, { x, w, gate });
          const q = "scales" in d.rows ? d.rows : (quantize(d.rows as never, "1x128", "d") as { q: AnyDTensor; scales: AnyDTensor });
          const vals = await evaluate([y, g.x!, g.w!, g.gate!, q.q, q.scales, d.perm] as AnyDTensor[]);
          return { vals, nodes: mesh.builder.graph.nodes };
        };
        const after = await run(false), before = await run(true);
        const [, , , , qA, sA, perm] = after.vals, [, , , , qB, sB] = before.vals;
        expect(Array.from(qB!.data), "codes").toEqual(Array.from(qA!.data));
        // scales of the rows that hold a token; a padding row is zeros, whose quantize gives scale 1
        const tiles = Math.ceil(D / 128);
        const live = (s: ArrayLike<number>) => Array.from(s).filter((_, i) => perm!.data[Math.floor(i / tiles)]! >= 0);
        expect(live(sB!.data), "scales").toEqual(live(sA!.data));
        ["y", "dx", "dw", "dgate"].forEach((k, i) => {
          expect(before.vals[i]!.dtype, k).toBe(dtype);
          expect(Array.from(before.vals[i]!.data), k).toEqual(Array.from(after.vals[i]!.data));
        });
        // the tokens' gradient comes back through dispatch's transpose in their dtype
        const dispatch = before.nodes.find((n) => n.op === "moe_dispatch")!;
        const back = before.nodes.filter((n) => n.op === "moe_combine" && n.inputs.length === 2 && n.inputs[1]!.node === dispatch.id && n.attrs.keepK === false);
        expect(back.map((n) => n.outputs[0]!.dtype)).toEqual([dtype]);
      });

  it("refuses tokens that are not f32 or bf16, saying what to do", () => {
    const mesh = Mesh.of({ ep: 2 });
    const x = fromGlobal(mesh, { b: 2, s: 3, d: 4 }, "i32", new Int32Array(24)) as AnyDTensor;
    const idx = fromGlobal(mesh, { b: 2, s: 3, k: 1 }, "i32", new Int32Array(6)) as AnyDTensor;
    expect(() => fp8Dispatch(x, idx, o, "d")).toThrow(DTypeError);
    expect(() => fp8Dispatch(x, idx, o, "d")).toThrow(/cast\(x, "bf16"\)/);
  });
});
