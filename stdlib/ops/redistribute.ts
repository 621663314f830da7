// redistribute: the one way to change placements. The compiler plans the collectives (all-gather,
// all-reduce, reduce-scatter, all-to-all, local slice) and never invents one the program didn't ask for.
import type { AnyDTensor, DTensor } from "../dtensor.ts";
import type { DimsOf, DTypeOf, Fail, Override, PlacementsOf, Placement } from "../types/core.ts";
import type { PlacementErrors } from "./factories.ts";
import { resolvePlacements } from "./factories.ts";
import { meshOf } from "./trace.ts";
import { DTensor as DT } from "../dtensor.ts";

export function redistribute<X extends AnyDTensor, const Q extends { readonly [axis: string]: Placement }>(
  x: X,
  to: Q & Fail<PlacementErrors<keyof PlacementsOf<X> & string, DimsOf<X>, Q>>,
): DTensor<DimsOf<X>, DTypeOf<X>, Override<PlacementsOf<X>, Q>> {
  const mesh = meshOf("redistribute", [x]);
  const cur = x.type.placements;
  const given = resolvePlacements(mesh, x.dims, to as never);
  const target = mesh.spec.axes.map((a, i) => (a in (to as object) ? given[i]! : cur[i]!));
  const [ref] = mesh.builder.add("redistribute", [x.ref], { to: target });
  return new DT(mesh, ref!) as never;
}
