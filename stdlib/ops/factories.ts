// Factories: a tensor's placements are given here. Values depend only on the global position, so
// the same program gives the same numbers on any mesh.
import type { MsgNoAxis, MsgShardNoDim } from "../../compiler/messages.ts";
import type { DType, Placement } from "../../compiler/ir/types.ts";
import type { LocalData } from "../../compiler/ir/local.ts";
import { numel } from "../../compiler/ir/types.ts";
import { coordsOf, isPlacement, shardDim } from "../../compiler/ir/placement.ts";
import { msgNoAxis, msgShardNoDim } from "../../compiler/messages.ts";
import { ShapeError, ShardingError, UsageError } from "../../compiler/errors.ts";
import { userSite } from "../../compiler/trace/builder.ts";
import { boxOf } from "../../compiler/passes/partition.ts";
import { roundData } from "../../compiler/ops/cpu-util.ts";
import { DTensor } from "../dtensor.ts";
import type { Mesh } from "../mesh.ts";
import type { Dims, Fail, FloatDType, Full, KnownDims } from "../types/core.ts";

export type PlacementErrors<A extends string, D, Q> = {
  [K in keyof Q & string]: K extends A
    ? Q[K] extends `S(${infer Dm})` ? (KnownDims<D> extends true ? (Dm extends keyof D ? never : MsgShardNoDim<K, Dm>) : never) : never
    : MsgNoAxis<K>;
}[keyof Q & string];

type Pl = { readonly [axis: string]: Placement };
type Out<A extends string, D extends Dims, T extends DType, Q> = DTensor<D, T, Full<A, Q>>;

/** Full placements in mesh-axis order, checked at trace time with the same text tsc shows. */
export function resolvePlacements(mesh: Mesh<any>, dims: Dims, q: Pl | undefined): Placement[] {
  // These run before GraphBuilder.add (which attaches the user's file:line to rule errors), so they
  // attach it themselves.
  const given = q ?? {};
  if (typeof given !== "object" || Array.isArray(given)) throw new UsageError(`placements must be an object keyed by mesh axis, e.g. { dp: Shard("batch") }; got ${JSON.stringify(q)}`, userSite());
  for (const [ax, p] of Object.entries(given)) {
    if (!mesh.spec.axes.includes(ax)) throw new ShardingError(msgNoAxis(ax), userSite());
    if (!isPlacement(p)) throw new ShardingError(`mesh axis '${ax}': ${JSON.stringify(p)} is not a placement; use Replicate, Shard("dim"), Partial("sum") or Partial("max")`, userSite());
    const d = shardDim(p);
    if (d !== undefined && !(d in dims)) throw new ShardingError(msgShardNoDim(ax, d), userSite());
  }
  return mesh.spec.axes.map((a) => given[a] ?? "R");
}

function dimPairs(dims: Dims): [string, number][] {
  if (typeof dims !== "object" || dims === null || Array.isArray(dims)) throw new UsageError(`dims must be an object of name → size, e.g. { tokens: 8, model: 16 }; got ${JSON.stringify(dims)}`);
  return Object.entries(dims);
}

function factory(mesh: Mesh<any>, op: string, dims: Dims, dtype: DType, q: Pl | undefined, attrs: Record<string, unknown>, payload?: unknown): DTensor<any, any, any> {
  const placements = resolvePlacements(mesh, dims, q);
  const [ref] = mesh.builder.add(op, [], { dims: dimPairs(dims), dtype, placements, ...(attrs as object) } as never, payload);
  return new DTensor(mesh, ref!);
}

export interface RandomOpts {
  seed?: number;
}

/** Normal(mean, std) samples; seeded (each call without a seed takes the next seed of the program). */
export function randn<A extends string, const D extends Dims, const T extends FloatDType, const Q extends Pl = {}>(
  mesh: Mesh<A>, dims: D, dtype: T, placements?: Q & Fail<PlacementErrors<A, D, Q>>, opts: RandomOpts & { mean?: number; std?: number } = {},
): Out<A, D, T, Q> {
  return factory(mesh, "random", dims, dtype, placements, { dist: "normal", seed: opts.seed ?? mesh.nextSeed(), mean: opts.mean ?? 0, std: opts.std ?? 1 }) as never;
}

/** Uniform [low, high) samples; seeded like randn. */
export function rand<A extends string, const D extends Dims, const T extends FloatDType, const Q extends Pl = {}>(
  mesh: Mesh<A>, dims: D, dtype: T, placements?: Q & Fail<PlacementErrors<A, D, Q>>, opts: RandomOpts & { low?: number; high?: number } = {},
): Out<A, D, T, Q> {
  return factory(mesh, "random", dims, dtype, placements, { dist: "uniform", seed: opts.seed ?? mesh.nextSeed(), low: opts.low ?? 0, high: opts.high ?? 1 }) as never;
}

export function full<A extends string, const D extends Dims, const T extends DType, const Q extends Pl = {}>(
  mesh: Mesh<A>, dims: D, dtype: T, value: number, placements?: Q & Fail<PlacementErrors<A, D, Q>>,
): Out<A, D, T, Q> {
  if (typeof value !== "number") throw new UsageError(`full(): value must be a number, got ${typeof value}`);
  return factory(mesh, "full", dims, dtype, placements, { value }) as never;
}
export const zeros = <A extends string, const D extends Dims, const T extends DType, const Q extends Pl = {}>(mesh: Mesh<A>, dims: D, dtype: T, placements?: Q & Fail<PlacementErrors<A, D, Q>>): Out<A, D, T, Q> =>
  full(mesh, dims, dtype, 0, placements as never) as never;
export const ones = <A extends string, const D extends Dims, const T extends DType, const Q extends Pl = {}>(mesh: Mesh<A>, dims: D, dtype: T, placements?: Q & Fail<PlacementErrors<A, D, Q>>): Out<A, D, T, Q> =>
  full(mesh, dims, dtype, 1, placements as never) as never;

/** 0, 1, 2, ... along `dim` (global index), constant along the other dims. */
export function iota<A extends string, const D extends Dims, const T extends DType, const Q extends Pl = {}>(
  mesh: Mesh<A>, dims: D, dtype: T, dim: keyof D & string, placements?: Q & Fail<PlacementErrors<A, D, Q>>,
): Out<A, D, T, Q> {
  return factory(mesh, "iota", dims, dtype, placements, { dim }) as never;
}

function toTyped(dtype: DType, data: ArrayLike<number>, what: string): LocalData {
  if (data === null || typeof data !== "object" || typeof (data as ArrayLike<number>).length !== "number") throw new UsageError(`${what} must be an array or typed array of numbers`);
  return dtype === "i32" ? Int32Array.from(data) : Float32Array.from(data);
}

/** A tensor from its global value (row-major in the order of `dims`); each rank keeps its piece. */
export function fromGlobal<A extends string, const D extends Dims, const T extends DType, const Q extends Pl = {}>(
  mesh: Mesh<A>, dims: D, dtype: T, data: ArrayLike<number>, placements?: Q & Fail<PlacementErrors<A, D, Q>>,
): Out<A, D, T, Q> {
  const arr = toTyped(dtype, data, "fromGlobal() data");
  const n = numel(Object.values(dims));
  if (arr.length !== n) throw new ShapeError(`fromGlobal(): dims ${JSON.stringify(dims)} hold ${n} elements but data has ${arr.length}`);
  roundData(dtype, arr);
  return factory(mesh, "constant", dims, dtype, placements, {}, arr) as never;
}

/**
 * A tensor from each rank's local piece: `local(rank, coords)` returns that rank's data, row-major in
 * the local shape its placements give (uneven splits: the first ranks get one more).
 */
export function fromLocal<A extends string, const D extends Dims, const T extends DType, const Q extends Pl = {}>(
  mesh: Mesh<A>, dims: D, dtype: T, placements: (Q & Fail<PlacementErrors<A, D, Q>>) | undefined, local: (rank: number, coords: Record<A, number>) => ArrayLike<number>,
): Out<A, D, T, Q> {
  const pl = resolvePlacements(mesh, dims, placements as Pl | undefined);
  const type = { dims: dimPairs(dims).map(([name, size]) => ({ name, size })), dtype, placements: pl };
  const pieces = Array.from({ length: mesh.size }, (_, r) => {
    const c = coordsOf(mesh.spec, r);
    const want = boxOf(type, mesh.spec, c).shape;
    const data = toTyped(dtype, local(r, Object.fromEntries(mesh.spec.axes.map((a, i) => [a, c[i]!])) as Record<A, number>), `fromLocal() data of rank ${r}`);
    if (data.length !== numel(want)) throw new ShapeError(`fromLocal(): rank ${r} (${mesh.spec.axes.map((a, i) => `${a}=${c[i]}`).join(", ")}) must hold [${want.join(", ")}] = ${numel(want)} elements but gave ${data.length}`);
    return data;
  });
  return factory(mesh, "from_local", dims, dtype, placements as Pl | undefined, {}, pieces) as never;
}
