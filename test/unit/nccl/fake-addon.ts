// A native layer that does nothing but count: every NativeAddon method answers at once (handles are
// fresh bigints, NCCL calls succeed), so RankLocal's host path (runtime/cuda/nccl/collectives.ts) runs
// on the CPU, for the per-collective call counts the unit tests guard and the host-overhead timing
// of bench/host/nccl-step-overhead.ts. Live events are tracked so a test sees leaks.
import type { NativeAddon } from "../../../runtime/cuda/native-types.ts";
import type { CudaExecutor } from "../../../runtime/cuda/executor.ts";
import { CachingAllocator } from "../../../runtime/cuda/memory.ts";

export interface FakeAddon {
  addon: NativeAddon;
  /** Calls per method name since the last reset. */
  calls: Map<string, number>;
  /** Events created and not destroyed. */
  liveEvents: Set<bigint>;
  reset(): void;
}

export function fakeAddon(): FakeAddon {
  const liveEvents = new Set<bigint>();
  let next = 0x1000n;
  const answers: Record<string, (...a: unknown[]) => unknown> = {
    eventCreate: () => (liveEvents.add(++next), next),
    eventDestroy: (e) => {
      if (!liveEvents.delete(e as bigint)) throw new Error(`fake addon: eventDestroy of an unknown event ${String(e)}`);
    },
    streamCreate: () => ++next,
    memAlloc: () => (next += 0x100000n),
    ncclCommGetAsyncError: () => 0,
  };
  // one function per method, made on first use (a fresh closure per access would be most of the cost timed)
  const counters = new Map<string, { n: number }>();
  const fns = new Map<string, (...a: unknown[]) => unknown>();
  const addon = new Proxy({}, {
    get: (_, name: string) => {
      let fn = fns.get(name);
      if (!fn) {
        const c = { n: 0 }, f = answers[name], dflt = name.startsWith("nccl") ? 0 : undefined;
        counters.set(name, c);
        fns.set(name, (fn = f ? (...args: unknown[]) => (c.n++, f(...args)) : () => (c.n++, dflt)));
      }
      return fn;
    },
  }) as NativeAddon;
  const calls = new Map<string, number>();
  const snapshot = () => {
    calls.clear();
    for (const [k, c] of counters) if (c.n) calls.set(k, c.n);
    return calls;
  };
  return {
    addon, liveEvents,
    get calls() { return snapshot(); },
    reset: () => counters.forEach((c) => (c.n = 0)),
  };
}

/** The parts of a CudaExecutor that RankLocal uses, over the fake addon. */
export function fakeExecutor(addon: NativeAddon): CudaExecutor {
  const mem = new CachingAllocator(addon);
  return {
    addon, mem, stream: addon.streamCreate(0),
    release: (t: { ptr: bigint; bytes: number } | undefined) => t && mem.release(t),
    copyStrided: () => addon.launchKernel(0n as never, [1, 1, 1], [1, 1, 1], 0, 0n as never, new Uint8Array(0) as never),
  } as unknown as CudaExecutor;
}
