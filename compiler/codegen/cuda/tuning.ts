// Knobs of the CUDA emitters that change how a kernel computes, not what: the defaults are the
// variants bench/gpu/memory-bound.ts measured fastest (bench/NOTES.md has the table); the bench
// emits the others to compare them in one run. Every variant computes the same function; `fast`
// ones may differ from the CPU reference in the last bit of f32 before the result's rounding.
export interface EmitTuning {
  /** Row kernels: take max and sum of exp(x - max) in one online pass (else: max, then sum, each a pass). */
  online: boolean;
  /**
   * Row kernels: when a row's exp(x - max) is summed and then used again (softmax), keep each value
   * computed in the online pass (relative to its vector's running max) and rescale it once per
   * vector in the output pass, instead of computing the exp again.
   */
  keepExp: boolean;
  /** Row kernels: threads per SM the register cap is set for (launch bounds). */
  occupancy: number;
  /** exp / sigmoid / silu / division by a row sum as MUFU approximations (ex2, rcp: 1-2 ulp of f32). */
  fast: boolean;
  /**
   * Map kernels with a quantize epilogue: 128-column tiles a lane group takes per trip, every tile's
   * loads issued before the first tile's amax shuffles (more bytes in flight a warp). On an H200
   * (SwiGLU → quantize, 32768 x 4096): 2 beat 1 by 1–6%; 4 and 8 lost 15–75% (their registers cut the
   * blocks an SM holds).
   */
  quantUnroll: number;
  /**
   * Map kernels with a quantize epilogue: 16-byte packs a lane takes of each tile (1, 2 or 4), so fewer
   * lanes share a tile and its per-tile work (index division, amax shuffles, the scale's divisions)
   * is spread over more columns. On an H200: 2 packs (one tile a trip) ran SwiGLU → quantize 8% faster
   * and SwiGLU → quantize with the bf16 value written 15% slower; 4 packs slower on both. Default 1.
   */
  quantPacks: number;
  /**
   * Row kernels with a quantize epilogue: hold the row in registers (loaded once, every chunk's loads
   * issued together) where it is at most 8 chunks of the block's width; else each pass re-reads it
   * (from L2). On an H200 (RMSNorm(x + residual) → quantize, 32768 x 4096) holding it was 7% slower.
   */
  quantRowRegs: boolean;
}

export const DEFAULT_TUNING: EmitTuning = { online: true, keepExp: true, occupancy: 1024, fast: true, quantUnroll: 2, quantPacks: 1, quantRowRegs: false };

/** The tuning with `over` applied; a short label of what differs from the default (for kernel names and reports). */
export function tuning(over: Partial<EmitTuning> = {}): EmitTuning {
  return { ...DEFAULT_TUNING, ...over };
}

export function tuningLabel(t: EmitTuning): string {
  const d = DEFAULT_TUNING;
  const parts: string[] = [];
  if (t.online !== d.online) parts.push(t.online ? "online" : "two-pass");
  if (t.keepExp !== d.keepExp) parts.push(t.keepExp ? "keep-exp" : "recompute-exp");
  if (t.occupancy !== d.occupancy) parts.push(`occupancy ${t.occupancy}`);
  if (t.fast !== d.fast) parts.push(t.fast ? "fast-math" : "accurate-math");
  if (t.quantUnroll !== d.quantUnroll) parts.push(`quantize unroll ${t.quantUnroll}`);
  if (t.quantPacks !== d.quantPacks) parts.push(`quantize packs ${t.quantPacks}`);
  if (t.quantRowRegs !== d.quantRowRegs) parts.push(t.quantRowRegs ? "quantize row in registers" : "quantize row re-read");
  return parts.length ? parts.join(", ") : "default";
}
