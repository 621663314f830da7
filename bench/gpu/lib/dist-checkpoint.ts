// One rank of the checkpoint benchmark, under `shardts launch --nproc-per-node N ... --backend cuda`
// (bench/gpu/multi-gpu.sh, stage "checkpoints"). Each check is caught and reported on its own:
//   train    the MoE LM (--layout, default ep=N) trains --steps steps rank-local on N GPUs
//   t-save   its state saved by every rank (RankSaver: own pieces, store barriers, rank 0 commits)
//   t-load   loaded back by every rank (its own piece only) into a new Trainer: bits equal, and the
//            next step's loss of the resumed trainer against the original's
//   b-save   a bulk state (--bulk-mib MiB per rank on the GPU) copied device -> pinned host and
//            written in the background: copy GB/s, save time and GB/s per rank and in total
//   overlap  step time of the trainer with that bulk save in flight vs without (the async overhead)
//   b-load   the bulk checkpoint loaded by each rank onto its own rows, and resharded onto columns
//            (every rank reads a column block of every file): time, GB/s, bytes read, bits checked
// Every rank writes <out>/rank-<r>.json; rank 0 prints each check and a summary table last, and
// writes <out>/summary.txt. Checkpoints go to --ckpt-dir (default /tmp/shardts-ckpt-bench), which
// the stage's Python reader (bench/peers/read_safetensors.py) reads afterwards.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { defineMain } from "../../../stdlib/model.ts";
import { cudaExecutor, resolveBackend, type Backend } from "../../../stdlib/run.ts";
import { readDistEnv } from "../../../runtime/launch/env.ts";
import { StoreBarrier } from "../../../runtime/launch/barrier.ts";
import { layoutByName } from "../../../stdlib/nn/layout.ts";
import { Trainer, ADAMW_DEFAULTS, BatchLoader, ByteTokenizer, loadTrainingText } from "../../../stdlib/train/index.ts";
import type { LmConfig } from "../../../stdlib/nn/transformer.ts";
import { RankSaver, describe as describeState, load, loadRank, newReadStats, type CheckpointState } from "../../../stdlib/checkpoint/index.ts";
import { PinnedSnapshot } from "../../../stdlib/checkpoint/device-snapshot.ts";
import { regionOf } from "../../../stdlib/checkpoint/geometry.ts";
import { bulkMesh, bulkTypes, firstMismatch, hostBulk, uploadBulk } from "./ckpt-bulk.ts";
import { median } from "./median.ts";

const MODEL: LmConfig = { vocab: 256, model: 64, heads: 4, layers: 4, seq: 64, ffn: 256, moe: { experts: 8, topK: 2, ffn: 128, shared: 1, score: "softmax", auxLoss: 0 } };
const gbs = (bytes: number, ms: number) => bytes / 1e9 / (ms / 1000);
const sameBits = (a: { data: ArrayBufferView }, b: { data: ArrayBufferView }) =>
  Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength).equals(Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength));

interface Check { name: string; ok: boolean; detail: string; numbers?: Record<string, number> }

export default defineMain(async ({ args }) => {
  const opt = (n: string, d: string) => (args.includes(n) ? args[args.indexOf(n) + 1]! : d);
  const env = readDistEnv(), rank = env.rank, W = env.worldSize;
  // --results, not --out: the bundled CLI (shardts-cli.ts) takes the first --out as run.sh's
  const out = opt("--results", ".gpu/out/ckpt"), root = opt("--ckpt-dir", "/tmp/shardts-ckpt-bench");
  // --backend cpu runs the same flow where there is no GPU (each process simulates every rank of
  // the trainer; the bulk pieces are host arrays saved through the host-copy path)
  const gpu = resolveBackend(opt("--backend", "cuda") as Backend) === "cuda";
  const steps = Number(opt("--steps", "8")), mib = Number(opt("--bulk-mib", "1024")), layoutName = opt("--layout", "ep");
  mkdirSync(out, { recursive: true });
  // every rank prints (the CLI silences `log` on ranks other than 0)
  const say = (s: string) => console.error(`ckpt: ${s}`);
  const checks: Check[] = [];
  const check = async (name: string, fn: () => Promise<{ detail: string; numbers?: Record<string, number>; ok?: boolean }>) => {
    try {
      const r = await fn();
      checks.push({ name, ok: r.ok ?? true, detail: r.detail, numbers: r.numbers });
    } catch (e) {
      checks.push({ name, ok: false, detail: `${(e as Error).constructor.name}: ${(e as Error).message}` });
    }
    const c = checks[checks.length - 1]!;
    say(`${c.ok ? "ok  " : "FAIL"} ${name}: ${c.detail}`);
  };
  // separate barriers for the benchmark's own meetings and each saver: a rank whose check failed
  // early cannot be mistaken for one arriving at a save's barrier; each wait gives up after 3 min
  const bench = await StoreBarrier.connect("ckpt-bench", env, 180_000);
  const groups = [await StoreBarrier.connect("ckpt-train", env, 180_000), await StoreBarrier.connect("ckpt-bulk", env, 180_000)] as const;
  const meet = () => bench.wait();
  if (rank === 0) rmSync(root, { recursive: true, force: true });
  await meet();

  const addon = gpu ? cudaExecutor().addon : undefined;
  const layout = layoutByName(layoutName, Object.fromEntries(layoutByName(layoutName).axes.map((a, i) => [a, i === layoutByName(layoutName).axes.length - 1 ? W : 1])));
  const tokens = new ByteTokenizer().encode(loadTrainingText());
  const mk = () => new Trainer({ model: MODEL, layout, batch: 16, seed: 1, backend: gpu ? "cuda" : "cpu", biasRate: 0.01, opt: { ...ADAMW_DEFAULTS, lr: 3e-3 }, schedule: { peak: 3e-3, warmup: 2, total: 1000, minRatio: 0.1 } });
  let trainer: Trainer | undefined;
  const loader = new BatchLoader(tokens, { batch: 16, seq: MODEL.seq, seed: 1 });
  const stepTimes: number[] = [];
  const step = (t: Trainer) => {
    const b = loader.next(), t0 = performance.now();
    const m = t.run(b.inputs, b.targets);
    return { ms: performance.now() - t0, loss: m.loss };
  };

  await check("train", async () => {
    trainer = mk();
    const losses: number[] = [];
    for (let s = 0; s < steps; s++) {
      const r = step(trainer);
      losses.push(r.loss);
      if (s >= 2) stepTimes.push(r.ms);
    }
    return { detail: `${layout} ${steps} steps on ${W} ${gpu ? "GPUs" : "processes (CPU backend)"}, loss ${losses[0]!.toFixed(4)} -> ${losses[losses.length - 1]!.toFixed(4)}, median step ${median(stepTimes).toFixed(1)} ms (after 2 warm-up)`, numbers: { stepMs: median(stepTimes) } };
  });

  const tdir = join(root, "train");
  const tsaver = new RankSaver(tdir, groups[0], { keep: 2 });
  await check("t-save", async () => {
    const t0 = performance.now();
    const res = await tsaver.save({ ...trainer!.exportState(), extras: { data: loader.state() as never } });
    const ms = performance.now() - t0;
    return { detail: `step ${res.step} -> ${res.path}: ${(res.bytes / 1e6).toFixed(2)} MB over ${W} ranks in ${ms.toFixed(1)} ms`, numbers: { ms, totalBytes: res.bytes } };
  });

  await check("t-load", async () => {
    const t = trainer!, fresh = mk(), mesh = { axes: layout.axes, sizes: layout.axes.map((a) => layout.mesh[a]!) };
    const stats = newReadStats(), t0 = performance.now();
    // on GPUs a process holds only its own rank's pieces; the CPU backend simulates every rank
    const ck = gpu ? await loadRank(tdir, rank, { mesh, tensors: fresh.stateTypes() }, { stats }) : await load(tdir, { mesh, tensors: fresh.stateTypes() }, { stats });
    const ms = performance.now() - t0;
    const live = t.exportState().tensors;
    const mine = (n: string) => { const p = ck.tensors[n]!; return Array.isArray(p) ? p[rank]! : p; };
    const bad = Object.keys(ck.tensors).filter((n) => !sameBits(mine(n), live[n]!.pieces[rank]!));
    if (gpu) fresh.importState({ step: ck.step, tensors: Object.fromEntries(Object.keys(ck.tensors).map((n) => [n, Array.from({ length: W }, (_, q) => (q === rank ? mine(n) : undefined))])) }, { ranks: [rank] });
    else fresh.importState({ step: ck.step, tensors: ck.tensors as Record<string, never[]> });
    const snap = loader.state();
    const a = step(t).loss;
    const l2 = BatchLoader.fromState(tokens, snap).next();
    const b = fresh.run(l2.inputs, l2.targets).loss;
    const rel = Math.abs(a - b) / Math.abs(a);
    return { ok: bad.length === 0 && rel < 1e-5, detail: `rank ${rank} read ${(stats.bytesRead / 1e6).toFixed(2)} MB in ${ms.toFixed(1)} ms; ${Object.keys(ck.tensors).length - bad.length}/${Object.keys(ck.tensors).length} tensors bit-identical${bad.length ? ` (differ: ${bad.slice(0, 4).join(", ")})` : ""}; next-step loss original ${a.toPrecision(8)} vs resumed ${b.toPrecision(8)} (rel ${rel.toExponential(2)}, want < 1e-5)`, numbers: { ms, bytesRead: stats.bytesRead, lossRel: rel } };
  });

  // the bulk state on the GPU
  const types = bulkTypes(W, mib), bmesh = bulkMesh(W);
  const info = describeState({ mesh: bmesh, step: 1, tensors: Object.fromEntries(Object.entries(types).map(([n, type]) => [n, { type, pieces: [] }])) });
  const regions = Object.fromEntries(Object.entries(types).map(([n, t]) => [n, regionOf(t, bmesh, rank)]));
  const device = addon ? uploadBulk(addon, types, regions) : undefined;
  const host: CheckpointState = { ...info, tensors: addon ? {} : hostBulk(types, regions, rank, W) };
  const bdir = join(root, "bulk");
  const bsaver = new RankSaver(bdir, groups[1], { keep: 1 });
  const pinned = addon ? new PinnedSnapshot(addon) : undefined;
  const saveBulk = async (stepNo: number, withSteps: boolean) => {
    const t0 = performance.now();
    const handle = pinned
      ? await bsaver.saveAsync({ info: { ...info, step: stepNo }, snapshot: pinned.take({ ...info, step: stepNo }, rank, device!) })
      : await bsaver.saveAsync({ ...host, step: stepNo });
    const tCopy = performance.now() - t0;
    const copy = pinned?.lastCopy ?? { ms: tCopy, bytes: Object.values(regions).reduce((a, r, i) => a + r.shape[0]! * r.shape[1]! * (Object.values(types)[i]!.dtype === "bf16" ? 2 : 4), 0) };
    let settled = false;
    handle.done.then(() => (settled = true), () => (settled = true));
    const overlapped: number[] = [];
    // steps while the save is in flight (every rank runs the same count: collectives must match)
    if (withSteps) for (let i = 0; i < 4; i++) (overlapped.push(step(trainer!).ms), await new Promise((r) => setImmediate(r)));
    const inFlightAfter = !settled;
    const res = await handle.done;
    return { res, copyMs: tCopy, copyBytes: copy.bytes, pinnedMs: copy.ms, totalMs: performance.now() - t0, overlapped, inFlightAfter };
  };

  await check("b-save", async () => {
    await meet();
    const r = await saveBulk(1, false);
    const mine = r.copyBytes;
    return { detail: `rank ${rank}: ${(mine / 2 ** 20).toFixed(0)} MiB ${pinned ? "device -> pinned" : "host copy"} in ${r.pinnedMs.toFixed(1)} ms (${gbs(mine, r.pinnedMs).toFixed(2)} GB/s); saveAsync returned after ${r.copyMs.toFixed(1)} ms; committed after ${r.totalMs.toFixed(0)} ms: ${gbs(mine, r.totalMs).toFixed(2)} GB/s this rank, checkpoint ${(r.res.bytes / 1e9).toFixed(3)} GB`, numbers: { bytes: mine, pinnedMs: r.pinnedMs, returnMs: r.copyMs, saveMs: r.totalMs, totalBytes: r.res.bytes } };
  });

  await check("overlap", async () => {
    await meet();
    const base: number[] = [];
    for (let i = 0; i < 4; i++) base.push(step(trainer!).ms);
    await meet();
    const r = await saveBulk(2, true);
    const b = median(base), w = median(r.overlapped);
    return { detail: `median step ${b.toFixed(1)} ms without a save, ${w.toFixed(1)} ms with the bulk save in flight (${r.overlapped.map((x) => x.toFixed(0)).join(", ")} ms; save ${r.inFlightAfter ? "still in flight after them" : "finished within them"}): overhead ${(((w - b) / b) * 100).toFixed(1)}%; that save took ${r.totalMs.toFixed(0)} ms`, numbers: { baseMs: b, withSaveMs: w, overheadPct: ((w - b) / b) * 100, saveMs: r.totalMs } };
  });

  for (const [name, placement] of [["b-load", "S(rows)"], ["b-reshard", "S(cols)"]] as const) {
    await check(name, async () => {
      await meet();
      const want = bulkTypes(W, mib, placement);
      const stats = newReadStats(), t0 = performance.now();
      const ck = await loadRank(bdir, rank, { mesh: bmesh, tensors: want }, { stats });
      const ms = performance.now() - t0;
      let wanted = 0;
      const bad: string[] = [];
      Object.entries(want).forEach(([n, type], t) => {
        const region = regionOf(type, bmesh, rank);
        wanted += ck.tensors[n]!.data.length * (type.dtype === "bf16" ? 2 : 4);
        const at = firstMismatch(type, t, region, ck.tensors[n]!);
        if (at >= 0) bad.push(`${n}@${at}`);
      });
      return { ok: bad.length === 0, detail: `rank ${rank} (${placement}): ${(wanted / 2 ** 20).toFixed(0)} MiB wanted, ${(stats.bytesRead / 2 ** 20).toFixed(0)} MiB read in ${stats.reads} reads, ${ms.toFixed(0)} ms = ${gbs(stats.bytesRead, ms).toFixed(2)} GB/s read (${gbs(wanted, ms).toFixed(2)} GB/s of wanted data; page cache warm: just written); bits ${bad.length ? `DIFFER: ${bad.join(", ")}` : "identical"}`, numbers: { ms, bytesRead: stats.bytesRead, wanted } };
    });
  }
  pinned?.dispose();
  for (const d of Object.values(device ?? {})) addon!.memFree(d.ptr);

  writeFileSync(join(out, `rank-${rank}.json`), JSON.stringify({ rank, world: W, layout: layout.toString(), mibPerRank: mib, checks }, null, 1) + "\n");
  await meet();
  if (rank === 0) {
    const all = Array.from({ length: W }, (_, r) => JSON.parse(readFileSync(join(out, `rank-${r}.json`), "utf8")) as { checks: Check[] });
    const lines = [`checkpoint benchmark (${gpu ? "GPUs" : "CPU backend, host copies"}): ${W} ranks, layout ${layout}, bulk ${mib} MiB per rank, checkpoints in ${root}`];
    const names = [...new Set(all.flatMap((a) => a.checks.map((c) => c.name)))];
    lines.push(`${"check".padEnd(10)}${"ranks ok".padStart(9)}  per rank`);
    for (const n of names) {
      const cs = all.map((a) => a.checks.find((c) => c.name === n));
      const num = (k: string) => cs.map((c) => c?.numbers?.[k]).filter((x): x is number => x !== undefined);
      let per = "";
      if (n === "b-save") {
        const ms = num("saveMs"), by = num("bytes");
        per = `save ${ms.map((x) => x.toFixed(0)).join("/")} ms; per rank ${by.map((b, i) => gbs(b, ms[i]!).toFixed(2)).join("/")} GB/s; total ${gbs(by.reduce((a, b) => a + b, 0), Math.max(...ms)).toFixed(2)} GB/s; device->pinned ${num("pinnedMs").map((x, i) => gbs(by[i]!, x).toFixed(1)).join("/")} GB/s`;
      } else if (n === "b-load" || n === "b-reshard") {
        const ms = num("ms"), by = num("bytesRead");
        per = `load ${ms.map((x) => x.toFixed(0)).join("/")} ms; read ${by.map((b, i) => gbs(b, ms[i]!).toFixed(2)).join("/")} GB/s per rank; total ${gbs(by.reduce((a, b) => a + b, 0), Math.max(...ms)).toFixed(2)} GB/s`;
      } else if (n === "overlap") per = `step ${num("baseMs").map((x) => x.toFixed(1)).join("/")} ms -> ${num("withSaveMs").map((x) => x.toFixed(1)).join("/")} ms with a save in flight (${num("overheadPct").map((x) => x.toFixed(1)).join("/")}%)`;
      else if (n === "t-save" || n === "t-load") per = `${num("ms").map((x) => x.toFixed(1)).join("/")} ms`;
      else if (n === "train") per = `median step ${num("stepMs").map((x) => x.toFixed(1)).join("/")} ms`;
      lines.push(`${n.padEnd(10)}${`${cs.filter((c) => c?.ok).length}/${W}`.padStart(9)}  ${per}`);
    }
    const failed = all.flatMap((a, r) => a.checks.filter((c) => !c.ok).map((c) => `rank ${r} ${c.name}: ${c.detail}`));
    lines.push(failed.length ? `FAILED (${failed.length}):\n  ${failed.join("\n  ")}` : "ALL PASS");
    writeFileSync(join(out, "summary.txt"), lines.join("\n") + "\n");
    console.log(lines.join("\n"));
  }
  const ok = checks.every((c) => c.ok);
  await meet();
  for (const b of [bench, ...groups]) b.close();
  return ok ? 0 : 1;
}, "checkpoint save/load benchmark, one rank per GPU");
