// Host-side cost of one collective through the plan path (RankLocal.step + flush, as
// bench/gpu/lib/dist-collectives.ts times it), on the CPU over a native layer that does nothing
// (test/fakes/native-addon.ts): what is left is shardts' own per-call work (lowering lookup,
// buffers, events, watchdog bookkeeping) and the count of native calls per collective.
//   npx tsx bench/host/nccl-step-overhead.ts [--reps 20000] [--no-watchdog]
import { pathToFileURL } from "node:url";
import type { MeshSpec, Placement, TensorType } from "../../compiler/ir/types.ts";
import type { Plan, PlanValue } from "../../compiler/plan.ts";
import { coordsOf } from "../../compiler/ir/placement.ts";
import { boxOf } from "../../compiler/passes/partition.ts";
import { planRedistribute, type PlannedStep } from "../../compiler/passes/redistribute-plan.ts";
import { empty } from "../../runtime/cuda/memory.ts";
import { RankLocal } from "../../runtime/cuda/nccl/collectives.ts";
import { Communicators } from "../../runtime/cuda/nccl/communicators.ts";
import { WatchdogThread } from "../../runtime/cuda/nccl/watchdog-thread.ts";
import { startStore } from "../../runtime/launch/store.ts";
import { fakeAddon, fakeExecutor } from "../../test/fakes/native-addon.ts";

const value = (t: TensorType, mesh: MeshSpec, placements: Placement[]): PlanValue => {
  const tt = { ...t, placements };
  const per = Array.from({ length: mesh.sizes[0]! }, (_, r) => boxOf(tt, mesh, coordsOf(mesh, r)));
  return { type: tt, boxes: per.map((p) => p.box), shapes: per.map((p) => p.shape), segCounts: {} };
};

/** The four cases of dist-collectives.ts on a one-axis mesh of W ranks, `elems` f32 per rank. */
export function collectiveCases(W: number, elems: number): { name: string; plan: Plan; step: PlannedStep }[] {
  const mesh: MeshSpec = { axes: ["x"], sizes: [W] };
  const cases: [string, [string, number][], Placement, Placement][] = [
    ["all_gather", [["a", elems * W]], "S(a)", "R"],
    ["reduce_scatter", [["a", elems]], "P(sum)", "S(a)"],
    ["all_reduce", [["a", elems]], "P(sum)", "R"],
    ["all_to_all", [["b", W], ["a", elems]], "S(a)", "S(b)"],
  ];
  return cases.map(([name, dims, from, to]) => {
    const t: TensorType = { dims: dims.map(([n, size]) => ({ name: n, size })), dtype: "f32", placements: [] };
    const [step] = planRedistribute(t, [from], [to], mesh);
    return { name, step: step!, plan: { mesh, world: W, values: [value(t, mesh, [from]), value(t, mesh, [to])], instrs: [], outputs: [], lastUse: [] } };
  });
}

export interface Overhead {
  name: string;
  usPerCall: number;
  /** Native calls per collective (steady state), by method. */
  calls: Record<string, number>;
}

/** Times `reps` step+flush pairs per case on rank 0 of W after a warm-up; `watchdog` adds the real watchdog thread. */
export async function measure(opts: { reps: number; W?: number; watchdog?: boolean }): Promise<Overhead[]> {
  const W = opts.W ?? 2, f = fakeAddon();
  const store = opts.watchdog ? await startStore("w".repeat(24)) : undefined;
  const watchdog = store ? new WatchdogThread({ rank: 0, storeAddr: "127.0.0.1", storePort: store.port, token: "w".repeat(24), addonPath: "/nonexistent", timeoutS: 300 }) : undefined;
  const comms = new Communicators(f.addon, 0, W, new Uint8Array(128), 10_000);
  const rl = new RankLocal({ rank: 0, localRank: 0, worldSize: W, comms, watchdog, timeoutMs: 300_000 });
  const ex = fakeExecutor(f.addon);
  rl.exec = ex;
  const noCounts = () => { throw new Error("no segmented dims here"); };
  const out: Overhead[] = [];
  try {
    for (const c of collectiveCases(W, (8 * 2 ** 20) / 4)) {
      const input = empty(ex.mem, "f32", c.plan.values[0]!.shapes[0]!);
      const once = () => {
        ex.release(rl.step(c.plan, c.step, 0, 1, input, noCounts, false));
        rl.flush();
      };
      for (let i = 0; i < 2000; i++) once();
      f.reset();
      // the fastest of 5 rounds: the machine is shared, and the question is what the code costs
      let us = Infinity;
      const per = Math.max(1, Math.ceil(opts.reps / 5));
      for (let round = 0; round < 5; round++) {
        const t0 = performance.now();
        for (let i = 0; i < per; i++) once();
        us = Math.min(us, ((performance.now() - t0) * 1000) / per);
      }
      rl.drained();
      out.push({ name: c.name, usPerCall: us, calls: Object.fromEntries([...f.calls].map(([k, n]) => [k, n / (5 * per)])) });
    }
  } finally {
    await watchdog?.stop();
    await store?.close();
  }
  return out;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const a = process.argv.slice(2);
  const reps = a.includes("--reps") ? Number(a[a.indexOf("--reps") + 1]) : 20_000;
  const rows = await measure({ reps, watchdog: !a.includes("--no-watchdog") });
  console.log(`host work per collective (fake native layer, ${reps} reps, watchdog ${a.includes("--no-watchdog") ? "off" : "on"})`);
  for (const r of rows) console.log(`  ${r.name.padEnd(15)} ${r.usPerCall.toFixed(2).padStart(7)} us   native calls: ${Object.entries(r.calls).map(([k, n]) => `${k} ${n}`).join(", ")}`);
}
