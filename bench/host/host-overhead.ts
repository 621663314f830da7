// Host work of the CUDA executor, on the CPU: the MoE LM training step of examples/train-moe-lm.ts
// (layout fsdp-ep, dp=1 × ep=2, as bench/gpu/multi-gpu.sh stage 5 runs it against PyTorch) run as
// rank 0 of a 2-rank job, and one 8 MiB all-gather through the plan path, over a native layer that
// does no device work (test/fakes/native-addon.ts). What is left is shardts' own JS per step: the
// instruction loop, argument packing, allocator, lowering, uploads of the feeds and conversion of
// what is read back. Device reads answer 16 for every i32 (tokens per expert per sequence: 128
// routed rows over 8 experts, so every segment GEMM the GPU run issues is issued here too) and
// zeros otherwise. The native calls' own cost (N-API, driver, ~1–10 µs each on a GPU host) is not
// in the times; the calls per step are counted, so a GPU host's figure can be estimated from them.
//   npm run bench:host [-- --steps 100] [--batch 16,64]    (npx tsx bench/host/host-overhead.ts ...)
// Where the time goes inside an instruction: node --cpu-prof on a bundle (npx esbuild --bundle
// --platform=node --format=esm) of a script calling profileMoeStep (tsx's output has no useful lines).
import { momentNames } from "../../stdlib/optim/adamw.ts";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { layoutByName, type LmConfig } from "../../stdlib/nn/index.ts";
import { ADAMW_DEFAULTS, BatchLoader, ByteTokenizer, loadTrainingText, Trainer } from "../../stdlib/train/index.ts";
import { CudaExecutor, type HostTimes } from "../../runtime/cuda/executor.ts";
import { RankLocal } from "../../runtime/cuda/nccl/collectives.ts";
import { Communicators } from "../../runtime/cuda/nccl/communicators.ts";
import { fakeAddon } from "../../test/fakes/native-addon.ts";
import { measure } from "./nccl-step-overhead.ts";

/** The model of examples/train-moe-lm.ts. */
export const MOE_LM: LmConfig = {
  vocab: 256, model: 64, heads: 4, layers: 4, seq: 64, ffn: 256,
  moe: { experts: 8, topK: 2, ffn: 128, shared: 1, score: "softmax", auxLoss: 0 },
  fp8: false,
};

export interface StepProfile {
  batch: number;
  instrs: number;
  /** The 10th percentile of host ms per step: on a shared machine the slow steps measure the neighbours. */
  p10Ms: number;
  /** Fastest and median host ms per step (executor.run: feeds uploaded, every instruction, outputs read back). */
  minMs: number;
  medMs: number;
  /** Mean host ms of the faster half of the steps (what the breakdown below adds up to). */
  halfMs: number;
  /** Host ms per step by instruction (name and category), averaged over the faster half of the steps. */
  byInstr: { cat: string; name: string; n: number; ms: number }[];
  /** Native calls per step, by method. */
  calls: Record<string, number>;
}

/** Rank 0 of the 2-rank MoE LM step on the fake native layer: `steps` timed after `warm` warm-up steps. */
export function profileMoeStep(batch: number, steps: number, warm = 3): StepProfile {
  const f = fakeAddon({ read: (dst) => void (dst instanceof Int32Array && dst.fill(MOE_LM.seq * MOE_LM.moe!.topK / MOE_LM.moe!.experts)) });
  const trainer = new Trainer({
    model: MOE_LM, layout: layoutByName("fsdp-ep", { dp: 1, ep: 2 }), batch, seed: 1, backend: "cpu", biasRate: 0.01,
    opt: { ...ADAMW_DEFAULTS, lr: 3e-3 }, schedule: { peak: 3e-3, warmup: 20, total: 120, minRatio: 0.1 },
  });
  const plan = trainer.program.plan;
  const ex = new CudaExecutor(f.addon, 0);
  const rl = new RankLocal({ rank: 0, localRank: 0, worldSize: 2, comms: new Communicators(f.addon, 0, 2, new Uint8Array(128), 10_000), timeoutMs: 300_000 });
  (ex.rankLocal = rl).exec = ex;
  const loader = new BatchLoader(new ByteTokenizer().encode(loadTrainingText()), { batch, seq: MOE_LM.seq, seed: 1 });
  const outs = trainer.program.outputNames;
  // as Trainer.run: parameters and moments carried on the device (fed on the first step only)
  const state = new Set(trainer.ps.specs.flatMap((sp) => [sp.name, ...momentNames(sp.name)]));
  const carry = new Map([...state].map((n) => [outs.indexOf(n as never), n] as const));
  let first = true;
  const step = (hostTimes?: HostTimes) => {
    const b = loader.next(), { feeds, read } = trainer.feeds(b.inputs, b.targets);
    const fed = new Map(Object.entries(feeds).filter(([n]) => first || !state.has(n)));
    first = false;
    const t0 = performance.now();
    ex.run(plan, fed, read.map((n) => outs.indexOf(n)), { hostTimes, carry });
    return { ms: performance.now() - t0 };
  };
  for (let i = 0; i < warm; i++) step();
  f.reset();
  const runs = Array.from({ length: steps }, () => {
    const hostTimes: HostTimes = new Map();
    return { ...step(hostTimes), hostTimes };
  }).sort((a, b) => a.ms - b.ms);
  // the breakdown of the faster half: on a shared machine the slower steps measure the neighbours
  const half = runs.slice(0, Math.max(1, Math.floor(steps / 2))), sum: HostTimes = new Map();
  for (const { hostTimes } of half)
    for (const [k, e] of hostTimes) {
      const t = sum.get(k) ?? sum.set(k, { ...e, n: 0, ms: 0 }).get(k)!;
      t.n += e.n / half.length;
      t.ms += e.ms / half.length;
    }
  const calls = Object.fromEntries([...f.calls].map(([k, n]) => [k, n / steps] as const).sort((a, b) => b[1] - a[1]));
  return { batch, instrs: plan.instrs.length, p10Ms: runs[Math.floor(steps / 10)]!.ms, minMs: runs[0]!.ms, medMs: runs[Math.floor(steps / 2)]!.ms, halfMs: half.reduce((a, r) => a + r.ms, 0) / half.length, byInstr: [...sum.values()].sort((a, b) => b.ms - a.ms), calls };
}

/** The profile as text: per category, then the top instructions, then native calls per step. */
export function report(p: StepProfile, top = 15): string {
  const cats = new Map<string, { n: number; ms: number }>();
  for (const e of p.byInstr) {
    const c = cats.get(e.cat) ?? { n: 0, ms: 0 };
    c.n += e.n;
    c.ms += e.ms;
    cats.set(e.cat, c);
  }
  const inLoop = p.byInstr.reduce((a, e) => a + e.ms, 0);
  const rows = [...cats].sort((a, b) => b[1].ms - a[1].ms).map(([cat, c]) => `  ${cat.padEnd(34)} ${c.n.toFixed(0).padStart(6)} ${(c.ms * 1000).toFixed(0).padStart(9)} ${((c.ms * 1e3) / c.n).toFixed(2).padStart(8)}`);
  rows.push(`  ${"(run: feeds in, outputs read back)".padEnd(34)} ${"".padStart(6)} ${((p.halfMs - inLoop) * 1000).toFixed(0).padStart(9)}`);
  const instr = p.byInstr.slice(0, top).map((e) => `  ${`${e.cat} ${e.name}`.slice(0, 34).padEnd(34)} ${e.n.toFixed(0).padStart(6)} ${(e.ms * 1000).toFixed(0).padStart(9)} ${((e.ms * 1e3) / e.n).toFixed(2).padStart(8)}`);
  const total = Object.values(p.calls).reduce((a, n) => a + n, 0);
  const calls = Object.entries(p.calls).slice(0, 10).map(([k, n]) => `${k} ${n.toFixed(0)}`).join(", ");
  return [
    `MoE LM step, fsdp-ep dp=1 x ep=2, rank 0 of 2, batch ${p.batch}: ${p.instrs} plan instructions; host ms per step: median ${p.medMs.toFixed(2)}, 10th percentile ${p.p10Ms.toFixed(2)}, fastest ${p.minMs.toFixed(2)}, faster half ${p.halfMs.toFixed(2)}`,
    `  ${"by category (faster half)".padEnd(34)} ${"n/step".padStart(6)} ${"us/step".padStart(9)} ${"us each".padStart(8)}`, ...rows,
    `  ${`top ${top} instructions`.padEnd(34)}`, ...instr,
    `  native calls per step: ${total.toFixed(0)} (${calls}, ...)`,
  ].join("\n");
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const a = process.argv.slice(2), opt = (k: string, d: string) => (a.includes(k) ? a[a.indexOf(k) + 1]! : d);
  const steps = Number(opt("--steps", "100"));
  // the fake "compiles" every kernel to an empty image: keep those out of the real kernel cache
  const cache = mkdtempSync(join(tmpdir(), "shardts-host-overhead-"));
  process.env.SHARDTS_CACHE_DIR = cache;
  try {
    for (const batch of opt("--batch", "16,64").split(",").map(Number)) console.log(report(profileMoeStep(batch, steps)) + "\n");
    const ag = (await measure({ reps: 20_000, watchdog: true })).find((r) => r.name === "all_gather")!;
    console.log(`all-gather 8 MiB through the plan path (RankLocal.step + flush, watchdog on): ${ag.usPerCall.toFixed(2)} us host per call; native calls: ${Object.entries(ag.calls).map(([k, n]) => `${k} ${n}`).join(", ")}`);
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
}
