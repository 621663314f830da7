// scaled_dot on the CUDA backend through the generated Hopper FP8 GEMM (compiler/codegen/cuda/gemm/)
// where the operands have its form: A tiled along one contracted dim K (any other contracted dims are
// flattened into K outside it, e.g. the Wgrad's ["b", "seq"]; the free dims are rows, M), B [N, K]
// tiled 128×128 (or along K only: the Wgrad form, run by the row-scaled kernels), a bf16 result, and
// a Hopper GPU. Anything else returns
// undefined and runs the dequantize + cuBLASLt f32 path of fp8.ts. The operands are reordered to the
// kernel's layouts (A M×K, B N×K, A's scales [K/128][M], B's [N/128][K/128] or, row-scaled,
// [K/128][N]); the configurations are the autotuner's cached choice or defaultGemmConfig
// (gemm-tune.ts gemmConfigFor), and defaultRowScaledConfig (compiler/codegen/cuda/gemm/config.ts).
import type { TensorType } from "../../compiler/ir/types.ts";
import { numel } from "../../compiler/ir/types.ts";
import { defaultRowScaledConfig, shapeProblem } from "../../compiler/codegen/cuda/gemm/config.ts";
import { gemmConfigFor } from "./gemm-tune.ts";
import { tilesName } from "../../compiler/ops/quantize.ts";
import { empty, type DeviceTensor } from "./memory.ts";
import { fp8GemmOf } from "./fp8-gemm.ts";
import type { CudaExecutor } from "./executor.ts";
import { codesIn } from "./shared-operands.ts";

const names = (t: TensorType) => t.dims.map((d) => d.name);

/**
 * The kernels' operand form, or undefined (the fallback's choice; not an error). `K` is the contracted
 * dim both operands tile by 128 and `kRest` the other contracted dims, flattened into the kernel's K
 * outside it ([...kRest, K], kRest in `contract` order): exact where K is a whole number of tiles,
 * since the CPU reference promotes block by block in that same order (scaled-dot.ts: the rest of
 * `contract` outer, the tiles inner), e.g. the Wgrad's ["b", "seq"]. `bRows`: B is tiled along K only (the Wgrad form, both
 * operands quantized along the contracted dim), which the row-scaled kernels take; otherwise B is
 * 128×128-blocked. B has one free dim (N) and no batch dims.
 */
export function formOf(tIn: TensorType[], tOut: TensorType, contract: string[]): { K: string; kRest: string[]; N: string; rows: string[]; bRows: boolean } | undefined {
  const [ta, tsa, tb, tsb] = tIn as [TensorType, TensorType, TensorType, TensorType];
  if (contract.length === 0 || tOut.dtype !== "bf16") return undefined;
  const aTiles = names(tsa), bTiles = names(tsb);
  const tiledK = contract.filter((d) => aTiles.includes(tilesName(d)));
  if (tiledK.length !== 1) return undefined;
  const K = tiledK[0]!, kRest = contract.filter((n) => n !== K);
  // flattened K: the tiles of K must not run into the next entry of the dims outside it
  if (kRest.length > 0 && ta.dims.find((d) => d.name === K)!.size % 128 !== 0) return undefined;
  const bFree = names(tb).filter((n) => !contract.includes(n));
  if (bFree.length !== 1 || !contract.every((d) => names(tb).includes(d))) return undefined;
  const N = bFree[0]!;
  const rows = names(ta).filter((n) => !contract.includes(n));
  if (rows.includes(N)) return undefined;
  // A: tiled along K only (its scales rename K alone); B: K tiled and N tiled (128x128) or not (rows)
  if (aTiles.length !== ta.dims.length || !ta.dims.every((d, i) => (d.name === K ? aTiles[i] === tilesName(K) : aTiles[i] === d.name))) return undefined;
  if (!bTiles.includes(tilesName(K)) || kRest.some((d) => !bTiles.includes(d))) return undefined;
  const bRows = bTiles.includes(N);
  if (!bRows && !bTiles.includes(tilesName(N))) return undefined;
  return { K, kRest, N, rows, bRows };
}

/** `bSlot`: the plan slot of B's codes (where their quantize kept them transposed: shared-operands.ts codesIn). */
export function scaledDotGemm(ex: CudaExecutor, x: DeviceTensor[], tIn: TensorType[], tOut: TensorType, shape: number[], contract: string[], bSlot?: number): DeviceTensor | undefined {
  const form = formOf(tIn, tOut, contract);
  if (!form) return undefined;
  const g = fp8GemmOf(ex);
  if (!g.supported) return undefined;
  const [ta, tsa, tb, tsb] = tIn as [TensorType, TensorType, TensorType, TensorType];
  const { K, kRest, N, rows, bRows } = form;
  const ks = [...kRest, K], kTiles = [...kRest, tilesName(K)];
  // the operands in the kernel's layouts (a traced run shows these copies apart from the GEMM)
  const A = ex.part("A layout", () => ex.reorder(x[0]!, names(ta), [...rows, ...ks]));
  const SA = ex.part("A scales layout", () => ex.reorder(x[1]!, names(tsa), [...kTiles, ...rows]));
  const B = ex.part("B layout", () => codesIn(ex, bSlot, x[2]!, names(tb), [N, ...ks]));
  // B's scales: [N/128][K/128] blocks, or with row-scaled B [K/128][N] (the kernels' layouts)
  const SB = ex.part("B scales layout", () => ex.reorder(x[3]!, names(tsb), bRows ? [...kTiles, N] : [tilesName(N), ...kTiles]));
  const kk = numel(B.shape.slice(1)), M = numel(A.shape) / Math.max(1, kk), nn = B.shape[0]!;
  const why = shapeProblem({ M, N: nn, K: kk });
  let D: DeviceTensor | undefined;
  if (!why) {
    const order = [...rows, N];
    const Dk = empty(ex.mem, "bf16", order.map((d) => shape[tOut.dims.findIndex((e) => e.name === d)]!));
    const launch = g.prepare(bRows ? defaultRowScaledConfig({ M, N: nn }, g.gridSms()) : gemmConfigFor(g, { M, N: nn, K: kk }, false), { M, N: nn, K: kk }, { a: A.ptr, b: B.ptr, sa: SA.ptr, sb: SB.ptr, d: Dk.ptr });
    ex.part(bRows ? "dense FP8 GEMM (row-scaled B)" : "dense FP8 GEMM", launch);
    D = ex.part("output layout", () => ex.reorder(Dk, order, names(tOut)));
    if (D !== Dk) ex.release(Dk);
  }
  for (const [t, orig] of [[A, x[0]], [SA, x[1]], [B, x[2]], [SB, x[3]]] as const) if (t !== orig) ex.release(t);
  return D;
}
