// A rank's side of the rendezvous: connect to the store with the job token, share values, wait for
// every rank. Errors name the store address and what to check; every wait has a deadline.
import { connect, type Socket } from "node:net";
import { randomBytes } from "node:crypto";
import { ShardtsError } from "../../compiler/errors.ts";
import type { DistEnv } from "./env.ts";
import { startStore } from "./store.ts";

export class RendezvousError extends ShardtsError {}

interface Reply {
  id?: number;
  error?: string;
  value?: string;
  ok?: boolean;
}

export class StoreClient {
  private sock!: Socket;
  private buf = "";
  private pending = new Map<number, { resolve: (res: Reply) => void; reject: (e: Error) => void }>();
  private nextId = 1;

  private constructor(readonly addr: string, readonly port: number, private readonly timeoutMs: number) {}

  static async connect(addr: string, port: number, token: string, timeoutMs = 60_000): Promise<StoreClient> {
    const c = new StoreClient(addr, port, timeoutMs);
    const deadline = Date.now() + timeoutMs;
    // the master may still be starting: retry refused connections until the deadline
    for (;;) {
      try {
        await c.open();
        break;
      } catch (e) {
        if (Date.now() > deadline) throw new RendezvousError(`could not reach the rendezvous store at ${addr}:${port} within ${timeoutMs / 1000} s (${(e as Error).message}); check MASTER_ADDR, MASTER_PORT / SHARDTS_STORE_PORT and that rank 0 is running`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    await c.request({ token, op: "add", key: "__connections__", amount: 1 });
    return c;
  }

  private open(): Promise<void> {
    return new Promise((resolve, reject) => {
      const s = connect(this.port, this.addr);
      s.setEncoding("utf8");
      s.once("connect", () => {
        this.sock = s;
        s.on("data", (chunk: string) => {
          this.buf += chunk;
          let nl: number;
          while ((nl = this.buf.indexOf("\n")) >= 0) {
            const line = this.buf.slice(0, nl);
            this.buf = this.buf.slice(nl + 1);
            const res = JSON.parse(line) as Reply;
            const p = this.pending.get(res.id ?? -1);
            if (p) this.pending.delete(res.id!), p.resolve(res);
          }
        });
        s.on("close", () => {
          for (const p of this.pending.values()) p.reject(new RendezvousError(`the rendezvous store at ${this.addr}:${this.port} closed the connection`));
          this.pending.clear();
        });
        resolve();
      });
      s.once("error", reject);
    });
  }

  private request(req: object): Promise<Reply> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RendezvousError(`the rendezvous store at ${this.addr}:${this.port} did not answer ${JSON.stringify(req).replace(/"token":"[^"]*",?/, "")} within ${this.timeoutMs / 1000} s`));
      }, this.timeoutMs);
      this.pending.set(id, {
        resolve: (res) => {
          clearTimeout(timer);
          if (res.error) reject(new RendezvousError(`rendezvous store: ${res.error}`));
          else resolve(res);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.sock.write(JSON.stringify({ id, ...req }) + "\n");
    });
  }

  async set(key: string, value: string): Promise<void> {
    await this.request({ op: "set", key, value });
  }
  /** Waits until the key is set. */
  async get(key: string): Promise<string> {
    return (await this.request({ op: "get", key })).value!;
  }
  async list(prefix: string): Promise<string[]> {
    return JSON.parse((await this.request({ op: "list", key: prefix })).value!) as string[];
  }
  async add(key: string, amount = 1): Promise<number> {
    return Number((await this.request({ op: "add", key, amount })).value);
  }
  /** Removes every key starting with `prefix`; returns how many. */
  async deletePrefix(prefix: string): Promise<number> {
    return Number((await this.request({ op: "delete", key: prefix })).value);
  }
  close(): void {
    this.sock?.destroy();
  }
}

/**
 * Joins the job: rank 0 publishes a fresh unique id (the NCCL unique id on GPUs; random bytes on the
 * CPU), every rank reads it and waits until all WORLD_SIZE ranks have arrived.
 */
export async function rendezvous(env: DistEnv, opts: { uniqueId?: () => Buffer; timeoutMs?: number } = {}): Promise<{ uniqueId: Buffer; client: StoreClient; close: () => Promise<void> }> {
  const timeoutMs = opts.timeoutMs ?? Number(process.env.SHARDTS_RENDEZVOUS_TIMEOUT ?? 300) * 1000;
  // started by srun/torchrun rather than shardts launch: rank 0 hosts the store itself
  const hosted = env.rank === 0 && process.env.SHARDTS_STORE_HOSTED !== "1" ? await startStore(env.token, env.storePort, "0.0.0.0") : undefined;
  let client: StoreClient | undefined;
  const close = async () => {
    client?.close();
    await hosted?.close();
  };
  try {
    client = await StoreClient.connect(env.masterAddr, env.storePort, env.token, timeoutMs);
    if (env.rank === 0) await client.set("unique_id", (opts.uniqueId?.() ?? randomBytes(128)).toString("base64"));
    const uniqueId = Buffer.from(await client.get("unique_id"), "base64");
    await client.set(`arrived/${env.rank}`, "1");
    const arrived = await client.add("arrived");
    if (arrived === env.worldSize) await client.set("all_arrived", "1");
    await client.get("all_arrived");
    return { uniqueId, client, close };
  } catch (e) {
    // a failed rank must be free to exit: nothing of the rendezvous may keep it alive
    let missing = "";
    if (e instanceof RendezvousError && /did not answer/.test(e.message) && client) {
      const here: string[] = await Promise.race([client.list("arrived/"), new Promise<string[]>((r) => setTimeout(() => r([]), 2000))]).catch(() => []);
      const absent = Array.from({ length: env.worldSize }, (_, r) => r).filter((r) => !here.includes(`arrived/${r}`));
      missing = absent.length ? `rank(s) ${absent.join(", ")} had not arrived` : "";
    }
    await close();
    if (missing) throw new RendezvousError(`rank ${env.rank}: ${missing} within ${timeoutMs / 1000} s (SHARDTS_RENDEZVOUS_TIMEOUT)`);
    throw e;
  }
}
