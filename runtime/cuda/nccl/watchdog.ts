// The collective watchdog's decisions, as pure functions of the clock and what ranks reported, so
// they are tested with a fake clock (test/unit/nccl-watchdog.test.ts). watchdog-thread.ts runs them
// on a worker thread, which keeps ticking while the main thread is blocked in a CUDA call waiting on
// a collective that will never finish. They reference nothing outside themselves: the thread gets
// their source text.
import { ShardtsError } from "../../../compiler/errors.ts";
import { UsageError } from "../../../compiler/errors.ts";

/** A collective has not completed within the timeout; the communicators were aborted. */
export class CollectiveTimeoutError extends ShardtsError {}

export const DEFAULT_TIMEOUT_S = 300;

/** SHARDTS_COLLECTIVE_TIMEOUT_S, else 5 minutes. */
export function collectiveTimeoutS(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.SHARDTS_COLLECTIVE_TIMEOUT_S;
  if (v === undefined || v === "") return DEFAULT_TIMEOUT_S;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`SHARDTS_COLLECTIVE_TIMEOUT_S=${JSON.stringify(v)} must be a positive number of seconds`);
  return n;
}

/** One collective this rank has enqueued: its sequence number on its axis's communicator. */
export interface Issued {
  axis: string;
  seq: number;
  what: string;
  /** World ranks of the axis group. */
  group: number[];
}

/**
 * What the watchdog does now. `pending`: whether a collective was enqueued since the last point where
 * the main thread saw the stream drained; `lastBeat`: when the main thread last made progress (ms).
 * Progress is published to the store once waiting has lasted a quarter of the timeout, and the
 * watchdog fires once it has lasted the whole timeout.
 */
export function watchdogAction(now: number, lastBeat: number, pending: boolean, timeoutMs: number): "idle" | "publish" | "fire" {
  if (!pending) return "idle";
  const waited = now - lastBeat;
  if (waited >= timeoutMs) return "fire";
  if (waited >= timeoutMs / 4) return "publish";
  return "idle";
}

/**
 * The timeout message: the oldest collective of this rank's log on which a member of its group is
 * behind (their published count on that axis is below its sequence number), and who they are. With
 * no one behind (every peer arrived: a hang inside NCCL or the network), the last collective issued.
 */
export function describeTimeout(rank: number, log: Issued[], progress: Record<number, Record<string, number> | undefined>, timeoutS: number): string {
  let hit: Issued | undefined, missing: number[] = [];
  for (const c of log) {
    const behind = c.group.filter((r) => r !== rank && (progress[r]?.[c.axis] ?? 0) < c.seq);
    if (behind.length) {
      hit = c;
      missing = behind;
      break;
    }
  }
  const c = hit ?? log[log.length - 1];
  if (!c) return `rank ${rank}: the GPU has not finished its work within ${timeoutS} s and no collective was issued`;
  const who = missing.length
    ? `rank(s) ${missing.join(", ")} had not arrived (their last collective on '${c.axis}': ${missing.map((r) => `#${progress[r]?.[c.axis] ?? 0}`).join(", ")}${missing.some((r) => progress[r] === undefined) ? "; a rank that never reported may have died or hung before its first collective" : ""})`
    : `every rank of the group [${c.group.join(", ")}] had arrived (a hang inside NCCL or the interconnect)`;
  return `rank ${rank}: collective ${c.what} (#${c.seq} on mesh axis '${c.axis}', ranks [${c.group.join(", ")}]) has not completed within ${timeoutS} s (SHARDTS_COLLECTIVE_TIMEOUT_S); ${who}.`;
}
