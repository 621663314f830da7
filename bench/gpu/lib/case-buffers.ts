// A GEMM bench child's device buffers for one case (bench/gpu/fp8-gemm.ts, bf16-gemm.ts): `alloc` takes
// at least 256 bytes and remembers the block; `finish` frees them all (a faulted context may refuse:
// nothing more can be freed then) and prints the case's result as one JSON line for the parent.
import type { NativeAddon } from "../../../runtime/cuda/native-types.ts";

export function caseBuffers(a: NativeAddon): { alloc: (bytes: number) => bigint; finish: (result: object) => void } {
  const allocs: bigint[] = [];
  return {
    alloc: (bytes) => {
      const d = a.memAlloc(Math.max(bytes, 256));
      allocs.push(d);
      return d;
    },
    finish: (result) => {
      for (const d of allocs) {
        try {
          a.memFree(d);
        } catch {
          /* a faulted context: nothing more to free */
        }
      }
      process.stdout.write(JSON.stringify(result) + "\n");
    },
  };
}
