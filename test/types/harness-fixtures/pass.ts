// Every expectation here is met and nothing else fails: the harness must report this file clean.
import { add, mesh, part, rep, tok } from "./_dt.ts";

add(rep, rep);
// @expect-error Partial<sum> meets Replicate in add()
add(part, rep);

// Double quotes and braces in the message survive tsc's escaping.
// @expect-error redistribute(b, { tp: Shard("tokens") })
add(tok, rep);

// The "⛔ " literal marker, and a comment between marker and code.
// @expect-error must be a power of two
// (the mesh spec below is wrong on purpose)
mesh({ tp: 3 });

// A plain TS error matches on its raw text.
// @expect-error Type 'number' is not assignable to type 'string'
export const s: string = 1;
