// bf16 segment_dot on the generated grouped bf16 wgmma kernel (compiler/codegen/cuda/gemm/, ab: "bf16",
// grouped over row runs), the default on Hopper (segment-gemm.ts segmentDotOnWgmma). The kernel reads X's
// rows and writes Y's where they are: each segment is cut into 128-row blocks, each block named by one
// table row (expert, X's first row, Y's first row, valid rows), blocks group after group. The weights in
// segment_dot's usual order [groups, k, ...nOut] are read as they are, MN-major (config bMnMajor);
// in any other order they are made K-major ([E][N][K], a device transpose), as they all were before
// (SHARDTS_SEGMENT_B=kmajor still does that for every order). Y's rows outside
// every segment are zeroed first, as the cuBLAS path leaves them. What the kernel cannot take
// (wgmmaSegmentRefusal) returns undefined: the caller runs its cuBLAS path.
import type { TensorType } from "../../compiler/ir/types.ts";
import { defaultBf16GemmConfig, shapeProblem, type Fp8GemmConfig } from "../../compiler/codegen/cuda/gemm/config.ts";
import { GROUPED_M_ALIGN } from "../../compiler/numeric/fp8-gemm.ts";
import { numel } from "../../compiler/ir/types.ts";
import { empty, type DeviceTensor } from "./memory.ts";
import { fp8GemmOf } from "./fp8-gemm.ts";
import { i32 } from "./padded-segments.ts";
import type { Segment } from "./segment-gemm.ts";
import type { CudaExecutor } from "./executor.ts";

/**
 * The grouped kernel launched for N output columns (bench/gpu/bf16-gemm.ts times the candidates), over row
 * runs; `bMnMajor`: reading the weights [E][K][N] as they are.
 */
export const wgmmaSegmentConfig = (N: number, bMnMajor = false): Fp8GemmConfig => ({ ...defaultBf16GemmConfig(true, N), rowRuns: true, ...(bMnMajor ? { bMnMajor } : {}) });

/**
 * SHARDTS_SEGMENT_B: `mn` (the default) reads weights laid out [groups, k, ...nOut] MN-major, with no
 * transpose; `kmajor` transposes every weight to [groups, ...nOut, k] first (the path before, for comparison).
 */
export function segmentBFromEnv(v: string | undefined = process.env.SHARDTS_SEGMENT_B): "mn" | "kmajor" {
  if (v === undefined || v === "" || v === "mn") return "mn";
  if (v === "kmajor") return "kmajor";
  throw new RangeError(`SHARDTS_SEGMENT_B=${v}: give mn (weights [groups, k, ...nOut] read as they are; the default) or kmajor (transposed to [groups, ...nOut, k] first)`);
}

/**
 * How the grouped kernel reads segment_dot's weights laid out as `dims`: MN-major where they are
 * [groups, k, ...nOut] (ex.reorder to that order is then a no-op) and SHARDTS_SEGMENT_B allows, else
 * K-major, in the order [groups, ...nOut, k] the caller makes (a copy unless they are already so).
 */
export function segmentWeightsLayout(dims: readonly string[], groups: string, k: string, nOut: readonly string[], env: string | undefined = process.env.SHARDTS_SEGMENT_B): { bMnMajor: boolean; order: string[] } {
  const mn = [groups, k, ...nOut];
  if (segmentBFromEnv(env) === "mn" && mn.length === dims.length && mn.every((n, i) => dims[i] === n)) return { bMnMajor: true, order: mn };
  return { bMnMajor: false, order: [groups, ...nOut, k] };
}

/**
 * The row-run table: 4 int32 per 128-row block (local expert, X's flat row, Y's flat row, valid rows),
 * blocks of expert 0's segments first, then expert 1's, ... (tiles of one expert's weights run together);
 * and the rows the runs cover. Exported as the oracle of the device-side plan's emulation test
 * (segment-device.ts builds the same table on the device).
 */
export function rowRunTable(segs: readonly Segment[], E: number, R: number, Rout: number): { table: Int32Array; blocks: number; covered: number } {
  const byGroup: Segment[][] = Array.from({ length: E }, () => []);
  let blocks = 0, covered = 0;
  for (const s of segs)
    if (s.m > 0 && s.g >= 0 && s.g < E) {
      byGroup[s.g]!.push(s);
      blocks += Math.ceil(s.m / GROUPED_M_ALIGN);
      covered += s.m;
    }
  const table = new Int32Array(4 * blocks);
  let b = 0;
  byGroup.forEach((list, g) => {
    for (const s of list)
      for (let i = 0; i < s.m; i += GROUPED_M_ALIGN, b++) table.set([g, s.t * R + s.row + i, s.t * Rout + s.row - s.start + i, Math.min(GROUPED_M_ALIGN, s.m - i)], 4 * b);
  });
  return { table, blocks, covered };
}

/** Why bf16 segment_dot cannot run on the grouped wgmma kernel (M: 128 x the row-run blocks), or undefined. */
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
  const Rout = o.outShape[o.outShape.length - 2]!, rowsD = o.bt * Rout, g = fp8GemmOf(ex);
  const { table, blocks, covered } = ex.part("row runs (host)", () => rowRunTable(o.segs, o.E, o.R, Rout));
  // M: 128 rows per block of the runs (the kernel's tile count)
  const M = blocks * GROUPED_M_ALIGN;
  if (wgmmaSegmentRefusal({ dtype: o.X.dtype, outDtype: o.outDtype, arch: g.arch, M, N: o.N, K: o.K }) !== undefined) return undefined;
  // B as the weights are ([E][K][N]: MN-major), else K-major [E][N][K], a transpose where they are not so already
  const dims = o.tw.dims.map((d) => d.name), b = segmentWeightsLayout(dims, o.groups, o.k, o.nOut);
  const W = b.bMnMajor ? o.w : ex.part("weights K-major", () => ex.reorder(o.w, dims, b.order));
  const runs = ex.part("row runs upload", () => i32(ex, table));
  const Y = empty(ex.mem, "bf16", [rowsD, o.N]);
  if (covered < rowsD) ex.addon.memsetD8(Y.ptr, 0, numel(Y.shape) * 2, ex.stream);
  const shape = { M, N: o.N, K: o.K, experts: o.E, rowsA: o.bt * o.R, rowsD };
  ex.part("grouped GEMM", () => g.prepare(wgmmaSegmentConfig(o.N, b.bMnMajor), shape, { a: o.X.ptr, b: W.ptr, sa: 0n, sb: 0n, d: Y.ptr, blockExpert: runs.ptr })());
  for (const t of [runs, ...(W !== o.w ? [W] : [])]) ex.release(t);
  return { ...Y, shape: o.outShape };
}
