// Happens-before between the device work of a run on the fake native layer (test/fakes/native-addon.ts),
// for tests of work spread over streams: every stream keeps a vector clock, a launch (kernel, copy,
// memset, cuBLASLt or NCCL call) advances its own stream's entry, eventRecord copies the stream's clock
// into the event, streamWaitEvent merges an event's clock into the stream, and the host's syncs merge
// into a host clock that every later launch starts from. Feed it the fake's spy calls (`see`) and the
// caching allocator's releases (`released`); `after(b, a)` then says whether launch b is ordered after
// launch a on the GPU, and `hazards` finds the cross-stream races the runtime must not have.
const DEVICE_LO = 0x7f0000000000n, DEVICE_HI = 0x800000000000n;
const isDevicePtr = (v: unknown): v is bigint => typeof v === "bigint" && v >= DEVICE_LO && v < DEVICE_HI;
/** Calls whose last argument is the stream they are enqueued on. */
const ON_LAST = new Set(["memcpyHtoDAsync", "memcpyDtoHAsync", "memcpyDtoDAsync", "memsetD8", "memsetD32", "cublasLtMatmulRun", "ncclAllGather", "ncclReduceScatter", "ncclAllReduce", "ncclSend", "ncclRecv"]);

type Clock = Map<bigint, number>;

export interface Launch {
  /** Index in the order of calls seen. */
  at: number;
  method: string;
  /** The kernel's name (launchKernel), else the method. */
  name: string;
  stream: bigint;
  /** Its place on its stream (1, 2, ...). */
  n: number;
  clock: Clock;
  /** Device pointers among its arguments and kernel parameters. */
  ptrs: bigint[];
  params?: Uint8Array;
}

const merge = (into: Clock, from: Clock | undefined) => from?.forEach((v, s) => into.set(s, Math.max(into.get(s) ?? 0, v)));

export class StreamOrder {
  readonly launches: Launch[] = [];
  private readonly streams = new Map<bigint, Clock>();
  private readonly events = new Map<bigint, Clock>();
  private readonly host: Clock = new Map();
  /** Allocator releases: pointer -> indices of the calls seen when it was released. */
  private readonly releases = new Map<bigint, number[]>();
  private calls = 0;

  /** `nameOf`: a kernel function handle's name (the fake's kernelName). */
  constructor(private readonly nameOf: (fn: unknown) => string | undefined = () => undefined) {}

  private clockOf(s: bigint): Clock {
    let c = this.streams.get(s);
    if (!c) this.streams.set(s, (c = new Map()));
    return c;
  }

  see(method: string, args: unknown[]): void {
    const at = this.calls++;
    if (method === "eventRecord") return void this.events.set(args[0] as bigint, new Map(this.clockOf(args[1] as bigint)));
    if (method === "streamWaitEvent") return merge(this.clockOf(args[0] as bigint), this.events.get(args[1] as bigint));
    if (method === "eventSynchronize") return merge(this.host, this.events.get(args[0] as bigint));
    if (method === "streamSynchronize") return merge(this.host, this.streams.get(args[0] as bigint));
    if (method === "ctxSynchronize") return this.streams.forEach((c) => merge(this.host, c));
    let stream: unknown, params: Uint8Array | undefined;
    if (method === "launchKernel") (stream = args[4]), (params = args[5] instanceof Uint8Array ? Uint8Array.from(args[5]) : undefined);
    else if (ON_LAST.has(method)) stream = args[args.length - 1];
    if (typeof stream !== "bigint") return; // (a synchronous call, or one with no stream: not device work here)
    const c = this.clockOf(stream);
    merge(c, this.host);
    const n = (c.get(stream) ?? 0) + 1;
    c.set(stream, n);
    const ptrs = args.filter(isDevicePtr);
    if (params) {
      const v = new DataView(params.buffer, params.byteOffset, params.byteLength);
      for (let i = 0; i + 8 <= params.byteLength; i += 8) if (isDevicePtr(v.getBigUint64(i, true))) ptrs.push(v.getBigUint64(i, true));
    }
    const name = (method === "launchKernel" && this.nameOf(args[0])) || method;
    this.launches.push({ at, method, name, stream, n, clock: new Map(c), ptrs, params });
  }

  /** The caching allocator handed `ptr` back (a later launch using it works on another tensor). */
  released(ptr: bigint): void {
    const r = this.releases.get(ptr) ?? [];
    r.push(this.calls++);
    this.releases.set(ptr, r);
  }

  /** Whether launch `b` runs after launch `a` has finished on the GPU. */
  after(b: Launch, a: Launch): boolean {
    return (b.clock.get(a.stream) ?? 0) >= a.n;
  }

  /**
   * Races around each launch `a` that `on(a)` picks (work of another stream): a launch on another stream
   * issued after `a` that uses one of `a`'s pointers once that pointer was released (a new owner of the
   * block, which `a` may still read or write), or one of `writes(a)`, unless it is ordered after `a`; and a
   * launch on another stream issued before `a` that uses one of `a`'s pointers, unless `a` is ordered after it.
   */
  hazards(on: (a: Launch) => boolean, writes: (a: Launch) => bigint[] = () => []): string[] {
    const out: string[] = [];
    const say = (what: string, a: Launch, b: Launch, p: bigint) => out.push(`${what}: ${b.name} (stream ${b.stream}, call ${b.at}) and ${a.name} (stream ${a.stream}, call ${a.at}) share 0x${p.toString(16)}`);
    for (const a of this.launches.filter(on)) {
      const w = new Set(writes(a));
      for (const b of this.launches) {
        if (b.stream === a.stream) continue;
        for (const p of b.ptrs) {
          if (!a.ptrs.includes(p)) continue;
          if (b.at < a.at) {
            if (!this.after(a, b)) say("not ordered before", a, b, p);
          } else if (!this.after(b, a) && (w.has(p) || (this.releases.get(p) ?? []).some((r) => r > a.at && r < b.at))) say(w.has(p) ? "reads what is still being written" : "reuses a block still in use", a, b, p);
        }
      }
    }
    return out;
  }
}
