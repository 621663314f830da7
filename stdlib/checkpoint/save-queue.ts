// One background save at a time into a checkpoint directory, shared by AsyncSaver (save.ts: one
// process, every rank) and RankSaver (rank-local.ts: one rank per process). Each save starts when the
// previous one has settled; a failure is reported once, by the next save or flush, and the save that
// reports it does not run.
import { CheckpointError } from "./errors.ts";
import type { SaveHandle, SaveResult } from "./save.ts";

export class SaveQueue {
  private tail: Promise<void> = Promise.resolve();
  private failure: CheckpointError | undefined;
  /** The last committed save. */
  last: SaveResult | undefined;

  constructor(readonly dir: string) {}

  /** Runs `write` once the previous save has settled; resolves when it has started, with its completion. */
  enqueue(step: number, write: () => Promise<SaveResult>): Promise<SaveHandle> {
    const prev = this.tail;
    let release!: () => void;
    this.tail = new Promise<void>((r) => (release = r));
    return (async () => {
      await prev;
      const f = this.takeFailure();
      if (f) {
        release();
        throw f;
      }
      const done = write();
      done.then(
        (r) => ((this.last = r), release()),
        (e) => ((this.failure = e instanceof CheckpointError ? e : new CheckpointError(String((e as Error)?.message ?? e), this.dir)), release()),
      );
      return { step, done };
    })();
  }

  /** Waits for the save under way; throws its error if it failed. Returns the last committed save. */
  async flush(): Promise<SaveResult | undefined> {
    await this.tail;
    const f = this.takeFailure();
    if (f) throw f;
    return this.last;
  }

  private takeFailure(): CheckpointError | undefined {
    const f = this.failure;
    this.failure = undefined;
    return f;
  }
}
