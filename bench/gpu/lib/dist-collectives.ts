// One rank of the collective bandwidth benchmark, run under `shardts launch --nproc-per-node N`
// (bench/gpu/multi-gpu.sh): all-gather, reduce-scatter, all-reduce and all-to-all at 8/64/256 MiB
// per rank, each through shardts' plan path (a planned redistribute step, lowered and run on NCCL by
// the rank-local executor), checked once against the CPU reference's simulation at the smallest
// size, then timed. Bus bandwidth as nccl-tests computes it. Rank 0 prints one JSON line per case. To
// tell shardts' per-call work from NCCL's, each row also has `rawMs` (the same NCCL call(s) issued
// straight on the communication stream with the mesh axis's communicator, no plan step, timed the
// same way), `rawWorldMs` (the same on the world communicator from ncclCommInitRank, not a split: here
// the axis spans the world) and `issueUs` (host time of RankLocal.step alone, median).
import { writeFileSync } from "node:fs";
import { defineMain } from "../../../stdlib/model.ts";
import { cudaExecutor, jobRank } from "../../../stdlib/run.ts";
import type { MeshSpec, Placement, TensorType } from "../../../compiler/ir/types.ts";
import type { Plan, PlanValue } from "../../../compiler/plan.ts";
import { coordsOf } from "../../../compiler/ir/placement.ts";
import { boxOf } from "../../../compiler/passes/partition.ts";
import { planRedistribute } from "../../../compiler/passes/redistribute-plan.ts";
import { allocLocal } from "../../../compiler/ir/local.ts";
import { runStep } from "../../../runtime/cpu/collectives.ts";
import { download, empty, upload } from "../../../runtime/cuda/memory.ts";
import { NcclDataType, NcclRedOp } from "../../../runtime/cuda/native-types.ts";

const value = (t: TensorType, mesh: MeshSpec, placements: Placement[]): PlanValue => {
  const tt = { ...t, placements };
  const per = Array.from({ length: mesh.sizes[0]! }, (_, r) => boxOf(tt, mesh, coordsOf(mesh, r)));
  return { type: tt, boxes: per.map((p) => p.box), shapes: per.map((p) => p.shape), segCounts: {} };
};

export default defineMain(async ({ args, log }) => {
  const W = Number(process.env.WORLD_SIZE ?? 1), rank = jobRank();
  const outFile = args.includes("--json") ? args[args.indexOf("--json") + 1] : undefined;
  const ex = cudaExecutor();
  const rl = ex.rankLocal;
  if (!rl) throw new Error("not in a multi-GPU job: run under shardts launch --nproc-per-node N with a GPU per rank");
  const mesh: MeshSpec = { axes: ["x"], sizes: [W] };
  const rows: object[] = [];
  for (const mib of [8, 64, 256]) {
    const elems = (mib * 2 ** 20) / 4; // f32 elements per rank's input piece
    // [b, a]: every chunk contiguous, as torch's tensors are (see lower.ts)
    const cases: { name: string; dims: [string, number][]; from: Placement; to: Placement; bus: (t: number) => number }[] = [
      { name: "all_gather", dims: [["a", elems * W]], from: "S(a)", to: "R", bus: (s) => ((elems * 4 * W) / s) * ((W - 1) / W) },
      { name: "reduce_scatter", dims: [["a", elems]], from: "P(sum)", to: "S(a)", bus: (s) => ((elems * 4) / s) * ((W - 1) / W) },
      { name: "all_reduce", dims: [["a", elems]], from: "P(sum)", to: "R", bus: (s) => ((elems * 4) / s) * ((2 * (W - 1)) / W) },
      { name: "all_to_all", dims: [["b", W], ["a", elems]], from: "S(a)", to: "S(b)", bus: (s) => ((elems * 4) / s) * ((W - 1) / W) },
    ];
    for (const c of cases) {
      const t: TensorType = { dims: c.dims.map(([name, size]) => ({ name, size })), dtype: "f32", placements: [] };
      const [step] = planRedistribute(t, [c.from], [c.to], mesh);
      const plan: Plan = { mesh, world: W, values: [value(t, mesh, [c.from]), value(t, mesh, [c.to])], instrs: [], outputs: [], lastUse: [] };
      const pieces = plan.values[0]!.shapes.map((s, r) => {
        const x = allocLocal("f32", s);
        for (let i = 0; i < x.data.length; i++) x.data[i] = ((i * 7 + r * 13) % 1024) / 256 - 2;
        return x;
      });
      const input = upload(ex.addon, ex.mem, pieces[rank]!, ex.stream);
      const noCounts = () => { throw new Error("no segmented dims here"); };
      let err = "";
      if (mib === 8) {
        const out = rl.step(plan, step!, 0, 1, input, noCounts, false);
        rl.flush();
        const got = download(ex.addon, out, ex.stream).data, want = runStep(plan, step!, 0, 1, pieces, noCounts)[rank]!.data;
        let bad = 0;
        for (let i = 0; i < want.length; i++) if (Math.abs(got[i]! - want[i]!) > 1e-6 * Math.max(1, Math.abs(want[i]!))) bad++;
        err = bad ? `${bad} of ${want.length} elements differ from the CPU simulation` : "";
        ex.release(out);
      }
      const run = () => ex.release(rl.step(plan, step!, 0, 1, input, noCounts, false));
      for (let i = 0; i < 3; i++) run();
      rl.flush();
      ex.addon.streamSynchronize(ex.stream);
      const reps = mib === 256 ? 10 : 20, times: number[] = [], issue: number[] = [];
      for (let i = 0; i < reps; i++) {
        const t0 = performance.now();
        const o = rl.step(plan, step!, 0, 1, input, noCounts, false);
        issue.push((performance.now() - t0) * 1000);
        ex.release(o);
        rl.flush();
        ex.addon.streamSynchronize(ex.stream);
        times.push((performance.now() - t0) / 1000);
      }
      const med = (xs: number[]) => xs.sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
      const s = med(times), issueUs = med(issue);
      // the same NCCL work with no plan step around it, on the communication stream
      const a = ex.addon, f32 = NcclDataType.f32, cs = rl.stream();
      const outElems = c.name === "all_gather" ? elems * W : c.name === "reduce_scatter" ? elems / W : elems;
      const rawOut = empty(ex.mem, "f32", [outElems]);
      const raw = (comm: bigint) => {
        if (c.name === "all_gather") a.ncclAllGather(input.ptr, rawOut.ptr, elems, f32, comm, cs);
        else if (c.name === "reduce_scatter") a.ncclReduceScatter(input.ptr, rawOut.ptr, elems / W, f32, NcclRedOp.sum, comm, cs);
        else if (c.name === "all_reduce") a.ncclAllReduce(input.ptr, rawOut.ptr, elems, f32, NcclRedOp.sum, comm, cs);
        else {
          const chunk = elems / W;
          a.ncclGroupStart();
          for (let p = 0; p < W; p++) {
            a.ncclSend(input.ptr + BigInt(p * chunk * 4), chunk, f32, p, comm, cs);
            a.ncclRecv(rawOut.ptr + BigInt(p * chunk * 4), chunk, f32, p, comm, cs);
          }
          a.ncclGroupEnd();
        }
      };
      const timeRaw = (comm: bigint) => {
        for (let i = 0; i < 3; i++) raw(comm);
        a.streamSynchronize(cs);
        const ts: number[] = [];
        for (let i = 0; i < reps; i++) {
          const t0 = performance.now();
          raw(comm);
          a.streamSynchronize(cs);
          ts.push(performance.now() - t0);
        }
        return med(ts);
      };
      const rawMs = timeRaw(rl.comms.axes(mesh)[0]!), rawWorldMs = timeRaw(rl.comms.world);
      ex.release(rawOut);
      rl.drained();
      ex.release(input);
      const row = { impl: "shardts", op: c.name, mibPerRank: mib, world: W, ms: +(s * 1000).toFixed(3), busGBs: +(c.bus(s) / 1e9).toFixed(1), rawMs: +rawMs.toFixed(3), rawBusGBs: +(c.bus(rawMs / 1000) / 1e9).toFixed(1), rawWorldMs: +rawWorldMs.toFixed(3), issueUs: +issueUs.toFixed(1), check: mib === 8 ? (err || "ok") : "-" };
      rows.push(row);
      log(JSON.stringify(row));
    }
  }
  if (rank === 0 && outFile) writeFileSync(outFile, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
  return rows.some((r) => (r as { check: string }).check !== "ok" && (r as { check: string }).check !== "-") ? 1 : 0;
});
