// One generated GEMM kernel through nvcc for sm_90a, with the checks every GEMM candidate must pass:
// no warnings, no serialized wgmmas or injected waits (ptxas prints C7514/C7517 as "info": either undoes
// the wgmma groups kept in flight), no stack frame or spills, and registers × threads within the 64K
// register file. Returns the cubin's path, the PTX and the registers, for each test's own checks.
import { expect } from "vitest";
import { execFile } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { NVCC } from "./gxx.ts";

const run = promisify(execFile);
const ARCH = "-gencode=arch=compute_90a,code=sm_90a";

export async function compileGemmKernel(k: { name: string; source: string; threads: number }, dir: string): Promise<{ cubin: string; ptx: string; regs: number }> {
  const cu = join(dir, `${k.name}.cu`), cubin = join(dir, `${k.name}.cubin`);
  writeFileSync(cu, k.source);
  const { stdout, stderr } = await run(NVCC!, [ARCH, "-cubin", "-Xptxas", "-v", "-o", cubin, cu]);
  const log = stdout + stderr;
  expect(log, k.name).not.toMatch(/warning/i);
  expect(log, k.name).not.toMatch(/C751\d|serialized|injected/);
  const props = /(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/.exec(log);
  expect(props, `${k.name}: ptxas printed no properties:\n${log}`).not.toBeNull();
  expect([+props![1]!, +props![2]!, +props![3]!], `${k.name} stack/spills`).toEqual([0, 0, 0]);
  const regs = +(/Used (\d+) registers/.exec(log)?.[1] ?? NaN);
  expect(regs * k.threads, k.name).toBeLessThanOrEqual(65536);
  await run(NVCC!, [ARCH, "-ptx", "-o", join(dir, `${k.name}.ptx`), cu]);
  return { cubin, ptx: readFileSync(join(dir, `${k.name}.ptx`), "utf8"), regs };
}
