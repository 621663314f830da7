// shardts launch on the CPU backend: the torchrun environment contract, prefixed output, the
// token-checked rendezvous store, and failure propagation (a rank that throws, a rank that hangs):
// the launcher exits non-zero naming the rank within the timeout and leaves no process behind.
import { describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { launch, type LaunchOptions } from "../../runtime/launch/launcher.ts";
import { startStore } from "../../runtime/launch/store.ts";
import { StoreClient, RendezvousError } from "../../runtime/launch/rendezvous.ts";
import { readDistEnv } from "../../runtime/launch/env.ts";

const WORKER = "test/unit/fixtures/dist-worker.ts";
const BIN = fileURLToPath(new URL("../../bin/shardts.mjs", import.meta.url));
const base: LaunchOptions = { nprocPerNode: 3, nnodes: 1, nodeRank: 0, masterAddr: "127.0.0.1", masterPort: 0, file: WORKER, args: [], graceMs: 2000 };

async function run(o: Partial<LaunchOptions>) {
  const out: string[] = [], err: string[] = [];
  const t0 = performance.now();
  const res = await launch({ ...base, ...o }, (l) => out.push(l), (l) => err.push(l));
  return { res, out, err, secs: (performance.now() - t0) / 1000 };
}
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const reports = (out: string[]) => out.filter((l) => l.includes('{"rank"')).map((l) => ({ prefix: l.slice(0, l.indexOf("]") + 1), ...JSON.parse(l.slice(l.indexOf("{"))) }));

describe("shardts launch", () => {
  it("starts one process per rank with torchrun's variables; they rendezvous and run on the CPU backend", async () => {
    const { res, out } = await run({});
    expect(res.code).toBe(0);
    const r = reports(out).sort((a, b) => a.rank - b.rank);
    expect(r.map((x) => [x.prefix, x.rank, x.localRank, x.world, x.localWorld])).toEqual([
      ["[rank 0]", 0, 0, 3, 3], ["[rank 1]", 1, 1, 3, 3], ["[rank 2]", 2, 2, 3, 3],
    ]);
    expect(new Set(r.map((x) => x.id)).size).toBe(1); // the unique id rank 0 published
    expect(new Set(r.map((x) => x.pid)).size).toBe(3);
    expect(new Set(r.map((x) => x.value)).size).toBe(1);
  });

  it("stops every rank and exits non-zero naming the rank that threw", async () => {
    const { res, err, secs } = await run({ args: ["--fail-rank", "1"] });
    expect(res.code).not.toBe(0);
    expect(res.failed?.rank).toBe(1);
    expect(err.join("\n")).toMatch(/shardts launch: rank 1 exited with code 1; stopped the other 2 rank\(s\)/);
    expect(err.join("\n")).toMatch(/rank 1 fails on purpose/);
    expect(secs).toBeLessThan(10);
    expect(res.pids.filter(alive)).toEqual([]);
  }, 20_000);

  it("ends a job with a hung rank within the rendezvous timeout, naming the rank that never arrived", async () => {
    process.env.SHARDTS_RENDEZVOUS_TIMEOUT = "2";
    try {
      const { res, err, secs } = await run({ args: ["--hang-rank", "2"] });
      expect(res.code).not.toBe(0);
      expect(err.join("\n")).toMatch(/rank\(s\) 2 had not arrived within 2 s/);
      expect(secs).toBeLessThan(2 + 2 + 5);
      expect(res.pids.filter(alive)).toEqual([]);
    } finally {
      delete process.env.SHARDTS_RENDEZVOUS_TIMEOUT;
    }
  }, 30_000);

  it("works when ranks are started by another launcher (srun/torchrun style): rank 0 hosts the store", async () => {
    const token = "t".repeat(24), port = 29000 + Math.floor(Math.random() * 1000);
    const procs = [0, 1].map((rank) =>
      spawn(process.execPath, [BIN, "run", WORKER], {
        env: { ...process.env, RANK: String(rank), LOCAL_RANK: String(rank), WORLD_SIZE: "2", LOCAL_WORLD_SIZE: "2", MASTER_ADDR: "127.0.0.1", MASTER_PORT: String(port), SHARDTS_JOB_TOKEN: token, SHARDTS_STORE_HOSTED: "" },
        stdio: ["ignore", "pipe", "pipe"],
      }),
    );
    const codes = await Promise.all(procs.map((p) => new Promise<number | null>((r) => p.once("exit", r))));
    expect(codes).toEqual([0, 0]);
  }, 30_000);
});

describe("rendezvous store", () => {
  it("refuses a peer without the job token and serves one with it", async () => {
    const token = "s".repeat(32);
    const store = await startStore(token);
    try {
      await expect(StoreClient.connect("127.0.0.1", store.port, "wrong-token-wrong-token", 2000)).rejects.toThrow(/refused: wrong or missing job token/);
      expect(store.refused).toBe(1);
      const c = await StoreClient.connect("127.0.0.1", store.port, token, 2000);
      await c.set("k", "v");
      expect(await c.get("k")).toBe("v");
      expect(await c.add("n", 2)).toBe(2);
      c.close();
    } finally {
      await store.close();
    }
  });

  it("gives up on an unreachable store with an error naming the address", async () => {
    await expect(StoreClient.connect("127.0.0.1", 1, "x".repeat(20), 300)).rejects.toThrow(RendezvousError);
    await expect(StoreClient.connect("127.0.0.1", 1, "x".repeat(20), 300)).rejects.toThrow(/127\.0\.0\.1:1/);
  });
});

describe("environment contract", () => {
  const good = { RANK: "1", LOCAL_RANK: "1", WORLD_SIZE: "4", LOCAL_WORLD_SIZE: "2", MASTER_ADDR: "10.0.0.1", MASTER_PORT: "29500", SHARDTS_JOB_TOKEN: "k".repeat(20) };
  it("reads torchrun's variables", () => {
    expect(readDistEnv(good)).toMatchObject({ rank: 1, localRank: 1, worldSize: 4, localWorldSize: 2, masterAddr: "10.0.0.1", masterPort: 29500, storePort: 29500 });
    expect(readDistEnv({ ...good, SHARDTS_STORE_PORT: "29600" }).storePort).toBe(29600);
  });
  it("names what is missing or wrong", () => {
    expect(() => readDistEnv({ ...good, RANK: undefined })).toThrow(/RANK unset/);
    expect(() => readDistEnv({ ...good, RANK: "4" })).toThrow(/RANK=4 must be below WORLD_SIZE=4/);
    expect(() => readDistEnv({ ...good, SHARDTS_JOB_TOKEN: "short" })).toThrow(/SHARDTS_JOB_TOKEN/);
    expect(() => readDistEnv({ ...good, MASTER_PORT: "x" })).toThrow(/MASTER_PORT="x"/);
  });
});
