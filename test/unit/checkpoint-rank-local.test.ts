// Checkpoints saved and loaded by one process per rank (shardts launch on the CPU backend, the same
// multi-process path the GPUs take): each process holds and writes only its own pieces, the ranks
// meet at store barriers, rank 0 commits. Saved on dp=4, loaded on dp=1 x ep=2 and on one process,
// bit-identical, each rank reading only what overlaps its piece; a rank SIGKILLed mid-save leaves
// `latest` loadable and the next save cleans up; a rank whose background save fails makes every
// rank's next call fail, and the job saves again after it. Also the training example's --save under
// the launcher, and the barrier itself, in one process.
import { afterAll, describe, expect, it } from "vitest";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { launch } from "../../runtime/launch/launcher.ts";
import { main } from "../../stdlib/cli/main.ts";
import { startStore } from "../../runtime/launch/store.ts";
import { StoreClient } from "../../runtime/launch/rendezvous.ts";
import { StoreBarrier } from "../../runtime/launch/barrier.ts";
import { load, readMetadata } from "../../stdlib/checkpoint/index.ts";
import { regionOf } from "../../stdlib/checkpoint/geometry.ts";
import { ITEM_BYTES } from "../../stdlib/checkpoint/dtypes.ts";
import { numel } from "../../compiler/ir/types.ts";
import { RANK_MESHES, rankState, rankTypes, sameBits } from "./fixtures/checkpoint-rank-state.ts";

const WORKER = "test/unit/fixtures/checkpoint-rank-worker.ts";
const root = mkdtempSync(join(tmpdir(), "ckpt-rank-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

async function job(n: number, args: string[]) {
  const out: string[] = [], err: string[] = [];
  const res = await launch({ nprocPerNode: n, nnodes: 1, nodeRank: 0, masterAddr: "127.0.0.1", masterPort: 0, file: WORKER, args, graceMs: 2000 }, (l) => out.push(l), (l) => err.push(l));
  const reports = out.filter((l) => l.includes('{"rank"')).map((l) => JSON.parse(l.slice(l.indexOf("{"))) as Record<string, unknown> & { rank: number }).sort((a, b) => a.rank - b.rank);
  return { res, reports, err: err.join("\n") };
}

/** The whole checkpoint, loaded in this process onto one device, against the step's global values. */
async function expectStep(dir: string, step: number) {
  const ck = await load(dir, { mesh: RANK_MESHES.one!, tensors: rankTypes("one") });
  expect(ck.step).toBe(step);
  const want = rankState("one", step).state;
  for (const n of Object.keys(want.tensors)) expect(sameBits(ck.tensors[n]![0]!, want.tensors[n]!.pieces[0]!), n).toBe(true);
}

describe("rank-local checkpoints under shardts launch (CPU backend)", () => {
  const dir = join(root, "reshard");

  it("4 processes (dp=4) each write only their own pieces; rank 0 commits; async save too", async () => {
    const { res, reports, err } = await job(4, ["--dir", dir, "--mode", "save", "--steps", "1,2"]);
    expect(res.code, err).toBe(0);
    expect(reports.map((r) => r.saved)).toEqual([0, 1, 2, 3].map(() => ["step-1", "step-2"]));
    expect(readFileSync(join(dir, "latest"), "utf8")).toBe("step-2\n");
    expect(readdirSync(dir).sort()).toEqual(["latest", "step-1", "step-2"]);
    const { meta } = await readMetadata(dir);
    expect(meta.files.map((f) => f.file)).toEqual(["rank-0.safetensors", "rank-1.safetensors", "rank-2.safetensors", "rank-3.safetensors"]);
    // the replicated norm once (rank 0), sharded tensors one piece per rank
    expect(meta.tensors.norm!.pieces.map((p) => p.rank)).toEqual([0]);
    expect(meta.tensors["experts.w1"]!.pieces.map((p) => [p.rank, p.offset[0], p.shape[0]])).toEqual([[0, 0, 2], [1, 2, 2], [2, 4, 2], [3, 6, 2]]);
    expect(meta.tensors.emb!.pieces.map((p) => p.shape[0])).toEqual([11, 10, 10, 10]);
    await expectStep(dir, 2);
  }, 120_000);

  it("loads on 2 processes (dp=1 x ep=2) bit-identically, each reading only its overlap", async () => {
    const { res, reports, err } = await job(2, ["--dir", dir, "--mode", "load", "--mesh", "dp1ep2"]);
    expect(res.code, err).toBe(0);
    expect(reports.map((r) => [r.step, r.bad])).toEqual([[2, []], [2, []]]);
    const { meta, path } = await readMetadata(dir);
    // tensor bytes read: all reads less metadata.json and the rank files' headers
    const overhead = statSync(join(path, "metadata.json")).size + meta.files.reduce((a, f) => a + 8 + f.header_bytes, 0);
    const saved = Object.values(meta.tensors).reduce((a, t) => a + t.pieces.reduce((b, p) => b + p.byte_range[1] - p.byte_range[0], 0), 0);
    const types = rankTypes("dp1ep2");
    for (const r of reports) {
      const wanted = Object.values(types).reduce((a, t) => a + numel(regionOf(t, RANK_MESHES.dp1ep2!, r.rank).shape) * ITEM_BYTES[t.dtype], 0);
      const read = (r.bytesRead as number) - overhead;
      // each rank wants about half of the checkpoint (the replicated norm whole); whole 256-byte
      // checksum chunks are read around each overlap
      expect(read).toBeGreaterThanOrEqual(wanted);
      expect(read).toBeLessThan(0.75 * saved);
    }
  }, 120_000);

  it("loads on 1 process bit-identically", async () => {
    const { res, reports, err } = await job(1, ["--dir", dir, "--mode", "load", "--mesh", "one"]);
    expect(res.code, err).toBe(0);
    expect(reports.map((r) => [r.step, r.bad, r.files])).toEqual([[2, [], ["rank-0.safetensors", "rank-1.safetensors", "rank-2.safetensors", "rank-3.safetensors"]]]);
  }, 120_000);

  it("a rank SIGKILLed mid-save leaves `latest` at the previous checkpoint, loadable; the next save cleans up", async () => {
    const kdir = join(root, "kill");
    const { res, reports, err } = await job(4, ["--dir", kdir, "--mode", "kill", "--kill-rank", "2"]);
    expect(res.code).not.toBe(0);
    expect(res.failed?.rank).toBe(2);
    expect(res.failed?.signal).toBe("SIGKILL");
    expect(err).toMatch(/rank 2 was killed by SIGKILL/);
    expect(reports.some((r) => r.unexpected)).toBe(false);
    expect(reports.find((r) => r.killing)?.rank).toBe(2);
    expect(readFileSync(join(kdir, "latest"), "utf8")).toBe("step-1\n");
    expect(readdirSync(kdir).filter((n) => n.startsWith(".tmp-2-"))).toHaveLength(1);
    await expectStep(kdir, 1);
    const again = await job(4, ["--dir", kdir, "--mode", "save", "--steps", "2"]);
    expect(again.res.code, again.err).toBe(0);
    expect(readdirSync(kdir).sort()).toEqual(["latest", "step-1", "step-2"]);
    await expectStep(kdir, 2);
  }, 180_000);

  it("a background save failing on one rank fails every rank's next call; the next save succeeds", async () => {
    const bdir = join(root, "bad");
    const { res, reports, err } = await job(4, ["--dir", bdir, "--mode", "bad", "--bad-rank", "1"]);
    expect(res.code, err).toBe(0);
    expect(reports).toHaveLength(4);
    for (const r of reports) {
      expect(r.handleStep).toBe(2);
      expect(r.error).toMatch(/the save of step 2 failed while writing the rank files \(rank 1: .*tensor 'emb.m': element 0 \(1.000244140625\) is not exactly representable in bf16\)/);
      expect(r.third).toBe("step-3");
    }
    expect(readdirSync(bdir).filter((n) => n.startsWith("step-")).sort()).toEqual(["step-1", "step-3"]);
    await expectStep(bdir, 3);
  }, 120_000);
});

describe("examples/train-moe-lm.ts under shardts launch", () => {
  it("--save on 2 processes: each writes its own rank's file, rank 0 commits; the checkpoint resumes in one process", async () => {
    const edir = join(root, "example");
    const out: string[] = [], err: string[] = [];
    const res = await launch({ nprocPerNode: 2, nnodes: 1, nodeRank: 0, masterAddr: "127.0.0.1", masterPort: 0, file: "examples/train-moe-lm.ts", args: ["--layout", "ep", "--mesh", "ep=2", "--steps", "2", "--batch", "4", "--no-eval", "--save", edir], graceMs: 2000 }, (l) => out.push(l), (l) => err.push(l));
    expect(res.code, err.join("\n")).toBe(0);
    expect(out.filter((l) => /checkpoint: step 2 saved to .*step-2/.test(l)).map((l) => l.slice(0, 8)).sort()).toEqual(["[rank 0]", "[rank 1]"]);
    const { meta } = await readMetadata(edir);
    expect(meta.mesh).toEqual({ axes: ["ep"], sizes: [2] });
    expect(Object.values(meta.tensors).flatMap((t) => t.pieces.map((p) => p.rank)).filter((r) => r === 1).length).toBeGreaterThan(0);
    const r = await main(["run", "examples/train-moe-lm.ts", "--steps", "3", "--batch", "4", "--no-eval", "--layout", "single", "--resume", edir]);
    expect(r).toBe(0);
  }, 120_000);
});

describe("store barrier", () => {
  it("meets every rank, hands out rank 0's value and every failure, and deletes passed barriers' keys", async () => {
    const token = "b".repeat(24);
    const store = await startStore(token);
    try {
      const clients = await Promise.all([0, 1, 2].map(() => StoreClient.connect("127.0.0.1", store.port, token, 5000)));
      const bars = clients.map((c, r) => new StoreBarrier(c, r, 3, "t"));
      const first = await Promise.all(bars.map((b, r) => b.wait({ value: `v${r}`, failure: r === 2 ? "disk full" : undefined })));
      for (const f of first) expect(f).toEqual({ failures: [{ rank: 2, message: "disk full" }], value: "v0" });
      const second = await Promise.all(bars.map((b) => b.wait()));
      for (const s of second) expect(s).toEqual({ failures: [], value: undefined });
      expect(await clients[0]!.list("t/1/")).toEqual([]);
      expect((await clients[0]!.list("t/2/")).length).toBeGreaterThan(0);
      for (const c of clients) c.close();
    } finally {
      await store.close();
    }
  });

  it("names the rank that never arrives when the wait times out", async () => {
    const token = "c".repeat(24);
    const store = await startStore(token);
    try {
      const clients = await Promise.all([0, 1].map(() => StoreClient.connect("127.0.0.1", store.port, token, 400)));
      const b = new StoreBarrier(clients[0]!, 0, 3, "t");
      await expect(b.wait()).rejects.toThrow(/barrier 't' #1: rank\(s\) 1, 2 had not arrived/);
      for (const c of clients) c.close();
    } finally {
      await store.close();
    }
  });
});
