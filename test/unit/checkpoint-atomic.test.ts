// Checkpoints appear atomically: a process SIGKILLed at random points of a save never leaves an
// unloadable `latest` (it loads as the previous or the new checkpoint, bit for bit); retention,
// stale temporaries, a second save of the same step, the per-rank protocol (beginSave / saveRank /
// commit), and the asynchronous saver (copy first, write in the background, errors reported next).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { MeshSpec, TensorType } from "../../compiler/ir/types.ts";
import type { LocalData } from "../../compiler/ir/local.ts";
import { AsyncSaver, assemble, beginSave, CheckpointError, commit, flush, load, save, saveAsync, saveRank, type CheckpointState } from "../../stdlib/checkpoint/index.ts";
import { stateOf } from "./fixtures/checkpoint-state.ts";
import { KILL_MESH, killState, killTypes } from "./fixtures/checkpoint-kill-state.ts";
import { mulberry32 } from "../helpers/prng.ts";

const root = mkdtempSync(join(tmpdir(), "ckpt-atomic-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const CHILD = fileURLToPath(new URL("./fixtures/checkpoint-kill-child.ts", import.meta.url));
const REPO = fileURLToPath(new URL("../..", import.meta.url));

const bytesOf = (d: LocalData) => Buffer.from(d.buffer, d.byteOffset, d.byteLength);

/** SHA-256 over every tensor's global bytes, in name order. */
function digestGlobals(globals: Record<string, LocalData>): string {
  const h = createHash("sha256");
  for (const n of Object.keys(globals).sort()) h.update(n).update(bytesOf(globals[n]!));
  return h.digest("hex");
}
async function digestLoaded(dir: string, mesh: MeshSpec, types: Record<string, TensorType>): Promise<{ step: number; digest: string; path: string }> {
  const got = await load(dir, { mesh, tensors: types });
  const globals = Object.fromEntries(Object.entries(types).map(([n, t]) => [n, assemble(mesh, t, got.tensors[n]!.map((p) => p!))]));
  return { step: got.step, digest: digestGlobals(globals), path: got.path };
}

function runChild(dir: string, killAfterMs: number | undefined): Promise<{ started: boolean; done: number | undefined; signal: NodeJS.Signals | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", CHILD, dir], { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "", started = false, timer: NodeJS.Timeout | undefined;
    child.stdout.on("data", (b: Buffer) => {
      out += b.toString();
      if (!started && out.includes("START\n")) {
        started = true;
        if (killAfterMs !== undefined) timer = setTimeout(() => child.kill("SIGKILL"), killAfterMs);
      }
    });
    child.stderr.on("data", (b: Buffer) => (err += b.toString()));
    child.on("error", reject);
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      if (code !== 0 && signal === null) return reject(new Error(`child exited ${code}: ${err}`));
      const m = /DONE ([\d.]+)/.exec(out);
      resolve({ started, done: m ? Number(m[1]) : undefined, signal });
    });
  });
}

/** What a killed save left behind tells how far it got. */
function phaseOf(dir: string): string {
  const names = readdirSync(dir);
  const latest = readFileSync(join(dir, "latest"), "utf8").trim();
  const tmp = names.find((n) => n.startsWith(".tmp-") && !n.startsWith(".tmp-del-"));
  if (latest === "step-1") {
    if (names.includes("step-2")) return "renamed, latest not yet updated";
    if (!tmp) return "before the temporary directory";
    const inside = readdirSync(join(dir, tmp));
    if (inside.includes("metadata.json")) return "metadata written";
    const done = inside.filter((n) => n.endsWith(".manifest.json")).length;
    return done === 0 ? "writing rank files" : "rank files partly done";
  }
  if (names.includes("step-1") || names.some((n) => n.startsWith(".tmp-del-"))) return "retention";
  return names.includes("latest.tmp") ? "latest replaced" : "complete";
}

describe("kill tests: SIGKILL at random points of a save", () => {
  const REPS = 50;
  const types = killTypes();
  const template = join(root, "kill-template");
  let prevDigest = "", newDigest = "";

  beforeAll(async () => {
    const one = killState(1, types);
    await save(template, one.state, { keep: 1, chunkBytes: 64 * 1024 });
    prevDigest = digestGlobals(one.globals);
    newDigest = digestGlobals(killState(2, types).globals);
  });

  it(`${REPS} kills: latest always loads, as the previous or the new checkpoint`, async () => {
    // how long a save takes in the child (its own clock, from START to DONE), two at a time as below
    const cal = await Promise.all([0, 1].map(async (i) => {
      const dir = join(root, `cal-${i}`);
      cpSync(template, dir, { recursive: true });
      const r = await runChild(dir, undefined);
      expect((await digestLoaded(dir, KILL_MESH, types)).digest).toBe(newDigest);
      expect(readdirSync(dir).sort()).toEqual(["latest", "step-2"]); // retention kept 1; nothing stale
      return r.done!;
    }));
    const saveMs = Math.max(...cal);
    // the window the "anywhere" kills are drawn from; it shrinks when such a save finishes first
    let anywhereMs = saveMs * 1.15;
    const rnd = mulberry32(2024);
    const outcomes = { previous: 0, next: 0, killedMidSave: 0, finishedFirst: 0 };
    const delays: number[] = [];
    const phases: Record<string, number> = {};
    let rep = 0;
    // until REPS kills have landed inside a save (at most 4 * REPS attempts)
    const lane = async () => {
      while (outcomes.killedMidSave < REPS && rep < 4 * REPS) {
        const i = rep++;
        const dir = join(root, `kill-${i}`);
        cpSync(template, dir, { recursive: true });
        // even repetitions: anywhere in the save; odd ones: its last quarter, where the commit happens
        const delay = i % 2 === 0 ? rnd() * anywhereMs : saveMs * (0.75 + rnd() * 0.35);
        delays.push(delay);
        const r = await runChild(dir, delay);
        expect(r.started).toBe(true);
        if (r.done !== undefined) (outcomes.finishedFirst++, i % 2 === 0 && (anywhereMs = Math.max(5, anywhereMs * 0.85)));
        else outcomes.killedMidSave++;
        phases[phaseOf(dir)] = (phases[phaseOf(dir)] ?? 0) + 1;
        const got = await digestLoaded(dir, KILL_MESH, types);
        if (got.step === 1) (expect(got.digest, `kill ${i} after ${delay.toFixed(0)} ms`).toBe(prevDigest), outcomes.previous++);
        else (expect(got.step).toBe(2), expect(got.digest, `kill ${i} after ${delay.toFixed(0)} ms`).toBe(newDigest), outcomes.next++);
        // every 6th: the next save clears what the killed one left and commits normally
        if (i % 6 === 0) {
          const three = stateOf(KILL_MESH, 3, { a: types["layer00.w"]! });
          await save(dir, three.state, { keep: 1 });
          expect(readdirSync(dir).filter((n) => n.startsWith(".tmp-") || n === "latest.tmp")).toEqual([]);
          expect(readdirSync(dir).sort()).toEqual(["latest", "step-3"]);
        }
        rmSync(dir, { recursive: true, force: true });
      }
    };
    await Promise.all([lane(), lane()]);
    console.log(
      `kill tests: ${rep} SIGKILLs (until ${REPS} landed inside a save) over 0..${(saveMs * 1.15).toFixed(0)} ms of a ~${saveMs.toFixed(0)} ms save (${(Object.values(types).length)} tensors, 4 rank files, ~21 MB): ` +
        `${outcomes.killedMidSave} killed mid-save, ${outcomes.finishedFirst} finished first; latest loaded as the previous checkpoint ${outcomes.previous} times, as the new one ${outcomes.next} times\n` +
        `  where the kills landed (from what they left on disk): ${Object.entries(phases).map(([k, v]) => `${k} ${v}`).join(", ")}`,
    );
    expect(outcomes.previous + outcomes.next).toBe(rep);
    expect(outcomes.killedMidSave).toBeGreaterThanOrEqual(REPS);
    expect(outcomes.previous).toBeGreaterThan(0);
    expect(outcomes.next).toBeGreaterThan(0);
  }, 120_000);
});

// ---------------------------------------------------------------------------------------------

const MESH: MeshSpec = { axes: ["dp", "ep"], sizes: [2, 2] };
const TYPES: Record<string, TensorType> = {
  w: { dims: [{ name: "experts", size: 4 }, { name: "model", size: 6 }], dtype: "f32", placements: ["R", "S(experts)"] },
  m: { dims: [{ name: "experts", size: 4 }, { name: "model", size: 6 }], dtype: "bf16", placements: ["S(model)", "S(experts)"] },
  bias: { dims: [{ name: "experts", size: 4 }], dtype: "f32", placements: ["R", "R"] },
};
const stepState = (step: number) => stateOf(MESH, step, TYPES);

describe("commit protocol", () => {
  it("keeps the newest K and moves each old one aside before deleting it", async () => {
    const dir = join(root, "retain");
    for (let s = 1; s <= 5; s++) {
      const r = await save(dir, stepState(s).state, { keep: 2 });
      expect(r.name).toBe(`step-${s}`);
    }
    expect(readdirSync(dir).sort()).toEqual(["latest", "step-4", "step-5"]);
    expect(readFileSync(join(dir, "latest"), "utf8")).toBe("step-5\n");
    expect((await digestLoaded(dir, MESH, TYPES)).digest).toBe(digestGlobals(stepState(5).globals));
  });

  it("clears stale temporaries of a killed save on the next save", async () => {
    const dir = join(root, "stale");
    await save(dir, stepState(1).state);
    mkdirSync(join(dir, ".tmp-2-deadbeef"));
    writeFileSync(join(dir, ".tmp-2-deadbeef", "rank-0.safetensors"), "partial");
    writeFileSync(join(dir, "latest.tmp"), "step-");
    expect((await digestLoaded(dir, MESH, TYPES)).step).toBe(1); // the leftovers do not disturb loading
    await save(dir, stepState(2).state);
    expect(readdirSync(dir).sort()).toEqual(["latest", "step-1", "step-2"]);
  });

  it("a second save of the same step gets its own directory; latest moves to it", async () => {
    const dir = join(root, "same-step");
    await save(dir, stepState(3).state);
    const again = stateOf(MESH, 3, TYPES, 99);
    const r = await save(dir, again.state);
    expect(r.name).toBe("step-3.1");
    expect(readFileSync(join(dir, "latest"), "utf8")).toBe("step-3.1\n");
    expect((await digestLoaded(dir, MESH, TYPES)).digest).toBe(digestGlobals(again.globals));
    expect((await digestLoaded(join(dir, "step-3"), MESH, TYPES)).digest).toBe(digestGlobals(stepState(3).globals));
  });

  it("runs as separate per-rank calls: each rank holds only its own pieces; commit waits for every rank", async () => {
    const dir = join(root, "per-rank");
    const { state, globals } = stepState(7);
    const tmp = await beginSave(dir, 7);
    const committed = commit(dir, tmp, state, { waitMs: 10_000 }); // rank 0 starts waiting at once
    const only = (r: number): CheckpointState => ({ ...state, tensors: Object.fromEntries(Object.entries(state.tensors).map(([n, t]) => [n, { type: t.type, pieces: t.pieces.map((p, i) => (i === r ? p : undefined)) }])) });
    for (const r of [3, 1, 0, 2]) {
      await new Promise((res) => setTimeout(res, 20));
      expect(existsSync(join(dir, "latest"))).toBe(false);
      await saveRank(tmp, r, only(r));
    }
    const res = await committed;
    expect(res.name).toBe("step-7");
    expect((await digestLoaded(dir, MESH, TYPES)).digest).toBe(digestGlobals(globals));
    expect(readdirSync(res.path).sort()).toEqual(["metadata.json", "rank-0.safetensors", "rank-1.safetensors", "rank-2.safetensors", "rank-3.safetensors"]);
  });

  it("commit gives up on a rank that never writes, naming its file; nothing is committed", async () => {
    const dir = join(root, "missing-rank");
    const { state } = stepState(1);
    const tmp = await beginSave(dir, 1);
    for (const r of [0, 1, 3]) await saveRank(tmp, r, state);
    await expect(commit(dir, tmp, state, { waitMs: 200 })).rejects.toThrow(/rank-2\.manifest\.json: rank 2 did not finish/);
    expect(existsSync(join(dir, "latest"))).toBe(false);
    await expect(load(dir, { mesh: MESH, tensors: TYPES })).rejects.toBeInstanceOf(CheckpointError);
  });

  it("refuses to save values a dtype cannot hold, or a Partial, naming the tensor", async () => {
    const { state } = stepState(1);
    const bad = { ...state, tensors: { ...state.tensors, m: { ...state.tensors.m!, pieces: state.tensors.m!.pieces.map((p) => ({ ...p!, data: Float32Array.from(p!.data, (x) => x + 1e-3) })) } } };
    await expect(save(join(root, "bad1"), bad)).rejects.toThrow(/tensor 'm': element 0 .* is not exactly representable in bf16/);
    const partial = { ...state, tensors: { p: { type: { ...TYPES.w!, placements: ["P(sum)", "R"] as TensorType["placements"] }, pieces: state.tensors.w!.pieces } } };
    await expect(save(join(root, "bad2"), partial)).rejects.toThrow(/tensor 'p': cannot be saved: the tensor is P\(sum\)/);
  });
});

describe("asynchronous save", () => {
  it("copies the pieces before returning: changing them afterwards does not change the checkpoint", async () => {
    const dir = join(root, "async-copy");
    const saver = new AsyncSaver(dir, { keep: 3 });
    const { state, globals } = stepState(1);
    const t0 = performance.now();
    const pending = saver.saveAsync(state);
    const syncMs = performance.now() - t0;
    for (const t of Object.values(state.tensors)) for (const p of t.pieces) p!.data.fill(0); // the "next step" overwrites them
    const h = await pending;
    expect(h.step).toBe(1);
    const r = await h.done;
    expect(r.name).toBe("step-1");
    expect((await digestLoaded(dir, MESH, TYPES)).digest).toBe(digestGlobals(globals));
    expect(syncMs).toBeLessThan(1000);
  });

  it("returns before the files are written, and the next save waits for the previous", async () => {
    const dir = join(root, "async-order");
    const saver = new AsyncSaver(dir);
    const big = killState(1, killTypes(16));
    const t0 = performance.now();
    const pending = saver.saveAsync(big.state); // the copy happens here, before it returns
    const copyMs = performance.now() - t0;
    const first = await pending;
    expect(existsSync(join(dir, "latest"))).toBe(false); // still writing in the background
    let firstDone = false, doneMs = 0;
    first.done.then(() => ((firstDone = true), (doneMs = performance.now() - t0)));
    const second = await saver.saveAsync(killState(2, killTypes(16)).state);
    expect(firstDone).toBe(true);
    expect((await second.done).name).toBe("step-2");
    expect(await saver.flush()).toMatchObject({ name: "step-2" });
    expect(readdirSync(dir).sort()).toEqual(["latest", "step-1", "step-2"]);
    console.log(`async save of ~5 MB on 4 ranks: ${copyMs.toFixed(1)} ms in the caller (the copy), committed ${doneMs.toFixed(1)} ms after the call`);
  });

  it("a background failure surfaces at the next saveAsync, naming the path, once", async () => {
    const blocker = join(root, "blocker");
    writeFileSync(blocker, "a file where a directory should be");
    const dir = join(blocker, "ckpt");
    const saver = new AsyncSaver(dir);
    const h = await saver.saveAsync(stepState(1).state); // accepted: the failure happens in the background
    await expect(h.done).rejects.toBeInstanceOf(CheckpointError);
    const next = saver.saveAsync(stepState(2).state);
    await expect(next).rejects.toThrow(/checkpoint file .*blocker\/ckpt: cannot create the checkpoint directory/);
    await expect(saver.flush()).resolves.toBeUndefined(); // reported once
  });

  it("and at flush(), through the per-directory functions", async () => {
    const blocker = join(root, "blocker2");
    writeFileSync(blocker, "x");
    const dir = join(blocker, "ckpt");
    await saveAsync(dir, stepState(1).state);
    await expect(flush(dir)).rejects.toThrow(/blocker2\/ckpt: cannot create the checkpoint directory/);
    await expect(flush()).resolves.toBeUndefined();
    const ok = join(root, "async-fn");
    await saveAsync(ok, stepState(4).state, { keep: 1 });
    await flush();
    expect(readFileSync(join(ok, "latest"), "utf8")).toBe("step-4\n");
  });
});
