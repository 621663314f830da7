// One DeepSeek-style MoE layer, forward and backward as one plan, on a mesh ep=W (one batch entry
// of T tokens per rank): what bench/gpu/lib/dist-moe-layer.ts checks and times under `shardts launch` and
// test/unit/moe-layer-bench-build.test.ts runs small on the CPU-simulated mesh.
//   router: logits = x · router in bf16, softmax in f32, top-k, gates renormalised over the k picks
//     (moe.ts's form: top-k on the scores without gradient, the gates gathered from the scores so
//     the router gets its gradient through them);
//   routed experts: moe_dispatch (permute + count exchange + token exchange in one op) → SwiGLU as
//     segment contractions over each rank's own experts → moe_combine (return + gate-weighted sum).
//     The fused ops, not sort + gather + redistribute: they are what
//     bench/results/2026-11-22-moe-dispatch-h200x2.txt measured (round trip 0.77x torch at this
//     size over NCCL), and only they take the NVLink transport (SHARDTS_MOE_TRANSPORT=nvlink) and
//     the FP8 dispatch; the composed path was not measured on GPUs and pays a separate gather kernel;
//   shared experts: dense SwiGLUs of every token, added;
//   loss = sum(y · dy) with dy a random input, so the backward starts from dy as torch's
//     y.backward(dy) does. Gradients of x and of every weight. The loss sums every rank's tokens,
//     so the replicated weights' gradients (router, shared: 17.4 M values) come out all-reduced
//     (7 all-reduces in the plan); the peer all-reduces the same tensors after its backward.
// With `fp8` the routed experts go through fp8Dispatch + fp8SegmentDot and the shared ones through
// fp8Dot (stdlib/nn/fp8.ts), or stay bf16 with `sharedFp8: false` (the FP8 Linear's step ran 0.62-0.64x bf16
// at their size in the thirteenth session, 0.92-0.98x eager and 1.09-1.13x replayed since the Wgrad became one op:
// bench/results/2026-11-24-fp8-linear-wgrad-192-h200.txt); router, gates and combine stay bf16/f32.
import { compile } from "../../../compiler/pipeline.ts";
import type { LocalTensor } from "../../../compiler/ir/local.ts";
import { allocLocal } from "../../../compiler/ir/local.ts";
import type { TensorType } from "../../../compiler/ir/types.ts";
import { coordsOf, worldSize } from "../../../compiler/ir/placement.ts";
import { boxOf } from "../../../compiler/passes/partition.ts";
import { roundToBf16 } from "../../../compiler/numeric/bf16.ts";
import { Mesh } from "../../../stdlib/mesh.ts";
import type { AnyDTensor } from "../../../stdlib/dtensor.ts";
import { input, piecesOf } from "../../../stdlib/program.ts";
import { dot, segmentDot } from "../../../stdlib/ops/contraction.ts";
import { softmax, sum } from "../../../stdlib/ops/reduce.ts";
import { cast } from "../../../stdlib/ops/elementwise.ts";
import { gather, topk } from "../../../stdlib/ops/routing.ts";
import { redistribute } from "../../../stdlib/ops/redistribute.ts";
import { moeCombine, moeDispatch } from "../../../stdlib/ops/dispatch.ts";
import { fp8Dispatch, fp8Dot, fp8SegmentDot, type Fp8Rows } from "../../../stdlib/nn/fp8.ts";
import { add, div, mul, silu, stop_gradient_ as stopGradient } from "../../../stdlib/nn/ops-internal.ts";
import { grad } from "../../../stdlib/autodiff.ts";

/** Tokens per rank, model dim, expert ffn, routed experts, top-k, shared experts (each of ffn F). */
export interface LayerSize { T: number; D: number; F: number; E: number; K: number; shared: number }

export const V2_LITE: LayerSize = { T: 8192, D: 2048, F: 1408, E: 64, K: 6, shared: 2 };

/** Forward FLOPs per rank: routed SwiGLU (3 GEMMs of d x ffn per routed token), shared ones, router. */
export const forwardFlops = (z: LayerSize) => 2 * z.T * (z.K + z.shared) * 3 * z.D * z.F + 2 * z.T * z.D * z.E;

/** `batch`: entries of T tokens (default W, one per rank; the one-device reference of a W-rank run takes batch W). */
/** `fp8`: the routed experts in FP8, and the shared ones too unless `sharedFp8` is false (they then stay bf16). */
export function buildLayer(z: LayerSize, W: number, opts: { fp8?: boolean; sharedFp8?: boolean; batch?: number } = {}) {
  const mesh = Mesh.of({ ep: W }), B = opts.batch ?? W;
  const tok = { ep: "S(b)" } as never, rep = { ep: "R" } as never, byExpert = { ep: "S(experts)" } as never;
  const x = input(mesh, "x", { b: B, seq: z.T, model: z.D }, "bf16", tok) as AnyDTensor;
  const dy = input(mesh, "dy", { b: B, seq: z.T, model: z.D }, "bf16", tok) as AnyDTensor;
  const router = input(mesh, "router", { model: z.D, experts: z.E }, "bf16", rep) as AnyDTensor;
  const w1 = input(mesh, "w1", { experts: z.E, model: z.D, ffn: z.F }, "bf16", byExpert) as AnyDTensor;
  const w3 = input(mesh, "w3", { experts: z.E, model: z.D, ffn: z.F }, "bf16", byExpert) as AnyDTensor;
  const w2 = input(mesh, "w2", { experts: z.E, ffn: z.F, model: z.D }, "bf16", byExpert) as AnyDTensor;
  const shared = Array.from({ length: z.shared }, (_, i) => ({
    s1: input(mesh, `s${i}.w1`, { model: z.D, ffn: z.F }, "bf16", rep) as AnyDTensor,
    s3: input(mesh, `s${i}.w3`, { model: z.D, ffn: z.F }, "bf16", rep) as AnyDTensor,
    s2: input(mesh, `s${i}.w2`, { ffn: z.F, model: z.D }, "bf16", rep) as AnyDTensor,
  }));

  const scores = softmax(cast(dot(x, router, "model") as AnyDTensor, "f32") as AnyDTensor, "experts") as AnyDTensor;
  const { indices } = topk(stopGradient(scores), "experts", z.K, "k") as { indices: AnyDTensor };
  const picked = gather(scores, indices, "experts") as AnyDTensor;
  const gate = cast(div(picked, sum(picked, "k") as AnyDTensor), "bf16") as AnyDTensor;

  const o = { axis: "ep", dim: "seq", k: "k", rows: "rows", groups: "experts", numGroups: z.E };
  const f8 = opts.fp8 ? fp8Dispatch(x, indices, o, "model") : undefined;
  const d = f8 ?? moeDispatch(x, indices, o);
  const seg = { rows: "rows", groups: "experts" } as const;
  const sdot = (a: AnyDTensor | Fp8Rows, w: AnyDTensor, k: string, n: string) =>
    opts.fp8 ? fp8SegmentDot(a, w, d.counts, k, n) : (segmentDot(a as AnyDTensor, w, d.counts, k, seg) as AnyDTensor);
  const h = mul(silu(sdot(d.rows, w1, "model", "ffn")), sdot(d.rows, w3, "model", "ffn"));
  let y = moeCombine(sdot(h, w2, "ffn", "model"), d.perm, gate, { axis: "ep", dim: "seq", size: z.T, k: "k", numK: z.K });
  const sharedFp8 = opts.fp8 === true && opts.sharedFp8 !== false;
  const ddot = (a: AnyDTensor, w: AnyDTensor, k: string, n: string) => (sharedFp8 ? fp8Dot(a, w, k, n) : (dot(a, w, k) as AnyDTensor));
  for (const s of shared) y = add(y, ddot(mul(silu(ddot(x, s.s1, "model", "ffn")), ddot(x, s.s3, "model", "ffn")), s.s2, "ffn", "model"));

  const loss = redistribute(sum(mul(y, dy), ["b", "seq", "model"]) as AnyDTensor, rep) as AnyDTensor;
  const wrt: Record<string, AnyDTensor> = { x, router, w1, w3, w2 };
  shared.forEach((s, i) => Object.assign(wrt, { [`s${i}.w1`]: s.s1, [`s${i}.w3`]: s.s3, [`s${i}.w2`]: s.s2 }));
  const g = grad(loss, wrt);
  const outs: Record<string, AnyDTensor> = { y, counts: d.counts };
  for (const k of Object.keys(wrt)) outs[`d${k}`] = g[k] as AnyDTensor;
  const plan = compile(mesh.builder.graph, Object.values(outs).map((t) => t.ref));
  const inputs = new Map<string, TensorType>([x, dy, router, w1, w3, w2, ...shared.flatMap((s) => [s.s1, s.s3, s.s2])].map((t, i) => [inputName(i, z.shared), t.type]));
  return { mesh, plan, outNames: Object.keys(outs), inputs };
}

const inputName = (i: number, shared: number) =>
  ["x", "dy", "router", "w1", "w3", "w2", ...Array.from({ length: shared }, (_, s) => [`s${s}.w1`, `s${s}.w3`, `s${s}.w2`]).flat()][i]!;

/** Init std of each input: activations 1, a weight 1/sqrt(its contracted dim). */
function stdOf(name: string, z: LayerSize): number {
  if (name === "x" || name === "dy") return 1;
  return name.endsWith("w2") ? 1 / Math.sqrt(z.F) : 1 / Math.sqrt(z.D);
}

/**
 * Every rank's pieces of every input, cut from global bf16 values (uniform, of each input's std,
 * one seed per input): the same global values on any mesh, so ep=W runs compare with ep=1.
 */
export function globalFeeds(layer: ReturnType<typeof buildLayer>, z: LayerSize): Map<string, LocalTensor[]> {
  return new Map([...layer.inputs].map(([name, type], i) => {
    const a = new Float32Array(type.dims.reduce((n, d) => n * d.size, 1));
    fill(a, stdOf(name, z), 1000 * (i + 1));
    return [name, piecesOf(layer.mesh.spec, type, a)];
  }));
}

/**
 * Only rank `rank`'s pieces (the rest of the array left empty), drawn alone: replicated inputs from
 * one seed on every rank (so they agree), sharded ones from a seed per rank. The full expert weights
 * (0.55 G values at V2-Lite size) never exist on a host.
 */
export function rankFeeds(layer: ReturnType<typeof buildLayer>, z: LayerSize, rank: number): Map<string, LocalTensor[]> {
  const spec = layer.mesh.spec;
  return new Map([...layer.inputs].map(([name, type], i) => {
    const t = allocLocal("bf16", boxOf(type, spec, coordsOf(spec, rank)).shape);
    fill(t.data as Float32Array, stdOf(name, z), 1000 * (i + 1) + (type.placements.every((p) => p === "R") ? 0 : 7 * rank));
    const pieces = new Array<LocalTensor>(worldSize(spec));
    pieces[rank] = t;
    return [name, pieces];
  }));
}

function fill(a: Float32Array, std: number, seed: number) {
  let s = seed >>> 0;
  const scale = std * 2 * Math.sqrt(3); // uniform on [-std sqrt3, std sqrt3] has variance std^2
  for (let i = 0; i < a.length; i++) a[i] = roundToBf16(((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5) * scale);
}
