// Placement helpers and shard geometry. Every backend and pass derives "which slice of the global
// tensor does rank r hold" from here, so uneven sizes are handled in exactly one place.
import type { Placement, ReduceOp, TensorType, MeshSpec } from "./types.ts";

export const R: Placement = "R";
export const S = (dim: string): Placement => `S(${dim})`;
export const P = (op: ReduceOp): Placement => `P(${op})`;

export const isShard = (p: Placement): p is `S(${string})` => p.startsWith("S(");
export const isPartial = (p: Placement): p is "P(sum)" | "P(max)" => p === "P(sum)" || p === "P(max)";
export const shardDim = (p: Placement): string | undefined => (isShard(p) ? p.slice(2, -1) : undefined);
export const partialOp = (p: Placement): ReduceOp | undefined =>
  p === "P(sum)" ? "sum" : p === "P(max)" ? "max" : undefined;

const PLACEMENT_RE = /^(R|S\([A-Za-z_][A-Za-z0-9_]*\)|P\(sum\)|P\(max\))$/;
export const isPlacement = (s: unknown): s is Placement => typeof s === "string" && PLACEMENT_RE.test(s);

/** `Shard<tokens>` style, for messages. */
export function prettyPlacement(p: Placement): string {
  if (p === "R") return "Replicate";
  if (isShard(p)) return `Shard<${shardDim(p)}>`;
  return `Partial<${partialOp(p)}>`;
}

export const fmtPlacements = (ps: readonly Placement[]) => `(${ps.join(", ")})`;

export function fmtType(t: TensorType): string {
  const dims = t.dims.map((d) => `${d.name}:${d.size}${d.segmented ? `~seg(${d.segmented.groups})` : ""}`).join(", ");
  return `${t.dtype}[${dims}] ${fmtPlacements(t.placements)}`;
}

/**
 * Balanced split: n elements over k parts, the first n % k parts one larger. Returns [start, size]
 * of part i.
 */
export function splitRange(n: number, k: number, i: number): [number, number] {
  const base = Math.floor(n / k), extra = n % k;
  const start = i * base + Math.min(i, extra);
  return [start, base + (i < extra ? 1 : 0)];
}

/** Mesh coordinates of a rank (row-major over the mesh axes). */
export function coordsOf(mesh: MeshSpec, rank: number): number[] {
  const c = new Array<number>(mesh.sizes.length);
  for (let a = mesh.sizes.length - 1; a >= 0; a--) {
    c[a] = rank % mesh.sizes[a]!;
    rank = Math.floor(rank / mesh.sizes[a]!);
  }
  return c;
}

export function rankOf(mesh: MeshSpec, coords: readonly number[]): number {
  let r = 0;
  for (let a = 0; a < mesh.sizes.length; a++) r = r * mesh.sizes[a]! + coords[a]!;
  return r;
}

export const worldSize = (mesh: MeshSpec) => mesh.sizes.reduce((a, b) => a * b, 1);

/** The ranks that share every coordinate but `axis` with `rank`, ordered by their coordinate on it. */
export function groupAlong(mesh: MeshSpec, rank: number, axis: number): number[] {
  const c = coordsOf(mesh, rank);
  return Array.from({ length: mesh.sizes[axis]! }, (_, i) => {
    const cc = c.slice();
    cc[axis] = i;
    return rankOf(mesh, cc);
  });
}

/**
 * The [start, size] range of `dim` that the rank at `coords` holds. Several axes may shard the same
 * dim: they nest in mesh-axis order, major first (the major axis splits the dim, the next axis
 * splits that part, ...). Segmented dims are split by data and are not covered here.
 */
export function localRange(
  size: number,
  dim: string,
  placements: readonly Placement[],
  mesh: MeshSpec,
  coords: readonly number[],
): [number, number] {
  let start = 0, len = size;
  for (let a = 0; a < placements.length; a++) {
    if (shardDim(placements[a]!) !== dim) continue;
    const [s, l] = splitRange(len, mesh.sizes[a]!, coords[a]!);
    start += s;
    len = l;
  }
  return [start, len];
}

