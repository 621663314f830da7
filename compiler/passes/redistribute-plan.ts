// The redistribute planner: a pure, cached function from (type, source placements, target
// placements, mesh) to a list of collective steps. Backends execute the steps; nothing re-plans.
//
// Several axes may shard one dim; they nest in mesh-axis order (major first). So the planner first
// takes placements apart from the minor axis to the major one (gather / reduce), then builds the
// target from the major axis to the minor one (slice / partialize), undoing and redoing a minor
// axis's shard whenever a more major axis that shards the same dim changes. Adjacent pairs on one
// axis fuse: all-reduce + slice = reduce-scatter, all-gather + slice = all-to-all.
import type { MeshSpec, Placement, ReduceOp, TensorType } from "../ir/types.ts";
import { partialOp, shardDim } from "../ir/placement.ts";

export type RedistStep =
  | { kind: "all_gather"; axis: number; dim: string }
  | { kind: "all_reduce"; axis: number; reduce: ReduceOp }
  | { kind: "reduce_scatter"; axis: number; reduce: ReduceOp; dim: string }
  | { kind: "all_to_all"; axis: number; from: string; to: string }
  | { kind: "local_slice"; axis: number; dim: string }
  | { kind: "partialize"; axis: number; reduce: ReduceOp };

/** A step with the placements it leaves behind. */
export type PlannedStep = RedistStep & { after: Placement[] };

const cache = new Map<string, PlannedStep[]>();

export function planRedistribute(t: TensorType, from: readonly Placement[], to: readonly Placement[], mesh: MeshSpec): PlannedStep[] {
  const key = JSON.stringify([t.dims.map((d) => [d.name, d.size, !!d.segmented]), from, to, mesh.sizes]);
  const hit = cache.get(key);
  if (hit) return hit;
  const steps = fuse(rawSteps(from, to));
  cache.set(key, steps);
  return steps;
}

function rawSteps(from: readonly Placement[], to: readonly Placement[]): PlannedStep[] {
  const n = from.length;
  const cur = from.slice();
  const steps: PlannedStep[] = [];
  const push = (s: RedistStep) => steps.push({ ...s, after: cur.slice() });
  // a minor axis sharding dim d must be undone if a more major axis changes how it shards d
  const redo = (a: number): boolean => {
    const d = shardDim(cur[a]!);
    if (d === undefined) return false;
    for (let b = 0; b < a; b++) if ((shardDim(cur[b]!) === d || shardDim(to[b]!) === d) && cur[b] !== to[b]) return true;
    return false;
  };
  const redone = new Array<boolean>(n).fill(false);
  for (let a = n - 1; a >= 0; a--) redone[a] = redo(a);
  for (let a = n - 1; a >= 0; a--) {
    if (cur[a] === to[a] && !redone[a]) continue;
    const d = shardDim(cur[a]!), op = partialOp(cur[a]!);
    if (d !== undefined) {
      cur[a] = "R";
      push({ kind: "all_gather", axis: a, dim: d });
    } else if (op !== undefined) {
      cur[a] = "R";
      push({ kind: "all_reduce", axis: a, reduce: op });
    }
  }
  for (let a = 0; a < n; a++) {
    if (cur[a] === to[a]) continue;
    const d = shardDim(to[a]!), op = partialOp(to[a]!);
    cur[a] = to[a]!;
    if (d !== undefined) push({ kind: "local_slice", axis: a, dim: d });
    else if (op !== undefined) push({ kind: "partialize", axis: a, reduce: op });
  }
  return steps;
}

function fuse(steps: PlannedStep[]): PlannedStep[] {
  const out: PlannedStep[] = [];
  for (let i = 0; i < steps.length; i++) {
    const s = steps[i]!, nx = steps[i + 1];
    if (nx && nx.kind === "local_slice" && nx.axis === s.axis) {
      if (s.kind === "all_reduce") {
        out.push({ kind: "reduce_scatter", axis: s.axis, reduce: s.reduce, dim: nx.dim, after: nx.after });
        i++;
        continue;
      }
      if (s.kind === "all_gather" && s.dim !== nx.dim) {
        out.push({ kind: "all_to_all", axis: s.axis, from: s.dim, to: nx.dim, after: nx.after });
        i++;
        continue;
      }
      if (s.kind === "all_gather" && s.dim === nx.dim) {
        i++; // gather then re-slice the same dim on the same axis: nothing moves
        continue;
      }
    }
    out.push(s);
  }
  return out;
}

export function fmtStep(s: RedistStep, mesh: MeshSpec): string {
  const ax = mesh.axes[s.axis];
  switch (s.kind) {
    case "all_gather": return `all_gather[${ax}](${s.dim})`;
    case "all_reduce": return `all_reduce[${ax}](${s.reduce})`;
    case "reduce_scatter": return `reduce_scatter[${ax}](${s.reduce} -> ${s.dim})`;
    case "all_to_all": return `all_to_all[${ax}](${s.from} -> ${s.to})`;
    case "local_slice": return `local_slice[${ax}](${s.dim})`;
    case "partialize": return `partialize[${ax}](${s.reduce})`;
  }
}
