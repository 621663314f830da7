// bf16 segment_dot on the generated grouped bf16 wgmma kernel (compiler/codegen/cuda/gemm/, ab: "bf16",
// grouped), opt-in with SHARDTS_SEGMENT_GEMM=wgmma (segment-gemm.ts). The rank's segments go into the
// padded group-major layout the FP8 segment ops use (padded-segments.ts): X's rows gathered into
// 128-aligned expert blocks (bf16 pairs moved as int32 words, padding rows zero), the weights made
// K-major ([E][N][K], a device transpose per call: segment_dot's W is [E][K][N]), one launch, and a
// second gather back to the rank's rows (rows outside every segment 0, as the cuBLAS path leaves them).
// What the kernel cannot take (wgmmaSegmentRefusal) returns undefined: the caller runs its cuBLAS path.
import type { TensorType } from "../../compiler/ir/types.ts";
import { defaultBf16GemmConfig, shapeProblem } from "../../compiler/codegen/cuda/gemm/config.ts";
import { GROUPED_M_ALIGN } from "../../compiler/numeric/fp8-gemm.ts";
import { empty, type DeviceTensor } from "./memory.ts";
import { fp8GemmOf } from "./fp8-gemm.ts";
import { gatherRows, i32, paddedLayout } from "./padded-segments.ts";
import type { Segment } from "./segment-gemm.ts";
import type { CudaExecutor } from "./executor.ts";

/** The grouped kernel launched for N output columns (bench/gpu/bf16-gemm.ts times the candidates). */
export const wgmmaSegmentConfig = (N: number) => defaultBf16GemmConfig(true, N);

/** Why bf16 segment_dot cannot run on the grouped wgmma kernel (M: the padded rows), or undefined. */
export function wgmmaSegmentRefusal(o: { dtype: string; outDtype: string; arch: string; M: number; N: number; K: number }): string | undefined {
  if (o.dtype !== "bf16" || o.outDtype !== "bf16") return `${o.dtype} -> ${o.outDtype} (the kernel takes bf16 to bf16)`;
  if (o.arch !== "sm_90a") return `${o.arch} (wgmma and TMA need Hopper, sm_90a)`;
  if (o.M === 0) return "no rows in any local segment";
  return shapeProblem({ M: o.M, N: o.N, K: o.K });
}

export interface WgmmaSegmentDot {
  /** [bt, R, K] bf16, the batch entries' rows. */
  X: DeviceTensor;
  /** The weights as the op got them (type tw), holding groups × K × N. */
  w: DeviceTensor;
  tw: TensorType;
  groups: string;
  k: string;
  nOut: string[];
  segs: Segment[];
  bt: number;
  R: number;
  K: number;
  N: number;
  /** Local groups (experts) of w. */
  E: number;
  /** The output, [bt, Rout, N] in the caller's order, and its dtype. */
  outShape: number[];
  outDtype: string;
}

/** Y [bt, Rout, N] bf16 from the grouped kernel, or undefined (nothing launched) where it refuses the problem. */
export function wgmmaSegmentDot(ex: CudaExecutor, o: WgmmaSegmentDot): DeviceTensor | undefined {
  // the padded rows (what paddedLayout makes), counted before the layout is built for nothing
  const M = o.segs.reduce((n, s) => n + Math.ceil(s.m / GROUPED_M_ALIGN) * GROUPED_M_ALIGN, 0), g = fp8GemmOf(ex);
  if (wgmmaSegmentRefusal({ dtype: o.X.dtype, outDtype: o.outDtype, arch: g.arch, M, N: o.N, K: o.K }) !== undefined) return undefined;
  const Rout = o.outShape[o.outShape.length - 2]!;
  const lay = ex.part("padded layout (host)", () => paddedLayout(o.segs.map((s) => ({ t: s.t, g: s.g, row: s.row, m: s.m, out: s.row - s.start })), o.E, o.bt, o.R, Rout));
  // B K-major, as the kernel's TMA boxes read it: [E][N][K]
  const W = ex.part("weights K-major", () => ex.reorder(o.w, o.tw.dims.map((d) => d.name), [o.groups, ...o.nOut, o.k]));
  const [rowMap, blockExpert, outIdx] = ex.part("layout upload", () => [i32(ex, lay.rowMap), i32(ex, lay.blockGroup), i32(ex, lay.outMap)]);
  const A = ex.part("gather rows in", () => gatherRows(ex, { ...o.X, dtype: "i32" }, o.bt * o.R, o.K / 2, "i32", rowMap, M));
  const D = empty(ex.mem, "bf16", [M, o.N]);
  ex.part("grouped GEMM", () => g.prepare(wgmmaSegmentConfig(o.N), { M, N: o.N, K: o.K, experts: o.E }, { a: A.ptr, b: W.ptr, sa: 0n, sb: 0n, d: D.ptr, blockExpert: blockExpert.ptr })());
  const Y = ex.part("gather rows out", () => gatherRows(ex, D, M, o.N, "bf16", outIdx, o.bt * Rout));
  for (const t of [rowMap, blockExpert, A, D, outIdx, ...(W !== o.w ? [W] : [])]) ex.release(t);
  return { ...Y, shape: o.outShape };
}
