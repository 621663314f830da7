// No errors and no expectations.
import { add, rep } from "./_dt.ts";

export const ok = add(rep, rep);
