// The CUDA backend's hand-written kernels (layout moves, word-wise copies and gathers, routing, fills, MoE dispatch/combine,
// the segment plan on device-side counts) compile for sm_90a with
// the machine's nvcc, each as NVRTC will see it (one self-contained source per kernel), with no
// local-memory spills. Skipped, saying so, where nvcc is absent.
import { describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { allSources } from "../../runtime/cuda/kernels/sources.ts";
import { fp8Sources } from "../../runtime/cuda/kernels/fp8-sources.ts";
import { moeSources } from "../../runtime/cuda/kernels/moe-sources.ts";
import { moveSources } from "../../runtime/cuda/kernels/move-sources.ts";
import { segmentSources } from "../../runtime/cuda/kernels/segment-sources.ts";
import { scatterSources } from "../../runtime/cuda/kernels/scatter-sources.ts";
import { NVCC, noteIfNoNvcc } from "./gxx.ts";

noteIfNoNvcc("runtime-kernels.test.ts");

describe.skipIf(!NVCC)("runtime kernels compile for sm_90a", () => {
  it("every kernel compiles with no spills", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-kernels-"));
    const run = promisify(execFile);
    const kernels = [...allSources(), ...fp8Sources(), ...moeSources(), ...moveSources(), ...segmentSources(), ...scatterSources()];
    const results: { name: string; regs: string; spills: string }[] = [];
    // two at a time: the CI machine has two cores
    for (let i = 0; i < kernels.length; i += 2) {
      await Promise.all(
        kernels.slice(i, i + 2).map(async (k) => {
          const cu = join(dir, `${k.name}.cu`);
          writeFileSync(cu, k.source);
          const { stderr } = await run(NVCC!, ["-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-Xptxas", "-v", "-o", join(dir, `${k.name}.cubin`), cu]);
          results.push({ name: k.name, regs: /Used (\d+) registers/.exec(stderr)?.[1] ?? "?", spills: /(\d+) bytes spill stores/.exec(stderr)?.[1] ?? "?" });
        }),
      );
    }
    console.log(results.map((r) => `${r.name.padEnd(28)} ${r.regs} regs, ${r.spills} bytes spilled`).join("\n"));
    expect(results).toHaveLength(kernels.length);
    for (const r of results) expect(r.spills, r.name).toBe("0");
  }, 120_000);
});
