// Shared set-up of the watchdog-thread tests: a job store in which peer rank 1 has reported its
// progress, rank 0's WatchdogThread on it (no addon: its communicator abort fails and says so), and
// a poll of check() until the watchdog fires.
import { WatchdogThread } from "../../../runtime/cuda/nccl/watchdog-thread.ts";
import { startStore } from "../../../runtime/launch/store.ts";
import { StoreClient } from "../../../runtime/launch/rendezvous.ts";

/** Runs `body` with rank 0's watchdog and a store client whose rank 1 reports `progress` (collectives per axis); tears all down after. */
export async function withWatchdog(progress: Record<string, number>, body: (w: WatchdogThread, peer: StoreClient) => Promise<void>): Promise<void> {
  const token = "t".repeat(24);
  const store = await startStore(token);
  const peer = await StoreClient.connect("127.0.0.1", store.port, token);
  await peer.set("progress/1", JSON.stringify(progress));
  const w = new WatchdogThread({ rank: 0, storeAddr: "127.0.0.1", storePort: store.port, token, addonPath: "/nonexistent/addon.node", timeoutS: 0.6, graceMs: 60_000 });
  try {
    await body(w, peer);
  } finally {
    await w.stop();
    peer.close();
    await store.close();
  }
}

/** Polls `w.check()` every 100 ms until it throws: that error and the milliseconds it took. Fails after 10 s. */
export async function firstTimeout(w: WatchdogThread): Promise<{ error: Error; ms: number }> {
  const t0 = Date.now();
  for (;;) {
    await new Promise((r) => setTimeout(r, 100));
    try {
      w.check();
    } catch (e) {
      return { error: e as Error, ms: Date.now() - t0 };
    }
    if (Date.now() - t0 > 10_000) throw new Error("the watchdog did not fire within 10 s");
  }
}
