// The fake native layer compiles every kernel to an empty image: tests that run the CUDA executor on
// it keep those images out of the real kernel cache (~/.cache/shardts) with a temporary one.
import { afterAll, beforeAll } from "vitest";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Points SHARDTS_CACHE_DIR at a temporary folder for the enclosing describe block, then restores it. */
export function useTempKernelCache(): void {
  const saved = process.env.SHARDTS_CACHE_DIR, dir = mkdtempSync(join(tmpdir(), "shardts-fake-kernels-"));
  beforeAll(() => void (process.env.SHARDTS_CACHE_DIR = dir));
  afterAll(() => {
    if (saved === undefined) delete process.env.SHARDTS_CACHE_DIR;
    else process.env.SHARDTS_CACHE_DIR = saved;
    rmSync(dir, { recursive: true, force: true });
  });
}
