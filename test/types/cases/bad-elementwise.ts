// Elementwise ops whose inputs' placements differ on a mesh axis. Each mistake is followed by its fix.
import { Mesh, Replicate, Shard, randn, add, sub, mul, div, maximum, sum, redistribute } from "../../../stdlib/index.ts";

const mesh = Mesh.of({ dp: 2, tp: 2 });
const a = randn(mesh, { tokens: 8, hidden: 16 }, "f32", { tp: Shard("hidden") });
const w = randn(mesh, { hidden: 16, out: 4 }, "f32", { tp: Shard("hidden") });
const rep = randn(mesh, { out: 4 }, "f32");
const part = sum(a, "hidden"); // { tokens: 8 }, tp: Partial<sum>
const repTok = randn(mesh, { tokens: 8 }, "f32");

// Partial meets Replicate: adding a replicated value to every partial would count it tp times.
// @expect-error mesh axis 'tp': Partial<sum> meets Replicate in add(); reduce first: redistribute(a, { tp: Replicate })
export const e1 = add(part, repTok);
export const ok1 = add(redistribute(part, { tp: Replicate }), repTok);

// The same on the other side, and sub is add-like.
// @expect-error mesh axis 'tp': Replicate meets Partial<sum> in sub(); reduce first: redistribute(b, { tp: Replicate })
export const e2 = sub(repTok, part);
export const ok2 = sub(repTok, redistribute(part, { tp: Replicate }));

// Partial<sum> times Partial<sum> is not a partial of the product.
// @expect-error mesh axis 'tp': Partial<sum> meets Partial<sum> in mul(); reduce first: redistribute(b, { tp: Replicate })
export const e3 = mul(part, part);
export const ok3 = mul(part, redistribute(part, { tp: Replicate }));

// Dividing by a Partial<sum> is not linear.
// @expect-error mesh axis 'tp': Replicate meets Partial<sum> in div(); reduce first: redistribute(b, { tp: Replicate })
export const e4 = div(repTok, part);
export const ok4 = div(part, repTok);

// maximum is not linear in either argument.
// @expect-error mesh axis 'tp': maximum() is not linear and its input is Partial<sum>; reduce first: redistribute(x, { tp: Replicate })
export const e5 = maximum(part, repTok);
export const ok5 = maximum(redistribute(part, { tp: Replicate }), repTok);

// Shard vs Replicate on a dim both tensors have: b must be split the same way.
const hid = randn(mesh, { hidden: 16 }, "f32");
// @expect-error mesh axis 'tp': Shard<hidden> meets Replicate in add(); make them agree: redistribute(b, { tp: Shard("hidden") })
export const e6 = add(a, hid);
export const ok6 = add(a, redistribute(hid, { tp: Shard("hidden") }));

// ... and with the Shard on the right.
// @expect-error mesh axis 'tp': Replicate meets Shard<hidden> in mul(); make them agree: redistribute(a, { tp: Shard("hidden") })
export const e7 = mul(hid, a);
export const ok7 = mul(redistribute(hid, { tp: Shard("hidden") }), a);

// Two different shards of dims both tensors have.
const byTok = randn(mesh, { tokens: 8, hidden: 16 }, "f32", { tp: Shard("tokens") });
// @expect-error mesh axis 'tp': Shard<hidden> meets Shard<tokens> in add(); make them agree: redistribute(b, { tp: Shard("hidden") })
export const e8 = add(a, byTok);
export const ok8 = add(a, redistribute(byTok, { tp: Shard("hidden") }));

// Two shards of dims neither shares: the output cannot be split two ways on one axis.
const byOut = randn(mesh, { out: 4 }, "f32", { tp: Shard("out") });
// @expect-error mesh axis 'tp': add() would need Shard<tokens> and Shard<out> at once; gather one side first: redistribute(b, { tp: Replicate })
export const e9 = add(randn(mesh, { tokens: 8 }, "f32", { tp: Shard("tokens") }), byOut);
export const ok9 = add(randn(mesh, { tokens: 8 }, "f32", { tp: Shard("tokens") }), redistribute(byOut, { tp: Replicate }));

export const unused = [w, rep];
