// Every FP8 GEMM configuration the autotuner may pick (dense and grouped) compiles for sm_90a with
// the machine's nvcc: no warnings, no spills, no stack frame (the accumulators and the promoted
// fragment stay in registers), and the PTX holds the Hopper pieces the design relies on: wgmma
// e4m3 MMAs, TMA tensor loads, mbarrier waits and the setmaxnreg split; the overlapped-promotion
// candidates wait with wait_group 1 and ptxas neither serializes their wgmmas nor injects waits. Skipped, saying so, without nvcc.
import { describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { emitFp8Gemm } from "../../compiler/codegen/cuda/gemm/emit.ts";
import { configName, consumerRegs, defaultGemmConfig, experimentalGemmCandidates, gemmCandidates, producerRegs, rowScaledCandidates, wgmmaN } from "../../compiler/codegen/cuda/gemm/config.ts";
import { NVCC, noteIfNoNvcc } from "./gxx.ts";
import { compileGemmKernel } from "./gemm-ptxas.ts";

noteIfNoNvcc("fp8-gemm.test.ts");

describe.skipIf(!NVCC)("FP8 GEMM kernels compile for sm_90a", () => {
  const run = promisify(execFile);
  const dir = mkdtempSync(join(tmpdir(), "shardts-fp8-gemm-"));

  for (const grouped of [false, true]) {
    it(`every ${grouped ? "grouped" : "dense"} candidate and experimental variant: no warnings, spills or stack; wgmma e4m3 + TMA in the PTX`, async () => {
      const kernels = gemmCandidates(grouped).map(emitFp8Gemm);
      const experimental = experimentalGemmCandidates(grouped).map(emitFp8Gemm);
      expect(kernels.length).toBeGreaterThanOrEqual(8);
      expect(kernels.filter((k) => k.config.overlap).length, "overlapped candidates").toBeGreaterThanOrEqual(3);
      expect(kernels.filter((k) => k.config.multicast).length, "multicast candidates").toBe(grouped ? 0 : 8);
      expect(kernels.filter((k) => k.config.tmaStore).length, "TMA-store candidates").toBe(grouped ? 14 : 18);
      expect(kernels.filter((k) => k.config.chunked).length, "chunked 128 x 256 candidates").toBe(grouped ? 12 : 14);
      // one file per kernel, as NVRTC sees it (each source is self-contained)
      const rows: string[] = [];
      // the autotuner's candidates and the bench's experimental variants (not timed by the autotuner)
      expect(experimental.length, "experimental variants").toBe(grouped ? 0 : 2);
      const all = [...kernels, ...experimental];
      for (let i = 0; i < all.length; i += 2) {
        await Promise.all(
          all.slice(i, i + 2).map(async (k) => {
            const { ptx, regs } = await compileGemmKernel(k, dir);
            // chunked tiles run 128-column wgmma groups
            expect(ptx).toContain(`wgmma.mma_async.sync.aligned.m64n${wgmmaN(k.config)}k32.f32.e4m3.e4m3`);
            expect(ptx).toContain("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes");
            expect(ptx).toMatch(/mbarrier\.(try|test)_wait\.parity/);
            expect(ptx).toContain(`setmaxnreg.dec.sync.aligned.u32 ${producerRegs(k.config)}`);
            expect(ptx).toContain(`setmaxnreg.inc.sync.aligned.u32 ${consumerRegs(k.config)}`);
            // register A: ldmatrix fills the fragment, the wgmmas take A as four 32-bit registers
            if (k.config.aRegs) expect(ptx, k.name).toMatch(/ldmatrix\.sync\.aligned\.m8n8\.x4\.shared\.b16[^]*k32\.f32\.e4m3\.e4m3 \{[^}]*\}, \{%r\d+, %r\d+, %r\d+, %r\d+\}/);
            expect(ptx).toContain("wgmma.wait_group.sync.aligned 0");
            // staged B scales: the scale thread's paired store into the stage, read back by the consumers
            if (k.config.stagedBScales) expect(ptx, k.name).toMatch(/st\.shared\.v2\.f32[^]*mbarrier\.arrive\.shared::cta\.b64/);
            else expect(ptx, k.name).not.toContain("st.shared.v2.f32");
            // stmatrix staging: 16 m8n8.x4 stores a thread instead of 64 st.shared.b32
            if (k.config.stmatrix) expect(ptx, k.name).toContain("stmatrix.sync.aligned.m8n8.x4.shared.b16");
            else expect(ptx, k.name).not.toContain("stmatrix");
            // overlapped promotion: the next block's group stays in flight while the older one is promoted
            if (k.config.overlap) expect(ptx, k.name).toContain("wgmma.wait_group.sync.aligned 1");
            else expect(ptx, k.name).not.toContain("wgmma.wait_group.sync.aligned 1");
            // two-CTA clusters: B multicast, stages released to both CTAs, cluster barriers at start and end
            if (k.config.multicast) {
              expect(ptx, k.name).toMatch(/\.reqnctapercluster 2, 1, 1/);
              expect(ptx, k.name).toContain("multicast::cluster");
              expect(ptx, k.name).toContain("mapa.shared::cluster.u32");
              expect(ptx, k.name).toContain("mbarrier.arrive.shared::cluster.b64");
              expect(ptx.match(/barrier\.cluster\.wait/g)?.length, k.name).toBe(2);
            } else expect(ptx, k.name).not.toContain("multicast::cluster");
            // TMA-store epilogue: staged through shared memory, fenced for the async proxy, stored by TMA
            if (k.config.tmaStore) {
              expect(ptx, k.name).toContain("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group");
              expect(ptx, k.name).toContain("fence.proxy.async.shared::cta");
              expect(ptx, k.name).toContain("cp.async.bulk.wait_group.read 0");
              expect(ptx, k.name).not.toMatch(/st\.global/);
            } else expect(ptx, k.name).toMatch(/st\.global/);
            // A's scales come with each stage (a second TMA load per stage) and are read from shared memory
            expect(ptx.match(/cp\.async\.bulk\.tensor\.2d\.shared::cluster\.global/g)?.length, k.name).toBeGreaterThanOrEqual(3);
            expect(ptx, k.name).toContain("ld.shared.f32");
            rows.push(`${k.name.padEnd(40)} ${regs} regs, ${k.smemBytes} B smem`);
          }),
        );
      }
      console.log(rows.sort().join("\n"));
    }, 300_000);
  }

  it("the globalScales variants (M % 4 != 0) compile clean: A's scales by global loads, no scale TMA", async () => {
    for (const c of gemmCandidates(false).filter((x) => x.persistent && x.consumers === 2 && x.blockN === 128)) {
      const k = emitFp8Gemm({ ...c, globalScales: true });
      expect(k.name).toMatch(/_gs$/);
      const cu = join(dir, `${k.name}.cu`);
      writeFileSync(cu, k.source);
      const { stdout, stderr } = await run(NVCC!, ["-gencode=arch=compute_90a,code=sm_90a", "-ptx", "-o", join(dir, `${k.name}.ptx`), cu]);
      expect(stdout + stderr, k.name).not.toMatch(/warning/i);
      const ptx = readFileSync(join(dir, `${k.name}.ptx`), "utf8");
      expect(ptx, k.name).not.toContain("ld.shared.f32");
      expect(ptx, k.name).toMatch(/ld\.global\.nc\.f32|ld\.global\.f32/);
    }
  }, 300_000);

  it("the traced chunked kernel (trace, the tile timeline) compiles clean with its stamps; untraced sources carry none", async () => {
    const c = defaultGemmConfig(false, { M: 4096, N: 7168 });
    const k = emitFp8Gemm({ ...c, trace: true });
    expect(k.name).toBe(`${configName(c)}_tr`);
    expect(emitFp8Gemm(c).source).not.toMatch(/clock64|globaltimer|trRows/);
    const cu = join(dir, `${k.name}.cu`);
    writeFileSync(cu, k.source);
    const { stdout, stderr } = await run(NVCC!, ["-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-Xptxas", "-v", "-o", join(dir, `${k.name}.cubin`), cu]);
    const log = stdout + stderr;
    expect(log).not.toMatch(/warning/i);
    expect(/(\d+) bytes stack frame, (\d+) bytes spill stores/.exec(log)?.slice(1, 3)).toEqual(["0", "0"]);
    await run(NVCC!, ["-gencode=arch=compute_90a,code=sm_90a", "-ptx", "-o", join(dir, `${k.name}.ptx`), cu]);
    const ptx = readFileSync(join(dir, `${k.name}.ptx`), "utf8");
    expect(ptx).toContain("%globaltimer");
    expect(ptx).toContain("%smid");
    expect(ptx.match(/mov\.u64\s+%rd\d+, %clock64/g)?.length ?? 0).toBeGreaterThanOrEqual(8);
    // the stamps go to the trailing parameter; the kernel still stores D by TMA only
    expect(ptx).toMatch(/\.param \.u64 sh_fp8_gemm_dense_\w+_tr_param_11\s*\)/);
    expect(ptx).toContain("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group");
  }, 300_000);

  it("the row-scaled B kernels (the Wgrad form) compile clean: B's scales by TMA per stage, read as column pairs", async () => {
    const kernels = rowScaledCandidates().map(emitFp8Gemm);
    expect(kernels.length).toBeGreaterThanOrEqual(3);
    expect(kernels.filter((k) => k.config.chunked).length, "chunked 128 x 256 row-scaled kernels").toBe(2);
    for (const k of kernels) {
      expect(k.name).toMatch(/_br(_sm)?$/);
      const cu = join(dir, `${k.name}.cu`);
      writeFileSync(cu, k.source);
      const { stdout, stderr } = await run(NVCC!, ["-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-Xptxas", "-v", "-o", join(dir, `${k.name}.cubin`), cu]);
      const log = stdout + stderr;
      expect(log, k.name).not.toMatch(/warning|C751\d/i);
      expect(/(\d+) bytes stack frame, (\d+) bytes spill stores/.exec(log)?.slice(1, 3), k.name).toEqual(["0", "0"]);
      await run(NVCC!, ["-gencode=arch=compute_90a,code=sm_90a", "-ptx", "-o", join(dir, `${k.name}.ptx`), cu]);
      const ptx = readFileSync(join(dir, `${k.name}.ptx`), "utf8");
      expect(ptx, k.name).toContain("ld.shared.v2.f32");
      // A, B, A's scales and B's scales: four bulk tensor loads per stage
      expect(ptx.match(/cp\.async\.bulk\.tensor\.2d\.shared::cluster\.global/g)?.length, k.name).toBeGreaterThanOrEqual(4);
    }
  }, 300_000);
});
