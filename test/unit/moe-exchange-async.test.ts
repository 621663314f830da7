// MoE dispatch's token exchange stays in flight (runtime/cuda/moe-exchange.ts waitsAtOnce): on the
// CPU over the counting native layer (test/unit/nccl/fake-addon.ts), an exchange into one of the
// plan's values makes compute wait only when an instruction reads it, so compute issued in between
// (the other micro-batch's) is not held behind it; an exchange into an op's inner value (combine's
// rows on the way back) is waited for at once, as the op's own kernels read it next.
import { describe, expect, it } from "vitest";
import { RankLocal } from "../../runtime/cuda/nccl/collectives.ts";
import { Communicators } from "../../runtime/cuda/nccl/communicators.ts";
import { empty } from "../../runtime/cuda/memory.ts";
import { waitsAtOnce } from "../../runtime/cuda/moe-exchange.ts";
import { fakeAddon, fakeExecutor } from "../fakes/native-addon.ts";
import { collectiveCases } from "../../bench/host/nccl-step-overhead.ts";

const noCounts = () => {
  throw new Error("no segmented dims here");
};

describe("MoE exchanges on the communication stream", () => {
  const a2a = collectiveCases(2, 1024).find((c) => c.name === "all_to_all")!;
  // the plan has slots 0 and 1; an op's inner values come after them (Extra.add)
  const withInner = { ...a2a.plan, values: [...a2a.plan.values, a2a.plan.values[1]!] };

  it("waits at once only for an op's inner values", () => {
    expect(waitsAtOnce(a2a.plan, 1)).toBe(false);
    expect(waitsAtOnce(a2a.plan, 2)).toBe(true);
  });

  for (const [what, outSlot] of [["a plan value (dispatch's rows)", 1], ["an inner value (combine's way back)", 2]] as const)
    it(`an exchange into ${what}: compute waits ${outSlot === 1 ? "only at its reader" : "at once"}`, () => {
      const f = fakeAddon();
      const rl = new RankLocal({ rank: 0, localRank: 0, worldSize: 2, comms: new Communicators(f.addon, 0, 2, new Uint8Array(128), 1000), timeoutMs: 60_000 });
      const ex = fakeExecutor(f.addon);
      rl.exec = ex;
      const input = empty(ex.mem, "f32", a2a.plan.values[0]!.shapes[0]!);
      rl.step(withInner, a2a.step, 0, outSlot, input, noCounts, false); // warm the lowering and the event pool
      rl.flush();
      f.reset();
      // the executor's callback after each exchange of a MoE op
      rl.step(withInner, a2a.step, 0, outSlot, input, noCounts, false);
      if (waitsAtOnce(a2a.plan, outSlot)) rl.beforeReads([outSlot]);
      // one wait so far: the comm stream's wait for the compute issued before the step (made by the
      // step's ncclIssue, or a streamWaitEvent of its own where the step has copies)
      const waits = () => (f.calls.get("streamWaitEvent") ?? 0) + (f.calls.get("ncclIssue") ?? 0);
      const waitsAfterIssue = waits();
      expect(waitsAfterIssue).toBe(outSlot === 1 ? 1 : 2);
      expect(rl.pending).toBe(outSlot === 1 ? 1 : 0);
      // other compute reads other slots: no wait
      rl.beforeReads([0]);
      expect(waits()).toBe(waitsAfterIssue);
      // the reader of the exchanged value: compute waits for the step then (once)
      rl.beforeReads([outSlot]);
      expect(waits()).toBe(2);
      expect(rl.pending).toBe(0);
    });
});
