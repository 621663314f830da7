// Placement constructors. Values are the compact notation itself, so `Shard("tokens")` is the
// string "S(tokens)" at run time and the literal type `"S(tokens)"` in the editor.
export const Replicate = "R" as const;
export type Replicate = typeof Replicate;
export const Shard = <const D extends string>(dim: D): `S(${D})` => `S(${dim})`;
export type Shard<D extends string> = `S(${D})`;
export const Partial = <const O extends "sum" | "max">(op: O): `P(${O})` => `P(${op})`;
export type Partial<O extends "sum" | "max"> = `P(${O})`;
