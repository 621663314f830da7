// Tests of the type-case harness and of the diagnostic text functions it stands on. The fixtures in
// harness-fixtures/ declare their own tiny DT (harness-fixtures/_dt.ts), so a change in the stdlib
// cannot make these tests lie about the harness.
import { beforeAll, describe, expect, it } from "vitest";
import { fileURLToPath } from "node:url";
import { extractShardtsMessage, formatDiagnostic, parseTscOutput } from "../../stdlib/cli/diagnostics.ts";
import { describeFailures, parseExpectations, runTypeCases, type CaseResult } from "./harness.ts";

const FIXTURES = fileURLToPath(new URL("./harness-fixtures/", import.meta.url));

describe("runTypeCases", () => {
  let results: CaseResult[];
  const result = (name: string) => {
    const r = results.find((x) => x.file === FIXTURES + name);
    if (!r) throw new Error(`no result for ${name}; got ${results.map((x) => x.file).join(", ")}`);
    return r;
  };
  beforeAll(async () => {
    results = await runTypeCases(FIXTURES);
  }, 60_000);

  it("checks every case file once, skipping _helpers, with no errors outside the cases", () => {
    expect(results.map((r) => r.file.slice(FIXTURES.length))).toEqual([
      "clean.ts", "missing.ts", "pass.ts", "unexpected.ts", "wrong-text.ts",
    ]);
  });

  it("passes met expectations: property marker, escaped quotes, the ⛔ marker, raw TS text", () => {
    const r = result("pass.ts");
    expect(describeFailures([r])).toBe("");
    expect(r).toMatchObject({ expected: 4, matched: 4, ok: true });
  });

  it("passes a file with neither errors nor expectations", () => {
    expect(result("clean.ts")).toMatchObject({ expected: 0, matched: 0, failures: [], ok: true });
  });

  it("fails a wrong expected text and prints what the line got", () => {
    const r = result("wrong-text.ts");
    expect(r).toMatchObject({ expected: 1, matched: 0, ok: false });
    expect(r.failures).toHaveLength(1);
    expect(r.failures[0]).toMatchObject({ line: 4, kind: "unmatched", expected: "Partial<max> meets Replicate" });
    expect(r.failures[0]!.got).toEqual([
      "mesh axis 'tp': Partial<sum> meets Replicate in add(); reduce first: redistribute(a, { tp: Replicate })",
    ]);
    expect(r.failures[0]!.message).toContain("Partial<sum> meets Replicate in add()");
  });

  it("fails an expectation on a line with no diagnostic", () => {
    const r = result("missing.ts");
    expect(r).toMatchObject({ expected: 1, matched: 0, ok: false });
    expect(r.failures).toEqual([expect.objectContaining({ line: 4, kind: "unmatched", got: [] })]);
    expect(r.failures[0]!.message).toContain("no diagnostics");
  });

  it("fails a diagnostic on an unmarked line", () => {
    const r = result("unexpected.ts");
    expect(r).toMatchObject({ expected: 0, ok: false });
    expect(r.failures).toEqual([expect.objectContaining({ line: 4, kind: "unexpected" })]);
    expect(r.failures[0]!.message).toContain("unexpected.ts:4:11: unexpected error TS2345: mesh axis 'tp'");
  });
});

describe("parseExpectations", () => {
  it("ties a marker to the next non-comment, non-blank line; stacked markers share it", () => {
    const src = ["// @expect-error one", "// a note", "", "// @expect-error two", "f();", "g();", "// @expect-error dangling"].join("\n");
    expect(parseExpectations(src)).toEqual([
      { line: 5, commentLine: 1, text: "one" },
      { line: 5, commentLine: 4, text: "two" },
      { line: 7, commentLine: 7, text: "dangling" },
    ]);
  });
});

// Real tsc 7 `--pretty false` output, captured from harness-fixtures/ and small probes.
const PROPERTY_CHAIN =
  `Argument of type 'DT<{ tp: "R"; }>' is not assignable to parameter of type 'DT<{ tp: "R"; }> & { readonly "shardts error": "mesh axis 'tp': Shard<tokens> meets Replicate in add(); make them agree: redistribute(b, { tp: Shard(\\"tokens\\") })"; }'.\n` +
  `  Property '"shardts error"' is missing in type 'DT<{ tp: "R"; }>' but required in type '{ readonly "shardts error": "mesh axis 'tp': Shard<tokens> meets Replicate in add(); make them agree: redistribute(b, { tp: Shard(\\"tokens\\") })"; }'.`;
const LITERAL_UNION = `Type '3' is not assignable to type '"⛔ mesh axis 'tp' must be a power of two: 2, 4 or 8" | 2 | 4 | 8'.`;
const LITERAL_ESCAPES = `Type '"hi"' is not assignable to type '"⛔ mesh axis 'dp': bad \\"quote\\" {x}"'.`;
const LITERAL_CONTROL = `Type '"x"' is not assignable to type '"⛔ line1\\nline2\\ttab \\u0001 é"'.`;
const MISSING_PROPERTY = `Property '"shardts error"' is missing in type '{}' but required in type '{ readonly "shardts error": "simple msg"; }'.`;
const BACKSLASH = `Property '"shardts error"' is missing in type 'DT<"R">' but required in type '{ readonly "shardts error": "in add(); back\\\\slash"; }'.`;
const ALIAS =
  `Argument of type 'DT<{ batch: 8; model: 512; }, "bf16", { dp: "S(batch)"; tp: "R"; }>' is not assignable to parameter of type 'DT<{ batch: 8; model: 512; }, "bf16", { dp: "S(batch)"; tp: "R"; }> & { readonly "shardts error": AxisMsg<"add", { dp: "P(max)"; tp: "P(sum)"; }, { dp: "S(batch)"; tp: "R"; }>; }'.`;
const TEMPLATE = `Property '"shardts error"' is missing in type '{}' but required in type '{ readonly "shardts error": \`axis '\${P}' bad\`; }'.`;
const PLAIN = `Type 'number' is not assignable to type 'string'.`;

describe("extractShardtsMessage", () => {
  it("reads the property marker and unescapes quotes", () => {
    expect(extractShardtsMessage(PROPERTY_CHAIN)).toBe(
      `mesh axis 'tp': Shard<tokens> meets Replicate in add(); make them agree: redistribute(b, { tp: Shard("tokens") })`,
    );
    expect(extractShardtsMessage(MISSING_PROPERTY)).toBe("simple msg");
    expect(extractShardtsMessage(BACKSLASH)).toBe("in add(); back\\slash");
  });

  it("reads the ⛔ literal marker, dropping the marker, inside a union too", () => {
    expect(extractShardtsMessage(LITERAL_UNION)).toBe("mesh axis 'tp' must be a power of two: 2, 4 or 8");
    expect(extractShardtsMessage(LITERAL_ESCAPES)).toBe(`mesh axis 'dp': bad "quote" {x}`);
    expect(extractShardtsMessage(LITERAL_CONTROL)).toBe("line1\nline2\ttab \u0001 é");
  });

  it("falls back to the printed type when the message is an alias or a generic template", () => {
    expect(extractShardtsMessage(ALIAS)).toBe(`AxisMsg<"add", { dp: "P(max)"; tp: "P(sum)"; }, { dp: "S(batch)"; tp: "R"; }>`);
    expect(extractShardtsMessage(TEMPLATE)).toBe("axis '${P}' bad");
  });

  it("splits a union of messages one per line", () => {
    expect(extractShardtsMessage(`x '{ readonly "shardts error": "mesh axis 'dp': a" | "mesh axis 'tp': b"; }'.`)).toBe(
      "mesh axis 'dp': a\nmesh axis 'tp': b",
    );
  });

  it("leaves plain TS errors alone", () => {
    expect(extractShardtsMessage(PLAIN)).toBeUndefined();
    expect(extractShardtsMessage(`Property '"shardts error"' does not exist on type 'X'.`)).toBeUndefined();
  });
});

describe("formatDiagnostic", () => {
  it("prints a sharding diagnostic as shardts: <message>, with source and caret", () => {
    expect(formatDiagnostic({ file: "pass.ts", line: 10, col: 10, code: 2345, text: PROPERTY_CHAIN, sourceLine: "\tadd(tok, rep);" })).toBe(
      `pass.ts:10:10 - shardts: mesh axis 'tp': Shard<tokens> meets Replicate in add(); make them agree: redistribute(b, { tp: Shard("tokens") })\n` +
        "    \tadd(tok, rep);\n" +
        "    \t        ^",
    );
  });

  it("prints other diagnostics as error TS<code>: <first line>", () => {
    expect(formatDiagnostic({ file: "a.ts", line: 19, col: 14, code: 2322, text: PLAIN + "\n  more" })).toBe(
      "a.ts:19:14 - error TS2322: Type 'number' is not assignable to type 'string'.",
    );
    expect(formatDiagnostic({ code: 2688, text: "Cannot find type definition file for 'node'." })).toBe(
      "error TS2688: Cannot find type definition file for 'node'.",
    );
  });
});

describe("parseTscOutput", () => {
  it("joins continuation lines to their diagnostic and resolves paths", () => {
    const out = [
      "error TS2688: Cannot find type definition file for 'node'.",
      "  The file is in the program because:",
      "    Entry point of type library 'node' specified in compilerOptions",
      `test/types/harness-fixtures/pass.ts(10,10): error TS2345: ${PROPERTY_CHAIN}`,
      `test/types/harness-fixtures/pass.ts(19,14): error TS2322: ${PLAIN}`,
      "",
    ].join("\n");
    const ds = parseTscOutput(out, "/repo");
    expect(ds).toHaveLength(3);
    expect(ds[0]).toEqual({
      category: "error",
      code: 2688,
      text: "Cannot find type definition file for 'node'.\n  The file is in the program because:\n    Entry point of type library 'node' specified in compilerOptions",
    });
    expect(ds[1]).toMatchObject({ file: "/repo/test/types/harness-fixtures/pass.ts", line: 10, col: 10, code: 2345, text: PROPERTY_CHAIN });
    expect(ds[1]!.shardts).toContain(`Shard("tokens")`);
    expect(ds[2]).toMatchObject({ line: 19, col: 14, code: 2322, text: PLAIN });
    expect(ds[2]!.shardts).toBeUndefined();
  });
});
