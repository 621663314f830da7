// The process environment contract, the same as torchrun's, so processes started by shardts launch,
// SLURM (srun), Kubernetes or torchrun itself all find their place in the job.
import { UsageError } from "../../compiler/errors.ts";

export interface DistEnv {
  rank: number;
  localRank: number;
  worldSize: number;
  localWorldSize: number;
  masterAddr: string;
  masterPort: number;
  /** The shared secret every peer presents to the rendezvous store. */
  token: string;
  /** Port of the shardts rendezvous store (SHARDTS_STORE_PORT, else MASTER_PORT). */
  storePort: number;
}

const VARS = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"] as const;

function int(env: NodeJS.ProcessEnv, name: string, min: number): number {
  const v = env[name];
  const n = Number(v);
  if (v === undefined || v === "" || !Number.isInteger(n) || n < min) throw new UsageError(`${name}=${JSON.stringify(v)} must be an integer >= ${min}`);
  return n;
}

/** Reads the contract; a missing or inconsistent variable is an error naming it. */
export function readDistEnv(env: NodeJS.ProcessEnv = process.env): DistEnv {
  const missing = VARS.filter((v) => env[v] === undefined);
  if (missing.length) throw new UsageError(`not started as part of a distributed job: ${missing.join(", ")} unset (start with npx shardts launch, srun, or torchrun)`);
  const d: DistEnv = {
    rank: int(env, "RANK", 0),
    localRank: int(env, "LOCAL_RANK", 0),
    worldSize: int(env, "WORLD_SIZE", 1),
    localWorldSize: int(env, "LOCAL_WORLD_SIZE", 1),
    masterAddr: env.MASTER_ADDR!,
    masterPort: int(env, "MASTER_PORT", 1),
    token: env.SHARDTS_JOB_TOKEN ?? "",
    storePort: env.SHARDTS_STORE_PORT !== undefined ? int(env, "SHARDTS_STORE_PORT", 1) : int(env, "MASTER_PORT", 1),
  };
  if (d.rank >= d.worldSize) throw new UsageError(`RANK=${d.rank} must be below WORLD_SIZE=${d.worldSize}`);
  if (d.localRank >= d.localWorldSize) throw new UsageError(`LOCAL_RANK=${d.localRank} must be below LOCAL_WORLD_SIZE=${d.localWorldSize}`);
  if (d.token.length < 16) throw new UsageError("SHARDTS_JOB_TOKEN must be set to the same secret (16+ characters) on every rank; shardts launch sets it for you");
  return d;
}

export function distEnvVars(d: DistEnv): Record<string, string> {
  return {
    RANK: String(d.rank), LOCAL_RANK: String(d.localRank), WORLD_SIZE: String(d.worldSize), LOCAL_WORLD_SIZE: String(d.localWorldSize),
    MASTER_ADDR: d.masterAddr, MASTER_PORT: String(d.masterPort), SHARDTS_JOB_TOKEN: d.token, SHARDTS_STORE_PORT: String(d.storePort),
  };
}
