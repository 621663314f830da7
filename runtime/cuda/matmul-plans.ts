// Prepared cuBLASLt matmuls for the executor's hot call sites (dense `dot`, the segment GEMMs'
// per-problem loop, the FP8 segment wgrad's f32 fallback). A call site's operand form is fixed and
// its shapes repeat every step, so each (form, shape) is prepared once (cublasLtMatmulPrepare, which
// reads an options object and builds the plan) and later calls are one positional
// cublasLtMatmulRun. Lookups are nested Maps on numbers: no key string is built per call.
import type { DevicePtr, MatmulHandle, NativeAddon, Stream } from "./native-types.ts";
import { columnMajor } from "./native.ts";

/** A call site's operand form: row-major, contiguous, batches strided by whole matrices. */
export interface MatmulForm {
  dtype: "f32" | "bf16";
  outDtype: "f32" | "bf16";
  /** A stored K×M. */
  transA: boolean;
  /** D += op(A)·B (beta 1, C = D) instead of D = op(A)·B. */
  accumulate: boolean;
}

type ByK = Map<number, MatmulHandle>;

export class MatmulPlans {
  // form code -> M -> N -> batch * 2^32 + K
  private readonly byForm = new Map<number, Map<number, Map<number, ByK>>>();

  constructor(private readonly addon: NativeAddon) {}

  /** D[M,N] (+)= op(A)[M,K]·B[K,N] for each of `batch` contiguous matrices, on `stream`. */
  run(f: MatmulForm, M: number, N: number, K: number, batch: number, a: DevicePtr, b: DevicePtr, d: DevicePtr, stream: Stream): void {
    this.addon.cublasLtMatmulRun(this.handle(f, M, N, K, batch, a, b, d), b, a, f.accumulate ? d : 0n, d, 0n, stream);
  }

  private handle(f: MatmulForm, M: number, N: number, K: number, batch: number, a: DevicePtr, b: DevicePtr, d: DevicePtr): MatmulHandle {
    const code = (f.dtype === "bf16" ? 1 : 0) | (f.outDtype === "bf16" ? 2 : 0) | (f.transA ? 4 : 0) | (f.accumulate ? 8 : 0);
    let byM = this.byForm.get(code);
    if (!byM) this.byForm.set(code, (byM = new Map()));
    let byN = byM.get(M);
    if (!byN) byM.set(M, (byN = new Map()));
    let byK = byN.get(N);
    if (!byK) byN.set(N, (byK = new Map()));
    const kb = batch * 2 ** 32 + K;
    let h = byK.get(kb);
    if (h === undefined) {
      if (!(K < 2 ** 32 && Number.isSafeInteger(kb)))
        throw new RangeError(`MatmulPlans: K=${K}, batch=${batch} out of range (K < 2^32 and batch < 2^21); split the batch`);
      // the first call's pointers set the prepared plan's alignment; the native run re-plans for others
      h = this.addon.cublasLtMatmulPrepare(columnMajor({
        dtype: f.dtype, outDtype: f.outDtype, M, N, K, transA: f.transA || undefined, a, b, d,
        ...(f.accumulate ? { c: d, beta: 1 } : {}),
        ...(batch > 1 ? { batch, strideA: M * K, strideB: K * N, strideD: M * N } : {}),
      }));
      byK.set(kb, h);
    }
    return h;
  }
}

const perAddon = new WeakMap<NativeAddon, MatmulPlans>();

/** The addon's prepared matmuls (handles are per process, so one cache per addon). */
export function matmulPlans(addon: NativeAddon): MatmulPlans {
  let p = perAddon.get(addon);
  if (!p) perAddon.set(addon, (p = new MatmulPlans(addon)));
  return p;
}
