// scaled_dot_wgrad on CUDA (compiler/ops/scaled-dot-wgrad.ts: the FP8 Linear's weight gradient).
// Where the operands have the row-scaled GEMM's form — no batch dims, a tiled 1×128 along the one dim it
// keeps (the forward's K), a bf16 result, a Hopper GPU, widths the kernel takes — a's codes and gy are
// each quantized 128×1 along the tokens and written K-major by one kernel (kernels/fp8-sources.ts
// wgradColumns, no row map: the tokens in runs of the contract's last dim, each run padded to whole
// 128-row blocks, so the tiles restart at every index of the other contract dims as the CPU reference's
// do), a's codes dequantized in registers; then one row-scaled FP8 GEMM, dW [K][gy's free] = Aᵀ·dY over the
// padded tokens (128 or 192 wide, defaultRowScaledConfig's pick for the shape). a's side is kept for a later scaled_dot_wgrad of the same a (a SwiGLU's gate and up
// weights read the same x). Anything else runs the composition the op stands for on the device
// (fp8.ts: dequantize, the two 128×1 quantizes and scaled_dot).
import type { TensorType } from "../../compiler/ir/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import { defaultRowScaledConfig, shapeProblem } from "../../compiler/codegen/cuda/gemm/config.ts";
import { dotWgradDims, WGRAD_OP } from "../../compiler/ops/scaled-dot-wgrad.ts";
import { tilesName } from "../../compiler/ops/quantize.ts";
import { empty, type DeviceTensor } from "./memory.ts";
import { fp8GemmOf } from "./fp8-gemm.ts";
import { quantizeColumnsT } from "./fp8-segment.ts";
import { laterSharers, keepShared, takeShared, type SharedEntry } from "./shared-operands.ts";
import type { CudaExecutor } from "./executor.ts";

type OpInstr = Extract<Plan["instrs"][number], { kind: "op" }>;
const names = (t: TensorType) => t.dims.map((d) => d.name);

/** The GEMM's form of this op, or undefined (the composition runs). */
export function dotWgradForm(tIn: TensorType[], tOut: TensorType, attrs: OpInstr["attrs"]): { kd: string; contract: string[]; gFree: string[] } | undefined {
  const [ta, tsa, tg] = tIn as [TensorType, TensorType, TensorType];
  const { dd, tiledA } = dotWgradDims(ta, tsa, tg, attrs);
  if (tOut.dtype !== "bf16" || dd.batch.length > 0 || tiledA.length !== 1 || dd.freeA.length !== 1 || dd.freeA[0] !== tiledA[0]) return undefined;
  return { kd: tiledA[0]!, contract: dd.contract, gFree: dd.freeB };
}

// the form of each instruction, found once (an eager step asks every run)
const forms = new WeakMap<OpInstr, ReturnType<typeof dotWgradForm> | null>();

/** a's side: its codes quantized 128×1 along the tokens, K-major. */
interface ASide extends SharedEntry { q: DeviceTensor; s: DeviceTensor }
const aKey = (o: OpInstr) => `${o.inputs[0]}:${o.inputs[1]}:${JSON.stringify(o.attrs.contract)}`;

/** The row-scaled GEMM path, or undefined where it does not apply (nothing launched). */
export function scaledDotWgradGemm(ex: CudaExecutor, plan: Plan, ins: OpInstr, r: number, x: DeviceTensor[], tIn: TensorType[], tOut: TensorType, shape: number[]): DeviceTensor | undefined {
  let form = forms.get(ins);
  if (form === undefined) forms.set(ins, (form = dotWgradForm(tIn, tOut, ins.attrs) ?? null));
  const g = fp8GemmOf(ex);
  if (!form || !g.supported) return undefined;
  const [ta, tsa, tg] = tIn as [TensorType, TensorType, TensorType];
  const { kd, contract, gFree } = form;
  const size = (t: DeviceTensor, tt: TensorType, ds: string[]) => ds.reduce((p, d) => p * t.shape[names(tt).indexOf(d)]!, 1);
  const T = size(x[0]!, ta, contract.slice(-1)), runs = size(x[0]!, ta, contract.slice(0, -1));
  const KK = size(x[0]!, ta, [kd]), N = size(x[2]!, tg, gFree);
  const M = runs * Math.ceil(T / 128) * 128;
  if (M === 0 || shapeProblem({ M: KK, N, K: 128 }) !== undefined) return undefined;
  const owned: DeviceTensor[] = [];
  const mine = (t: DeviceTensor, of: DeviceTensor) => (t !== of && owned.push(t), t);
  const key = `${WGRAD_OP}:${aKey(ins)}:${r}`, from = [x[0]!, x[1]!];
  let as = takeShared<ASide>(ex, key, from);
  if (!as) {
    const A = mine(ex.part("A layout", () => ex.reorder(x[0]!, names(ta), [...contract, kd])), x[0]!);
    const SA = mine(ex.part("A scales layout", () => ex.reorder(x[1]!, names(tsa), [...contract, tilesName(kd)])), x[1]!);
    const qa = ex.part("A quantized 128x1", () => quantizeColumnsT(ex, A, SA, runs * T, KK, { run: T }, M));
    as = { from, made: [qa.q, qa.s], q: qa.q, s: qa.s };
  }
  if (laterSharers(plan, WGRAD_OP, aKey).has(ins)) keepShared(ex, key, as);
  else owned.push(...as.made);
  const G = mine(ex.part("gy layout", () => ex.reorder(x[2]!, names(tg), [...contract, ...gFree])), x[2]!);
  const qg = ex.part("gy quantized 128x1", () => quantizeColumnsT(ex, G, undefined, runs * T, N, { run: T }, M));
  owned.push(qg.q, qg.s);
  const order = [kd, ...gFree];
  const D = empty(ex.mem, "bf16", order.map((d) => shape[tOut.dims.findIndex((e) => e.name === d)]!));
  const launch = g.prepare(defaultRowScaledConfig({ M: KK, N }, g.gridSms()), { M: KK, N, K: M, lda: M, ldb: M }, { a: as.q.ptr, b: qg.q.ptr, sa: as.s.ptr, sb: qg.s.ptr, d: D.ptr });
  ex.part("dense FP8 GEMM (row-scaled B)", launch);
  for (const t of owned) ex.release(t);
  return ex.part("output layout", () => ex.reorderOwned(D, order, names(tOut)));
}
