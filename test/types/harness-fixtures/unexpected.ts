import { add, part, rep } from "./_dt.ts";

add(rep, rep);
add(part, rep);
