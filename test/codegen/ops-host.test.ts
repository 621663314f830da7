// The CUDA form of every elementwise op (compiler/codegen/cuda/ops.ts), as the kernels emit it and
// with the kernels' prelude, compiled by nvcc as host code and run on edge values (signed zeros,
// NaN, infinities, overflow, subnormals, bf16/FP8 rounding ties, INT_MIN) against the registry's CPU
// reference. f32 math agrees within 1e-5 (relative, floor 1e-3 of the op's largest value); integer
// ops and every cast are bit-exact. A GPU's libdevice differs from the host libm by an ulp or two;
// the GPU tier checks that. Skipped, saying so, without nvcc.
import { describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DType } from "../../compiler/ir/types.ts";
import type { CpuCtx } from "../../compiler/ops/registry.ts";
import { allocLocal } from "../../compiler/ir/local.ts";
import { getOp } from "../../compiler/ops/index.ts";
import { CUDA_EXPR, opExpr } from "../../compiler/codegen/cuda/ops.ts";
import { prelude } from "../../compiler/codegen/cuda/prelude.ts";
import { mulberry32 } from "../helpers/prng.ts";

const NVCC = [process.env.NVCC, "nvcc", "/usr/local/cuda/bin/nvcc"].find((c) => {
  if (!c) return false;
  try {
    execFileSync(c, ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
});

const rnd = mulberry32(20240917);
const F_EDGE = [0, -0, 1, -1, 0.5, -0.5, 2, 3.7, -3.7, 10, -10, 20, -20, 88, -88, 100, -100, 1e-30, -1e-30, 1e-40, 65504, 3e38, -3e38, NaN, Infinity, -Infinity,
  448, 464, 480, 500, -500, 57344, 61440, 1.00390625, 1.01171875, -1.00390625, 0.0009765625, 1e-6, 7, -7];
const FA = [...F_EDGE, ...Array.from({ length: 88 }, () => (rnd() - 0.5) * 12)].map(Math.fround);
const FB = [...FA.slice(7), ...FA.slice(0, 7)].map((v, i) => (i % 9 === 0 ? FA[i]! : i % 13 === 0 ? 0 : v));
const FC = FA.map((_, i) => FA[(i * 7 + 3) % FA.length]!);
const I_EDGE = [0, 1, -1, 7, -7, 2147483647, -2147483648, 65536, -65536, 46341, -46341, 3, -3, 100, -100];
const IA = [...I_EDGE, ...Array.from({ length: 49 }, () => ((rnd() - 0.5) * 2 ** 32) | 0)];
const IB = IA.map((v, i) => (i % 5 === 0 ? 0 : i % 7 === 0 ? -1 : i % 11 === 0 ? v : IA[(i * 3 + 1) % IA.length]!));

interface Case {
  label: string;
  c: string;
  /** The reference: the registry's CPU op. */
  op: string;
  attrs: Record<string, string>;
  ins: { dtype: DType; data: number[] }[];
  out: DType;
}

const cases: Case[] = [];
for (const [op, e] of Object.entries(CUDA_EXPR)) {
  if (op === "cast") continue;
  const arity = op === "where" ? 3 : getOp(op).args.length;
  const fl = (["a", "b", "c"] as const).slice(0, arity).map((v) => ({ e: v, dtype: "f32" as DType }));
  cases.push({ label: `${op}.f32`, c: opExpr(op, "f32", fl), op, attrs: {}, ins: [FA, FB, FC].slice(0, arity).map((d) => ({ dtype: "f32", data: d })), out: "f32" });
  if (e.i !== undefined) {
    const il = (["ia", "ib", "ic"] as const).slice(0, arity).map((v) => ({ e: v, dtype: "i32" as DType }));
    cases.push({ label: `${op}.i32`, c: opExpr(op, "i32", il), op, attrs: {}, ins: [IA, IB, IA].slice(0, arity).map((d) => ({ dtype: "i32", data: d })), out: "i32" });
  }
}
const casts: [DType, DType][] = [["f32", "bf16"], ["f32", "fp8e4m3"], ["f32", "fp8e5m2"], ["f32", "i32"], ["bf16", "fp8e4m3"], ["i32", "f32"], ["i32", "bf16"]];
for (const [from, to] of casts) {
  const src = from === "i32" ? IA : FA;
  cases.push({ label: `cast.${from}->${to}`, c: opExpr("cast", to, [{ e: from === "i32" ? "ia" : "a", dtype: from }]), op: "cast", attrs: { dtype: to }, ins: [{ dtype: from, data: src }], out: to });
}

function reference(k: Case): Float32Array | Int32Array {
  const n = k.ins[0]!.data.length;
  const ins = k.ins.map((i) => {
    const t = allocLocal(i.dtype, [n]);
    t.data.set(i.data);
    return t;
  });
  const type = (dtype: DType) => ({ dims: [{ name: "i", size: n }], dtype, placements: [] });
  const ctx = { inTypes: k.ins.map((i) => type(i.dtype)), outTypes: [type(k.out)], outShapes: [[n]], inBoxes: [], outBoxes: [], coords: [], rank: 0 } as unknown as CpuCtx;
  return getOp(k.op).cpu(ins, k.attrs, ctx)[0]!.data;
}

const bits = (v: number) => {
  const f = new Float32Array([v]);
  return `0x${new Uint32Array(f.buffer)[0]!.toString(16)}u`;
};

function hostProgram(): string {
  const lines = [
    "#include <cstdio>",
    "#include <cmath>",
    prelude(true),
    `static const unsigned int FA[] = {${FA.map(bits).join(", ")}};`,
    `static const unsigned int FB[] = {${FB.map(bits).join(", ")}};`,
    `static const unsigned int FC[] = {${FC.map(bits).join(", ")}};`,
    `static const int IA[] = {${IA.map((v) => (v === -(2 ** 31) ? "(-2147483647 - 1)" : String(v))).join(", ")}};`,
    `static const int IB[] = {${IB.map((v) => (v === -(2 ** 31) ? "(-2147483647 - 1)" : String(v))).join(", ")}};`,
    "static unsigned int fbits(float f) { union { float f; unsigned int u; } c; c.f = f; return c.u; }",
    "int main() {",
  ];
  for (const k of cases) {
    const n = k.ins[0]!.data.length;
    const print = k.out === "i32" ? 'printf(" %d", (int)(' + k.c + "))" : 'printf(" %08x", fbits(' + k.c + "))";
    lines.push(`  printf("${k.label}");`);
    lines.push(`  for (int i = 0; i < ${n}; ++i) {`);
    lines.push(k.ins[0]!.dtype === "i32"
      ? `    const int ia = IA[i], ib = IB[i], ic = IA[i]; (void)ib; (void)ic;`
      : `    const float a = sh_bits(FA[i]), b = sh_bits(FB[i]), c = sh_bits(FC[i]); (void)b; (void)c;`);
    lines.push(`    ${print};`, "  }", '  printf("\\n");');
  }
  lines.push("  return 0;", "}");
  return lines.join("\n");
}

describe.skipIf(!NVCC)("the CUDA op table, run as host code, equals the CPU reference", () => {
  it(`${cases.length} op/dtype cases on ${FA.length} float and ${IA.length} integer inputs`, () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-ops-host-"));
    writeFileSync(join(dir, "ops.cu"), hostProgram());
    execFileSync(NVCC!, ["-o", join(dir, "ops"), join(dir, "ops.cu")], { stdio: "pipe" });
    const out = execFileSync(join(dir, "ops"), { encoding: "utf8", maxBuffer: 16 << 20 }).trim().split("\n");
    expect(out).toHaveLength(cases.length);
    const f = new Float32Array(1), u = new Uint32Array(f.buffer);
    const worst: string[] = [];
    cases.forEach((k, ci) => {
      const [label, ...vals] = out[ci]!.split(" ");
      expect(label).toBe(k.label);
      const got = vals.map((v) => (k.out === "i32" ? Number(v) : ((u[0] = parseInt(v, 16)), f[0]!)));
      const ref = reference(k);
      let scale = 0;
      for (const v of ref) if (Number.isFinite(v)) scale = Math.max(scale, Math.abs(v));
      const exact = k.out !== "f32" || k.op === "cast";
      let w = 0;
      ref.forEach((r, i) => {
        const g = got[i]!, where = `${k.label} at input ${i} (${k.ins.map((x) => x.data[i]).join(", ")}): ${g} vs ${r}`;
        if (Number.isNaN(r) || Number.isNaN(g)) return expect(Number.isNaN(g), where).toBe(Number.isNaN(r));
        if (exact || !Number.isFinite(r)) return expect(Object.is(g, r) || (g === r && g !== 0), where).toBe(true);
        const d = Math.abs(g - r) / Math.max(Math.abs(r), 1e-3 * scale);
        expect(d, where).toBeLessThanOrEqual(1e-5);
        w = Math.max(w, d);
      });
      if (!exact) worst.push(`${k.label} ${w.toExponential(1)}`);
    });
    console.log(`CUDA op table on the host: ${cases.length} cases, casts and i32 bit-exact; f32 largest rel. error: ${worst.join(", ")}`);
  }, 120_000);
});
