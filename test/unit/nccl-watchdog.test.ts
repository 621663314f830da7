// The collective watchdog: its decisions on a fake clock, its message, and the thread end to end on
// the CPU (a store, a peer that published it is behind, a collective that never drains).
import { describe, it, expect } from "vitest";
import { collectiveTimeoutS, describeTimeout, watchdogAction, type Issued } from "../../runtime/cuda/nccl/watchdog.ts";
import { WatchdogThread } from "../../runtime/cuda/nccl/watchdog-thread.ts";
import { firstTimeout, withWatchdog } from "./nccl/watchdog-harness.ts";

describe("watchdog decisions", () => {
  it("idles without a pending collective, publishes after a quarter of the timeout, fires at the timeout", () => {
    const T = 20_000;
    expect(watchdogAction(1_000_000, 0, false, T)).toBe("idle");
    expect(watchdogAction(1000 + 4_999, 1000, true, T)).toBe("idle");
    expect(watchdogAction(1000 + 5_000, 1000, true, T)).toBe("publish");
    expect(watchdogAction(1000 + 19_999, 1000, true, T)).toBe("publish");
    expect(watchdogAction(1000 + 20_000, 1000, true, T)).toBe("fire");
  });

  it("SHARDTS_COLLECTIVE_TIMEOUT_S overrides the 5 minute default and is validated", () => {
    expect(collectiveTimeoutS({})).toBe(300);
    expect(collectiveTimeoutS({ SHARDTS_COLLECTIVE_TIMEOUT_S: "20" })).toBe(20);
    expect(() => collectiveTimeoutS({ SHARDTS_COLLECTIVE_TIMEOUT_S: "-1" })).toThrow(/must be a positive number/);
  });

  it("names the first collective a peer is behind on, the axis and the ranks that had not arrived", () => {
    const log: Issued[] = [
      { axis: "tp", seq: 4, what: "all_reduce[tp](sum)", group: [0, 1] },
      { axis: "dp", seq: 7, what: "reduce_scatter[dp](sum -> model)", group: [0, 2] },
      { axis: "dp", seq: 8, what: "all_gather[dp](model)", group: [0, 2] },
    ];
    const msg = describeTimeout(0, log, { 1: { tp: 4 }, 2: { dp: 6, tp: 9 } }, 20);
    expect(msg).toContain("collective reduce_scatter[dp](sum -> model) (#7 on mesh axis 'dp', ranks [0, 2])");
    expect(msg).toContain("within 20 s");
    expect(msg).toContain("rank(s) 2 had not arrived (their last collective on 'dp': #6)");
    expect(describeTimeout(0, log, { 1: { tp: 4 } }, 20)).toMatch(/rank\(s\) 2 had not arrived .*never reported/);
    expect(describeTimeout(0, log, { 1: { tp: 4 }, 2: { dp: 8 } }, 20)).toMatch(/all_gather\[dp\]\(model\) .* every rank of the group \[0, 2\] had arrived/);
  });
});

describe("the watchdog thread", () => {
  it("fires on a collective that never completes, reading the peers' progress from the store", async () => {
    await withWatchdog({ ep: 2 }, async (w, peer) => {
      w.issued({ axis: "ep", seq: 3, what: "all_to_all[ep](batch -> rows)", group: [0, 1] });
      expect(() => w.check()).not.toThrow();
      const { error, ms } = await firstTimeout(w);
      expect(error.name).toBe("CollectiveTimeoutError");
      expect(error.message).toMatch(/all_to_all\[ep\]\(batch -> rows\) \(#3 on mesh axis 'ep', ranks \[0, 1\]\) has not completed within 0.6 s/);
      expect(error.message).toContain("rank(s) 1 had not arrived (their last collective on 'ep': #2)");
      expect(error.message).toContain("ncclCommAbort failed");
      expect(ms).toBeGreaterThanOrEqual(500);
      // this rank's own progress reached the store
      expect(JSON.parse(await peer.get("progress/0"))).toEqual({ ep: 3 });
    });
  });

  it("keeps the newest 4096 collectives of its shared-memory log and names the first one a peer is behind on", async () => {
    await withWatchdog({ dp: 1000 }, async (w, peer) => {
      const id = w.describe({ axis: "dp", what: "all_gather[dp](model)", group: [0, 1] });
      expect(w.describe({ axis: "dp", what: "all_gather[dp](model)", group: [0, 1] })).toBe(id);
      for (let seq = 1; seq <= 5000; seq++) w.issuedId(id, seq);
      const msg = (await firstTimeout(w)).error.message;
      expect(msg).toMatch(/all_gather\[dp\]\(model\) \(#1001 on mesh axis 'dp', ranks \[0, 1\]\)/);
      expect(msg).toContain("rank(s) 1 had not arrived (their last collective on 'dp': #1000)");
      expect(JSON.parse(await peer.get("progress/0"))).toEqual({ dp: 5000 });
    });
  });

  it("does not fire while the main thread drains its collectives", async () => {
    const w = new WatchdogThread({ rank: 0, storeAddr: "127.0.0.1", storePort: 1, token: "t".repeat(24), addonPath: "/nonexistent", timeoutS: 0.3, graceMs: 60_000 });
    try {
      for (let i = 1; i <= 6; i++) {
        w.issued({ axis: "dp", seq: i, what: "all_reduce[dp](sum)", group: [0, 1] });
        await new Promise((r) => setTimeout(r, 100));
        w.drained();
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(() => w.check()).not.toThrow();
    } finally {
      await w.stop();
    }
  });
});
