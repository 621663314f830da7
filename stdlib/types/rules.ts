// The one-axis sharding rules at the type level, each a mirror of the runtime rule in compiler/ops
// (named in each comment) and producing the same message. test/types/cases exercise every branch.
import type {
  MsgAgree, MsgContractOneSide, MsgNonlinear, MsgPartialIndex, MsgReduceFirst, MsgTwoShards, MsgWholeDim, MsgUnsupported,
} from "../../compiler/messages.ts";
import type { Err, IsLiteral, KnownDims, Placement } from "./core.ts";

type Wide<PA, PB = "R"> = IsLiteral<PA> extends true ? (IsLiteral<PB> extends true ? false : true) : true;
type Has<D, K> = KnownDims<D> extends true ? (K extends keyof D ? true : false) : true;

/** compiler/ops/elementwise.ts binaryRule. */
export type BinaryRule<Op extends string, Lin extends "add" | "mul" | "div", Ax extends string, PA, PB, DA, DB> =
  Wide<PA, PB> extends true ? Placement
  : [PA] extends [PB] ? (PA extends "P(sum)" ? (Lin extends "add" ? PA : Err<MsgReduceFirst<Op, Ax, PA, PB, "b">>)
      : PA extends "P(max)" ? Err<MsgReduceFirst<Op, Ax, PA, PB, "a">> : PA)
  : PA extends "P(sum)" | "P(max)" ? (PA extends "P(sum)" ? (PB extends "R" ? (Lin extends "add" ? Err<MsgReduceFirst<Op, Ax, PA, PB, "a">> : PA) : Err<MsgReduceFirst<Op, Ax, PA, PB, "a">>) : Err<MsgReduceFirst<Op, Ax, PA, PB, "a">>)
  : PB extends "P(sum)" | "P(max)" ? (PB extends "P(sum)" ? (PA extends "R" ? (Lin extends "mul" ? PB : Err<MsgReduceFirst<Op, Ax, PA, PB, "b">>) : Err<MsgReduceFirst<Op, Ax, PA, PB, "b">>) : Err<MsgReduceFirst<Op, Ax, PA, PB, "b">>)
  : PA extends `S(${infer Da})` ? (PB extends "R" ? (Has<DB, Da> extends true ? Err<MsgAgree<Op, Ax, PA, PB, "b", PA>> : PA)
      : PB extends `S(${infer Db})` ? (Has<DB, Da> extends true ? Err<MsgAgree<Op, Ax, PA, PB, "b", PA>> : Has<DA, Db> extends true ? Err<MsgAgree<Op, Ax, PA, PB, "a", PB>> : Err<MsgTwoShards<Op, Ax, PA, PB>>) : Placement)
  : PB extends `S(${infer Db})` ? (Has<DA, Db> extends true ? Err<MsgAgree<Op, Ax, PA, PB, "a", PB>> : PB)
  : Placement;

/** compiler/ops/elementwise.ts unaryRule. */
export type UnaryRule<Op extends string, Linear extends boolean, Ax extends string, P> =
  Wide<P> extends true ? Placement
  : P extends "P(sum)" ? (Linear extends true ? P : Err<MsgNonlinear<Op, Ax, P>>)
  : P extends "P(max)" ? Err<MsgNonlinear<Op, Ax, P>> : P;

/** compiler/ops/reduce.ts reduceRule. */
export type ReduceRule<Op extends "sum" | "mean" | "max", Ax extends string, P, Red> =
  Wide<P> extends true ? Placement
  : P extends "P(sum)" | "P(max)" ? (P extends (Op extends "max" ? "P(max)" : "P(sum)") ? P : Err<MsgNonlinear<Op, Ax, P>>)
  : P extends `S(${infer D})` ? (D extends Red ? (Op extends "max" ? "P(max)" : "P(sum)") : P) : P;

/** compiler/ops/rules.ts wholeDimRule (softmax, log_softmax, topk, sort_by_key, rmsnorm). */
export type WholeDimRule<Op extends string, Ax extends string, P, Whole> =
  Wide<P> extends true ? Placement
  : P extends "P(sum)" | "P(max)" ? Err<MsgNonlinear<Op, Ax, P>>
  : P extends `S(${infer D})` ? (D extends Whole ? Err<MsgWholeDim<Op, Ax, D>> : P) : P;

/** compiler/ops/movement.ts passThrough with one input (flatten, unflatten, split): the ops only
 * move data, so a Partial passes through; only a Shard of a restructured dim (Whole) fails. */
export type MoveRule<Op extends string, Ax extends string, P, Whole> =
  Wide<P> extends true ? Placement
  : P extends `S(${infer D})` ? (D extends Whole ? Err<MsgWholeDim<Op, Ax, D>> : P) : P;

/** compiler/ops/movement.ts passThrough for concat. Ps: every input's placement on this axis (a tuple;
 * a plain array gives only the element type). In input order: xs[i] may not shard the concat dim, and
 * must equal xs[0]; the output is xs[0]'s placement. */
export type ConcatRule<Ax extends string, Ps extends readonly unknown[], Whole> =
  Ps extends readonly [infer P0, ...unknown[]] ? ConcatEach<Ax, P0, Ps, Whole, []> : MoveRule<"concat", Ax, Ps[number], Whole>;
type ConcatEach<Ax extends string, P0, Ps extends readonly unknown[], Whole, I extends unknown[]> =
  Ps extends readonly [infer P, ...infer Rest]
    ? Wide<P0, P> extends true ? Placement
      : P extends `S(${infer D})` ? (D extends Whole ? Err<MsgWholeDim<"concat", Ax, D>> : ConcatSame<Ax, P0, P, Rest, Whole, I>)
      : ConcatSame<Ax, P0, P, Rest, Whole, I>
    : P0;
type ConcatSame<Ax extends string, P0, P, Rest extends readonly unknown[], Whole, I extends unknown[]> =
  [P] extends [P0] ? ConcatEach<Ax, P0, Rest, Whole, [...I, 0]> : Err<MsgAgree<"concat", Ax, P0, P, `xs[${I["length"]}]`, P0>>;

/** compiler/ops/contraction.ts dotRule. C: contracted dims; DA/DB: the operands' dims. */
export type DotRule<Ax extends string, PA, PB, C, DA, DB> =
  Wide<PA, PB> extends true ? Placement
  : [PA, PB] extends ["R", "R"] ? "R"
  : PA extends "P(sum)" | "P(max)" ? ([PA, PB] extends ["P(sum)", "R"] ? PA : Err<MsgReduceFirst<"dot", Ax, PA, PB, PB extends "P(sum)" | "P(max)" ? "b" : "a">>)
  : PB extends "P(sum)" | "P(max)" ? ([PA, PB] extends ["R", "P(sum)"] ? PB : Err<MsgReduceFirst<"dot", Ax, PA, PB, "b">>)
  : PA extends `S(${infer Da})` ? (Da extends C ? ([PB] extends [PA] ? "P(sum)" : Err<MsgContractOneSide<Ax, Da, "b", PB>>) : DotRest<Ax, PA, PB, C, DA, DB>)
  : DotRest<Ax, PA, PB, C, DA, DB>;
type DotRest<Ax extends string, PA, PB, C, DA, DB> =
  PB extends `S(${infer Db})` ? (Db extends C ? Err<MsgContractOneSide<Ax, Db, "a", PA>> : DotFree<Ax, PA, PB, DA, DB>) : DotFree<Ax, PA, PB, DA, DB>;
type DotFree<Ax extends string, PA, PB, DA, DB> =
  [PA] extends [PB] ? PA
  : PA extends `S(${infer Da})` ? (Has<DB, Da> extends true ? Err<MsgAgree<"dot", Ax, PA, PB, "b", PA>> : PB extends `S(${infer Db})` ? (Has<DA, Db> extends true ? Err<MsgAgree<"dot", Ax, PA, PB, "a", PB>> : Err<MsgTwoShards<"dot", Ax, PA, PB>>) : PA)
  : PB extends `S(${infer Db})` ? (Has<DA, Db> extends true ? Err<MsgAgree<"dot", Ax, PA, PB, "a", PB>> : PB) : Placement;

/** compiler/ops/routing.ts gather rule. Dim: the gathered dim; DX/DI: x's and index's dims. */
export type GatherRule<Ax extends string, PX, PI, Dim, DX, DI> =
  Wide<PX, PI> extends true ? Placement
  : PI extends "P(sum)" | "P(max)" ? Err<MsgPartialIndex<"gather", Ax, PI>>
  : [PX, PI] extends ["P(sum)", "R"] ? PX
  : PX extends "P(sum)" | "P(max)" ? Err<MsgReduceFirst<"gather", Ax, PX, PI, "x">>
  : [PX] extends [PI] ? PX
  : PX extends `S(${infer Dx})` ? (Dx extends Dim ? (PI extends `S(${infer Di})` ? (Has<DX, Di> extends true ? Err<MsgAgree<"gather", Ax, PX, PI, "x", PI>> : Err<MsgTwoShards<"gather", Ax, PX, PI>>) : "P(sum)")
      : Has<DI, Dx> extends true ? Err<MsgAgree<"gather", Ax, PX, PI, "index", PX>>
      : PI extends `S(${infer Di})` ? (Has<DX, Di> extends true ? Err<MsgAgree<"gather", Ax, PX, PI, "x", PI>> : Err<MsgTwoShards<"gather", Ax, PX, PI>>) : PX)
  : PI extends `S(${infer Di})` ? (Has<DX, Di> extends true ? Err<MsgAgree<"gather", Ax, PX, PI, "x", PI>> : PI) : Placement;

/** compiler/ops/routing.ts scatter_add rule. Dim: the scattered dim of index/src; DI: index's dims. */
export type ScatterRule<Ax extends string, PS, PI, Dim, DI> =
  Wide<PS, PI> extends true ? Placement
  : PI extends "P(sum)" | "P(max)" ? Err<MsgPartialIndex<"scatter_add", Ax, PI>>
  : [PS, PI] extends ["P(sum)", "R"] ? PS
  : PS extends "P(sum)" | "P(max)" ? Err<MsgReduceFirst<"scatter_add", Ax, PS, PI, "src">>
  : [PS] extends [PI] ? (PS extends `S(${Dim & string})` ? "P(sum)" : PS)
  : PS extends `S(${infer Ds})` ? (PI extends "R" ? (Has<DI, Ds> extends true ? Err<MsgAgree<"scatter_add", Ax, PS, PI, "index", PS>> : PS) : Err<MsgAgree<"scatter_add", Ax, PS, PI, "index", PS>>)
  : PI extends `S(${string})` ? Err<MsgAgree<"scatter_add", Ax, PS, PI, "src", PI>> : Placement;

/** compiler/ops/contraction.ts segment_dot rule (the common layouts; anything else is checked at trace time). */
export type SegmentRule<Ax extends string, PX, PW, PC, Rows extends string, Groups extends string, K extends string> =
  Wide<PX, PW> extends true ? Placement
  : PC extends "P(sum)" | "P(max)" ? Err<MsgUnsupported<"segment_dot", Ax, PC>>
  : [PX, PW, PC] extends ["R", "R", "R"] ? "R"
  : [PX, PW, PC] extends ["P(sum)", "R", "R"] ? "P(sum)"
  : PW extends "P(sum)" | "P(max)" ? Err<MsgReduceFirst<"segment_dot", Ax, PX, PW, "w">>
  : PX extends "P(sum)" | "P(max)" ? Err<MsgReduceFirst<"segment_dot", Ax, PX, PW, "x">>
  : PW extends `S(${Groups})` ? (PX extends `S(${Rows})` ? (PC extends `S(${Groups})` | "R" ? `S(${Rows})` : Err<MsgTwoShards<"segment_dot", Ax, PX, PW>>) : PX extends "R" ? (PC extends "R" ? `S(${Rows})` : Err<MsgTwoShards<"segment_dot", Ax, PX, PW>>) : Err<MsgTwoShards<"segment_dot", Ax, PX, PW>>)
  : [PX, PW] extends [`S(${K})`, `S(${K})`] ? (PC extends `S(${string})` ? Err<MsgTwoShards<"segment_dot", Ax, PX, PW>> : "P(sum)")
  : PW extends "R" ? (PX extends `S(${string})` ? ([PC] extends [PX] ? PX : Err<MsgTwoShards<"segment_dot", Ax, PX, PW>>) : Placement)
  : PX extends "R" ? (PC extends "R" ? (PW extends `S(${K})` ? Err<MsgTwoShards<"segment_dot", Ax, PX, PW>> : PW) : Err<MsgTwoShards<"segment_dot", Ax, PX, PW>>)
  : Err<MsgTwoShards<"segment_dot", Ax, PX, PW>>;

/** compiler/ops/quantize.ts quantize rule: q keeps x's placement; its scales follow with `d` → `d_tiles`
 * for a tiled dim. (Whole tiles per shard needs the mesh's sizes: checked at trace time.) */
export type QuantizeRule<Ax extends string, P> =
  Wide<P> extends true ? Placement
  : P extends "P(sum)" | "P(max)" ? Err<MsgNonlinear<"quantize", Ax, P>> : P;
export type ScalePlacement<P, Tiled extends string> = P extends `S(${infer D})` ? (D extends Tiled ? `S(${D}_tiles)` : P) : P;
