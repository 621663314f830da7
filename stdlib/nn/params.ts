// Parameters: each is an `input` placeholder in its layout's storage placements, used through a
// redistribute to its compute placements (FSDP's all-gather; the gradient comes back through the
// transposed redistribute as a reduce-scatter). Initial values are seeded by (seed, name) and depend
// only on the global position, so every mesh and layout starts from identical weights.
import type { Placement } from "../../compiler/ir/types.ts";
import { UsageError } from "../../compiler/errors.ts";
import { Mesh } from "../mesh.ts";
import type { AnyDTensor } from "../dtensor.ts";
import { input, Program, type Pieces } from "../program.ts";
import { runPlanCpu } from "../../runtime/cpu/executor.ts";
import { full, randn } from "../ops/factories.ts";
import { redistribute } from "../ops/redistribute.ts";
import type { Layout, ShardHints } from "./layout.ts";

export type Init = { kind: "normal"; std: number } | { kind: "const"; value: number };

export interface ParamSpec {
  name: string;
  dims: Record<string, number>;
  hints: ShardHints;
  init: Init;
  storage: Placement[];
  compute: Placement[];
}

/** FNV-1a of the name: a parameter's seed does not depend on creation order. */
export function nameSeed(name: string, seed: number): number {
  let h = 0x811c9dc5 ^ seed;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

export class ParamStore {
  readonly specs: ParamSpec[] = [];
  /** The storage placeholders, by name (what gradients are taken with respect to). */
  readonly stored = new Map<string, AnyDTensor>();
  /** Each parameter in its compute placements, by name (what `sharing` hands out again). */
  private readonly computed = new Map<string, AnyDTensor>();
  private reuse = false;

  constructor(readonly mesh: Mesh<any>, readonly layout: Layout) {}

  /**
   * Runs `build` with every parameter it declares taken from an earlier declaration of the same name
   * (a second micro-batch through the same layers): the same traced tensor, so its FSDP gather is
   * shared and autodiff sums the gradients of every use.
   */
  sharing<T>(build: () => T): T {
    this.reuse = true;
    try {
      return build();
    } finally {
      this.reuse = false;
    }
  }

  /** Declares a parameter and returns it in its compute placements. */
  param(name: string, dims: Record<string, number>, init: Init, hints: ShardHints = {}): AnyDTensor {
    const had = this.computed.get(name);
    if (had && this.reuse) {
      const want = this.specs.find((s) => s.name === name)!.dims;
      if (Object.keys(dims).length !== Object.keys(want).length || Object.entries(dims).some(([d, n]) => want[d] !== n))
        throw new UsageError(`parameter '${name}' is shared with dims ${JSON.stringify(dims)} but was declared with ${JSON.stringify(want)}; a shared layer must be called with the same sizes`);
      return had;
    }
    if (this.reuse) throw new UsageError(`parameter '${name}' is first declared inside sharing(); declare it outside (the first micro-batch) and reuse it inside`);
    if (this.stored.has(name)) throw new UsageError(`parameter '${name}' is declared twice`);
    const names = Object.keys(dims);
    for (const h of [hints.tp, hints.ep]) if (h !== undefined && !names.includes(h)) throw new UsageError(`parameter '${name}': shard hint '${h}' is not one of its dims (${names.join(", ")})`);
    const storage = this.layout.storage(names, hints), compute = this.layout.compute(hints);
    this.specs.push({ name, dims, hints, init, storage, compute });
    const p = input(this.mesh, name, dims, "f32", this.placementsObject(storage) as never) as AnyDTensor;
    this.stored.set(name, p);
    const differs = storage.some((s, i) => s !== compute[i]);
    const c = differs ? (redistribute(p, this.placementsObject(compute) as never) as AnyDTensor) : p;
    this.computed.set(name, c);
    return c;
  }

  placementsObject(ps: Placement[]): Record<string, Placement> {
    return Object.fromEntries(this.layout.axes.map((a, i) => [a, ps[i]!]));
  }

  /**
   * Runs the initialisers on a fresh trace of the same mesh; returns each parameter's pieces.
   * `ranks`: only those ranks' pieces (the others are holes): a process of a rank-local job makes
   * its own, the same values as the whole run's.
   */
  initialise(seed: number, ranks?: readonly number[]): Record<string, Pieces> {
    const mesh = Mesh.of(this.layout.mesh);
    const outs: Record<string, AnyDTensor> = {};
    for (const s of this.specs) {
      const pl = this.placementsObject(s.storage) as never;
      outs[s.name] = s.init.kind === "normal"
        ? (randn(mesh, s.dims, "f32", pl, { seed: nameSeed(s.name, seed), std: s.init.std }) as AnyDTensor)
        : (full(mesh, s.dims, "f32", s.init.value, pl) as AnyDTensor);
    }
    const prog = new Program(mesh, outs);
    if (!ranks) return prog.run({});
    const { locals } = runPlanCpu(prog.plan, undefined, [], { ranks });
    return Object.fromEntries(prog.outputNames.map((n, i) => [n, locals[i]!]));
  }

  /** Total parameter count. */
  get count(): number {
    return this.specs.reduce((a, s) => a + Object.values(s.dims).reduce((x, y) => x * y, 1), 0);
  }
}

