// The GPU benches' self-child runner (bench/gpu/lib/self-child.ts): a child's output and exit come back, a
// silent child is killed at its idle limit, a chatty one at its total limit.
import { describe, expect, it } from "vitest";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runSelfChild } from "../../bench/gpu/lib/self-child.ts";

describe("runSelfChild", () => {
  const dir = mkdtempSync(join(tmpdir(), "shardts-self-child-"));
  const script = (name: string, body: string) => {
    const f = join(dir, name);
    writeFileSync(f, body);
    return f;
  };
  it("returns the child's stdout, stderr and exit code, and passes its arguments", async () => {
    const f = script("echo.mjs", `console.log(JSON.stringify(process.argv.slice(2))); console.error("note"); process.exit(3);`);
    const r = await runSelfChild(f, ["--job", "{}"], { totalS: 20, idleS: 20 });
    expect(r.stdout.trim()).toBe('["--job","{}"]');
    expect(r.stderr.trim()).toBe("note");
    expect(r.code).toBe(3);
    expect(r.killedWhy).toBeUndefined();
  }, 30_000);
  it("kills a child that prints no line for idleS, and one that runs past totalS while printing", async () => {
    const silent = await runSelfChild(script("hang.mjs", `setInterval(() => {}, 1000);`), [], { totalS: 20, idleS: 1 });
    expect(silent.killedWhy).toMatch(/after 1 s without a result/);
    expect(silent.signal).toBe("SIGKILL");
    const chatty = await runSelfChild(script("chatty.mjs", `setInterval(() => console.log("."), 100);`), [], { totalS: 1.5, idleS: 1 });
    expect(chatty.killedWhy).toMatch(/after 1.5 s in all/);
    expect(chatty.stdout).toContain(".");
  }, 30_000);
});
