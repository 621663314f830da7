// A few extra streams that independent GEMMs fan out over: the per-expert problems of a segment
// contraction are each too small to fill an H200 (a 1536×1408×2048 bf16 GEMM is ~66 CTAs of 132
// SMs), so issued one after another on one stream they leave the GPU half idle. `fan` forks the
// side streams from the caller's stream, issues each problem on a lane, and joins them back, so
// work after it on the caller's stream (and the caching allocator's stream-ordered reuse) sees
// every problem done. Problems that write the same output must share a lane (they accumulate).
import type { Event, NativeAddon, Stream } from "./native-types.ts";

const EVENT_DISABLE_TIMING = 2;

export class SideStreams {
  private readonly streams: Stream[] = [];
  private readonly joins: Event[] = [];
  private fork?: Event;

  constructor(private readonly addon: NativeAddon, readonly lanes: number) {
    if (!Number.isInteger(lanes) || lanes < 1) throw new RangeError(`SideStreams: ${lanes} lanes; give a positive integer`);
  }

  /** Issues `issue(i, stream)` for i < n on lane `laneOf(i)` (0 ≤ lane < lanes), between a fork from and a join to `main`. */
  fan(main: Stream, n: number, laneOf: (i: number) => number, issue: (i: number, s: Stream) => void): void {
    if (n === 0) return;
    const a = this.addon, used = new Set<number>();
    for (let i = 0; i < n; i++) used.add(laneOf(i));
    a.eventRecord((this.fork ??= a.eventCreate(EVENT_DISABLE_TIMING)), main);
    for (const l of used) a.streamWaitEvent(this.lane(l), this.fork);
    for (let i = 0; i < n; i++) issue(i, this.lane(laneOf(i)));
    for (const l of used) {
      const e = (this.joins[l] ??= a.eventCreate(EVENT_DISABLE_TIMING));
      a.eventRecord(e, this.lane(l));
      a.streamWaitEvent(main, e);
    }
  }

  private lane(l: number): Stream {
    if (!(l >= 0 && l < this.lanes)) throw new RangeError(`SideStreams: lane ${l} of ${this.lanes}`);
    return (this.streams[l] ??= this.addon.streamCreate(1));
  }
}

const perAddon = new WeakMap<NativeAddon, SideStreams>();

/** The addon's side streams for segment GEMMs (SHARDTS_SEGMENT_LANES, default 4). */
export function segmentLanes(addon: NativeAddon): SideStreams {
  let s = perAddon.get(addon);
  if (!s) perAddon.set(addon, (s = new SideStreams(addon, lanesFromEnv(process.env.SHARDTS_SEGMENT_LANES))));
  return s;
}

export function lanesFromEnv(v: string | undefined): number {
  if (v === undefined || v === "") return 4;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 32) throw new RangeError(`SHARDTS_SEGMENT_LANES=${v}: give an integer from 1 to 32`);
  return n;
}
