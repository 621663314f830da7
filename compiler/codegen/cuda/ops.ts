// CUDA C forms of the elementwise ops, one entry per op (sorted), over operands $a, $b, $c: `f` for
// float dtypes (math in f32; the result is then rounded to the value's dtype), `i` for i32 where
// the op takes integers. Each mirrors the op's CPU expression in compiler/ops/elementwise.ts,
// including its NaN and integer-wrapping behaviour; test/codegen/ops-host.test.ts runs every entry
// as host code against the CPU reference.
import type { DType } from "../../ir/types.ts";

// i32 arithmetic wraps like JS `| 0` / Math.imul: done in unsigned, where overflow is defined
const wrap = (e: string) => `(int)(${e})`;

export const CUDA_EXPR: Record<string, { f: string; i?: string }> = {
  abs: { f: "fabsf($a)", i: `($a < 0 ? ${wrap("0u - (unsigned)$a")} : $a)` },
  add: { f: "$a + $b", i: wrap("(unsigned)$a + (unsigned)$b") },
  // the conversion itself is chosen by sourceType/targetType in cast(); rounding follows the dtype
  cast: { f: "$a", i: "$a" },
  // truncating integer division; x / 0 gives 0 and INT_MIN / -1 wraps, as on the CPU
  div: { f: "$a / $b", i: `($b == 0 ? 0 : $b == -1 ? ${wrap("0u - (unsigned)$a")} : $a / $b)` },
  eq: { f: "($a == $b ? 1.0f : 0.0f)", i: "($a == $b ? 1 : 0)" },
  exp: { f: "expf($a)" },
  ge: { f: "($a >= $b ? 1.0f : 0.0f)", i: "($a >= $b ? 1 : 0)" },
  // 1 + erf(x) as erfc(-x): no cancellation for negative x in f32 (the CPU computes in f64)
  gelu: { f: "0.5f * $a * erfcf($a * -0.70710678118654752f)" },
  gelu_deriv: { f: "0.5f * erfcf($a * -0.70710678118654752f) + $a * expf(-0.5f * $a * $a) * 0.39894228040143268f" },
  gt: { f: "($a > $b ? 1.0f : 0.0f)", i: "($a > $b ? 1 : 0)" },
  log: { f: "logf($a)" },
  maximum: { f: "(($a != $a || $b != $b) ? sh_nan() : $a > $b ? $a : $b)", i: "($a > $b ? $a : $b)" },
  minimum: { f: "(($a != $a || $b != $b) ? sh_nan() : $a < $b ? $a : $b)", i: "($a < $b ? $a : $b)" },
  mul: { f: "$a * $b", i: wrap("(unsigned)$a * (unsigned)$b") },
  neg: { f: "-$a", i: wrap("0u - (unsigned)$a") },
  relu: { f: "($a > 0.0f ? $a : 0.0f)", i: "($a > 0 ? $a : 0)" },
  rsqrt: { f: "sh_rsqrt($a)" },
  sigmoid: { f: "1.0f / (1.0f + expf(-$a))" },
  sign: { f: "($a > 0.0f ? 1.0f : $a < 0.0f ? -1.0f : 0.0f)", i: "($a > 0 ? 1 : $a < 0 ? -1 : 0)" },
  silu: { f: "$a / (1.0f + expf(-$a))" },
  sqrt: { f: "sqrtf($a)" },
  stop_gradient: { f: "$a", i: "$a" },
  sub: { f: "$a - $b", i: wrap("(unsigned)$a - (unsigned)$b") },
  // a non-zero condition (NaN included) picks b
  where: { f: "($a != 0 ? $b : $c)", i: "($a != 0 ? $b : $c)" },
};

/**
 * The `fast` tuning's forms (compiler/codegen/cuda/tuning.ts): exp as MUFU.EX2 and reciprocals as
 * MUFU.RCP (1-2 ulp of f32 before the result's rounding; subnormal results flush to 0).
 */
export const FAST_EXPR: Record<string, string> = {
  div: "$a * sh_rcp($b)",
  exp: "sh_exp2($a * SH_LOG2E)",
  sigmoid: "sh_rcp(1.0f + sh_exp2($a * -SH_LOG2E))",
  silu: "$a * sh_rcp(1.0f + sh_exp2($a * -SH_LOG2E))",
};

/** The C type a value of `dtype` is computed in. */
export const valueType = (t: DType) => (t === "i32" ? "int" : "float");

/** The C type a tensor of `dtype` is stored as. */
export const storageType = (t: DType): string =>
  ({ f32: "float", bf16: "__nv_bfloat16", i32: "int", fp8e4m3: "__nv_fp8_e4m3", fp8e5m2: "__nv_fp8_e5m2" })[t];

export const byteSize = (t: DType) => ({ f32: 4, bf16: 2, i32: 4, fp8e4m3: 1, fp8e5m2: 1 })[t];

/** Rounds a float expression to what `dtype` holds (identity for f32 and i32). */
export function roundTo(t: DType, e: string): string {
  if (t === "bf16") return `sh_round_bf16(${e})`;
  if (t === "fp8e4m3") return `sh_round_e4m3(${e})`;
  if (t === "fp8e5m2") return `sh_round_e5m2(${e})`;
  return e;
}

/** The C expression of an elementwise op applied to argument expressions (already simple names). */
export function opExpr(op: string, out: DType, args: { e: string; dtype: DType }[], fast = false): string {
  if (op === "cast") {
    const [a] = args;
    if (out === "i32") return a!.dtype === "i32" ? a!.e : `sh_f2i(${a!.e})`;
    return roundTo(out, a!.dtype === "i32" ? `(float)${a!.e}` : a!.e);
  }
  const entry = CUDA_EXPR[op];
  if (!entry) throw new Error(`no CUDA form for op '${op}'`);
  // comparisons and arithmetic run in the operands' type (where: the values', not the condition's)
  const int = (op === "where" ? args[1]! : args[0]!).dtype === "i32";
  const form = int ? entry.i : fast && FAST_EXPR[op] ? FAST_EXPR[op] : entry.f;
  if (form === undefined) throw new Error(`op '${op}' has no i32 form`);
  const body = form.replace(/\$([abc])/g, (_, v: string) => args["abc".indexOf(v)]!.e);
  return int ? body : roundTo(out, body);
}

/** A C literal for a constant of `dtype` (the value is already representable in it). */
export function literal(t: DType, v: number): string {
  if (t === "i32") return v === -(2 ** 31) ? "(-2147483647 - 1)" : String(v | 0);
  if (Number.isNaN(v)) return "sh_nan()";
  if (v === Infinity) return "sh_inf()";
  if (v === -Infinity) return "(-sh_inf())";
  if (Object.is(v, -0)) return "-0.0f";
  let s = String(Math.fround(v));
  if (!/[.e]/.test(s)) s += ".0";
  return `${s}f`;
}
