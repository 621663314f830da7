// The prepared cuBLASLt matmul from JS, on the fake native layer: each (form, shape) is prepared once
// and later calls are one positional cublasLtMatmulRun; the prepared problem plus the run's pointers
// are the problem the options entry point (matmulRowMajor's column-major form) describes.
import { describe, expect, it } from "vitest";

import { MatmulPlans, matmulPlans } from "../../runtime/cuda/matmul-plans.ts";
import { columnMajor, matmulRowMajor } from "../../runtime/cuda/native.ts";
import type { MatmulOptions } from "../../runtime/cuda/native-types.ts";
import { fakeAddon } from "../fakes/native-addon.ts";

function recorded() {
  const runs: unknown[][] = [];
  const f = fakeAddon({ spy: (m, args) => void (m === "cublasLtMatmulRun" && runs.push(args)) });
  /** Each run as the problem it performs: the prepared options with the run's pointers. */
  const effective = (): MatmulOptions[] =>
    runs.map(([h, a, b, c, d]) => ({ ...f.matmulProblem(h as number), a: a as bigint, b: b as bigint, c: (c as bigint) || (d as bigint), d: d as bigint }));
  return { f, runs, effective };
}

describe("prepared matmuls (MatmulPlans)", () => {
  it("prepare once per form and shape, then run by handle", () => {
    const { f, runs } = recorded();
    const p = new MatmulPlans(f.addon);
    const dense = { dtype: "bf16", outDtype: "bf16", transA: false, accumulate: false } as const;
    for (let i = 0; i < 3; i++) p.run(dense, 64, 32, 16, 1, 0x1000n, 0x2000n, 0x3000n, 7n);
    p.run(dense, 64, 32, 16, 2, 0x1000n, 0x2000n, 0x3000n, 7n); // another batch: another plan
    p.run({ ...dense, accumulate: true }, 64, 32, 16, 1, 0x1000n, 0x2000n, 0x3000n, 7n); // another form
    expect(f.calls.get("cublasLtMatmulPrepare")).toBe(3);
    expect(runs.map((r) => r[0])).toEqual([1, 1, 1, 2, 3]);
    expect(matmulPlans(f.addon)).toBe(matmulPlans(f.addon));
  });

  it("run the problem matmulRowMajor describes, pointers included", () => {
    const { f, effective } = recorded();
    const cases = [
      { form: { dtype: "f32", outDtype: "f32", transA: false, accumulate: false }, M: 5, N: 7, K: 3, batch: 4 },
      { form: { dtype: "bf16", outDtype: "f32", transA: true, accumulate: false }, M: 8, N: 16, K: 24, batch: 1 },
      { form: { dtype: "bf16", outDtype: "bf16", transA: false, accumulate: true }, M: 9, N: 16, K: 8, batch: 1 },
    ] as const;
    const want: MatmulOptions[] = [];
    for (const [i, c] of cases.entries()) {
      // odd offsets too: the alignment is the native run's business, the problem must not change
      const a = 0x10000n + BigInt(i * 6), b = 0x20000n, d = 0x30000n + BigInt(i * 2);
      matmulPlans(f.addon).run(c.form, c.M, c.N, c.K, c.batch, a, b, d, 5n);
      const o = {
        dtype: c.form.dtype, outDtype: c.form.outDtype, M: c.M, N: c.N, K: c.K, transA: c.form.transA || undefined, a, b, d,
        ...(c.form.accumulate ? { c: d, beta: 1 } : {}),
        ...(c.batch > 1 ? { batch: c.batch, strideA: c.M * c.K, strideB: c.K * c.N, strideD: c.M * c.N } : {}),
      };
      const cm = columnMajor(o);
      want.push({ ...cm, c: cm.c ?? cm.d });
    }
    expect(effective()).toEqual(want);
  });

  it("matmulRowMajor prepares and runs with its workspace and stream; the fake refuses unknown handles", () => {
    const { f, runs } = recorded();
    matmulRowMajor(f.addon, { dtype: "f32", M: 2, N: 3, K: 4, a: 16n, b: 32n, d: 48n, workspace: 4096n, workspaceBytes: 1 << 20, stream: 9n });
    expect(runs).toEqual([[1, 32n, 16n, 0n, 48n, 4096n, 9n]]);
    expect(f.matmulProblem(1)).toMatchObject({ m: 3, n: 2, k: 4, lda: 3, ldb: 4, ldd: 3, workspaceBytes: 1 << 20 });
    matmulRowMajor(f.addon, { dtype: "f32", M: 2, N: 3, K: 4, a: 16n, b: 32n, d: 48n, workspaceBytes: 1 << 20 });
    expect(f.matmulProblem(2).workspaceBytes).toBeUndefined(); // no workspace pointer, no workspace (as before)
    expect(() => f.addon.cublasLtMatmulRun(7 as never, 0n, 0n, 0n, 0n, 0n, 0n)).toThrow(/unknown handle 7/);
  });
});
