// A plan run on the CUDA executor over the fake native layer, for the segment contractions' tests
// (test/unit/segment-device.test.ts, fp8-segment-device.test.ts): every i32 read answers `counts`, and
// the run reports what the device would have been asked to do — the kernels launched by name and the
// host syncs between them (events), the tensor maps encoded, the memsets' byte counts, how often the
// counts were read on the host (hostPieces) and the cuBLAS GEMM calls.
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import type { TensorMapOptions } from "../../runtime/cuda/native-types.ts";
import type { Plan } from "../../compiler/plan.ts";
import { fakeAddon } from "./native-addon.ts";
import { namingLaunches } from "./kernel-names.ts";

export interface SegmentRun {
  events: string[];
  maps: TensorMapOptions[];
  memsets: number[];
  hostPieces: number;
  cublas: number;
}

/**
 * Runs `plan` `steps` times on one executor with device-side counts on or off; `onLaunch` sees each
 * launch's kernel name and packed arguments.
 */
export function runOnFakeGpu(plan: Plan, o: { counts: readonly number[]; device: boolean; steps?: number; onLaunch?: (name: string, args: Uint8Array) => void }): SegmentRun {
  const events: string[] = [], maps: TensorMapOptions[] = [], memsets: number[] = [];
  let launched: string[] = [];
  const f = fakeAddon({
    read: (dst) => void (dst instanceof Int32Array && dst.forEach((_, i) => (dst[i] = o.counts[i % o.counts.length]!))),
    spy: (method, args) => {
      if (method === "launchKernel") {
        const name = launched[launched.length - 1]!;
        events.push(name);
        o.onLaunch?.(name, args[5] as Uint8Array);
      }
      if (method === "memcpyDtoHAsync" || method === "memcpyDtoH" || method === "streamSynchronize") events.push(method);
      if (method === "memsetD8") memsets.push(args[2] as number);
      if (method === "tensorMapEncodeTiled") maps.push({ ...(args[0] as TensorMapOptions) });
    },
  });
  const named = namingLaunches(f.addon);
  launched = named.order;
  const ex = new CudaExecutor(named.addon, 0);
  ex.segmentCountsOnDevice = o.device;
  let hostPieces = 0;
  const hostPiece = ex.hostPiece.bind(ex);
  ex.hostPiece = (...a) => (hostPieces++, hostPiece(...a));
  for (let i = 0; i < (o.steps ?? 1); i++) ex.run(plan, undefined, undefined, { download: false });
  return { events, maps, memsets, hostPieces, cublas: (f.calls.get("cublasLtMatmulRun") ?? 0) + (f.calls.get("cublasGroupedGemm") ?? 0) };
}
