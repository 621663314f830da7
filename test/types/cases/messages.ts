// Each message TYPE of compiler/messages.ts equals, exactly, the literal its runtime builder returns
// for the same arguments. Each `pair(...)` holds the builder's run-time result and the expected
// literal (written once); the `Eq<...> = true` line below it proves, in tsc, that the template-literal
// type is exactly that literal (not wider, not different). test/types/messages.test.ts imports
// MESSAGE_CASES and checks, at run time, that every builder returns its literal.
import type {
  AsCode, MsgAgree, MsgContractOneSide, MsgDimExists, MsgDType, MsgFp8, MsgMissingDim, MsgNeedsDType, MsgNoAxis,
  MsgNonlinear, MsgPartialIndex, MsgReduceFirst, MsgShardNoDim, MsgSize, MsgTwoShards, MsgUnsupported, MsgWholeDim, Pretty, MsgScalesAgree,
} from "../../../compiler/messages.ts";
import {
  asCode, msgAgree, msgContractOneSide, msgDimExists, msgDType, msgFp8, msgMissingDim, msgNeedsDType, msgNoAxis,
  msgNonlinear, msgPartialIndex, msgReduceFirst, msgShardNoDim, msgSize, msgTwoShards, msgUnsupported, msgWholeDim,
  msgScalesAgree, msgTileStraddle,
} from "../../../compiler/messages.ts";
import { prettyPlacement } from "../../../compiler/ir/placement.ts";

/** Exact type equality (not mere assignability either way). */
type Eq<A, B> = (<G>() => G extends A ? 1 : 2) extends <G>() => G extends B ? 1 : 2 ? true : false;

export interface MessageCase {
  builder: string;
  runtime: string;
  expected: string;
}
const pair = <const E extends string>(builder: string, runtime: string, expected: E) => ({ builder, runtime, expected });

const c1 = pair("msgReduceFirst", msgReduceFirst("add", "tp", "P(sum)", "R", "a"), "mesh axis 'tp': Partial<sum> meets Replicate in add(); reduce first: redistribute(a, { tp: Replicate })");
export const t1: Eq<MsgReduceFirst<"add", "tp", "P(sum)", "R", "a">, typeof c1.expected> = true;
const c2 = pair("msgReduceFirst", msgReduceFirst("dot", "dp", "S(ffn)", "P(max)", "b"), "mesh axis 'dp': Shard<ffn> meets Partial<max> in dot(); reduce first: redistribute(b, { dp: Replicate })");
export const t2: Eq<MsgReduceFirst<"dot", "dp", "S(ffn)", "P(max)", "b">, typeof c2.expected> = true;
const c3 = pair("msgAgree", msgAgree("add", "tp", "S(hidden)", "R", "b", "S(hidden)"), `mesh axis 'tp': Shard<hidden> meets Replicate in add(); make them agree: redistribute(b, { tp: Shard("hidden") })`);
export const t3: Eq<MsgAgree<"add", "tp", "S(hidden)", "R", "b", "S(hidden)">, typeof c3.expected> = true;
const c4 = pair("msgAgree", msgAgree("concat", "ep", "R", "P(sum)", "xs[1]", "P(sum)"), `mesh axis 'ep': Replicate meets Partial<sum> in concat(); make them agree: redistribute(xs[1], { ep: Partial("sum") })`);
export const t4: Eq<MsgAgree<"concat", "ep", "R", "P(sum)", "xs[1]", "P(sum)">, typeof c4.expected> = true;
const c5 = pair("msgNonlinear", msgNonlinear("exp", "tp", "P(sum)"), "mesh axis 'tp': exp() is not linear and its input is Partial<sum>; reduce first: redistribute(x, { tp: Replicate })");
export const t5: Eq<MsgNonlinear<"exp", "tp", "P(sum)">, typeof c5.expected> = true;
const c6 = pair("msgSize", msgSize("add", "model", 16, 12), "dim 'model' is 16 in a but 12 in b in add(); sizes of a named dim must agree");
export const t6: Eq<MsgSize<"add", "model", 16, 12>, typeof c6.expected> = true;
const c7 = pair("msgMissingDim", msgMissingDim("sum", "hidden", "x"), "sum() names dim 'hidden' but x has no such dim; name one of its dims");
export const t7: Eq<MsgMissingDim<"sum", "hidden", "x">, typeof c7.expected> = true;
const c8 = pair("msgDimExists", msgDimExists("rename", "model"), "rename() would create dim 'model' but the tensor already has one; pick a new name");
export const t8: Eq<MsgDimExists<"rename", "model">, typeof c8.expected> = true;
const c9 = pair("msgDType", msgDType("add", "f32", "bf16"), `add() got f32 and bf16; cast one side first: cast(b, "f32")`);
export const t9: Eq<MsgDType<"add", "f32", "bf16">, typeof c9.expected> = true;
const c10 = pair("msgFp8", msgFp8("exp", "fp8e5m2"), `exp() does not take fp8e5m2; FP8 tensors go only into dot() or cast(): cast(x, "bf16") first`);
export const t10: Eq<MsgFp8<"exp", "fp8e5m2">, typeof c10.expected> = true;
const c11 = pair("msgNeedsDType", msgNeedsDType("dot", "i32", "f32, bf16 or FP8"), "dot() does not take i32; it needs f32, bf16 or FP8");
export const t11: Eq<MsgNeedsDType<"dot", "i32", "f32, bf16 or FP8">, typeof c11.expected> = true;
const c12 = pair("msgNoAxis", msgNoAxis("ep"), "mesh has no axis 'ep'; placements may name only the mesh's axes");
export const t12: Eq<MsgNoAxis<"ep">, typeof c12.expected> = true;
const c13 = pair("msgShardNoDim", msgShardNoDim("tp", "ffn"), "mesh axis 'tp': Shard<ffn> names a dim the tensor does not have; shard one of its dims");
export const t13: Eq<MsgShardNoDim<"tp", "ffn">, typeof c13.expected> = true;
const c14 = pair("msgWholeDim", msgWholeDim("softmax", "tp", "vocab"), "mesh axis 'tp': softmax() over 'vocab' needs the whole dim but it is Shard<vocab>; gather first: redistribute(x, { tp: Replicate })");
export const t14: Eq<MsgWholeDim<"softmax", "tp", "vocab">, typeof c14.expected> = true;
const c15 = pair("msgContractOneSide", msgContractOneSide("tp", "hidden", "b", "R"), `mesh axis 'tp': dot() contracts 'hidden', which is Shard<hidden> on one side but Replicate on the other; shard both alike: redistribute(b, { tp: Shard("hidden") })`);
export const t15: Eq<MsgContractOneSide<"tp", "hidden", "b", "R">, typeof c15.expected> = true;
const c16 = pair("msgContractOneSide", msgContractOneSide("dp", "k", "a", "S(m)"), `mesh axis 'dp': dot() contracts 'k', which is Shard<k> on one side but Shard<m> on the other; shard both alike: redistribute(a, { dp: Shard("k") })`);
export const t16: Eq<MsgContractOneSide<"dp", "k", "a", "S(m)">, typeof c16.expected> = true;
const c17 = pair("msgTwoShards", msgTwoShards("add", "tp", "S(tokens)", "S(out)"), "mesh axis 'tp': add() would need Shard<tokens> and Shard<out> at once; gather one side first: redistribute(b, { tp: Replicate })");
export const t17: Eq<MsgTwoShards<"add", "tp", "S(tokens)", "S(out)">, typeof c17.expected> = true;
const c18 = pair("msgUnsupported", msgUnsupported("segment_dot", "tp", "P(max)"), "mesh axis 'tp': segment_dot() has no rule for an input that is Partial<max>; redistribute(x, { tp: Replicate }) first");
export const t18: Eq<MsgUnsupported<"segment_dot", "tp", "P(max)">, typeof c18.expected> = true;
// the placement printers the messages stand on
const c19 = pair("asCode", asCode("S(tokens)"), `Shard("tokens")`);
export const t19: Eq<AsCode<"S(tokens)">, typeof c19.expected> = true;
const c20 = pair("asCode", asCode("P(max)"), `Partial("max")`);
export const t20: Eq<AsCode<"P(max)">, typeof c20.expected> = true;
const c21 = pair("asCode", asCode("R"), "Replicate");
export const t21: Eq<AsCode<"R">, typeof c21.expected> = true;
const c22 = pair("prettyPlacement", prettyPlacement("S(tokens)"), "Shard<tokens>");
export const t22: Eq<Pretty<"S(tokens)">, typeof c22.expected> = true;
const c23 = pair("prettyPlacement", prettyPlacement("P(sum)"), "Partial<sum>");
export const t23: Eq<Pretty<"P(sum)">, typeof c23.expected> = true;
const c24 = pair("prettyPlacement", prettyPlacement("R"), "Replicate");
export const t24: Eq<Pretty<"R">, typeof c24.expected> = true;
// a Partial index (gather / scatter_add): the fix names the index, not x
const c25 = pair("msgPartialIndex", msgPartialIndex("gather", "tp", "P(sum)"), "mesh axis 'tp': gather() needs whole positions but its index is Partial<sum>; reduce first: redistribute(index, { tp: Replicate })");
export const t25: Eq<MsgPartialIndex<"gather", "tp", "P(sum)">, typeof c25.expected> = true;
const c26 = pair("msgPartialIndex", msgPartialIndex("scatter_add", "dp", "P(max)"), "mesh axis 'dp': scatter_add() needs whole positions but its index is Partial<max>; reduce first: redistribute(index, { dp: Replicate })");
export const t26: Eq<MsgPartialIndex<"scatter_add", "dp", "P(max)">, typeof c26.expected> = true;

// FP8 block quantization: scales placed unlike their tensor's tiles; a tile across a shard boundary
// (trace-time only: the check needs the mesh's sizes, so it has no type)
const c27 = pair("msgScalesAgree", msgScalesAgree("dequantize", "tp", "scales", "S(model_tiles)"), "mesh axis 'tp': dequantize()'s scales must be placed like its tensor's tiles (Shard<model_tiles>); redistribute(scales, { tp: Shard(\"model_tiles\") })");
export const t27: Eq<MsgScalesAgree<"dequantize", "tp", "scales", "S(model_tiles)">, typeof c27.expected> = true;
const c28 = pair("msgTileStraddle", msgTileStraddle("quantize", "tp", "model", 384, 2), "mesh axis 'tp': quantize() tiles dim 'model' by 128 but Shard<model> splits its 384 into 2 pieces; a tile must not straddle a shard boundary, so the local size must be a multiple of 128 (make 'model' a multiple of 256 or shard another dim)");

export const MESSAGE_CASES: readonly MessageCase[] = [c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, c17, c18, c19, c20, c21, c22, c23, c24, c25, c26, c27, c28];
