// Saving from one process per rank (shardts launch, torchrun, srun): each process holds only its own
// pieces and writes only the ones it is the writer of; the ranks meet at barriers through the job's
// rendezvous store (runtime/launch/barrier.ts):
//   1. rank 0 clears stale temporaries and makes the save's temporary directory; all learn its name
//   2. every rank writes rank-<r>.safetensors and its manifest there (fsync'd), then all meet
//   3. rank 0 writes metadata.json, fsyncs, renames to step-<n>, replaces `latest`; then all meet
// A failure on any rank is reported at the next barrier, so every rank raises it (the same
// CheckpointError text, naming the rank) and no rank waits for one that gave up. A rank killed
// mid-save leaves only a temporary directory: `latest` still names the previous checkpoint, and
// the next save removes the leftovers. Loading needs no coordination: each process calls
// `loadRank`, which reads only the byte ranges overlapping its own new piece.
import { StoreBarrier, type BarrierResult } from "../../runtime/launch/barrier.ts";
import { worldSize } from "../../compiler/ir/placement.ts";
import { CheckpointError } from "./errors.ts";
import { SaveQueue } from "./save-queue.ts";
import { beginSave, commit, describe, encodeRank, rankPieces, writeRank, type CheckpointState, type RankSnapshot, type SaveHandle, type SaveInfo, type SaveOptions, type SaveResult } from "./save.ts";

/** Where this process stands in the job, and how it meets the others (a StoreBarrier, or a stand-in in tests). */
export interface RankGroup {
  rank: number;
  world: number;
  wait(opts?: { failure?: string; value?: string }): Promise<BarrierResult>;
}

const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

/** What a phase's failures say on every rank. */
function raise(dir: string, step: number, phase: string, r: BarrierResult): void {
  if (!r.failures.length) return;
  const list = r.failures.map((f) => `rank ${f.rank}: ${f.message}`).join("; ");
  throw new CheckpointError(`the save of step ${step} failed while ${phase} (${list}); \`latest\` still names the previous checkpoint`, dir);
}

/**
 * One rank's side of sharded saves in a multi-process job. `save` is collective: every rank calls
 * it with its own pieces of the same step, in the same order. `saveAsync` copies the pieces before
 * it returns, then encodes, writes and commits in the background; a failure on any rank surfaces in
 * the next `saveAsync` or `flush` of every rank.
 */
export class RankSaver {
  private q: SaveQueue;

  constructor(readonly dir: string, readonly group: RankGroup, readonly opts: SaveOptions = {}) {
    if (!Number.isSafeInteger(group.rank) || group.rank < 0 || group.rank >= group.world) throw new CheckpointError(`rank ${group.rank} is not in a job of ${group.world}`, dir);
    this.q = new SaveQueue(dir);
  }

  private check(info: SaveInfo): void {
    if (worldSize(info.mesh) !== this.group.world)
      throw new CheckpointError(`the state's mesh (${info.mesh.axes.map((a, i) => `${a}=${info.mesh.sizes[i]}`).join(", ")}) has ${worldSize(info.mesh)} ranks; this job has ${this.group.world} processes`, this.dir);
  }

  /** The collective protocol for one snapshot (`encode` gives this rank's bytes; it may throw). */
  private async run(info: SaveInfo, encode: () => RankSnapshot): Promise<SaveResult> {
    const { dir, group } = this, step = info.step;
    // 1. rank 0 prepares the temporary directory; every rank learns it (and whether that failed)
    let tmp: string | undefined, fail: string | undefined;
    if (group.rank === 0) tmp = await beginSave(dir, step).catch((e) => ((fail = message(e)), undefined));
    const r1 = await group.wait({ failure: fail, value: JSON.stringify({ tmp, step }) });
    raise(dir, step, "starting", r1);
    const begun = JSON.parse(r1.value ?? "{}") as { tmp?: string; step?: number };
    // 2. every rank writes its file
    fail = undefined;
    try {
      if (begun.step !== step) throw new CheckpointError(`this rank saves step ${step}; rank 0 saves step ${begun.step} (save is collective: same steps, same order)`, dir);
      await writeRank(begun.tmp!, encode(), this.opts);
    } catch (e) {
      fail = message(e);
    }
    raise(dir, step, "writing the rank files", await group.wait({ failure: fail }));
    // 3. rank 0 commits (reading every rank's manifest from the temporary directory)
    let result: SaveResult | undefined;
    fail = undefined;
    if (group.rank === 0) result = await commit(dir, begun.tmp!, info, this.opts).catch((e) => ((fail = message(e)), undefined));
    const r3 = await group.wait({ failure: fail, value: result && JSON.stringify(result) });
    raise(dir, step, "committing", r3);
    return JSON.parse(r3.value!) as SaveResult;
  }

  /** Saves this rank's pieces of `state` (collective); resolves when the checkpoint is committed. */
  async save(state: CheckpointState): Promise<SaveResult> {
    await this.flush();
    const info = describe(state);
    this.check(info);
    const sel = rankPieces(state, this.group.rank, info);
    return (this.q.last = await this.run(info, () => encodeRank(sel)));
  }

  /**
   * Copies this rank's pieces (host pieces: a typed-array copy; a device snapshot: already copied,
   * e.g. into pinned host memory) and saves them in the background. Resolves once the copy is made
   * and the previous save is done; throws the previous save's failure (any rank's).
   */
  saveAsync(state: CheckpointState | { info: SaveInfo; snapshot: RankSnapshot }): Promise<SaveHandle> {
    let info: SaveInfo, encode: () => RankSnapshot;
    try {
      if ("snapshot" in state) {
        info = state.info;
        const snap = state.snapshot;
        if (snap.rank !== this.group.rank || snap.step !== info.step) throw new CheckpointError(`the snapshot is rank ${snap.rank}'s of step ${snap.step}; this is rank ${this.group.rank} saving step ${info.step}`, this.dir);
        encode = () => snap;
      } else {
        info = describe(state);
        const sel = rankPieces(state, this.group.rank, info, true);
        encode = () => encodeRank(sel); // in the background: an unrepresentable value fails there, on every rank
      }
      this.check(info);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.q.enqueue(info.step, () => this.run(info, encode));
  }

  /** Waits for the save under way; throws its failure (any rank's). Returns the last committed save. */
  flush(): Promise<SaveResult | undefined> {
    return this.q.flush();
  }

}

/**
 * A RankSaver for this process of a launched job (the torchrun environment): its own connection to
 * the job's store, barriers named for `dir`. Call `close()` when done.
 */
export async function connectRankSaver(dir: string, opts: SaveOptions = {}): Promise<RankSaver & { close(): void }> {
  const barrier = await StoreBarrier.connect(`ckpt:${dir}`, undefined, opts.waitMs ?? 600_000);
  const saver = new RankSaver(dir, barrier, opts) as RankSaver & { close(): void };
  saver.close = () => barrier.close();
  return saver;
}
