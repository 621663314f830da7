// Layers as functions over a ParamStore. Each takes and returns activations in the layout's
// canonical placements (batch split over the batch axes, everything else whole), and says which
// dims tensor parallelism may split; the layout turns that into placements and the collectives
// follow from the explicit `toActivation` redistributes.
import { UsageError } from "../../compiler/errors.ts";
import type { AnyDTensor } from "../dtensor.ts";
import { add, exp, log, mul, silu, stop_gradient_ as stopGradient, sub } from "./ops-internal.ts";
import { dot } from "../ops/contraction.ts";
import { max, mean, rmsnorm as rmsnormOp, softmax, sum } from "../ops/reduce.ts";
import { embedding as lookup, gather } from "../ops/routing.ts";
import { rename } from "../ops/movement.ts";
import { redistribute } from "../ops/redistribute.ts";
import { fromGlobal } from "../ops/factories.ts";
import type { ParamStore } from "./params.ts";
import { fp8Dot } from "./fp8.ts";

/** Redistributes an activation to the layout's canonical placements for its dims. */
export function toActivation(ps: ParamStore, x: AnyDTensor): AnyDTensor {
  const want = ps.layout.activation(Object.keys(x.dims));
  const cur = x.type.placements;
  return want.every((p, i) => p === cur[i]) ? x : (redistribute(x, ps.placementsObject(want) as never) as AnyDTensor);
}

/**
 * y = x · w over `inDim` → `outDim`. "column": the output dim is split over the tensor axis; "row":
 * the input dim. `fp8`: the FP8 recipe (stdlib/nn/fp8.ts; the weight stays an FP32 master).
 */
export function linear(ps: ParamStore, name: string, x: AnyDTensor, inDim: string, outDim: string, outSize: number, split: "column" | "row" | "none" = "none", std?: number, fp8 = false): AnyDTensor {
  const inSize = x.dims[inDim];
  if (inSize === undefined) throw new UsageError(`linear '${name}': input has no dim '${inDim}' (dims: ${Object.keys(x.dims).join(", ")})`);
  const w = ps.param(name, { [inDim]: inSize, [outDim]: outSize }, { kind: "normal", std: std ?? 1 / Math.sqrt(inSize) }, split === "column" ? { tp: outDim } : split === "row" ? { tp: inDim } : {});
  return fp8 ? fp8Dot(x, w, inDim, outDim) : (dot(x, w, inDim) as AnyDTensor);
}

export function rmsnorm(ps: ParamStore, name: string, x: AnyDTensor, dim: string): AnyDTensor {
  const w = ps.param(name, { [dim]: x.dims[dim]! }, { kind: "const", value: 1 });
  return rmsnormOp(x, w, dim, 1e-6) as AnyDTensor;
}

/** Token embedding; `vocabParallel` splits the table's vocab dim over the tensor axis (the lookup is then a Partial<sum>). */
export function embedding(ps: ParamStore, name: string, ids: AnyDTensor, vocab: number, model: number, vocabParallel = true): AnyDTensor {
  const table = ps.param(name, { vocab, model }, { kind: "normal", std: 1 }, vocabParallel ? { tp: "vocab" } : {});
  return toActivation(ps, lookup(table, ids, "vocab") as AnyDTensor);
}

/** SwiGLU MLP: column-parallel up and gate projections, row-parallel down projection; `fp8`: all three in FP8. */
export function swiglu(ps: ParamStore, name: string, x: AnyDTensor, ffn: number, fp8 = false): AnyDTensor {
  const model = x.dims.model!;
  const h = mul(silu(linear(ps, `${name}.w1`, x, "model", "ffn", ffn, "column", undefined, fp8)), linear(ps, `${name}.w3`, x, "model", "ffn", ffn, "column", undefined, fp8));
  return toActivation(ps, linear(ps, `${name}.w2`, h, "ffn", "model", model, "row", undefined, fp8));
}

/** Causal multi-head self-attention over [batch, seq, model]; heads split over the tensor axis. */
export function attention(ps: ParamStore, name: string, x: AnyDTensor, heads: number): AnyDTensor {
  const model = x.dims.model!, seq = x.dims.seq!, hd = model / heads;
  if (!Number.isInteger(hd)) throw new UsageError(`attention '${name}': model ${model} is not divisible by heads ${heads}`);
  const proj = (p: string) => {
    const w = ps.param(`${name}.${p}`, { model, heads, hd }, { kind: "normal", std: 1 / Math.sqrt(model) }, { tp: "heads" });
    return dot(x, w, "model") as AnyDTensor; // [batch, seq, heads, hd]
  };
  const q = proj("wq"), k = rename(proj("wk"), "seq", "kseq"), v = rename(proj("wv"), "seq", "kseq");
  const mask = new Float32Array(seq * seq);
  for (let i = 0; i < seq; i++) for (let j = i + 1; j < seq; j++) mask[i * seq + j] = -1e9;
  const scores = add(mul(dot(q, k, "hd"), 1 / Math.sqrt(hd)), fromGlobal(ps.mesh, { seq, kseq: seq }, "f32", mask)); // [batch, seq, heads, kseq]
  const o = dot(softmax(scores, "kseq"), v, "kseq"); // [batch, seq, heads, hd]
  const wo = ps.param(`${name}.wo`, { heads, hd, model }, { kind: "normal", std: 1 / Math.sqrt(model) }, { tp: "heads" });
  return toActivation(ps, dot(o, wo, ["heads", "hd"]) as AnyDTensor);
}

/**
 * Mean cross-entropy of logits [batch, seq, vocab] against i32 targets [batch, seq]. Written as an
 * explicit log-sum-exp so it also works when the vocab dim is split (vocab-parallel loss): the max
 * and the sums are reduced across ranks, never the logits.
 */
export function crossEntropy(ps: ParamStore, logits: AnyDTensor, targets: AnyDTensor): AnyDTensor {
  const m = stopGradient(toActivation(ps, max(logits, "vocab") as AnyDTensor));
  const z = sub(logits, m);
  const lse = log(toActivation(ps, sum(exp(z), "vocab") as AnyDTensor));
  const picked = toActivation(ps, gather(z, targets, "vocab") as AnyDTensor);
  return toActivation(ps, mean(sub(lse, picked), ["batch", "seq"]) as AnyDTensor);
}

