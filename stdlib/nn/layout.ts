// Parallel layouts as data: each mesh axis plays one role, and a layout derives every parameter's
// storage and compute placements and every activation's placements from those roles. Roles compose
// (e.g. { dp: "data", ep: "expert" }, { replica: "data", shard: "fsdp" }, { dp: "fsdp", tp: "tensor" }).
//   data    batch split over the axis; parameters replicated (gradients all-reduced)
//   fsdp    batch split; parameters stored split over their first dim (ZeRO-3), all-gathered for use,
//           gradients reduce-scattered back
//   tensor  batch whole; parameters split as their spec says (column/row Linear, vocab, heads)
//   expert  batch split; expert weights split over the experts dim, tokens moved by all-to-all
import type { Placement } from "../../compiler/ir/types.ts";
import { UsageError } from "../../compiler/errors.ts";

export type AxisRole = "data" | "fsdp" | "tensor" | "expert";
export const AXIS_ROLES: readonly AxisRole[] = ["data", "fsdp", "tensor", "expert"];

/** How a parameter may be split: by tensor parallelism along `tp`, by expert parallelism along `ep`. */
export interface ShardHints {
  tp?: string;
  ep?: string;
}

export class Layout {
  readonly axes: string[];
  readonly roles: AxisRole[];

  constructor(readonly name: string, readonly mesh: Record<string, number>, roles: Record<string, AxisRole>) {
    this.axes = Object.keys(mesh);
    for (const a of this.axes) if (!(a in roles)) throw new UsageError(`layout '${name}': mesh axis '${a}' has no role; give it one of ${AXIS_ROLES.join(", ")}`);
    for (const a of Object.keys(roles)) if (!this.axes.includes(a)) throw new UsageError(`layout '${name}': role given for '${a}', which is not a mesh axis`);
    this.roles = this.axes.map((a) => {
      const r = roles[a]!;
      if (!AXIS_ROLES.includes(r)) throw new UsageError(`layout '${name}': unknown role '${r}' for axis '${a}'; use one of ${AXIS_ROLES.join(", ")}`);
      return r;
    });
    if (this.roles.filter((r) => r === "tensor").length > 1) throw new UsageError(`layout '${name}': at most one tensor-parallel axis`);
    if (this.roles.filter((r) => r === "expert").length > 1) throw new UsageError(`layout '${name}': at most one expert-parallel axis`);
  }

  get expertAxis(): string | undefined {
    return this.axes[this.roles.indexOf("expert")];
  }
  get tensorAxis(): string | undefined {
    return this.axes[this.roles.indexOf("tensor")];
  }
  /** Axes that split the batch. */
  get batchAxes(): string[] {
    return this.axes.filter((_, i) => this.roles[i] !== "tensor");
  }
  get ranks(): number {
    return Object.values(this.mesh).reduce((a, b) => a * b, 1);
  }

  /** Where a parameter lives (and its optimizer state and gradient). */
  storage(dims: readonly string[], hints: ShardHints): Placement[] {
    return this.roles.map((r): Placement => {
      if (r === "fsdp") return `S(${hints.ep ?? dims[0]!})`;
      return this.computeRole(r, hints);
    });
  }

  /** How a parameter is used by the forward pass. */
  compute(hints: ShardHints): Placement[] {
    return this.roles.map((r): Placement => (r === "fsdp" ? "R" : this.computeRole(r, hints)));
  }

  private computeRole(r: AxisRole, hints: ShardHints): Placement {
    if (r === "tensor" && hints.tp) return `S(${hints.tp})`;
    if (r === "expert" && hints.ep) return `S(${hints.ep})`;
    return "R";
  }

  /** An activation's placements: split over the batch axes if it has the batch dim, else replicated. */
  activation(dims: readonly string[], batchDim = "batch"): Placement[] {
    return this.roles.map((r): Placement => (r !== "tensor" && dims.includes(batchDim) ? `S(${batchDim})` : "R"));
  }

  toString(): string {
    return `${this.name} (${this.axes.map((a, i) => `${a}=${this.mesh[a]}:${this.roles[i]}`).join(", ")})`;
  }
}

/** The layouts the training example and tests use, by name. */
export const LAYOUTS: Record<string, () => Layout> = {
  single: () => new Layout("single", { d: 1 }, { d: "data" }),
  dp: () => new Layout("dp", { dp: 4 }, { dp: "data" }),
  fsdp: () => new Layout("fsdp", { dp: 4 }, { dp: "fsdp" }),
  hsdp: () => new Layout("hsdp", { replica: 2, shard: 2 }, { replica: "data", shard: "fsdp" }),
  tp: () => new Layout("tp", { tp: 2 }, { tp: "tensor" }),
  ep: () => new Layout("ep", { ep: 4 }, { ep: "expert" }),
  "dp-ep": () => new Layout("dp-ep", { dp: 2, ep: 2 }, { dp: "data", ep: "expert" }),
  "fsdp-tp": () => new Layout("fsdp-tp", { dp: 2, tp: 2 }, { dp: "fsdp", tp: "tensor" }),
  // FSDP over dp and expert parallelism over ep (the PyTorch peer bench/peers/moe_lm_fsdp_ep.py's layout)
  "fsdp-ep": () => new Layout("fsdp-ep", { dp: 2, ep: 2 }, { dp: "fsdp", ep: "expert" }),
};

export function layoutByName(name: string, sizes?: Record<string, number>): Layout {
  const make = LAYOUTS[name];
  if (!make) throw new UsageError(`unknown layout '${name}'; use one of ${Object.keys(LAYOUTS).join(", ")}`);
  const base = make();
  if (!sizes) return base;
  const roles = Object.fromEntries(base.axes.map((a, i) => [a, base.roles[i]!]));
  return new Layout(name, sizes, roles);
}
