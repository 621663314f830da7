import { add, part, rep } from "./_dt.ts";

// @expect-error Partial<max> meets Replicate
add(part, rep);
