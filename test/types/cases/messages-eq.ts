// The exact-equality check that cases/messages.ts relies on does tell messages apart: a wrong
// argument, or a type as wide as \`string\`, is caught.
import type { MsgReduceFirst } from "../../../compiler/messages.ts";

type Eq<A, B> = (<G>() => G extends A ? 1 : 2) extends <G>() => G extends B ? 1 : 2 ? true : false;
type Lit = "mesh axis 'tp': Partial<sum> meets Replicate in add(); reduce first: redistribute(a, { tp: Replicate })";

export const ok: Eq<MsgReduceFirst<"add", "tp", "P(sum)", "R", "a">, Lit> = true;
// @expect-error Type 'true' is not assignable to type 'false'
export const wrongArg: Eq<MsgReduceFirst<"add", "tp", "P(sum)", "R", "b">, Lit> = true;
// @expect-error Type 'true' is not assignable to type 'false'
export const wrongPlacement: Eq<MsgReduceFirst<"add", "tp", "P(max)", "R", "a">, Lit> = true;
// @expect-error Type 'true' is not assignable to type 'false'
export const tooWide: Eq<string, Lit> = true;
