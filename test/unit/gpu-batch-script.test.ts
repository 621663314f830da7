// bench/gpu/batch.sh: several commands in one device call, each under its own time limit, every
// result packed into one archive after each step (the device returns at most 8 files).
import { describe, expect, it } from "vitest";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const run = (args: string[]) => {
  const dir = mkdtempSync(join(tmpdir(), "shardts-batch-"));
  const env = { ...process.env, OUT: join(dir, "out"), WORK: join(dir, "work") };
  const r = spawnSync("bash", ["bench/gpu/batch.sh", ...args], { env, encoding: "utf8", timeout: 60_000 });
  return { ...r, dir };
};

describe("bench/gpu/batch.sh", () => {
  it("runs each command with its own OUT and time limit, records exits, and packs everything into one archive", () => {
    const r = run(["a:10:echo hi > $OUT/a.txt; echo console-a", "slow:1:sleep 5", "fail:10:exit 3"]);
    expect(r.status).toBe(3);
    const batch = readFileSync(join(r.dir, "work", "batch.txt"), "utf8");
    expect(batch).toMatch(/^a exit 0 in \d+ s\nslow exit 124 in \d+ s\nfail exit 3 in \d+ s\n$/);
    expect(r.stdout).toContain("console-a");
    const list = spawnSync("tar", ["tzf", join(r.dir, "out", "results.tgz")], { encoding: "utf8" }).stdout;
    for (const f of ["./a/a.txt", "./a.txt", "./batch.txt", "./slow.txt", "./fail.txt"]) expect(list).toContain(f);
  });

  it("refuses a malformed argument before running anything", () => {
    const r = run(["ok:5:echo ran", "bad name:5:echo x"]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/'bad name:5:echo x' is not NAME:SECONDS:COMMAND/);
    expect(r.stdout).not.toContain("ran");
    expect(run(["x:soon:echo x"]).status).toBe(2);
    expect(run([]).stderr).toMatch(/usage/);
  });
});
