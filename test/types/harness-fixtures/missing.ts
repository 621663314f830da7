import { add, rep } from "./_dt.ts";

// @expect-error meets Replicate in add()
add(rep, rep);
