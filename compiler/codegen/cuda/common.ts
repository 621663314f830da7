// What the map and row emitters share: the launch rule a kernel carries, its parameter list (which
// the backend fills in that order, launch.ts), a line writer, and index/offset text.
import type { DType } from "../../ir/types.ts";
import type { KernelSpec } from "../types.ts";
import { byteSize, storageType } from "./ops.ts";

/** One kernel parameter, in launch order. */
export type Param =
  | { k: "ptr"; tensor: number; name: string }
  | { k: "size"; axis: number; name: string }
  | { k: "stride"; tensor: number; axis: number; name: string }
  | { k: "vec"; name: string };

export interface LaunchRule {
  kind: "map" | "row";
  /** Threads per block. */
  block: number;
  /** Elements per vector access (1: the kernel has no vector path). */
  vec: number;
  /** Row kernels: threads per row (32: one row per warp; else one row per block). */
  rowThreads: number;
  /** Row kernels: column chunks per thread kept in registers (0: rows are re-read each pass). */
  chunks: number;
  /** Map kernels with a quantize epilogue: 128-column tiles a lane group takes per trip (loads first); 1 otherwise. */
  unroll?: number;
  /** Map kernels with a quantize epilogue: vec-wide packs a lane takes of each tile (128 / (vec · packs) lanes a tile); 1 otherwise. */
  packs?: number;
  /** Integer type of flat indices: 32-bit while every tensor has fewer than 2^31 elements. */
  index: "u32" | "u64";
  params: Param[];
}

/** Indented lines of C. */
export class Src {
  readonly lines: string[] = [];
  private depth = 0;
  line(...ls: string[]): this {
    for (const l of ls) this.lines.push(l === "" ? "" : "  ".repeat(this.depth) + l);
    return this;
  }
  open(l: string): this {
    this.line(l ? `${l} {` : "{");
    this.depth++;
    return this;
  }
  /** Indents what follows (after a signature written line by line). */
  enter(): this {
    this.depth++;
    return this;
  }
  close(l = "}"): this {
    this.depth--;
    return this.line(l);
  }
  text(): string {
    return this.lines.join("\n");
  }
}

export const idxType = (r: LaunchRule) => (r.index === "u32" ? "unsigned int" : "unsigned long long");
export const tensorName = (spec: KernelSpec, t: number) => (t < spec.operands.length ? `in${t}` : `out${t - spec.operands.length}`);
export const tensorSpec = (spec: KernelSpec, t: number) => (t < spec.operands.length ? spec.operands[t]! : spec.results[t - spec.operands.length]!);
export const tensorCount = (spec: KernelSpec) => spec.operands.length + spec.results.length;

/** Elements per 16-byte access: set by the widest tensor that walks `axis` contiguously. */
export function vecWidth(spec: KernelSpec, axis: number): number {
  let widest = 0;
  for (let t = 0; t < tensorCount(spec); t++) {
    const ts = tensorSpec(spec, t);
    if (ts.axes[axis] === "unit") widest = Math.max(widest, byteSize(ts.dtype));
  }
  return widest === 0 ? 1 : 16 / widest;
}

/** Parameters: tensors, axis sizes (row kernels: outer axes, then `ncol`), strides the spec does not fix, `vec`. */
export function paramsOf(spec: KernelSpec): Param[] {
  const ps: Param[] = [];
  for (let t = 0; t < tensorCount(spec); t++) ps.push({ k: "ptr", tensor: t, name: tensorName(spec, t) });
  for (let a = 0; a < spec.axes; a++) ps.push({ k: "size", axis: a, name: spec.kind === "row" && a === spec.axes - 1 ? "ncol" : `n${a}` });
  for (let t = 0; t < tensorCount(spec); t++)
    tensorSpec(spec, t).axes.forEach((u, a) => u === "stride" && ps.push({ k: "stride", tensor: t, axis: a, name: `${tensorName(spec, t)}_s${a}` }));
  ps.push({ k: "vec", name: "vec" });
  return ps;
}

export function paramDecl(spec: KernelSpec, rule: LaunchRule, p: Param): string {
  const I = idxType(rule);
  if (p.k === "ptr") {
    const st = storageType(tensorSpec(spec, p.tensor).dtype as DType);
    return p.tensor < spec.operands.length ? `const ${st}* __restrict__ ${p.name}` : `${st}* __restrict__ ${p.name}`;
  }
  if (p.k === "size") return p.name === "ncol" ? `const int ncol` : `const ${I} ${p.name}`;
  if (p.k === "stride") return `const ${I} ${p.name}`;
  return "const int vec";
}

/** Splits flat index `flat` over axes [0, count) (sizes n0..) into i0..: the innermost varies fastest. */
export function decompose(src: Src, I: string, flat: string, count: number, size: (a: number) => string): void {
  if (count === 0) return;
  if (count === 1) {
    src.line(`const ${I} i0 = ${flat};`);
    return;
  }
  src.line(`${I} rest = ${flat};`);
  for (let a = count - 1; a > 0; a--) src.line(`const ${I} i${a} = rest % ${size(a)};`, `rest /= ${size(a)};`);
  src.line(`const ${I} i0 = rest;`);
}

/** Element offset of tensor t at indices i0.. of axes [0, count). */
export function offset(spec: KernelSpec, t: number, count: number): string {
  const terms: string[] = [];
  const ts = tensorSpec(spec, t);
  for (let a = 0; a < count; a++) {
    if (ts.axes[a] === "unit") terms.push(`i${a}`);
    else if (ts.axes[a] === "stride") terms.push(`i${a} * ${tensorName(spec, t)}_s${a}`);
  }
  return terms.length ? terms.join(" + ") : "0";
}

/** A short, stable description of a tensor for comments: dtype and how it walks each axis. */
export const describeTensor = (spec: KernelSpec, t: number) => {
  const ts = tensorSpec(spec, t);
  return `${tensorName(spec, t)}: ${ts.dtype} [${ts.axes.join(", ")}]`;
};
