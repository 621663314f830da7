// A timeline of a CUDA run for Perfetto / chrome://tracing: each plan instruction bracketed by CUDA
// events on the stream it ran on, read back after the run as complete ("X") events in microseconds
// from the first. Tracing adds two event records per instruction; without it nothing is recorded.
import { writeFileSync } from "node:fs";
import type { Event, NativeAddon, Stream } from "./native-types.ts";

export interface TraceEvent {
  name: string;
  /** What kind of work: "kernel", "gemm", "moe", "op", "comm". */
  cat: string;
  /** Start, µs from the run's first event. */
  ts: number;
  dur: number;
  /** The row it is drawn in (stream and rank). */
  tid: string;
  args?: Record<string, string | number>;
}

/** Records CUDA events around instructions; `collect` (after the stream finished) turns them into TraceEvents. */
export class TraceRecorder {
  private spans: { name: string; cat: string; tid: string; start: Event; end?: Event; args?: TraceEvent["args"] }[] = [];

  constructor(private readonly addon: NativeAddon) {}

  begin(name: string, cat: string, tid: string, stream: Stream, args?: TraceEvent["args"]): void {
    const start = this.addon.eventCreate();
    this.addon.eventRecord(start, stream);
    this.spans.push({ name, cat, tid, start, args });
  }

  /** Closes the latest open span on `stream`. */
  end(stream: Stream): void {
    const s = [...this.spans].reverse().find((x) => !x.end);
    if (!s) return;
    s.end = this.addon.eventCreate();
    this.addon.eventRecord(s.end, stream);
  }

  /** The spans as trace events (call once the streams have finished); frees the events. */
  collect(): TraceEvent[] {
    const a = this.addon, first = this.spans[0]?.start;
    const out: TraceEvent[] = [];
    for (const s of this.spans)
      if (s.end && first) out.push({ name: s.name, cat: s.cat, tid: s.tid, ts: a.eventElapsedTime(first, s.start) * 1000, dur: Math.max(0, a.eventElapsedTime(s.start, s.end) * 1000), ...(s.args ? { args: s.args } : {}) });
    // (destroyed only now: every span is timed from the first span's start event)
    for (const s of this.spans) for (const e of [s.start, s.end]) if (e) a.eventDestroy(e);
    this.spans = [];
    return out;
  }
}

/** The Chrome trace JSON of `events` (pid: the process, e.g. the rank; one row per tid). */
export function chromeTrace(events: readonly TraceEvent[], pid = 0, processName = "shardts"): string {
  const meta = [{ name: "process_name", ph: "M", pid, args: { name: processName } }];
  const body = events.map((e) => ({ name: e.name, cat: e.cat, ph: "X", ts: +e.ts.toFixed(3), dur: +e.dur.toFixed(3), pid, tid: e.tid, ...(e.args ? { args: e.args } : {}) }));
  return JSON.stringify({ displayTimeUnit: "ms", traceEvents: [...meta, ...body] }) + "\n";
}

export function writeChromeTrace(file: string, events: readonly TraceEvent[], pid = 0, processName = "shardts"): void {
  writeFileSync(file, chromeTrace(events, pid, processName));
}

/** How much of the communication time ran while compute was busy (one rank's events). */
export interface CommOverlap {
  /** Total duration of the comm spans, µs. */
  commUs: number;
  /** Of that, the time some non-comm span was running too, µs. */
  overlapUs: number;
  /** Union of the non-comm spans, µs. */
  computeUs: number;
  /** First start to last end, µs. */
  wallUs: number;
  commSpans: number;
}

/** Comm spans (cat "comm") against the union of every other span: what prefetching buys. */
export function commOverlap(events: readonly TraceEvent[]): CommOverlap {
  const busy: [number, number][] = [];
  for (const e of [...events].filter((x) => x.cat !== "comm").sort((a, b) => a.ts - b.ts)) {
    const last = busy[busy.length - 1];
    if (last && e.ts <= last[1]) last[1] = Math.max(last[1], e.ts + e.dur);
    else busy.push([e.ts, e.ts + e.dur]);
  }
  let commUs = 0, overlapUs = 0, commSpans = 0;
  for (const c of events) {
    if (c.cat !== "comm") continue;
    commSpans++;
    commUs += c.dur;
    for (const [a, b] of busy) overlapUs += Math.max(0, Math.min(b, c.ts + c.dur) - Math.max(a, c.ts));
  }
  const start = Math.min(...events.map((e) => e.ts)), end = Math.max(...events.map((e) => e.ts + e.dur));
  return { commUs, overlapUs, computeUs: busy.reduce((s, [a, b]) => s + b - a, 0), wallUs: events.length ? end - start : 0, commSpans };
}

/** Time per instruction name (and category), largest first: where a traced run's time went. */
export function traceTotals(events: readonly TraceEvent[]): { cat: string; name: string; n: number; us: number }[] {
  const by = new Map<string, { cat: string; name: string; n: number; us: number }>();
  for (const e of events) {
    const key = `${e.cat}\u0000${e.name}`;
    const t = by.get(key) ?? by.set(key, { cat: e.cat, name: e.name, n: 0, us: 0 }).get(key)!;
    t.n++;
    t.us += e.dur;
  }
  return [...by.values()].sort((a, b) => b.us - a.us);
}
