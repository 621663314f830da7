// The bf16 MoE layer the one-GPU benchmarks run, as a plan plus random bf16 feeds: the forward
// (bench/gpu/moe-layer.ts) and the training step, forward + backward (bench/gpu/moe-graph.ts, which
// captures it as a CUDA graph). Routing is composed from plain ops (router GEMM, softmax, top-k, sort by
// expert, gather rows, per-expert SwiGLU as segment contractions, gate-weighted scatter back), as
// examples/moe-layer.ts runs it on one device. test/unit/moe-bench-build.test.ts runs both small on
// the CPU reference.
import { compile } from "../../../compiler/pipeline.ts";
import { Mesh, dot, sum, cast, type AnyDTensor } from "../../../stdlib/index.ts";
import { div, mul, silu, stop_gradient_ as stopGradient } from "../../../stdlib/nn/ops-internal.ts";
import { softmax } from "../../../stdlib/ops/reduce.ts";
import { gather, scatterAdd, sortByKey, topk } from "../../../stdlib/ops/routing.ts";
import { segmentDot } from "../../../stdlib/ops/contraction.ts";
import { flatten } from "../../../stdlib/ops/movement.ts";
import { input, piecesOf } from "../../../stdlib/program.ts";
import { grad } from "../../../stdlib/autodiff.ts";
import { fp8SegmentDot } from "../../../stdlib/nn/fp8.ts";
import { roundToBf16 } from "../../../compiler/numeric/bf16.ts";
import type { LocalTensor } from "../../../compiler/ir/local.ts";

/** Tokens, model dim, expert ffn, experts, top-k. */
export interface Size { T: number; D: number; F: number; E: number; K: number }

/** Uniform bf16 values of standard deviation `std` from a seeded LCG. */
function uniformBf16(n: number, std: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = roundToBf16((((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 2 - 1) * std * 1.7320508);
  return a;
}

function inputs(z: Size) {
  const mesh = Mesh.of({ d: 1 });
  return {
    mesh,
    x: input(mesh, "x", { batch: 1, seq: z.T, model: z.D }, "bf16") as AnyDTensor,
    router: input(mesh, "router", { model: z.D, experts: z.E }, "bf16") as AnyDTensor,
    w1: input(mesh, "w1", { experts: z.E, model: z.D, ffn: z.F }, "bf16") as AnyDTensor,
    w3: input(mesh, "w3", { experts: z.E, model: z.D, ffn: z.F }, "bf16") as AnyDTensor,
    w2: input(mesh, "w2", { experts: z.E, ffn: z.F, model: z.D }, "bf16") as AnyDTensor,
  };
}

/**
 * The routed experts over the rows sorted by expert, and the gate-weighted scatter back to the tokens;
 * with `fp8` the three contractions are stdlib/nn/fp8.ts's fp8SegmentDot (rows 1×128, weights 128×128,
 * bf16 results; their Dgrad and Wgrad FP8 too).
 */
function experts(z: Size, x: AnyDTensor, w1: AnyDTensor, w3: AnyDTensor, w2: AnyDTensor, indices: AnyDTensor, gate: AnyDTensor, fp8 = false) {
  const { perm, counts } = sortByKey(flatten(indices, ["seq", "k"], "slots") as AnyDTensor, "slots", { rows: "rows", groups: "experts", numGroups: z.E }) as { perm: AnyDTensor; counts: AnyDTensor };
  const token = div(perm, z.K);
  const rows = gather(x, token, "seq") as AnyDTensor;
  const seg = { rows: "rows", groups: "experts" } as const;
  const contract = (v: AnyDTensor, w: AnyDTensor, inDim: string, outDim: string) => (fp8 ? fp8SegmentDot(v, w, counts, inDim, outDim) : (segmentDot(v, w, counts, inDim, seg) as AnyDTensor));
  const h = mul(silu(contract(rows, w1, "model", "ffn")), contract(rows, w3, "model", "ffn"));
  const out = contract(h, w2, "ffn", "model");
  const weight = cast(gather(flatten(gate, ["seq", "k"], "slots") as AnyDTensor, perm, "slots") as AnyDTensor, "bf16") as AnyDTensor;
  const y = scatterAdd(mul(out, weight), token, "rows", { dim: "seq", size: z.T }) as AnyDTensor;
  return { y, counts };
}

const weightFeeds = (z: Size, t: ReturnType<typeof inputs>) => [
  ["router", piecesOf(t.mesh.spec, t.router.type, uniformBf16(z.D * z.E, 1 / Math.sqrt(z.D), 2))],
  ["w1", piecesOf(t.mesh.spec, t.w1.type, uniformBf16(z.E * z.D * z.F, 1 / Math.sqrt(z.D), 3))],
  ["w3", piecesOf(t.mesh.spec, t.w3.type, uniformBf16(z.E * z.D * z.F, 1 / Math.sqrt(z.D), 4))],
  ["w2", piecesOf(t.mesh.spec, t.w2.type, uniformBf16(z.E * z.F * z.D, 1 / Math.sqrt(z.F), 5))],
] as const;

/** The forward: outputs y and the per-expert counts. */
export function build(z: Size) {
  const t = inputs(z);
  const scores = softmax(cast(dot(t.x, t.router, "model") as AnyDTensor, "f32") as AnyDTensor, "experts") as AnyDTensor;
  const { values, indices } = topk(scores, "experts", z.K, "k") as { values: AnyDTensor; indices: AnyDTensor };
  const gate = div(values, sum(values, "k") as AnyDTensor);
  const { y, counts } = experts(z, t.x, t.w1, t.w3, t.w2, indices, gate);
  const plan = compile(t.mesh.builder.graph, [y.ref, counts.ref]);
  const feeds = new Map<string, LocalTensor[]>([["x", piecesOf(t.mesh.spec, t.x.type, uniformBf16(z.T * z.D, 1, 12345))], ...weightFeeds(z, t)]);
  return { plan, feeds };
}

/**
 * The training step (with `fp8`, the experts' contractions in FP8: fp8SegmentDot): the forward with the router's gradient taken through the gates (top-k on the
 * scores without gradient, the gates gathered from the scores, as bench/gpu/lib/moe-layer-build.ts),
 * loss = sum(y · dy) so the backward starts from dy as torch's y.backward(dy) does. Outputs y, the
 * counts and the gradients of x, router, w1, w3, w2 (`outNames`). The weights are fixed feeds;
 * `batch(seed)` draws a new x and dy (a new routing).
 */
export function buildTrain(z: Size, o: { fp8?: boolean } = {}) {
  const t = inputs(z);
  const dy = input(t.mesh, "dy", { batch: 1, seq: z.T, model: z.D }, "bf16") as AnyDTensor;
  const scores = softmax(cast(dot(t.x, t.router, "model") as AnyDTensor, "f32") as AnyDTensor, "experts") as AnyDTensor;
  const { indices } = topk(stopGradient(scores), "experts", z.K, "k") as { indices: AnyDTensor };
  const picked = gather(scores, indices, "experts") as AnyDTensor;
  const gate = div(picked, sum(picked, "k") as AnyDTensor);
  const { y, counts } = experts(z, t.x, t.w1, t.w3, t.w2, indices, gate, o.fp8);
  const loss = sum(mul(y, dy), ["batch", "seq", "model"]) as AnyDTensor;
  const g = grad(loss, { x: t.x, router: t.router, w1: t.w1, w3: t.w3, w2: t.w2 });
  const outs: Record<string, AnyDTensor> = { y, counts };
  for (const k of ["x", "router", "w1", "w3", "w2"] as const) outs[`d${k}`] = g[k] as AnyDTensor;
  const plan = compile(t.mesh.builder.graph, Object.values(outs).map((o) => o.ref));
  const weights = new Map<string, LocalTensor[]>(weightFeeds(z, t));
  const batch = (seed: number) =>
    new Map<string, LocalTensor[]>([
      ["x", piecesOf(t.mesh.spec, t.x.type, uniformBf16(z.T * z.D, 1, seed))],
      ["dy", piecesOf(t.mesh.spec, dy.type, uniformBf16(z.T * z.D, 1, seed + 1))],
    ]);
  return { plan, outNames: Object.keys(outs), weights, batch };
}
