// The strided-copy planner (runtime/cuda/copy-plan.ts): which kernel a copy gets, from its geometry and alignment.
import { describe, expect, it } from "vitest";
import { planCopy, simplifyGeo } from "../../runtime/cuda/copy-plan.ts";

describe("strided copy planning", () => {
  it("drops size-1 dims and merges dims contiguous on both sides", () => {
    expect(simplifyGeo([2, 1, 3, 4], [12, 12, 4, 1], [12, 99, 4, 1])).toEqual({ shape: [24], istride: [1], ostride: [1] });
    expect(simplifyGeo([2, 3, 4], [12, 4, 1], [24, 4, 1])).toEqual({ shape: [2, 12], istride: [12, 1], ostride: [24, 1] });
    expect(simplifyGeo([2, 3], [0, 1], [3, 1])).toEqual({ shape: [2, 3], istride: [0, 1], ostride: [3, 1] });
  });

  it("moves contiguous runs in the widest word the run, pointers and strides allow", () => {
    const p = planCopy(2, 0n, 0n, [64, 2048], [2048, 1], [2048, 1]);
    expect(p).toMatchObject({ kind: "runs", word: 16, runs: 1, run: (64 * 2048 * 2) / 16 });
    expect(p.kind === "runs" && p.chunks).toBe(Math.ceil((64 * 2048 * 2) / 16 / 1024));
    expect(planCopy(2, 0n, 6n, [8, 64], [64, 1], [64, 1])).toMatchObject({ kind: "runs", word: 2 });
    expect(planCopy(4, 0n, 0n, [8, 30], [30, 1], [32, 1])).toMatchObject({ kind: "runs", word: 8, runs: 8, run: 15 });
  });

  it("transposes a swap of the contiguous dim through tiles, with the other dims as a batch", () => {
    // [E][K][N] -> [E][N][K]
    expect(planCopy(2, 0n, 0n, [4, 1408, 2048], [2048 * 1408, 1, 1408], [1408 * 2048, 2048, 1])).toEqual({
      kind: "transpose", elem: 2, wide: true, P: 1408, L: 2048, lis: 1408, pos: 2048, batches: 4,
      batch: { shape: [4], istride: [2048 * 1408], ostride: [1408 * 2048] },
    });
  });

  it("moves 1- and 2-byte elements 4 bytes a lane only where sizes, strides and pointers allow", () => {
    const t = (eb: number, src: bigint, P: number, L: number) => planCopy(eb, 0n, src, [P, L], [1, P], [L, 1]);
    expect(t(2, 0n, 64, 64)).toMatchObject({ kind: "transpose", wide: true });
    expect(t(2, 2n, 64, 64)).toMatchObject({ kind: "transpose", wide: false });
    expect(t(2, 0n, 64, 63)).toMatchObject({ kind: "transpose", wide: false });
    expect(t(1, 0n, 64, 66)).toMatchObject({ kind: "transpose", wide: false });
    expect(t(1, 0n, 64, 68)).toMatchObject({ kind: "transpose", wide: true });
    expect(t(4, 0n, 64, 64)).toMatchObject({ kind: "transpose", wide: false });
  });

  it("leaves short runs, thin transposes and other strides to the per-element kernel", () => {
    expect(planCopy(4, 0n, 0n, [100, 3], [3, 1], [4, 1]).kind).toBe("elements");
    expect(planCopy(4, 0n, 0n, [100, 4], [1, 100], [4, 1]).kind).toBe("elements");
    expect(planCopy(4, 0n, 0n, [10, 10], [20, 2], [10, 1]).kind).toBe("elements");
    expect(planCopy(4, 0n, 0n, [], [], []).kind).toBe("elements");
  });
});
