// A model file's default export: the mesh it is written for and a function that builds its outputs
// on a given mesh. `shardts run` builds it on the requested mesh and, to check, on one device.
import { UsageError } from "../compiler/errors.ts";
import { Mesh } from "./mesh.ts";
import type { AnyDTensor } from "./dtensor.ts";

export type Outputs = Record<string, AnyDTensor>;

export interface ModelDef<S extends Record<string, number> = Record<string, number>> {
  readonly kind: "shardts-model";
  readonly mesh: S;
  readonly build: (mesh: Mesh<keyof S & string>) => Outputs;
  readonly description?: string;
}

export function defineModel<const S extends Record<string, number>>(mesh: S, build: (mesh: Mesh<keyof S & string>) => Outputs, description?: string): ModelDef<S> {
  Mesh.of(mesh); // validates the sizes now, not at run time
  return { kind: "shardts-model", mesh, build, description };
}

export const isModelDef = (x: unknown): x is ModelDef => typeof x === "object" && x !== null && (x as ModelDef).kind === "shardts-model";

/** The model's mesh with sizes overridden; axis names must stay the ones the model was written for. */
export function meshFor(def: ModelDef, override?: Record<string, number>): Record<string, number> {
  if (!override) return def.mesh;
  const want = Object.keys(def.mesh), got = Object.keys(override);
  if (want.join() !== got.join()) throw new UsageError(`--mesh must name the model's axes in order (${want.join(", ")}); got ${got.join(", ")}`);
  return override;
}

/** Every axis of size 1: the unsharded reference run. */
export const singleDevice = (def: ModelDef) => Object.fromEntries(Object.keys(def.mesh).map((a) => [a, 1]));

export function buildOn(def: ModelDef, sizes: Record<string, number>): { mesh: Mesh<string>; outputs: Outputs } {
  const mesh = Mesh.of(sizes);
  const outputs = def.build(mesh as never);
  if (typeof outputs !== "object" || outputs === null || !Object.values(outputs).every((t) => t && typeof t === "object" && "ref" in t))
    throw new UsageError("a model's build function must return an object of named DTensors, e.g. { y }");
  return { mesh, outputs };
}

/** A runnable script's default export: `shardts run FILE [args]` calls it with the arguments after FILE. */
export interface MainDef {
  readonly kind: "shardts-main";
  readonly main: (ctx: MainContext) => Promise<number | void> | number | void;
  readonly description?: string;
}
export interface MainContext {
  args: string[];
  log: (s: string) => void;
}
export function defineMain(main: MainDef["main"], description?: string): MainDef {
  return { kind: "shardts-main", main, description };
}
export const isMainDef = (x: unknown): x is MainDef => typeof x === "object" && x !== null && (x as MainDef).kind === "shardts-main";
