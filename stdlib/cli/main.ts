// The `shardts` command line: run, check, launch, tune-gemm, help.
import { readFileSync } from "node:fs";
import { ShardtsError, UsageError } from "../../compiler/errors.ts";
import { parseArgs } from "./args.ts";
import { loadRunnable, runCommand, RUN_HELP } from "./run-command.ts";
import { isMainDef, type MainDef, type ModelDef } from "../model.ts";
import { joinGpuJob, type Backend } from "../run.ts";
import { launch } from "../../runtime/launch/launcher.ts";

const HELP = `shardts: distributed tensors as a typed TypeScript DSL

usage: shardts <command> [options]

commands
  run FILE.ts     compile and run a model on a (simulated) device mesh; see shardts run --help
  check [FILES]   type-check model files and print sharding mistakes; see shardts check --help
  launch          start one process per rank (torchrun's environment contract); see shardts launch --help
  tune-gemm       time the FP8 GEMM kernels for given shapes on this GPU and cache the fastest; see shardts tune-gemm --help

options
  --help          this text
  --version       the package version
`;

const LAUNCH_HELP = `usage: shardts launch --nproc-per-node N [--nnodes K --node-rank R --master-addr A --master-port P] FILE.ts [args]

Starts N processes on this node, each running \`shardts run FILE.ts [args]\` with RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set as torchrun sets them, plus
SHARDTS_JOB_TOKEN, the secret the rendezvous store on node 0 asks every peer for (on several nodes,
export the same token everywhere). Output lines are prefixed with the rank. If a rank fails, the
others are stopped within seconds and launch exits non-zero naming it.
`;

const CHECK_HELP = `usage: shardts check [FILES...] [--project tsconfig.json]

Type-checks the files (default: examples/*.ts) with tsc and prints each sharding mistake as the
shardts message, naming the mesh axis and the fix. Exits 1 when there are errors.
`;

/** Index of the first argument that is neither an option nor the value of one. */
function firstPositional(argv: string[], valued: string[]): number {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith("-")) return i;
    if (valued.includes(a.slice(2))) i++;
  }
  return -1;
}

async function runModel(rest: string[], runnable: ModelDef | MainDef | undefined, log: (s: string) => void): Promise<number> {
  const a = parseArgs(rest, ["mesh", "backend", "dump", "dump-cuda", "trace"], ["no-verify", "help"]);
  if (a.flags.help) return log(RUN_HELP), 0;
  if (a.positionals.length !== 1) throw new UsageError(`shardts run takes one model file; got ${a.positionals.length}\n\n${RUN_HELP}`);
  return await runCommand(a.positionals[0]!, {
    mesh: a.flags.mesh as string | undefined,
    backend: a.flags.backend as string | undefined,
    dump: a.flags.dump as string | undefined,
    dumpCuda: a.flags["dump-cuda"] as string | undefined,
    trace: a.flags.trace as string | undefined,
    verify: !a.flags["no-verify"],
  }, log, runnable as ModelDef | undefined);
}

export async function main(argv: string[], log: (s: string) => void = console.log, err: (s: string) => void = console.error): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    if (cmd === undefined || cmd === "--help" || cmd === "-h" || cmd === "help") {
      log(HELP);
      return cmd === undefined ? 1 : 0;
    }
    if (cmd === "--version") {
      log(JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")).version);
      return 0;
    }
    if (cmd === "run") {
      // a script (defineMain) gets every argument but its file name; a model takes the flags below
      const fileAt = firstPositional(rest, ["mesh", "backend", "dump", "dump-cuda", "trace"]);
      const runnable = fileAt >= 0 ? await loadRunnable(rest[fileAt]!) : undefined;
      // one rank of a multi-GPU job: join it (NCCL), run this rank only; rank 0 prints
      const b = rest.indexOf("--backend");
      const job = await joinGpuJob((b >= 0 ? rest[b + 1] : "auto") as Backend);
      if (job && job.env.rank !== 0) log = () => {};
      let code: number;
      try {
        code = runnable && isMainDef(runnable) ? ((await runnable.main({ args: rest.filter((_, i) => i !== fileAt), log })) ?? 0) : await runModel(rest, runnable, log);
      } catch (e) {
        await job?.abort(); // the peers may be gone: abort, and report this rank's own error
        throw e;
      }
      await job?.close();
      return code;
    }
    if (cmd === "launch") {
      const fileAt = firstPositional(rest, ["nproc-per-node", "nnodes", "node-rank", "master-addr", "master-port"]);
      const a = parseArgs(fileAt >= 0 ? rest.slice(0, fileAt) : rest, ["nproc-per-node", "nnodes", "node-rank", "master-addr", "master-port"], ["help"]);
      if (a.flags.help || fileAt < 0) return log(LAUNCH_HELP), a.flags.help ? 0 : 2;
      // a flag that is not a whole number is refused here, with what was typed ("x" would reach launch() as NaN)
      const num = (k: string, d: number) => {
        const v = a.flags[k];
        if (v === undefined) return d;
        if (typeof v !== "string" || !/^-?\d+$/.test(v.trim())) throw new UsageError(`--${k} must be a whole number, got '${String(v)}'`);
        return Number(v);
      };
      const res = await launch({
        nprocPerNode: num("nproc-per-node", 1), nnodes: num("nnodes", 1), nodeRank: num("node-rank", 0),
        masterAddr: (a.flags["master-addr"] as string | undefined) ?? "127.0.0.1", masterPort: num("master-port", 0),
        file: rest[fileAt]!, args: rest.slice(fileAt + 1), graceMs: 3000,
      }, log, err);
      return res.code;
    }
    if (cmd === "check") {
      const a = parseArgs(rest, ["project"], ["help"]);
      if (a.flags.help) return log(CHECK_HELP), 0;
      // loaded on demand: it finds the TypeScript compiler, which bundles for GPU machines leave out
      const { check } = await import("./check.ts");
      const res = await check(a.positionals, { project: a.flags.project as string | undefined });
      log(res.output);
      return res.errorCount > 0 ? 1 : 0;
    }
    if (cmd === "tune-gemm") {
      const { tuneCommand } = await import("./tune-command.ts");
      return tuneCommand(rest, log);
    }
    throw new UsageError(`unknown command '${cmd}'\n\n${HELP}`);
  } catch (e) {
    if (e instanceof ShardtsError) {
      err(`shardts: ${e.name}: ${e.message}`);
      return 2;
    }
    throw e;
  }
}
