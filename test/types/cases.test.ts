// The stdlib's type-level sharding rules, checked by tsc over the fixtures in cases/: every
// `// @expect-error <text>` line must fail with that shardts message, and nothing else may fail.
import { beforeAll, describe, expect, it } from "vitest";
import { fileURLToPath } from "node:url";
import { describeFailures, runTypeCases, type CaseResult } from "./harness.ts";

const CASES = fileURLToPath(new URL("./cases/", import.meta.url));

describe("type cases", () => {
  let results: CaseResult[];
  const name = (r: CaseResult) => (r.file.startsWith(CASES) ? r.file.slice(CASES.length) : r.file);
  beforeAll(async () => {
    results = await runTypeCases(CASES);
  }, 120_000);

  it("finds the fixtures, and no diagnostics outside them", () => {
    const names = results.map(name);
    for (const f of ["good.ts", "messages.ts", "result-types.ts", "bad-elementwise.ts", "bad-contraction.ts", "bad-nonlinear.ts", "bad-wholedim.ts",
      "bad-placements.ts", "bad-sizes.ts", "bad-dtypes.ts", "bad-dims.ts", "bad-routing.ts", "bad-movement.ts", "bad-fp8.ts"]) expect(names).toContain(f);
    // runTypeCases appends results for files outside the folder (stdlib, helpers) that had diagnostics
    const outside = results.filter((r) => !r.file.startsWith(CASES));
    expect(describeFailures(outside)).toBe("");
  });

  it("every fixture is ok (expected errors met, no others)", () => {
    expect(describeFailures(results), describeFailures(results)).toBe("");
    for (const r of results) expect(r.ok, name(r)).toBe(true);
  });

  it("good.ts has no expectations and no diagnostics", () => {
    const good = results.find((r) => name(r) === "good.ts")!;
    expect(good).toMatchObject({ expected: 0, matched: 0, failures: [], ok: true });
  });

  it("states at least 20 expectations, all met", () => {
    const expected = results.reduce((n, r) => n + r.expected, 0);
    const matched = results.reduce((n, r) => n + r.matched, 0);
    expect(expected).toBeGreaterThanOrEqual(20);
    expect(matched).toBe(expected);
  });
});
