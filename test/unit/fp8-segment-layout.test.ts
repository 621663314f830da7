// The CUDA lowering of scaled_segment_dot without a GPU: the padded group-major layout
// (runtime/cuda/padded-segments.ts paddedLayout) fed to the grouped FP8 GEMM's CPU model
// (compiler/numeric/fp8-gemm.ts, the model the generated kernels are checked against) reproduces the
// op's CPU reference bit for bit, for random, skewed and empty-expert counts; and the layout's
// invariants (every 128-row block one expert, each segment's rows once, padding -1).
import { describe, expect, it } from "vitest";
import { Mesh, fromGlobal, evaluate, quantize, sortByKey, gather, type GlobalValue } from "../../stdlib/index.ts";
import { trace } from "../../stdlib/ops/trace.ts";
import type { AnyDTensor } from "../../stdlib/dtensor.ts";
import { paddedLayout } from "../../runtime/cuda/padded-segments.ts";
import { segmentRuns } from "../../compiler/ops/scaled-segment.ts";
import { fp8GemmRef, GROUPED_M_ALIGN } from "../../compiler/numeric/fp8-gemm.ts";
import { e4m3ToBits, roundToBf16 } from "../../compiler/numeric/index.ts";
import { mulberry32 } from "../helpers/prng.ts";

const SEED = process.env.SHARDTS_TEST_SEED !== undefined ? Number(process.env.SHARDTS_TEST_SEED) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
const NOTE = `(replay with SHARDTS_TEST_SEED=${SEED})`;
const Bt = 2, S = 300, E = 4, K = 160, N = 48;

const KEYS: Record<string, (r: () => number) => number> = {
  random: (r) => Math.floor(r() * E),
  skewed: (r) => (r() < 0.7 ? 0 : 1 + Math.floor(r() * (E - 1))),
  "empty experts": (r) => (r() < 0.05 ? -1 : r() < 0.6 ? 1 : 3),
};

describe("scaled_segment_dot's CUDA layout through the grouped FP8 GEMM model", () => {
  for (const [name, gen] of Object.entries(KEYS)) {
    it(`${name} counts: bit for bit the op's CPU reference`, async () => {
      const r = mulberry32(SEED ^ name.length);
      const m = Mesh.of({ d: 1 });
      const keys = fromGlobal(m, { g: Bt, s: S }, "i32", Int32Array.from({ length: Bt * S }, () => gen(r))) as AnyDTensor;
      const { perm, counts } = sortByKey(keys as never, "s", { rows: "rows", groups: "e", numGroups: E }) as unknown as { perm: AnyDTensor; counts: AnyDTensor };
      const table = fromGlobal(m, { g: Bt, s: S, k: K }, "bf16", Float32Array.from({ length: Bt * S * K }, () => roundToBf16(r() * 4 - 2))) as AnyDTensor;
      const rows = gather(table as never, perm as never, "s") as unknown as AnyDTensor;
      const w = fromGlobal(m, { e: E, k: K, n: N }, "bf16", Float32Array.from({ length: E * K * N }, () => roundToBf16(r() * 0.2 - 0.1))) as AnyDTensor;
      const qx = quantize(rows as never, "1x128", "k") as { q: AnyDTensor; scales: AnyDTensor };
      const qw = quantize(w as never, "128x128", ["n", "k"]) as { q: AnyDTensor; scales: AnyDTensor };
      const y = trace("scaled_segment_dot", [qx.q, qx.scales, qw.q, qw.scales, counts], { contract: "k" })[0]!;
      const [gy, gc, xq, xs, wq, ws] = (await evaluate([y, counts, qx.q, qx.scales, qw.q, qw.scales])) as GlobalValue[];
      // the host side of runtime/cuda/fp8-segment.ts: segments, padded layout
      const runs = segmentRuns(gc!.data, Bt, E, 0, 0, E, S, true);
      const lay = paddedLayout(runs, E, Bt, S, S);
      const M = lay.rowMap.length, KB = Math.ceil(K / 128), NB = Math.ceil(N / 128);
      expect(M % GROUPED_M_ALIGN).toBe(0);
      expect(lay.blockGroup.length * GROUPED_M_ALIGN).toBe(M);
      // invariants: each real row once, each 128-row block one expert's rows only, outMap the inverse
      const seen = new Set<number>();
      lay.rowMap.forEach((src, p) => {
        if (src < 0) return;
        expect(seen.has(src)).toBe(false);
        seen.add(src);
        expect(lay.outMap[src]).toBe(p);
      });
      expect(seen.size).toBe(runs.reduce((a, s) => a + s.m, 0));
      if (name === "empty experts") expect(Array.from(lay.blockGroup).filter((g) => g === 0 || g === 2)).toEqual([]);
      // operands as the kernel reads them: A codes [M][K] (padding 0), sa [KB][M], B [E][N][K], sb [E][NB][KB]
      const a = new Uint8Array(M * K), sa = new Float32Array(KB * M);
      lay.rowMap.forEach((src, p) => {
        if (src < 0) return;
        for (let k = 0; k < K; k++) a[p * K + k] = e4m3ToBits(xq!.data[src * K + k]!);
        for (let kb = 0; kb < KB; kb++) sa[kb * M + p] = xs!.data[src * KB + kb]!;
      });
      const b = new Uint8Array(E * N * K), sb = new Float32Array(E * NB * KB);
      for (let e = 0; e < E; e++) {
        for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) b[(e * N + n) * K + k] = e4m3ToBits(wq!.data[(e * K + k) * N + n]!);
        for (let nb = 0; nb < NB; nb++) for (let kb = 0; kb < KB; kb++) sb[(e * NB + nb) * KB + kb] = ws!.data[(e * KB + kb) * NB + nb]!;
      }
      const d = fp8GemmRef({ M, N, K, a, sa, b, sb, blockExpert: lay.blockGroup });
      // back through outMap: rows outside every segment 0
      const got = new Float32Array(Bt * S * N);
      lay.outMap.forEach((p, o) => {
        if (p >= 0) got.set(d.subarray(p * N, (p + 1) * N), o * N);
      });
      const bad = got.findIndex((v, i) => !Object.is(v, gy!.data[i]!) && !(v === 0 && gy!.data[i] === 0));
      expect(bad, `element ${bad}: layout+GEMM model ${got[bad]}, op ${gy!.data[bad]} ${NOTE}`).toBe(-1);
    });
  }
});
