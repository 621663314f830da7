// Resuming training from a checkpoint continues the uninterrupted run: the small MoE LM trained 10
// steps straight, against 5 steps + save + a new Trainer + load + 5 more steps: the losses of steps
// 6-10 are the same float32 values on the same layout (parameters, BF16 moments, routing biases,
// step and data position all restored), and within 1e-5 on a different layout (the checkpoint
// resharded on load). Also: a training process SIGKILLed while saving every step in the
// background resumes from `latest` onto the same curve; and the training example's
// --save/--resume, onto another layout.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { AsyncSaver, load, save } from "../../stdlib/checkpoint/index.ts";
import { BatchLoader, type BatchLoaderState } from "../../stdlib/train/data.ts";
import type { Trainer } from "../../stdlib/train/trainer.ts";
import type { Layout } from "../../stdlib/nn/layout.ts";
import { main } from "../../stdlib/cli/main.ts";
import { layoutOf, makeLoader, makeTrainer, TOKENS, TRAIN_STEPS } from "./fixtures/checkpoint-train-config.ts";

const root = mkdtempSync(join(tmpdir(), "ckpt-resume-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const REPO = fileURLToPath(new URL("../..", import.meta.url));
const CHILD = fileURLToPath(new URL("./fixtures/checkpoint-train-child.ts", import.meta.url));

const meshOf = (l: Layout) => ({ axes: l.axes, sizes: l.axes.map((a) => l.mesh[a]!) });
const bits = (x: number) => Buffer.from(new Float32Array([x]).buffer).readUInt32LE(0);

function train(trainer: Trainer, loader: BatchLoader, steps: number): number[] {
  const out: number[] = [];
  for (let s = 0; s < steps; s++) {
    const b = loader.next();
    out.push(trainer.run(b.inputs, b.targets).loss);
  }
  return out;
}

/** A new trainer on `layout`, restored from the checkpoint in `dir`, and its data loader. */
async function resume(dir: string, layout: string): Promise<{ trainer: Trainer; loader: BatchLoader; step: number }> {
  const trainer = makeTrainer(layout);
  const ck = await load(dir, { mesh: meshOf(layoutOf(layout)), tensors: trainer.stateTypes() });
  trainer.importState({ step: ck.step, tensors: ck.tensors });
  return { trainer, loader: BatchLoader.fromState(TOKENS, ck.extras.data as unknown as BatchLoaderState), step: ck.step };
}

let reference: number[] = [];
beforeAll(() => {
  reference = train(makeTrainer("dp-ep"), makeLoader(), TRAIN_STEPS);
}, 60_000);

describe("resume", () => {
  it("5 steps, save, new Trainer, load, 5 steps: steps 6-10 equal the uninterrupted run bit for bit", async () => {
    const dir = join(root, "same");
    const trainer = makeTrainer("dp-ep"), loader = makeLoader();
    train(trainer, loader, 5);
    await save(dir, { ...trainer.exportState(), extras: { data: loader.state() as never } });
    const r = await resume(dir, "dp-ep"); // the first trainer is never used again
    expect(r.step).toBe(5);
    const rest = train(r.trainer, r.loader, 5);
    expect(rest.map(bits)).toEqual(reference.slice(5).map(bits));
    console.log(`resume on the same layout (dp-ep): steps 6-10 ${rest.map((x) => x.toFixed(6)).join(" ")} (identical bits to the uninterrupted run)`);
  });

  it("resumed onto different layouts: the checkpoint reshards on load and the losses agree within 1e-5", async () => {
    const dir = join(root, "other");
    const trainer = makeTrainer("dp-ep"), loader = makeLoader();
    train(trainer, loader, 5);
    await save(dir, { ...trainer.exportState(), extras: { data: loader.state() as never } });
    const lines: string[] = [];
    for (const layout of ["fsdp", "single", "fsdp3", "hsdp", "tp"]) {
      const r = await resume(dir, layout);
      const rest = train(r.trainer, r.loader, 5);
      const worst = Math.max(...rest.map((x, i) => Math.abs(x - reference[5 + i]!) / Math.abs(reference[5 + i]!)));
      expect(worst, layout).toBeLessThan(1e-5);
      lines.push(`${layoutOf(layout).toString().padEnd(40)} max rel diff of steps 6-10: ${worst.toExponential(1)}`);
    }
    console.log(`resume from dp-ep onto other layouts:\n  ${lines.join("\n  ")}`);
  }, 60_000);

  it("a process of a rank-local job imports only its own rank's pieces (the others stay holes), and a missing one is named", () => {
    const a = makeTrainer("dp-ep");
    const full = a.exportState();
    const own = Object.fromEntries(Object.entries(full.tensors).map(([n, t]) => [n, t.pieces.map((p, r) => (r === 2 ? p : undefined))]));
    const b = makeTrainer("dp-ep");
    b.importState({ step: 3, tensors: own }, { ranks: [2] });
    expect(b.step).toBe(3);
    for (const [n, t] of Object.entries(b.exportState().tensors)) {
      if (n.startsWith("bias.")) continue; // host copies, replicated: every rank's piece is made from them
      expect(Object.keys(t.pieces), n).toEqual(["2"]);
      expect(t.pieces[2], n).toBe(own[n]![2]);
    }
    expect(() => b.importState({ step: 3, tensors: own }, { ranks: [1] })).toThrow(/on rank 1 is missing/);
    expect(() => b.importState({ step: 3, tensors: own }, { ranks: [4] })).toThrow(/ranks \[4\] are not ranks of a mesh of 4/);
  });

  it("saving in the background while training goes on captures the state of the step it was called at", async () => {
    const dir = join(root, "async");
    const trainer = makeTrainer("dp-ep"), loader = makeLoader();
    const saver = new AsyncSaver(dir);
    train(trainer, loader, 5);
    await saver.saveAsync({ ...trainer.exportState(), extras: { data: loader.state() as never } });
    train(trainer, loader, 2); // steps 6 and 7 run while step 5 is written
    await saver.flush();
    const r = await resume(join(dir, "step-5"), "dp-ep");
    expect(train(r.trainer, r.loader, 5).map(bits)).toEqual(reference.slice(5).map(bits));
  });

  it("a training process SIGKILLed while saving every step resumes from latest onto the same curve", async () => {
    const dir = join(root, "killed");
    const printed = await new Promise<Map<number, number>>((resolve, reject) => {
      const child = spawn(process.execPath, ["--import", "tsx", CHILD, dir], { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] });
      const losses = new Map<number, number>();
      let out = "", err = "";
      child.stdout.on("data", (b: Buffer) => {
        out += b.toString();
        for (const m of out.matchAll(/LOSS (\d+) ([0-9a-f]+)\n/g)) losses.set(Number(m[1]), parseInt(m[2]!, 16));
        if (losses.has(6) && !child.killed) setTimeout(() => child.kill("SIGKILL"), 15); // during step 7 or its save
      });
      child.stderr.on("data", (b: Buffer) => (err += b.toString()));
      child.on("exit", (code, signal) => (signal === "SIGKILL" ? resolve(losses) : reject(new Error(`child exited ${code} before it was killed: ${err}`))));
    });
    // what the child printed before it died is the uninterrupted curve
    for (const [step, b] of printed) expect(b, `step ${step}`).toBe(bits(reference[step - 1]!));
    const r = await resume(dir, "dp-ep");
    expect(r.step).toBeGreaterThanOrEqual(4); // keep 2, one save may have been cut short
    expect(r.step).toBeLessThanOrEqual(Math.max(...printed.keys()));
    const rest = train(r.trainer, r.loader, TRAIN_STEPS - r.step);
    expect(rest.map(bits)).toEqual(reference.slice(r.step).map(bits));
    console.log(`killed after printing step ${Math.max(...printed.keys())}; latest was step ${r.step} (${readdirSync(dir).filter((n) => n.startsWith("step-")).join(", ")}); steps ${r.step + 1}-${TRAIN_STEPS} identical to the uninterrupted run`);
  }, 60_000);
});

describe("examples/train-moe-lm.ts --save / --resume", () => {
  async function cli(...argv: string[]) {
    const out: string[] = [], err: string[] = [];
    const code = await main(argv, (s) => out.push(s), (s) => err.push(s));
    return { code, out: out.join("\n"), err: err.join("\n") };
  }
  const stepLosses = (out: string) => new Map([...out.matchAll(/step (\d+)\/\d+\s+loss ([\d.]+)/g)].map((m) => [Number(m[1]), m[2]!]));

  it("saves every 2 steps; a run resumed from step 2 on another layout continues the same curve", async () => {
    const dir = join(root, "example");
    const base = ["run", "examples/train-moe-lm.ts", "--steps", "4", "--batch", "4", "--sample", "0"];
    const a = await cli(...base, "--save", dir, "--save-every", "2");
    expect(a.err).toBe("");
    expect(a.code).toBe(0);
    expect(a.out).toMatch(/checkpoint: step 4 saved to .*step-4/);
    expect(readdirSync(dir).sort()).toEqual(["latest", "step-2", "step-4"]);
    const b = await cli(...base, "--resume", join(dir, "step-2"), "--layout", "fsdp");
    expect(b.err).toBe("");
    expect(b.out).toMatch(/resumed from .*step-2 at step 2 \(saved on mesh dp=2, ep=2, loaded onto fsdp \(dp=4:fsdp\)\)/);
    const la = stepLosses(a.out), lb = stepLosses(b.out);
    expect(lb.get(3)).toBe(la.get(3));
    expect(lb.get(4)).toBe(la.get(4));
    expect(/held-out ([\d.]+)/.exec(b.out)![1]).toBe(/held-out ([\d.]+)/.exec(a.out)![1]);
    const c = await cli(...base, "--resume", dir);
    expect(c.out).toMatch(/resumed from .*step-4 at step 4 .*\n.*nothing to train/);
    const bad = await cli(...base, "--batch", "2", "--resume", dir);
    expect(bad.err).toMatch(/--resume: the checkpoint was trained with --batch 4/);
  }, 120_000);
});
