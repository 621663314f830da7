// Peak live bytes on rank 0 (values from their write to their last use) of an FSDP training step at d 512 x 8 layers,
// in program order, with prefetch alone (an 8 MiB window) and with the schedule pass then prefetch. CPU only:
//   npx tsx bench/host/schedule-memory.ts
// (2026-11-23: 601 / 601 / 718 MiB, which is why compiler/pipeline.ts keeps a scheduled order only for a 2% predicted gain.)
import { fuse } from "../../compiler/codegen/fuse.ts";
import { writesOf } from "../../compiler/plan.ts";
import { schedule } from "../../compiler/passes/schedule.ts";
import { prefetchComms } from "../../compiler/passes/prefetch.ts";
import { orderForStreams } from "../../compiler/pipeline.ts";
import { Trainer } from "../../stdlib/train/trainer.ts";
import { layoutByName } from "../../stdlib/nn/layout.ts";
import { ADAMW_DEFAULTS } from "../../stdlib/optim/adamw.ts";
const BYTES: Record<string, number> = { f32: 4, bf16: 2, i32: 4, fp8e4m3: 1, fp8e5m2: 1 };
for (const [layout, mb] of [["fsdp", 1]] as const) {
  const model: any = { vocab: 256, model: 512, heads: 4, layers: 8, seq: 16, ffn: 2048, moe: { experts: 8, topK: 2, ffn: 1024, shared: 1, score: "softmax", auxLoss: 0 }, microBatches: mb };
  const tr = new Trainer({ model, layout: layoutByName(layout), batch: 4, opt: ADAMW_DEFAULTS, schedule: { peak: 1e-2, warmup: 1, total: 10, minRatio: 0.1 }, seed: 3, biasRate: 0 });
  const fp = fuse(tr.program.plan);
  const peak = (p: { values: { type: { dtype: string }; shapes: number[][] }[]; instrs: unknown[]; lastUse: number[] }, what: string) => {
    // live bytes on rank 0: a value is live from its write to its last use
    const vb = (s: number) => BYTES[p.values[s].type.dtype] * p.values[s].shapes[0].reduce((a: number, b: number) => a * b, 1);
    let live = 0, max = 0, commLive = 0, commMax = 0;
    const ends: Map<number, number[]> = new Map();
    p.instrs.forEach((x: any, i: number) => {
      for (const s of writesOf(x)) { live += vb(s); if (x.kind === "comm") commLive += vb(s); const e = p.lastUse[s] ?? i; (ends.get(e) ?? ends.set(e, []).get(e)!).push(s); }
      max = Math.max(max, live); commMax = Math.max(commMax, commLive);
      for (const s of ends.get(i) ?? []) { live -= vb(s); if (p.instrs.some((y: any) => y.kind === "comm" && writesOf(y).includes(s))) commLive -= vb(s); }
    });
    console.log(`${layout} mb${mb} ${what}: peak live ${(max / 2 ** 20).toFixed(2)} MiB, comm outputs live at most ${(commMax / 2 ** 20).toFixed(2)} MiB`);
  };
  peak(fp, "program order");
  peak(prefetchComms(fp, 8 * 2 ** 20), "prefetch only");
  peak(prefetchComms(schedule(fp), 8 * 2 ** 20), "schedule (unbounded window, kept whatever its gain) + prefetch");
  peak(orderForStreams(fp, { prefetchBytes: 8 * 2 ** 20 }), "orderForStreams (the executor's default: kept for a 2% predicted gain)");
}
