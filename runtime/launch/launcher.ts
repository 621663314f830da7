// shardts launch: one process per GPU (per rank) on this node, each told its place by the torchrun
// environment contract; their output prefixed by rank; the rendezvous store hosted on node 0; and
// if any rank fails, every other rank is stopped within seconds and the launcher exits non-zero
// naming that rank and its last words.
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { UsageError } from "../../compiler/errors.ts";
import { distEnvVars } from "./env.ts";
import { startStore } from "./store.ts";

export interface LaunchOptions {
  nprocPerNode: number;
  nnodes: number;
  nodeRank: number;
  masterAddr: string;
  /** 0: pick a free port (one node only). */
  masterPort: number;
  file: string;
  args: string[];
  /** How long a rank gets to exit after SIGTERM before SIGKILL. */
  graceMs: number;
}

export interface LaunchResult {
  code: number;
  /** The first rank that failed, if any. */
  failed?: { rank: number; code: number | null; signal: string | null; tail: string[] };
  pids: number[];
}

// what each rank runs: the shardts command; a bundle (the GPU harness) names itself in SHARDTS_CLI
const shardtsBin = () => process.env.SHARDTS_CLI ?? fileURLToPath(new URL("../../bin/shardts.mjs", import.meta.url));

export async function launch(o: LaunchOptions, out: (line: string) => void, err: (line: string) => void): Promise<LaunchResult> {
  if (!Number.isInteger(o.nprocPerNode) || o.nprocPerNode < 1) throw new UsageError(`--nproc-per-node must be a positive integer, got ${o.nprocPerNode}`);
  if (!Number.isInteger(o.nnodes) || o.nnodes < 1) throw new UsageError(`--nnodes must be a positive integer, got ${o.nnodes}`);
  if (!Number.isInteger(o.nodeRank) || o.nodeRank < 0 || o.nodeRank >= o.nnodes) throw new UsageError(`--node-rank must be in [0, ${o.nnodes}), got ${o.nodeRank}`);
  const token = process.env.SHARDTS_JOB_TOKEN ?? (o.nnodes === 1 ? randomBytes(24).toString("hex") : undefined);
  if (!token) throw new UsageError("a job on several nodes needs the same SHARDTS_JOB_TOKEN (16+ characters) exported on every node");
  if (o.nnodes > 1 && o.masterPort === 0) throw new UsageError("a job on several nodes needs --master-port");

  const store = o.nodeRank === 0 ? await startStore(token, o.masterPort, o.nnodes > 1 ? "0.0.0.0" : "127.0.0.1") : undefined;
  const port = store?.port ?? o.masterPort;
  const world = o.nnodes * o.nprocPerNode;
  const children: ChildProcess[] = [];
  const tails: string[][] = [];
  let failed: LaunchResult["failed"];
  let stopping = false;

  const stopAll = () => {
    if (stopping) return;
    stopping = true;
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGTERM");
    setTimeout(() => {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    }, o.graceMs).unref();
  };
  const onSignal = () => stopAll();
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const exits: Promise<void>[] = [];
  for (let local = 0; local < o.nprocPerNode; local++) {
    const rank = o.nodeRank * o.nprocPerNode + local;
    const env = {
      ...process.env,
      ...distEnvVars({ rank, localRank: local, worldSize: world, localWorldSize: o.nprocPerNode, masterAddr: o.masterAddr, masterPort: port, token, storePort: port }),
      SHARDTS_STORE_HOSTED: "1",
    };
    const child = spawn(process.execPath, [shardtsBin(), "run", o.file, ...o.args], { env, stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    tails.push([]);
    const prefix = `[rank ${rank}] `;
    const pipe = (stream: NodeJS.ReadableStream, sink: (l: string) => void, keep: boolean) => {
      let buf = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk: string) => {
        buf += chunk;
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          sink(prefix + line);
          if (keep) {
            const t = tails[local]!;
            t.push(line);
            if (t.length > 20) t.shift();
          }
        }
      });
      stream.on("end", () => buf && sink(prefix + buf));
    };
    pipe(child.stdout!, out, false);
    pipe(child.stderr!, err, true);
    exits.push(
      new Promise((resolve) =>
        child.once("exit", (code, signal) => {
          if ((code !== 0 || signal) && !stopping && !failed) {
            failed = { rank, code, signal, tail: tails[local]! };
            stopAll();
          }
          resolve();
        }),
      ),
    );
  }
  await Promise.all(exits);
  process.off("SIGINT", onSignal);
  process.off("SIGTERM", onSignal);
  await store?.close();
  if (failed) {
    const why = failed.signal ? `was killed by ${failed.signal}` : `exited with code ${failed.code}`;
    err(`shardts launch: rank ${failed.rank} ${why}; stopped the other ${world - 1} rank(s)${failed.tail.length ? `. Its last lines:\n  ${failed.tail.slice(-8).join("\n  ")}` : ""}`);
  }
  return { code: failed ? (failed.code && failed.code > 0 ? failed.code : 1) : 0, failed, pids: children.map((c) => c.pid!) };
}
