// A barrier through the job's rendezvous store, for work that runs outside NCCL (checkpoint saves):
// the n-th `wait` of every rank meets the n-th of the others. Each rank may report a failure, and
// rank 0 may hand every rank a value; every rank gets back all failures and rank 0's value, so one
// rank's error stops every rank at the same point. A rank that never arrives is named when the wait
// times out. A passed barrier's keys are deleted (by rank 0, once the next one has passed), so the
// store stays bounded however many barriers a job runs.
import { RendezvousError, StoreClient } from "./rendezvous.ts";
import { readDistEnv, type DistEnv } from "./env.ts";

export interface BarrierResult {
  /** Failures reported by ranks at this barrier, in rank order. */
  failures: { rank: number; message: string }[];
  /** What rank 0 passed as `value` (undefined if it passed none). */
  value?: string;
}

export class StoreBarrier {
  private gen = 0;

  /** `name` keeps barriers of different users of one store apart. */
  constructor(private readonly client: StoreClient, readonly rank: number, readonly world: number, readonly name: string) {}

  /** Connects a new client to the job's store (from the torchrun environment) for barriers named `name`. */
  static async connect(name: string, env: DistEnv = readDistEnv(), timeoutMs = 600_000): Promise<StoreBarrier> {
    return new StoreBarrier(await StoreClient.connect(env.masterAddr, env.storePort, env.token, timeoutMs), env.rank, env.worldSize, name);
  }

  async wait(opts: { failure?: string; value?: string } = {}): Promise<BarrierResult> {
    const g = ++this.gen, at = `${this.name}/${g}/`;
    const c = this.client;
    // failures and rank 0's value are in the store before this rank counts itself in
    if (opts.failure !== undefined) await c.set(`${at}fail/${this.rank}`, opts.failure.slice(0, 4000));
    if (this.rank === 0 && opts.value !== undefined) await c.set(`${at}value`, opts.value);
    await c.set(`${at}in/${this.rank}`, "1");
    if ((await c.add(`${at}n`)) === this.world) await c.set(`${at}go`, "1");
    try {
      await c.get(`${at}go`);
    } catch (e) {
      if (!(e instanceof RendezvousError) || !/did not answer/.test(e.message)) throw e;
      const here = await c.list(`${at}in/`).catch(() => [] as string[]);
      const absent = Array.from({ length: this.world }, (_, r) => r).filter((r) => !here.includes(`${at}in/${r}`));
      throw new RendezvousError(`rank ${this.rank}: barrier '${this.name}' #${g}: rank(s) ${absent.join(", ")} had not arrived (${e.message})`);
    }
    const failed = (await c.list(`${at}fail/`)).map((k) => Number(k.slice(`${at}fail/`.length))).sort((a, b) => a - b);
    const failures = await Promise.all(failed.map(async (rank) => ({ rank, message: await c.get(`${at}fail/${rank}`) })));
    const value = this.rank === 0 ? opts.value : (await c.list(`${at}value`)).length ? await c.get(`${at}value`) : undefined;
    // everyone has left the previous barrier once all have arrived at this one
    if (this.rank === 0 && g > 1) await c.deletePrefix(`${this.name}/${g - 1}/`);
    return { failures, value };
  }

  close(): void {
    this.client.close();
  }
}
