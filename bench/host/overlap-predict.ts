// The schedule pass's prediction for bench/gpu/multi-gpu.sh stage 9 (train-moe-lm --size overlap,
// layout ep, batch 16), written before any GPU run: per dispatch route and micro-batch count, the
// cost model's compute-only, comm-only and simulated step time of one rank's training step, in the
// fused order and after the schedule pass. No data runs: the step is traced, partitioned and fused.
//   npx tsx bench/host/overlap-predict.ts [--ep 2] [--batch 16]   (SHARDTS_SCHEDULE_COST overrides the model)
import { fuse } from "../../compiler/codegen/fuse.ts";
import { costFromEnv, schedule, type ScheduleReport } from "../../compiler/passes/schedule.ts";
import { grad } from "../../stdlib/autodiff.ts";
import { Program } from "../../stdlib/program.ts";
import { traceLm } from "../../stdlib/train/trainer.ts";
import { layoutByName } from "../../stdlib/nn/layout.ts";
import { adamw, ADAMW_DEFAULTS } from "../../stdlib/optim/adamw.ts";
import type { LmConfig } from "../../stdlib/nn/transformer.ts";

const arg = (k: string, d: number) => (process.argv.includes(k) ? Number(process.argv[process.argv.indexOf(k) + 1]) : d);
const ep = arg("--ep", 2), batch = arg("--batch", 16);
const cost = costFromEnv(process.env.SHARDTS_SCHEDULE_COST);
const f = (s: number) => (s * 1e3).toFixed(2).padStart(8);
console.log(`train-moe-lm --size overlap, layout ep=${ep}, batch ${batch}; cost model ${JSON.stringify(cost)}`);
console.log(`${"dispatch".padEnd(9)} mb  compute     comm    fused-order  scheduled  step/max  step/sum   (ms per step, one rank)`);
for (const fusedDispatch of [false, true])
  for (const microBatches of [1, 2]) {
    // the example's --size overlap model (examples/train-moe-lm.ts)
    const model: LmConfig = {
      vocab: 256, model: 1024, heads: 8, layers: 4, seq: 512, ffn: 2816, microBatches,
      moe: { experts: 16, topK: 4, ffn: 1408, shared: 1, score: "softmax", auxLoss: 0, fusedDispatch },
    };
    const t = traceLm(layoutByName("ep", { ep }), model, batch);
    const { updates } = adamw(t.ps, grad(t.out.loss, Object.fromEntries(t.ps.stored)), ADAMW_DEFAULTS);
    const plan = new Program(t.mesh, { loss: t.out.loss, ...updates }).plan;
    const r = {} as ScheduleReport;
    schedule(fuse(plan), cost, r);
    const a = r.after;
    console.log(`${(fusedDispatch ? "fused" : "composed").padEnd(9)} ${microBatches}  ${f(a.computeOnly)} ${f(a.commOnly)}  ${f(r.before.step)}    ${f(a.step)}  ${(a.step / Math.max(a.computeOnly, a.commOnly)).toFixed(3).padStart(8)}  ${(a.step / (a.computeOnly + a.commOnly)).toFixed(3).padStart(8)}   ${a.hostReads} host reads`);
  }
