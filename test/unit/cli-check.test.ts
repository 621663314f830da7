// `shardts check` end to end on real files: it runs tsc 7 and prints sharding errors as shardts
// messages. The fixtures are the type-harness ones, which declare their own tiny DT and so do not
// move when the stdlib does.
import { describe, expect, it } from "vitest";
import { fileURLToPath } from "node:url";
import { check } from "../../stdlib/cli/check.ts";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const ONE_ERROR = "test/types/harness-fixtures/unexpected.ts"; // line 4: add(part, rep)
const CLEAN = "test/types/harness-fixtures/clean.ts";

describe("check", () => {
  it("reports a sharding error with its message and file:line:col", async () => {
    const r = await check([ONE_ERROR], { cwd: REPO });
    expect(r.errorCount).toBe(1);
    expect(r.shardingCount).toBe(1);
    expect(r.tsconfig).toBe(REPO + "tsconfig.json");
    expect(r.output).toContain(
      `${ONE_ERROR}:4:11 - shardts: mesh axis 'tp': Partial<sum> meets Replicate in add(); reduce first: redistribute(a, { tp: Replicate })`,
    );
    expect(r.output).toContain("add(part, rep);\n              ^");
    expect(r.output.split("\n").at(-1)).toBe("shardts check: 1 files, 1 errors (1 sharding)");
  });

  it("reports nothing for a clean file", async () => {
    const r = await check([CLEAN], { cwd: REPO, project: "tsconfig.json" });
    expect(r.errorCount).toBe(0);
    expect(r.diagnostics).toEqual([]);
    expect(r.output).toBe("shardts check: 1 files, 0 errors (0 sharding)");
  });

  it("names a missing file instead of crashing", async () => {
    await expect(check([CLEAN, "examples/no-such-model.ts"], { cwd: REPO })).rejects.toThrow(
      /no such file: .*examples\/no-such-model\.ts/,
    );
  });

  it("names a missing project", async () => {
    await expect(check([CLEAN], { cwd: REPO, project: "nope/tsconfig.json" })).rejects.toThrow(/no such tsconfig: .*nope\/tsconfig\.json/);
  });
});
