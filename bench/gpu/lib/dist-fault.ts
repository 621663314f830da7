// One rank of the fault tests (bench/gpu/multi-gpu.sh), under shardts launch on GPUs: each step
// all-gathers a tensor over the mesh axis 'dp' (one rank per GPU) with NCCL. `--throw-rank R` makes
// rank R throw in step 3; `--hang-rank R` makes rank R block forever before step 3, so its peers
// wait in the collective until the watchdog (SHARDTS_COLLECTIVE_TIMEOUT_S) aborts it.
import { defineMain, Mesh, randn, redistribute, read, Shard, Replicate } from "../../../stdlib/index.ts";
import { jobRank } from "../../../stdlib/run.ts";

export default defineMain(async ({ args, log }) => {
  const arg = (n: string) => (args.includes(n) ? Number(args[args.indexOf(n) + 1]) : -1);
  const W = Number(process.env.WORLD_SIZE ?? 1), rank = jobRank();
  const mesh = Mesh.of({ dp: W });
  for (let step = 1; step <= 6; step++) {
    if (step === 3 && arg("--throw-rank") === rank) throw new Error(`rank ${rank} throws in step ${step} on purpose`);
    if (step === 3 && arg("--hang-rank") === rank) {
      console.error(`rank ${rank}: hanging before step ${step} on purpose`);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
    }
    const x = randn(mesh, { n: 4096 }, "f32", { dp: Shard("n") } as never, { seed: step });
    const v = await read(redistribute(x, { dp: Replicate } as never), { backend: "cuda" });
    log(`step ${step}: sum ${Array.from(v.data).reduce((a, b) => a + b, 0).toFixed(3)}`);
  }
  return 0;
});
