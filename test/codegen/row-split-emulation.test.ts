// Few, long rows (compiler/codegen/split.ts): a reduction over them becomes two row kernels, the
// partials of parts of each row, then their sum per row. Here the fused plan runs on the CPU with
// every row kernel's results taken from its generated text, compiled by g++ with test/codegen/emu and
// launched as launch.ts says (few SMs, so blocks take many parts), on the vector path and on the
// scalar one; the plan's outputs must match the unfused plan on the CPU backend within the CUDA
// backend's tolerances (f32 1e-5, bf16 1e-2, relative to the largest value). Cases: one row of
// 2^20 + 36 columns (a short last part); a few rows (mean, max, a bf16 sum); add -> mul -> sum over
// a whole tensor with the add written too and a scalar input added to the total (an operand of the
// second kernel); rows sharded over an uneven mesh (each rank its own number of parts). Skipped,
// saying so, without g++.
import { describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Mesh, Shard, type AnyDTensor } from "../../stdlib/index.ts";
import { input, piecesOf } from "../../stdlib/program.ts";
import { add, mul } from "../../stdlib/nn/ops-internal.ts";
import { max, mean, sum } from "../../stdlib/ops/reduce.ts";
import { compile } from "../../compiler/pipeline.ts";
import { fuse } from "../../compiler/codegen/fuse.ts";
import { emitCuda } from "../../compiler/codegen/cuda/emit.ts";
import { launchOf } from "../../compiler/codegen/cuda/launch.ts";
import { geometry } from "../../compiler/codegen/geometry.ts";
import type { KernelInstr } from "../../compiler/codegen/types.ts";
import { allocLocal, type LocalTensor } from "../../compiler/ir/local.ts";
import type { DType } from "../../compiler/ir/types.ts";
import { runPlanCpu } from "../../runtime/cpu/index.ts";
import { runFusedCpu } from "./run-fused.ts";
import { GXX, noteIfNoGxx } from "./gxx.ts";
import { bytesOf, decode, gxxArgs, harness, jobFile } from "./emu-kernel.ts";

noteIfNoGxx("row-split-emulation");

const TOL: Record<string, number> = { f32: 1e-5, bf16: 1e-2 };

let seed = 5;
const rnd = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;

type Feed = (name: string, dims: Record<string, number>, dtype: DType, f: (i: number) => number, shard?: string) => AnyDTensor;
interface Case {
  name: string;
  mesh: number;
  make: (feed: Feed) => AnyDTensor[];
}

const CASES: Case[] = [
  {
    name: "one row of 2^20 + 36: sum of squares", mesh: 1,
    make: (feed) => {
      const x = feed("x", { c: 2 ** 20 + 36 }, "f32", () => rnd() * 2 - 1);
      return [sum(mul(x, x), "c") as AnyDTensor];
    },
  },
  {
    name: "8 rows of 2^17 + 300: mean and max (a NaN in row 3); 6 bf16 rows: sum", mesh: 1,
    make: (feed) => {
      const C = 2 ** 17 + 300;
      const x = feed("x", { r: 8, c: C }, "f32", (i) => (i === 3 * C + 77_777 ? NaN : rnd() * 4 - 1));
      const y = feed("y", { r: 6, c: 2 ** 17 + 8 }, "bf16", () => rnd() * 2 - 0.5);
      return [mean(x, "c") as AnyDTensor, max(x, "c") as AnyDTensor, sum(y, "c") as AnyDTensor];
    },
  },
  {
    name: "add -> mul -> sum over [8, 128, 176] with the add written, plus a scalar", mesh: 1,
    make: (feed) => {
      const dims = { e: 8, m: 128, f: 176 };
      const h = add(feed("a", dims, "f32", () => rnd() * 2 - 1), feed("b", dims, "f32", () => rnd() * 2 - 1));
      const t = feed("t", {}, "f32", () => 0.25);
      return [h, add(sum(mul(h, h), ["e", "m", "f"]) as AnyDTensor, t)];
    },
  },
  {
    name: "4 rows of 3 x 2^17 + 100 sharded over 3 ranks (2^17 + 33 or 34 columns each): sum", mesh: 3,
    make: (feed) => {
      const x = feed("x", { r: 4, c: 3 * 2 ** 17 + 100 }, "f32", () => rnd() * 2 - 1, "c");
      return [sum(mul(x, x), "c") as AnyDTensor];
    },
  },
];

/** Largest error relative to the largest finite reference value; NaN where the reference has NaN. */
function relError(have: ArrayLike<number>, want: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) {
    const a = have[i]!, b = want[i]!;
    if (Number.isNaN(b) || Number.isNaN(a)) {
      if (Number.isNaN(a) !== Number.isNaN(b)) return Infinity;
      continue;
    }
    num = Math.max(num, Math.abs(a - b));
    den = Math.max(den, Math.abs(b));
  }
  return den === 0 ? num : num / den;
}

describe.skipIf(!GXX)("row reductions over few, long rows, split in two kernels, run on a CPU emulation of the GPU", () => {
  it("chain to the unfused plan's results on both paths", () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-rowsplit-"));
    const built = new Set<string>();
    const seen: { split: boolean; vec: boolean; grid: number; rows: number }[] = [];
    for (const c of CASES) {
      const mesh = Mesh.of({ d: c.mesh });
      const feeds = new Map<string, LocalTensor[]>();
      const feed: Feed = (name, dims, dtype, f, shard) => {
        const t = input(mesh, name, dims, dtype, shard ? { d: Shard(shard) } : undefined) as AnyDTensor;
        feeds.set(name, piecesOf(mesh.spec, t.type, Array.from({ length: Object.values(dims).reduce((a, b) => a * b, 1) }, (_, i) => f(i))));
        return t;
      };
      const outs = c.make(feed);
      const plan = compile(mesh.builder.graph, outs.map((o) => o.ref));
      const want = runPlanCpu(plan, feeds).outputs;
      const fp = fuse(plan);
      const prog = emitCuda(fp);
      const split = fp.instrs.filter((k): k is KernelInstr => k.kind === "kernel" && !!k.spec.split);
      expect(split.length, c.name).toBeGreaterThan(0);
      for (const aligned of [true, false]) {
        const got = runFusedCpu(fp, feeds, (k, rank, inputs, outputs) => {
          if (k.spec.kind !== "row") return;
          const kernel = prog.kernels[prog.kernelOf[k.id]!]!;
          const exe = join(dir, kernel.name);
          if (!built.has(kernel.name)) {
            writeFileSync(`${exe}.cu`, kernel.source);
            writeFileSync(`${exe}.cpp`, harness(kernel, k.spec));
            execFileSync(GXX!, gxxArgs(dir, exe), { stdio: "inherit" });
            built.add(kernel.name);
          }
          const l = launchOf(kernel, k, fp, rank, { smCount: 2, aligned });
          if (l.grid === 0) return outputs;
          const outDt = k.spec.results.map((r) => r.dtype), outBytes = outputs.map((o, j) => o.data.length * bytesOf(outDt[j]!));
          const job = join(dir, "job.bin"), out = join(dir, "out.bin");
          writeFileSync(job, jobFile(l, inputs, outBytes));
          execFileSync(exe, [job, out], { stdio: "inherit" });
          const bytes = readFileSync(out);
          const sizes = geometry(k, fp, rank).sizes;
          seen.push({ split: !!k.spec.split, vec: l.vec, grid: l.grid, rows: sizes.slice(0, -1).reduce((a, b) => a * b, 1) });
          let at = 0;
          return outputs.map((o, j) => {
            const t = allocLocal(o.dtype, o.shape);
            t.data.set(decode(outDt[j]!, bytes.subarray(at, at + outBytes[j]!), o.data.length));
            at += outBytes[j]!;
            return t;
          });
        }).outputs;
        want.forEach((w, i) => {
          const err = relError(got[i]!.data, w!.data);
          expect(err, `${c.name}, output ${i} (${aligned ? "vector" : "scalar"} path): relative error`).toBeLessThanOrEqual(TOL[w!.dtype]!);
        });
      }
    }
    // the parts kernels ran on both paths, their blocks taking several parts each
    const parts = seen.filter((s) => s.split);
    expect(new Set(parts.map((s) => s.vec))).toEqual(new Set([true, false]));
    expect(parts.every((s) => s.rows > s.grid)).toBe(true);
  }, 600_000);
});
