// GPU tier: the native addon against a real GPU (alloc/copy, memset, pinned memory, NVRTC + launch,
// events, graph capture and replay, cuBLASLt f32/bf16 GEMMs, NCCL). Skipped, with the reason printed,
// where there is no usable GPU. The checks themselves live in bench/gpu/lib/native-checks.ts so that
// the bundled runner (bench/gpu/native-check.ts) runs exactly the same code on the GPU machine.
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { cudaAvailable, native } from "../../runtime/cuda/native.ts";
import { CheckContext, nativeChecks } from "../../bench/gpu/lib/native-checks.ts";

const gpu = cudaAvailable();
const why = gpu.ok ? "" : gpu.reason.split("\n")[0]!;
if (!gpu.ok) console.log(`[gpu tier] skipping test/gpu/native.test.ts: no usable GPU: ${gpu.reason}`);

describe.skipIf(!gpu.ok)(`native addon on a GPU${gpu.ok ? ` (${gpu.device.name})` : ` — skipped: ${why}`}`, () => {
  let ctx: CheckContext;
  beforeAll(() => {
    ctx = new CheckContext(native());
  });
  afterAll(() => ctx?.dispose());

  for (const check of nativeChecks) {
    it(check.name, () => {
      const detail = check.run(ctx);
      console.log(`${check.name}: ${detail}`);
      expect(detail).toBeTypeOf("string");
    });
  }
});
