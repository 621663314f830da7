// AdamW in the traced step (DeepSeek-V3's recipe): FP32 master weights, BF16 first and second
// moments, decoupled weight decay, global-norm gradient clipping across the whole mesh. Every
// state tensor is placed like its parameter, so FSDP shards the optimizer state too.
import type { AnyDTensor } from "../dtensor.ts";
import { add, div, mul, sub } from "../nn/ops-internal.ts";
import { trace } from "../ops/trace.ts";
import { sum } from "../ops/reduce.ts";
import { input } from "../program.ts";
import { full } from "../ops/factories.ts";
import { toActivation } from "../nn/layers.ts";
import type { ParamStore } from "../nn/params.ts";

export interface AdamWConfig {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Max global gradient norm (0: no clipping). */
  clip: number;
}
export const ADAMW_DEFAULTS: AdamWConfig = { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, clip: 1.0 };

export interface AdamWGraph {
  /** New values by name: `name` (parameter), `name.m`, `name.v`. */
  updates: Record<string, AnyDTensor>;
  gradNorm: AnyDTensor;
}

export const momentNames = (name: string) => [`${name}.m`, `${name}.v`] as const;
/** Host-fed scalars: the learning rate and the bias corrections 1/(1-b1^t), 1/(1-b2^t). */
export const SCALARS = ["opt.lr", "opt.c1", "opt.c2"] as const;

const sc = (ps: ParamStore, name: string) => input(ps.mesh, name, {}, "f32") as AnyDTensor;
const castTo = (x: AnyDTensor, dtype: string) => trace("cast", [x], { dtype })[0]!;

/** Appends the update of every parameter of `ps` given its gradient. */
export function adamw(ps: ParamStore, grads: Record<string, AnyDTensor>, cfg: AdamWConfig): AdamWGraph {
  const [lr, c1, c2] = SCALARS.map((n) => sc(ps, n)) as [AnyDTensor, AnyDTensor, AnyDTensor];
  // global norm: each gradient's sum of squares is completed across the mesh (all-reduce), then added
  let total: AnyDTensor | undefined;
  for (const s of ps.specs) {
    const g = grads[s.name]!;
    const sq = toActivation(ps, sum(mul(g, g), Object.keys(s.dims)) as AnyDTensor);
    total = total ? add(total, sq) : sq;
  }
  const gradNorm = trace("sqrt", [total!])[0]!;
  const scale = cfg.clip > 0 ? trace("minimum", [castScalar(ps, 1), div(castScalar(ps, cfg.clip), add(gradNorm, 1e-6))])[0]! : castScalar(ps, 1);

  const updates: Record<string, AnyDTensor> = {};
  for (const s of ps.specs) {
    const p = ps.stored.get(s.name)!;
    const pl = ps.placementsObject(s.storage) as never;
    const [mName, vName] = momentNames(s.name);
    const m0 = castTo(input(ps.mesh, mName, s.dims, "bf16", pl) as AnyDTensor, "f32");
    const v0 = castTo(input(ps.mesh, vName, s.dims, "bf16", pl) as AnyDTensor, "f32");
    const g = mul(grads[s.name]!, scale);
    const m = add(mul(m0, cfg.beta1), mul(g, 1 - cfg.beta1));
    const v = add(mul(v0, cfg.beta2), mul(mul(g, g), 1 - cfg.beta2));
    const stepDir = div(mul(m, c1), add(trace("sqrt", [mul(v, c2)])[0]!, cfg.eps));
    // decay matrices, not norm scales (one-dim parameters)
    const decay = Object.keys(s.dims).length >= 2 ? cfg.weightDecay : 0;
    const dir = decay > 0 ? add(stepDir, mul(p, decay)) : stepDir;
    updates[s.name] = sub(p, mul(dir, lr));
    updates[mName] = castTo(m, "bf16");
    updates[vName] = castTo(v, "bf16");
  }
  return { updates, gradNorm };
}

const castScalar = (ps: ParamStore, v: number): AnyDTensor => full(ps.mesh, {}, "f32", v) as AnyDTensor;

/** The host-fed scalars for step t (1-based). */
export function adamwScalars(cfg: AdamWConfig, lr: number, t: number): Record<(typeof SCALARS)[number], number> {
  return { "opt.lr": lr, "opt.c1": 1 / (1 - cfg.beta1 ** t), "opt.c2": 1 / (1 - cfg.beta2 ** t) };
}
