// The watchdog's worker thread. The main thread beats (shared memory) as it issues work and tells
// the thread each collective it enqueues; the thread publishes this rank's per-axis collective
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

// Runs in the worker; `describeTimeout` and `watchdogAction` are prepended as source text.
const THREAD = String.raw`
const { workerData, parentPort } = require("node:worker_threads");
const net = require("node:net"), fs = require("node:fs");
const { rank, storeAddr, storePort, token, addonPath, timeoutS, graceMs, shared, text } = workerData;
const f64 = new Float64Array(shared), msg = new Uint8Array(text);
let log = [], counts = {}, comms = [], published = "", lastPublish = 0, fired = false;
parentPort.on("message", (m) => {
  if (m.type === "issued") { log.push(m.c); if (log.length > 4096) log.shift(); counts[m.c.axis] = m.c.seq; }
  else if (m.type === "drained") log = [];
  else if (m.type === "comms") comms = m.comms;
});
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
  const v = JSON.stringify(counts), now = Date.now();
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
  let text = "CollectiveTimeoutError: " + describeTimeout(rank, log, progress, timeoutS);
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
  readonly timeoutS: number;

  constructor(o: WatchdogOptions) {
    this.timeoutS = o.timeoutS ?? collectiveTimeoutS();
    const shared = new SharedArrayBuffer(8 * 4), text = new SharedArrayBuffer(4096);
    this.f64 = new Float64Array(shared);
    this.text = new Uint8Array(text);
    this.f64[BEAT] = Date.now();
    const src = `${watchdogAction.toString()}\n${describeTimeout.toString()}\n${THREAD}`;
    this.worker = new Worker(src, { eval: true, workerData: { ...o, timeoutS: this.timeoutS, graceMs: o.graceMs ?? 5000, shared, text } });
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
  issued(c: Issued): void {
    this.beat();
    this.f64[PENDING] = 1;
    this.worker.postMessage({ type: "issued", c });
  }
  /** Everything issued so far has completed (the main thread synchronised with the GPU). */
  drained(): void {
    this.beat();
    this.f64[PENDING] = 0;
    this.worker.postMessage({ type: "drained" });
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
