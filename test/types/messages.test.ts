// Every user-facing message has a template-literal TYPE (what tsc prints) and a runtime BUILDER
// (what a trace-time error says). cases/messages.ts proves in tsc that each type equals a literal
// exactly; here each builder must return that same literal for the same arguments. Together: the
// editor and the trace-time check print identical text.
import { describe, expect, it } from "vitest";
import { fileURLToPath } from "node:url";
import * as messages from "../../compiler/messages.ts";

interface MessageCase {
  builder: string;
  runtime: string;
  expected: string;
}
// A computed specifier, so the project's tsc (which excludes test/types/cases) does not pull the
// fixture in; the type cases check it.
const FIXTURE = fileURLToPath(new URL("./cases/messages.ts", import.meta.url));
const { MESSAGE_CASES } = (await import(FIXTURE)) as { MESSAGE_CASES: readonly MessageCase[] };

describe("message builders equal their types", () => {
  it.each(MESSAGE_CASES.map((c, i) => [i + 1, c.builder, c] as const))("case %i: %s", (_i, _b, c) => {
    expect(c.runtime).toBe(c.expected);
  });

  it("the fixture holds the cases", () => {
    expect(MESSAGE_CASES.length).toBeGreaterThanOrEqual(26);
  });

  it("covers every builder of compiler/messages.ts", () => {
    const builders = Object.entries(messages).filter(([, v]) => typeof v === "function").map(([k]) => k).sort();
    const covered = new Set(MESSAGE_CASES.map((c) => c.builder));
    expect(builders.filter((b) => !covered.has(b))).toEqual([]);
    expect(builders.length).toBeGreaterThanOrEqual(17);
  });

  // The same, spelled out here with literals (what tsc prints for the type with these arguments).
  it("builders return the literal text, argument by argument", () => {
    expect(messages.msgReduceFirst("add", "tp", "P(sum)", "R", "a")).toBe(
      "mesh axis 'tp': Partial<sum> meets Replicate in add(); reduce first: redistribute(a, { tp: Replicate })");
    expect(messages.msgReduceFirst("where", "dp", "P(max)", "S(x)", "cond")).toBe(
      "mesh axis 'dp': Partial<max> meets Shard<x> in where(); reduce first: redistribute(cond, { dp: Replicate })");
    expect(messages.msgAgree("mul", "tp", "R", "S(hidden)", "a", "S(hidden)")).toBe(
      `mesh axis 'tp': Replicate meets Shard<hidden> in mul(); make them agree: redistribute(a, { tp: Shard("hidden") })`);
    expect(messages.msgNonlinear("max", "tp", "P(sum)")).toBe(
      "mesh axis 'tp': max() is not linear and its input is Partial<sum>; reduce first: redistribute(x, { tp: Replicate })");
    expect(messages.msgSize("dot", "tokens", 8, 6)).toBe("dim 'tokens' is 8 in a but 6 in b in dot(); sizes of a named dim must agree");
    expect(messages.msgMissingDim("gather", "vocab", "x")).toBe("gather() names dim 'vocab' but x has no such dim; name one of its dims");
    expect(messages.msgDimExists("topk", "k")).toBe("topk() would create dim 'k' but the tensor already has one; pick a new name");
    expect(messages.msgDType("dot", "fp8e4m3", "f32")).toBe(`dot() got fp8e4m3 and f32; cast one side first: cast(b, "fp8e4m3")`);
    expect(messages.msgFp8("add", "fp8e4m3")).toBe(`add() does not take fp8e4m3; FP8 tensors go only into dot() or cast(): cast(x, "bf16") first`);
    expect(messages.msgNeedsDType("gather", "f32", "i32")).toBe("gather() does not take f32; it needs i32");
    expect(messages.msgNoAxis("pp")).toBe("mesh has no axis 'pp'; placements may name only the mesh's axes");
    expect(messages.msgShardNoDim("dp", "tokens")).toBe("mesh axis 'dp': Shard<tokens> names a dim the tensor does not have; shard one of its dims");
    expect(messages.msgWholeDim("log_softmax", "tp", "vocab")).toBe(
      "mesh axis 'tp': log_softmax() over 'vocab' needs the whole dim but it is Shard<vocab>; gather first: redistribute(x, { tp: Replicate })");
    expect(messages.msgContractOneSide("tp", "hidden", "a", "R")).toBe(
      `mesh axis 'tp': dot() contracts 'hidden', which is Shard<hidden> on one side but Replicate on the other; shard both alike: redistribute(a, { tp: Shard("hidden") })`);
    expect(messages.msgTwoShards("gather", "ep", "S(a)", "S(b)")).toBe(
      "mesh axis 'ep': gather() would need Shard<a> and Shard<b> at once; gather one side first: redistribute(b, { ep: Replicate })");
    expect(messages.msgUnsupported("segment_dot", "tp", "P(sum)")).toBe(
      "mesh axis 'tp': segment_dot() has no rule for an input that is Partial<sum>; redistribute(x, { tp: Replicate }) first");
    expect(messages.msgPartialIndex("gather", "tp", "P(sum)")).toBe(
      "mesh axis 'tp': gather() needs whole positions but its index is Partial<sum>; reduce first: redistribute(index, { tp: Replicate })");
    expect(messages.asCode("P(sum)")).toBe(`Partial("sum")`);
  });
});
