// The whole project (library, examples, tests) type-checks under tsc 7, and stays fast to check.
import { describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../..", import.meta.url));

describe("tsc --noEmit", () => {
  it("type-checks the project with no errors in a few seconds", () => {
    const t0 = performance.now();
    let out = "";
    try {
      execFileSync(`${root}node_modules/.bin/tsc`, ["--noEmit", "-p", "tsconfig.json"], { cwd: root, encoding: "utf8" });
    } catch (e) {
      out = String((e as { stdout?: string }).stdout ?? e);
    }
    const s = (performance.now() - t0) / 1000;
    console.log(`tsc --noEmit -p tsconfig.json: ${s.toFixed(2)} s`);
    expect(out).toBe("");
    expect(s).toBeLessThan(20);
  });
});
