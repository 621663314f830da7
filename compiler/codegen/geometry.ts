// One rank's sizes and strides for a kernel instruction, read from the plan's local shapes: the same
// kernel serves every rank of an uneven mesh, only these numbers differ.
import type { Plan } from "../plan.ts";
import type { KernelInstr } from "./types.ts";
import { stridesOf } from "../ir/local.ts";
import { tilesName } from "../ops/quantize.ts";

export interface Geometry {
  /** Per iteration axis, the product of its dims' local sizes. */
  sizes: number[];
  /** Per tensor (operands, then results), per axis: the element stride (0 where the tensor lacks the axis). */
  strides: number[][];
}

export function geometry(k: KernelInstr, plan: Pick<Plan, "values">, rank: number): Geometry {
  const shape = (s: number) => plan.values[s]!.shapes[rank]!;
  const sizes = k.axes.map((a) => a.from.reduce((p, f) => p * shape(f.slot)[f.dim]!, 1));
  const scales = k.spec.quant ? k.spec.operands.length + k.spec.quant.scales : -1;
  const strides = [...k.inputs, ...k.outputs].map((s, t) => {
    const t_ = plan.values[s]!.type, st = stridesOf(shape(s));
    // a quantize epilogue's scales walk the tiled axis by tiles (their dim 'd_tiles' for 'd')
    const tiled = k.axes[k.axes.length - 1]?.dims[0] ?? "";
    const dims = t_.dims.map((d) => (t === scales && d.name === tilesName(tiled) ? tiled : d.name));
    // an axis's stride is that of its innermost dim; its other dims follow contiguously
    return k.axes.map((a) => {
      const i = dims.indexOf(a.dims[a.dims.length - 1]!);
      return i < 0 ? 0 : st[i]!;
    });
  });
  return { sizes, strides };
}
