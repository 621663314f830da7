// The device copy bandwidth every memory-bound benchmark reports against: a 1 GiB cuMemcpyDtoD,
// median of `reps` timed with events, counting bytes read plus bytes written.
import type { CudaExecutor } from "../../../runtime/cuda/executor.ts";
import { empty } from "../../../runtime/cuda/memory.ts";

export function copyBandwidth(gpu: CudaExecutor, reps: number): { ms: number; bytes: number; GBps: number } {
  const a = gpu.addon, n = 2 ** 30;
  const src = empty(gpu.mem, "i32", [n / 4]), dst = empty(gpu.mem, "i32", [n / 4]);
  a.memsetD32(src.ptr, 0x3f800000, n / 4, gpu.stream);
  const ms = gpu.timeLaunch(() => a.memcpyDtoDAsync(dst.ptr, src.ptr, n, gpu.stream), reps);
  gpu.release(src);
  gpu.release(dst);
  return { ms, bytes: 2 * n, GBps: (2 * n) / ms / 1e6 };
}
