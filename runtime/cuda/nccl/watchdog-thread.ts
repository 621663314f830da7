// The watchdog's worker thread. The main thread beats (shared memory) as it issues work and logs
// each collective it enqueues into a shared-memory ring (a few stores, no message: a collective's
// description is posted to the thread once, when first seen, and later entries name it by id); the
// thread publishes this rank's per-axis collective
// counts to the rendezvous store, and when a collective has been pending for the timeout with no
// beat, it reads the peers' counts, names the collective and the ranks that had not arrived,
// aborts the communicators, writes the message to stderr and to shared memory (the main thread
// throws it as a CollectiveTimeoutError if it wakes up), and ends the process after a grace period
// if the main thread stays blocked. It runs in a thread because the main thread may be blocked in a
// CUDA call that waits for the collective.
import { Worker } from "node:worker_threads";
import { collectiveTimeoutS, describeTimeout, watchdogAction, CollectiveTimeoutError, type Issued } from "./watchdog.ts";

export interface WatchdogOptions {
  rank: number;
  storeAddr: string;
  storePort: number;
  token: string;
  /** The native addon's path (the thread loads it to call ncclCommAbort). */
  addonPath: string;
  timeoutS?: number;
  /** After firing, how long the main thread gets to throw before the process is ended. */
  graceMs?: number;
}

const BEAT = 0, PENDING = 1, FIRED = 2;
/** The ring of issued collectives (Int32 words): [head, drainedAt, then RING pairs (description id, seq)]. */
const RING = 4096, HEAD = 0, DRAINED = 1, ENTRIES = 2;
/** Per mesh-axis id, the latest sequence number issued (what is published to the store). */
const MAX_AXES = 256;

// Runs in the worker; `describeTimeout` and `watchdogAction` are prepended as source text.
const THREAD = String.raw`
const { workerData, parentPort } = require("node:worker_threads");
const net = require("node:net"), fs = require("node:fs");
const { rank, storeAddr, storePort, token, addonPath, timeoutS, graceMs, shared, text, ring, axisSeq } = workerData;
const f64 = new Float64Array(shared), msg = new Uint8Array(text), r32 = new Int32Array(ring), seqs = new Int32Array(axisSeq);
let descs = [], axes = [], comms = [], published = "", lastPublish = 0, fired = false;
parentPort.on("message", (m) => {
  if (m.type === "describe") descs[m.id] = m.d;
  else if (m.type === "axis") axes[m.id] = m.axis;
  else if (m.type === "comms") comms = m.comms;
});
// the collectives issued since the main thread last saw the stream drained (the newest ${RING})
function issuedLog() {
  const head = Atomics.load(r32, ${HEAD}), from = Math.max(Atomics.load(r32, ${DRAINED}), head - ${RING}), log = [];
  for (let i = from; i < head; i++) {
    const at = ${ENTRIES} + 2 * (i % ${RING}), d = descs[r32[at]];
    log.push(d ? { ...d, seq: r32[at + 1] } : { axis: "?", what: "collective #" + r32[at], group: [], seq: r32[at + 1] });
  }
  return log;
}
function countsNow() {
  const c = {};
  axes.forEach((a, i) => { if (seqs[i] > 0) c[a] = Atomics.load(seqs, i); });
  return c;
}
let sock, buf = "", nextId = 1, waiting = new Map();
function request(req) {
  return new Promise((resolve, reject) => {
    const go = () => { const id = nextId++; waiting.set(id, resolve); sock.write(JSON.stringify({ id, token, ...req }) + "\n"); };
    if (sock) return go();
    sock = net.connect(storePort, storeAddr, go);
    sock.setEncoding("utf8");
    sock.on("data", (d) => { buf += d; let nl; while ((nl = buf.indexOf("\n")) >= 0) { const r = JSON.parse(buf.slice(0, nl)); buf = buf.slice(nl + 1); const w = waiting.get(r.id); if (w) waiting.delete(r.id), w(r); } });
    sock.on("error", (e) => { for (const w of waiting.values()) w({ error: String(e) }); waiting.clear(); sock = undefined; });
    sock.unref();
  });
}
const within = (p, ms) => Promise.race([p, new Promise((r) => setTimeout(() => r({ error: "timeout" }), ms))]);
async function publish(force) {
  const v = JSON.stringify(countsNow()), now = Date.now();
  if (!force && (v === published || now - lastPublish < 1000)) return;
  published = v; lastPublish = now;
  await within(request({ op: "set", key: "progress/" + rank, value: v }), 2000);
}
async function fire() {
  fired = true;
  await publish(true).catch(() => {});
  const progress = {};
  const keys = await within(request({ op: "list", key: "progress/" }), 3000);
  for (const k of keys.value ? JSON.parse(keys.value) : []) {
    const r = await within(request({ op: "get", key: k }), 2000);
    if (r.value) progress[Number(k.slice(9))] = JSON.parse(r.value);
  }
  let text = "CollectiveTimeoutError: " + describeTimeout(rank, issuedLog(), progress, timeoutS);
  try {
    const addon = require(addonPath);
    for (const c of comms) addon.ncclCommAbort(BigInt(c));
    text += " Aborted " + comms.length + " communicator(s).";
  } catch (e) { text += " (ncclCommAbort failed: " + String(e && e.message).split("\n")[0] + ")"; }
  const bytes = Buffer.from(text).subarray(0, msg.length);
  msg.set(bytes);
  f64[${FIRED}] = bytes.length;
  fs.writeSync(2, "shardts: " + text + "\n");
  setTimeout(() => { fs.writeSync(2, "shardts: rank " + rank + ": the main thread stayed blocked " + graceMs / 1000 + " s after the abort; ending the process\n"); process.kill(process.pid, "SIGKILL"); }, graceMs);
}
setInterval(() => {
  if (fired) return;
  const a = watchdogAction(Date.now(), f64[${BEAT}], f64[${PENDING}] > 0, timeoutS * 1000);
  if (a === "fire") fire().catch((e) => fs.writeSync(2, "shardts: watchdog: " + e + "\n"));
  else publish(a === "publish").catch(() => {});
}, 200);
`;

export class WatchdogThread {
  private readonly f64: Float64Array;
  private readonly text: Uint8Array;
  private readonly worker: Worker;
  private readonly ring: Int32Array;
  private readonly axisSeq: Int32Array;
  private readonly ids = new Map<string, number>();
  private readonly axisIds = new Map<string, number>();
  /** Description id -> axis id. */
  private readonly axisOf: number[] = [];
  readonly timeoutS: number;

  constructor(o: WatchdogOptions) {
    this.timeoutS = o.timeoutS ?? collectiveTimeoutS();
    const shared = new SharedArrayBuffer(8 * 4), text = new SharedArrayBuffer(4096);
    const ring = new SharedArrayBuffer(4 * (ENTRIES + 2 * RING)), axisSeq = new SharedArrayBuffer(4 * MAX_AXES);
    this.f64 = new Float64Array(shared);
    this.text = new Uint8Array(text);
    this.ring = new Int32Array(ring);
    this.axisSeq = new Int32Array(axisSeq);
    this.f64[BEAT] = Date.now();
    const src = `${watchdogAction.toString()}\n${describeTimeout.toString()}\n${THREAD}`;
    this.worker = new Worker(src, { eval: true, workerData: { ...o, timeoutS: this.timeoutS, graceMs: o.graceMs ?? 5000, shared, text, ring, axisSeq } });
    this.worker.unref();
  }

  /** The communicators to abort when it fires (as decimal strings: bigints do not cross threads as such). */
  setComms(comms: bigint[]): void {
    this.worker.postMessage({ type: "comms", comms: comms.map(String) });
  }
  /** The main thread made progress. */
  beat(): void {
    this.f64[BEAT] = Date.now();
  }
  /**
   * The id of a collective's description (axis, what, group), told to the thread the first time it
   * is seen; callers that issue the same collective again keep the id and call `issuedId`.
   */
  describe(d: Omit<Issued, "seq">): number {
    const key = `${d.axis}\n${d.what}\n${d.group.join(",")}`;
    let id = this.ids.get(key);
    if (id === undefined) {
      this.ids.set(key, (id = this.ids.size));
      let axis = this.axisIds.get(d.axis);
      if (axis === undefined) {
        if (this.axisIds.size >= MAX_AXES) throw new RangeError(`the watchdog tracks at most ${MAX_AXES} mesh axes`);
        this.axisIds.set(d.axis, (axis = this.axisIds.size));
        this.worker.postMessage({ type: "axis", id: axis, axis: d.axis });
      }
      this.worker.postMessage({ type: "describe", id, d: { axis: d.axis, what: d.what, group: d.group } });
      this.axisOf[id] = axis;
    }
    return id;
  }

  /** Collective `seq` of description `id` (from `describe`) was enqueued: a few shared-memory stores. */
  issuedId(id: number, seq: number): void {
    this.f64[BEAT] = Date.now();
    this.f64[PENDING] = 1;
    const r = this.ring, head = r[HEAD]!, at = ENTRIES + 2 * (head % RING);
    r[at] = id;
    r[at + 1] = seq;
    Atomics.store(r, HEAD, head + 1);
    Atomics.store(this.axisSeq, this.axisOf[id]!, seq);
  }

  issued(c: Issued): void {
    this.issuedId(this.describe(c), c.seq);
  }

  /** Everything issued so far has completed (the main thread synchronised with the GPU). */
  drained(): void {
    this.beat();
    this.f64[PENDING] = 0;
    Atomics.store(this.ring, DRAINED, Atomics.load(this.ring, HEAD));
  }
  /** Throws the watchdog's error once it has fired. */
  check(): void {
    const n = this.f64[FIRED]!;
    if (n > 0) throw new CollectiveTimeoutError(Buffer.from(this.text.subarray(0, n)).toString().replace(/^CollectiveTimeoutError: /, ""));
  }
  stop(): Promise<number> {
    return this.worker.terminate();
  }
}
