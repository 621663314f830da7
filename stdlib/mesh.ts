// A device mesh with named axes (major first). It owns the graph that ops on its tensors trace into.
import type { MeshSpec } from "../compiler/ir/types.ts";
import { GraphBuilder } from "../compiler/trace/builder.ts";
import { UsageError } from "../compiler/errors.ts";

const AXIS_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
export const MAX_CPU_RANKS = 16;

export class Mesh<A extends string = string> {
  declare readonly __axes: A;
  readonly spec: MeshSpec;
  readonly builder: GraphBuilder;

  private constructor(spec: MeshSpec) {
    this.spec = spec;
    this.builder = new GraphBuilder(spec);
  }

  /** `Mesh.of({ dp: 2, ep: 2 })`: axis names and sizes, major axis first. */
  static of<const S extends Record<string, number>>(sizes: S): Mesh<keyof S & string> {
    const axes = Object.keys(sizes);
    if (axes.length === 0) throw new UsageError("a mesh needs at least one axis, e.g. Mesh.of({ dp: 1 })");
    for (const a of axes) {
      if (!AXIS_RE.test(a)) throw new UsageError(`mesh axis name ${JSON.stringify(a)} must be an identifier`);
      const n = sizes[a]!;
      if (!Number.isInteger(n) || n < 1) throw new UsageError(`mesh axis '${a}' has size ${n}; sizes are positive integers`);
    }
    return new Mesh({ axes, sizes: axes.map((a) => sizes[a]!) });
  }

  private seedCounter = 0x5eed;
  /** The seed a factory takes when none is given: the same sequence every time a program is traced. */
  nextSeed(): number {
    return this.seedCounter++;
  }

  get axes(): A[] {
    return this.spec.axes as A[];
  }
  get size(): number {
    return this.spec.sizes.reduce((a, b) => a * b, 1);
  }
  sizeOf(axis: A): number {
    return this.spec.sizes[this.spec.axes.indexOf(axis)]!;
  }
  toString(): string {
    return `Mesh(${this.spec.axes.map((a, i) => `${a}=${this.spec.sizes[i]}`).join(", ")})`;
  }
}

/** Parses `dp=2,ep=2` (the CLI's --mesh). */
export function parseMeshArg(s: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const part of s.split(",").map((p) => p.trim()).filter(Boolean)) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(\d+)$/.exec(part);
    if (!m) throw new UsageError(`--mesh expects axis=size pairs separated by commas, e.g. dp=2,ep=2; got '${part}'`);
    if (m[1]! in out) throw new UsageError(`--mesh names axis '${m[1]}' twice`);
    out[m[1]!] = Number(m[2]);
  }
  if (Object.keys(out).length === 0) throw new UsageError("--mesh is empty; e.g. --mesh dp=2,ep=2");
  return out;
}
