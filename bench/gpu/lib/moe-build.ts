// The bf16 MoE layer forward the GPU benchmark times (bench/gpu/moe-layer.ts), as a plan plus
// random bf16 feeds; test/unit/moe-bench-build.test.ts runs it small on the CPU reference.
import { compile } from "../../../compiler/pipeline.ts";
import { Mesh, dot, sum, cast, type AnyDTensor } from "../../../stdlib/index.ts";
import { div, mul, silu } from "../../../stdlib/nn/ops-internal.ts";
import { softmax } from "../../../stdlib/ops/reduce.ts";
import { gather, scatterAdd, sortByKey, topk } from "../../../stdlib/ops/routing.ts";
import { segmentDot } from "../../../stdlib/ops/contraction.ts";
import { flatten } from "../../../stdlib/ops/movement.ts";
import { input, piecesOf } from "../../../stdlib/program.ts";
import { roundToBf16 } from "../../../compiler/numeric/bf16.ts";
import type { LocalTensor } from "../../../compiler/ir/local.ts";

/** Tokens, model dim, expert ffn, experts, top-k. */
export interface Size { T: number; D: number; F: number; E: number; K: number }

export function build(z: Size) {
  const mesh = Mesh.of({ d: 1 });
  const x = input(mesh, "x", { batch: 1, seq: z.T, model: z.D }, "bf16") as AnyDTensor;
  const router = input(mesh, "router", { model: z.D, experts: z.E }, "bf16") as AnyDTensor;
  const w1 = input(mesh, "w1", { experts: z.E, model: z.D, ffn: z.F }, "bf16") as AnyDTensor;
  const w3 = input(mesh, "w3", { experts: z.E, model: z.D, ffn: z.F }, "bf16") as AnyDTensor;
  const w2 = input(mesh, "w2", { experts: z.E, ffn: z.F, model: z.D }, "bf16") as AnyDTensor;
  const scores = softmax(cast(dot(x, router, "model") as AnyDTensor, "f32") as AnyDTensor, "experts") as AnyDTensor;
  const { values, indices } = topk(scores, "experts", z.K, "k") as { values: AnyDTensor; indices: AnyDTensor };
  const gate = div(values, sum(values, "k") as AnyDTensor);
  const { perm, counts } = sortByKey(flatten(indices, ["seq", "k"], "slots") as AnyDTensor, "slots", { rows: "rows", groups: "experts", numGroups: z.E }) as { perm: AnyDTensor; counts: AnyDTensor };
  const token = div(perm, z.K);
  const rows = gather(x, token, "seq") as AnyDTensor;
  const seg = { rows: "rows", groups: "experts" } as const;
  const h = mul(silu(segmentDot(rows, w1, counts, "model", seg) as AnyDTensor), segmentDot(rows, w3, counts, "model", seg) as AnyDTensor);
  const out = segmentDot(h, w2, counts, "ffn", seg) as AnyDTensor;
  const weight = cast(gather(flatten(gate, ["seq", "k"], "slots") as AnyDTensor, perm, "slots") as AnyDTensor, "bf16") as AnyDTensor;
  const y = scatterAdd(mul(out, weight), token, "rows", { dim: "seq", size: z.T }) as AnyDTensor;
  const plan = compile(mesh.builder.graph, [y.ref, counts.ref]);
  let s = 12345;
  const rnd = (n: number, std: number) => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = roundToBf16((((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 2 - 1) * std * 1.7320508);
    return a;
  };
  const feeds = new Map<string, LocalTensor[]>([
    ["x", piecesOf(mesh.spec, x.type, rnd(z.T * z.D, 1))],
    ["router", piecesOf(mesh.spec, router.type, rnd(z.D * z.E, 1 / Math.sqrt(z.D)))],
    ["w1", piecesOf(mesh.spec, w1.type, rnd(z.E * z.D * z.F, 1 / Math.sqrt(z.D)))],
    ["w3", piecesOf(mesh.spec, w3.type, rnd(z.E * z.D * z.F, 1 / Math.sqrt(z.D)))],
    ["w2", piecesOf(mesh.spec, w2.type, rnd(z.E * z.F * z.D, 1 / Math.sqrt(z.F)))],
  ]);
  return { plan, feeds };
}

