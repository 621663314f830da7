// Joining a multi-GPU job from the torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE, ...): rank 0
// makes the NCCL unique id and shares it through the rendezvous store, every rank makes the world
// communicator on GPU LOCAL_RANK, and the collective watchdog starts. After this, plans whose mesh
// has WORLD_SIZE ranks run rank-local on this process's GPU with NCCL.
import { readDistEnv, type DistEnv } from "../../launch/env.ts";
import { StoreClient } from "../../launch/rendezvous.ts";
import { startStore } from "../../launch/store.ts";
import { loadNative } from "../native.ts";
import { Communicators } from "./communicators.ts";
import { RankLocal } from "./collectives.ts";
import { collectiveTimeoutS } from "./watchdog.ts";
import { WatchdogThread } from "./watchdog-thread.ts";

/** True when this process was started as one rank of a job of several (launch, torchrun, srun). */
export const inDistJob = (env: NodeJS.ProcessEnv = process.env) => Number(env.WORLD_SIZE ?? "1") > 1;

export interface JoinedJob {
  env: DistEnv;
  rankLocal: RankLocal;
  close(): Promise<void>;
  /** After a failure on this rank: abort the communicators and stop, without waiting for peers. */
  abort(): Promise<void>;
}

export async function joinJob(env: DistEnv = readDistEnv()): Promise<JoinedJob> {
  const { addon, path } = loadNative();
  addon.init();
  addon.setDevice(env.localRank);
  const timeoutMs = Number(process.env.SHARDTS_RENDEZVOUS_TIMEOUT ?? 300) * 1000;
  // started by torchrun/srun rather than shardts launch: rank 0 hosts the store
  const hosted = env.rank === 0 && process.env.SHARDTS_STORE_HOSTED !== "1" ? await startStore(env.token, env.storePort, "0.0.0.0") : undefined;
  const client = await StoreClient.connect(env.masterAddr, env.storePort, env.token, timeoutMs);
  if (env.rank === 0) await client.set("nccl/unique_id", Buffer.from(addon.ncclGetUniqueId()).toString("base64"));
  const id = new Uint8Array(Buffer.from(await client.get("nccl/unique_id"), "base64"));
  const watchdog = new WatchdogThread({ rank: env.rank, storeAddr: env.masterAddr, storePort: env.storePort, token: env.token, addonPath: path, timeoutS: collectiveTimeoutS() });
  const comms = new Communicators(addon, env.rank, env.worldSize, id, timeoutMs);
  const rankLocal = new RankLocal({ rank: env.rank, localRank: env.localRank, worldSize: env.worldSize, comms, watchdog, timeoutMs: watchdog.timeoutS * 1000 });
  return {
    env,
    rankLocal,
    close: async () => {
      // every rank finishes before rank 0's store goes away
      await client.add("nccl/done");
      if (env.rank === 0) while (Number(await client.add("nccl/done", 0)) < env.worldSize) await new Promise((r) => setTimeout(r, 50));
      await watchdog.stop();
      comms.destroy();
      client.close();
      await hosted?.close();
    },
    abort: async () => {
      await watchdog.stop().catch(() => undefined);
      comms.abort();
      client.close();
      await hosted?.close().catch(() => undefined);
    },
  };
}
