// Input sets for timing a GEMM with L2 cold: the same operand values copied to other addresses, enough
// sets that together they overflow L2 (50 MiB on H100 / H200) about three times. Shared by the FP8 GEMM
// bench (fp8-gemm.ts) and its tile timeline (gemm-trace.ts).
import type { Fp8GemmBuffers } from "../../../runtime/cuda/fp8-gemm.ts";
import type { NativeAddon } from "../../../runtime/cuda/native-types.ts";

/** `base` and copies of its A and B (2 to 8 sets in all); `alloc` owns the new buffers. */
export function rotated(a: NativeAddon, base: Fp8GemmBuffers, p: { a: Uint8Array; b: Uint8Array }, alloc: (n: number) => bigint): Fp8GemmBuffers[] {
  const bytes = p.a.length + p.b.length;
  const n = Math.max(2, Math.min(8, Math.ceil((160 << 20) / bytes)));
  const sets = [base];
  for (let i = 1; i < n; i++) {
    const A = alloc(p.a.length), B = alloc(p.b.length);
    a.memcpyDtoD(A, base.a, p.a.length);
    a.memcpyDtoD(B, base.b, p.b.length);
    sets.push({ ...base, a: A, b: B });
  }
  return sets;
}
