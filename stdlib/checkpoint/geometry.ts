// Which rank writes which piece, and how a saved piece and a wanted piece overlap: the overlap as
// runs of elements contiguous in both (so reads and copies are whole runs, never single elements).
import type { MeshSpec, TensorType } from "../../compiler/ir/types.ts";
import { numel } from "../../compiler/ir/types.ts";
import type { LocalData, LocalTensor } from "../../compiler/ir/local.ts";
import { allocLocal, stridesOf } from "../../compiler/ir/local.ts";
import { coordsOf, isPartial, isPlacement, isShard, rankOf, shardDim } from "../../compiler/ir/placement.ts";
import { boxOf } from "../../compiler/passes/partition.ts";

/** A rectangular region of a global tensor: start per dim and extent per dim. */
export interface Region {
  offset: number[];
  shape: number[];
}

/** Why `type` cannot be checkpointed on `mesh` (or undefined when it can). */
export function layoutProblem(type: TensorType, mesh: MeshSpec): string | undefined {
  if (type.placements.length !== mesh.axes.length) return `has ${type.placements.length} placements for a mesh of ${mesh.axes.length} axes`;
  const names = type.dims.map((d) => d.name);
  if (new Set(names).size !== names.length) return `repeats a dim name (${names.join(", ")})`;
  for (const d of type.dims) {
    if (d.segmented) return `dim '${d.name}' is segmented (data-dependent); only static layouts are saved`;
    if (!Number.isSafeInteger(d.size) || d.size < 0) return `dim '${d.name}' has size ${d.size}`;
  }
  for (const p of type.placements) {
    if (!isPlacement(p)) return `has placement '${String(p)}'`;
    if (isPartial(p)) return `is ${p} (a Partial is not a layout of a global value; reduce it first)`;
    if (isShard(p) && !names.includes(shardDim(p)!)) return `shards '${shardDim(p)}', which is not one of its dims (${names.join(", ")})`;
  }
  return undefined;
}

/** The rank at coordinate 0 of every axis that does not shard the tensor writes; the others hold copies. */
export function isWriter(type: TensorType, mesh: MeshSpec, rank: number): boolean {
  const c = coordsOf(mesh, rank);
  return type.placements.every((p, a) => isShard(p) || c[a] === 0);
}

/** The region of the global tensor that `rank` holds. */
export function regionOf(type: TensorType, mesh: MeshSpec, rank: number): Region {
  const { box, shape } = boxOf(type, mesh, coordsOf(mesh, rank));
  return { offset: box.offset, shape };
}

/** How many ranks write a piece of `type` (some of them perhaps empty): the product of the sharding axes' sizes. */
export const writerCount = (type: TensorType, mesh: MeshSpec): number => type.placements.reduce((n, p, a) => (isShard(p) ? n * mesh.sizes[a]! : n), 1);

/** The pieces a save writes: one per writing rank whose region is not empty, in rank order. */
export function savedRegions(type: TensorType, mesh: MeshSpec): { rank: number; region: Region }[] {
  // only the writers are visited: coordinate 0 on every non-sharding axis, the sharding axes
  // enumerated major first, which is increasing rank order
  const axes = type.placements.flatMap((p, a) => (isShard(p) ? [a] : []));
  const coords = mesh.sizes.map(() => 0);
  const out: { rank: number; region: Region }[] = [];
  const count = writerCount(type, mesh);
  for (let i = 0; i < count; i++) {
    let rest = i;
    for (let k = axes.length - 1; k >= 0; k--) {
      coords[axes[k]!] = rest % mesh.sizes[axes[k]!]!;
      rest = Math.floor(rest / mesh.sizes[axes[k]!]!);
    }
    const { box, shape } = boxOf(type, mesh, coords);
    if (numel(shape) > 0) out.push({ rank: rankOf(mesh, coords), region: { offset: box.offset, shape } });
  }
  return out;
}

export function intersect(a: Region, b: Region): Region | undefined {
  const offset: number[] = [], shape: number[] = [];
  for (let d = 0; d < a.offset.length; d++) {
    const lo = Math.max(a.offset[d]!, b.offset[d]!), hi = Math.min(a.offset[d]! + a.shape[d]!, b.offset[d]! + b.shape[d]!);
    if (hi <= lo) return undefined;
    offset.push(lo);
    shape.push(hi - lo);
  }
  return { offset, shape };
}

/**
 * The overlap `o` of a source piece `src` and a destination piece `dst` (all three global regions),
 * as runs [srcElement, dstElement, length] contiguous in both, in increasing source order.
 */
export function overlapRuns(src: Region, dst: Region, o: Region): [number, number, number][] {
  const nd = o.shape.length;
  // innermost dims that the overlap covers whole in both pieces merge into one run
  let k = nd - 1, len = 1;
  while (k >= 0 && o.shape[k] === src.shape[k] && o.shape[k] === dst.shape[k]) len *= o.shape[k--]!;
  if (k >= 0) len *= o.shape[k]!;
  else k = 0;
  const ss = stridesOf(src.shape), ds = stridesOf(dst.shape);
  const outer = o.shape.slice(0, k);
  const count = numel(outer);
  const runs: [number, number, number][] = [];
  const idx = new Array<number>(k).fill(0);
  for (let i = 0; i < count; i++) {
    let s = 0, t = 0;
    for (let d = 0; d < nd; d++) {
      const g = o.offset[d]! + (d < k ? idx[d]! : 0);
      s += (g - src.offset[d]!) * ss[d]!;
      t += (g - dst.offset[d]!) * ds[d]!;
    }
    runs.push([s, t, len]);
    for (let d = k - 1; d >= 0; d--) {
      if (++idx[d]! < outer[d]!) break;
      idx[d] = 0;
    }
  }
  return runs;
}

/** The global array (row-major) that per-rank pieces of `type` make up (copies; replicas read once). */
export function assemble(mesh: MeshSpec, type: TensorType, pieces: readonly LocalTensor[]): LocalData {
  const shape = type.dims.map((d) => d.size);
  const whole: Region = { offset: shape.map(() => 0), shape };
  const out = allocLocal(type.dtype, shape).data;
  for (const { rank, region } of savedRegions(type, mesh)) {
    const src = pieces[rank]!.data;
    for (const [s, t, n] of overlapRuns(region, whole, region)) out.set(src.subarray(s, s + n), t);
  }
  return out;
}
