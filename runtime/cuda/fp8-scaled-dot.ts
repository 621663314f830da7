// scaled_dot on the CUDA backend through the generated Hopper FP8 GEMM (compiler/codegen/cuda/gemm/)
// where the operands have its form: A tiled 1×128 along the one contracted dim K (any other dims are
// rows, M), B exactly [N, K] tiled 128×128 (or 1×128 along K: the Wgrad form, run by the row-scaled
// kernels), a bf16 result, and a Hopper GPU. Anything else returns
// undefined and runs the dequantize + cuBLASLt f32 path of fp8.ts. The operands are reordered to the
// kernel's layouts (A M×K, B N×K, A's scales [K/128][M], B's [N/128][K/128] or, row-scaled,
// [K/128][N]); the configurations are defaultGemmConfig and defaultRowScaledConfig
// (compiler/codegen/cuda/gemm/config.ts).
import type { TensorType } from "../../compiler/ir/types.ts";
import { numel } from "../../compiler/ir/types.ts";
import { defaultGemmConfig, defaultRowScaledConfig, shapeProblem } from "../../compiler/codegen/cuda/gemm/config.ts";
import { tilesName } from "../../compiler/ops/quantize.ts";
import { empty, type DeviceTensor } from "./memory.ts";
import { fp8GemmOf } from "./fp8-gemm.ts";
import type { CudaExecutor } from "./executor.ts";

const CONFIG = defaultGemmConfig(false), ROW_CONFIG = defaultRowScaledConfig();
const names = (t: TensorType) => t.dims.map((d) => d.name);

/**
 * The kernels' operand form, or undefined (the fallback's choice; not an error). `bRows`: B is tiled
 * 1×128 along K only (the Wgrad form, both operands quantized along the contracted dim), which the
 * row-scaled kernels take; otherwise B is 128×128-blocked.
 */
export function formOf(tIn: TensorType[], tOut: TensorType, contract: string[]): { K: string; N: string; rows: string[]; bRows: boolean } | undefined {
  const [ta, tsa, tb, tsb] = tIn as [TensorType, TensorType, TensorType, TensorType];
  if (contract.length !== 1 || tOut.dtype !== "bf16") return undefined;
  const K = contract[0]!;
  if (tb.dims.length !== 2 || !names(tb).includes(K)) return undefined;
  const N = names(tb).find((n) => n !== K)!;
  // A: 1x128 along K (its scales rename K only); B: 128x128 over both of its dims
  const aTiles = names(tsa), bTiles = names(tsb);
  if (aTiles.length !== ta.dims.length || !ta.dims.every((d, i) => (d.name === K ? aTiles[i] === tilesName(K) : aTiles[i] === d.name))) return undefined;
  if (!bTiles.includes(tilesName(K))) return undefined;
  const bRows = bTiles.includes(N);
  if (!bRows && !bTiles.includes(tilesName(N))) return undefined;
  return { K, N, rows: names(ta).filter((n) => n !== K), bRows };
}

export function scaledDotGemm(ex: CudaExecutor, x: DeviceTensor[], tIn: TensorType[], tOut: TensorType, shape: number[], contract: string[]): DeviceTensor | undefined {
  const form = formOf(tIn, tOut, contract);
  if (!form) return undefined;
  const g = fp8GemmOf(ex);
  if (!g.supported) return undefined;
  const [ta, tsa, tb, tsb] = tIn as [TensorType, TensorType, TensorType, TensorType];
  const { K, N, rows, bRows } = form;
  const A = ex.reorder(x[0]!, names(ta), [...rows, K]);
  const SA = ex.reorder(x[1]!, names(tsa), [tilesName(K), ...rows]);
  const B = ex.reorder(x[2]!, names(tb), [N, K]);
  // B's scales: [N/128][K/128] blocks, or with row-scaled B [K/128][N] (the kernels' layouts)
  const SB = ex.reorder(x[3]!, names(tsb), bRows ? [tilesName(K), N] : [tilesName(N), tilesName(K)]);
  const kk = A.shape[A.shape.length - 1]!, M = numel(A.shape) / Math.max(1, kk), nn = B.shape[0]!;
  const why = shapeProblem({ M, N: nn, K: kk });
  let D: DeviceTensor | undefined;
  if (!why) {
    const order = [...rows, N];
    D = empty(ex.mem, "bf16", order.map((d) => shape[tOut.dims.findIndex((e) => e.name === d)]!));
    g.prepare(bRows ? ROW_CONFIG : CONFIG, { M, N: nn, K: kk }, { a: A.ptr, b: B.ptr, sa: SA.ptr, sb: SB.ptr, d: D.ptr })();
    const out = ex.reorder(D, order, names(tOut));
    if (out !== D) ex.release(D);
    D = out;
  }
  for (const [t, orig] of [[A, x[0]], [SA, x[1]], [B, x[2]], [SB, x[3]]] as const) if (t !== orig) ex.release(t);
  return D;
}
