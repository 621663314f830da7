// The MoE dispatch/combine kernels (runtime/cuda/kernels/moe-sources.ts) run, as text, on the CPU
// emulation of test/codegen/emu (g++; threads for lanes, warps exchanging through barriers): the
// fused permute (counts and the stable sort by expert, several 256-slot chunks, skewed routing,
// empty experts, dropped ids, 300 experts), its inverse, the row gather at each word width, the
// weighted gather (redispatch, from token rows and from slot rows) and the combine (weighted,
// unweighted, keeping k), in f32 and bf16; and FP8 dispatch's gathers (stdlib/nn/fp8.ts fp8Dispatch):
// e4m3 code rows of 6 to 2048 bytes (every word width, rows no multiple of 16 bytes) and their f32
// scale rows. Every output must equal the ops' CPU references (compiler/ops/dispatch.ts) bit for
// bit. Skipped, saying so, without g++.
import { describe, expect, it } from "vitest";
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { combineVec, gatherWord, moeCombine, moeGatherRows, moeGatherWeighted, moeInvert, moeRoute, MOE_ROUTE_BLOCK } from "../../runtime/cuda/kernels/moe-sources.ts";
import { quantizeValues } from "../../compiler/ops/quantize.ts";
import { e4m3FromBits, e4m3ToBits } from "../../compiler/numeric/fp8.ts";
import { getOp } from "../../compiler/ops/index.ts";
import type { Attrs, Dim, DType, TensorType } from "../../compiler/ir/types.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { roundToBf16 } from "../../compiler/numeric/bf16.ts";
import { mulberry32 } from "../helpers/prng.ts";
import { GXX, EMU, noteIfNoGxx } from "./gxx.ts";

noteIfNoGxx("moe-kernels-emulation");

interface Case { label: string; dtype: "f32" | "bf16"; B: number; S: number; K: number; D: number; G: number; ids: (r: () => number, s: number, k: number) => number }
const CASES: Case[] = [
  { label: "random, 3 chunks, bf16 rows of 128 B", dtype: "bf16", B: 2, S: 200, K: 3, D: 64, G: 7, ids: (r) => Math.floor(r() * 7) },
  { label: "skewed + empty experts + dropped ids, f32 rows of 12 B", dtype: "f32", B: 3, S: 90, K: 4, D: 3, G: 9, ids: (r, s, k) => (r() < 0.05 ? -1 : r() < 0.7 ? 2 : [0, 5, 8][(s + k) % 3]!) },
  { label: "300 experts, bf16 rows of 6 B", dtype: "bf16", B: 1, S: 130, K: 8, D: 3, G: 300, ids: (r) => (r() < 0.02 ? 300 : Math.floor(r() * 300)) },
];

const T = (dims: [string, number, boolean?][], dtype: DType): TensorType => ({
  dims: dims.map(([name, size, seg]): Dim => (seg ? { name, size, segmented: { counts: { node: 0, out: 2 }, groups: "e", numGroups: 0 } } : { name, size })),
  dtype, placements: [],
});
const L = (dtype: DType, shape: number[], data: ArrayLike<number>): LocalTensor => ({ dtype, shape, data: dtype === "i32" ? Int32Array.from(data) : Float32Array.from(data) });

/** Host bytes of values in the dtype's device layout. */
function bytesOf(dtype: DType, v: ArrayLike<number>): Buffer {
  if (dtype === "i32") return Buffer.from(Int32Array.from(v).buffer);
  if (dtype === "f32") return Buffer.from(Float32Array.from(v).buffer);
  const u = new Uint32Array(Float32Array.from(v).buffer), o = new Uint16Array(u.length);
  for (let i = 0; i < u.length; i++) o[i] = u[i]! >>> 16;
  return Buffer.from(o.buffer);
}
function valuesOf(dtype: DType, b: Buffer): number[] {
  if (dtype === "i32") return Array.from(new Int32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length)));
  if (dtype === "f32") return Array.from(new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length)));
  const h = new Uint16Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  return Array.from(new Float32Array(Uint32Array.from(h, (x) => x << 16).buffer));
}

describe.skipIf(!GXX)("MoE dispatch/combine kernels, run on a CPU emulation of the GPU", () => {
  it("equal the CPU references of moe_dispatch / moe_combine / moe_redispatch bit for bit", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-moeemu-"));
    const run = promisify(execFile);
    const bad: string[] = [];
    for (const c of CASES) {
      const { B, S, K, D, G, dtype } = c, n = S * K, es = dtype === "f32" ? 4 : 2;
      const rnd = mulberry32(B * 1000 + S + G);
      const val = () => (dtype === "bf16" ? roundToBf16 : Math.fround)((rnd() - 0.5) * 6);
      const ids = Array.from({ length: B * n }, (_, i) => c.ids(rnd, Math.floor(i / K) % S, i % K));
      const x = Array.from({ length: B * S * D }, val), w = Array.from({ length: B * n }, val), rowsIn = Array.from({ length: B * n * D }, val);
      const V = gatherWord(D * es, [0n]);
      const gather = moeGatherRows(V), route = moeRoute(), inv = moeInvert(), wg = moeGatherWeighted(dtype), combK = moeCombine(dtype);
      const VC = combineVec(dtype, D, [0n]), combV = moeCombine(dtype, VC); // the 16-byte variant where D allows (else the same kernel)
      const GW = V === 16 ? "uint4" : V === 4 ? "unsigned int" : "unsigned char";
      const Tc = dtype === "f32" ? "float" : "__nv_bfloat16";
      const exe = join(dir, c.label.replace(/\W+/g, "_"));
      // one translation unit: the kernels share the prelude once
      const strip = (src: string, first: boolean) => (first ? src : src.slice(src.indexOf("typedef") >= 0 ? src.indexOf("typedef") : src.indexOf('extern "C"')));
      writeFileSync(`${exe}.cpp`, `#include "cuda-emu.h"
${strip(route.source, true)}
${strip(inv.source, false)}
${strip(gather.source, false)}
${strip(wg.source, false)}
${strip(combK.source, false)}
${VC > 1 ? strip(combV.source, false) : ""}
template <typename X> X* rd(FILE* f, long long n) { X* p = (X*)calloc(n + 16, sizeof(X)); if (fread(p, sizeof(X), n, f) != (size_t)n) exit(2); return p; }
template <typename X> void wr(FILE* f, const X* p, long long n) { fwrite(p, sizeof(X), n, f); }
int main(int, char** argv) {
  const long long B = ${B}, S = ${S}, K = ${K}, D = ${D}, G = ${G}, n = S * K;
  FILE* f = fopen(argv[1], "rb");
  int* keys = rd<int>(f, B * n); ${Tc}* x = rd<${Tc}>(f, B * S * D); ${Tc}* w = rd<${Tc}>(f, B * n); ${Tc}* rowsIn = rd<${Tc}>(f, B * n * D);
  fclose(f);
  int* counts = (int*)calloc(B * G, 4), *perm = (int*)calloc(B * n, 4), *pos = (int*)malloc(B * n * 4);
  memset(pos, 0xff, B * n * 4);
  ${Tc}* rows = (${Tc}*)calloc(B * n * D + 16, ${es}); ${Tc}* yw = (${Tc}*)calloc(B * S * D, ${es}); ${Tc}* yu = (${Tc}*)calloc(B * S * D, ${es});
  ${Tc}* yk = (${Tc}*)calloc(B * n * D, ${es}); ${Tc}* rt = (${Tc}*)calloc(B * n * D, ${es}); ${Tc}* rs = (${Tc}*)calloc(B * n * D, ${es});
  memset(rows, 0x7f, B * n * D * ${es}); memset(yk, 0x7f, B * n * D * ${es}); memset(rt, 0x7f, B * n * D * ${es});
  emu_launch(2, ${MOE_ROUTE_BLOCK}, [&] { ${route.name}(counts, perm, keys, B, (int)n, (int)G); });
  emu_launch(3, 64, [&] { ${inv.name}(pos, perm, B * n, (int)n); });
  const long long words = D * ${es} / ${V};
  emu_launch(3, 64, [&] { ${gather.name}((${GW}*)rows, (const ${GW}*)x, perm, B * n, (int)n, (int)K, S, words); });
  emu_launch(2, 64, [&] { ${combK.name}(yw, rowsIn, pos, w, B * S, (int)S, (int)K, (int)D, 0); });
  emu_launch(2, 64, [&] { ${combK.name}(yu, rowsIn, pos, nullptr, B * S, (int)S, (int)K, (int)D, 0); });
  emu_launch(2, 64, [&] { ${combK.name}(yk, rowsIn, pos, nullptr, B * S, (int)S, (int)K, (int)D, 1); });
  ${Tc}* ywv = (${Tc}*)calloc(B * S * D, ${es}); ${Tc}* yuv = (${Tc}*)calloc(B * S * D, ${es}); ${Tc}* ykv = (${Tc}*)calloc(B * n * D, ${es});
  memset(ykv, 0x7f, B * n * D * ${es});
  emu_launch(3, 96, [&] { ${combV.name}(ywv, rowsIn, pos, w, B * S, (int)S, (int)K, (int)D, 0); });
  emu_launch(3, 96, [&] { ${combV.name}(yuv, rowsIn, pos, nullptr, B * S, (int)S, (int)K, (int)D, 0); });
  emu_launch(3, 96, [&] { ${combV.name}(ykv, rowsIn, pos, nullptr, B * S, (int)S, (int)K, (int)D, 1); });
  emu_launch(2, 64, [&] { ${wg.name}(rt, x, perm, w, B * n, (int)n, (int)K, S, (int)D); });
  emu_launch(2, 64, [&] { ${wg.name}(rs, rowsIn, perm, w, B * n, (int)n, 1, n, (int)D); });
  FILE* o = fopen(argv[2], "wb");
  wr(o, counts, B * G); wr(o, perm, B * n); wr(o, rows, B * n * D); wr(o, yw, B * S * D); wr(o, yu, B * S * D); wr(o, yk, B * n * D); wr(o, rt, B * n * D); wr(o, rs, B * n * D); wr(o, ywv, B * S * D); wr(o, yuv, B * S * D); wr(o, ykv, B * n * D);
  fclose(o);
  return 0;
}
`);
      writeFileSync(`${exe}.in`, Buffer.concat([bytesOf("i32", ids), bytesOf(dtype, x), bytesOf(dtype, w), bytesOf(dtype, rowsIn)]));
      await run(GXX!, ["-std=c++20", "-O1", "-pthread", "-w", `-I${EMU}`, `-I${join(EMU, "include")}`, "-x", "c++", `${exe}.cpp`, "-o", exe]);
      execFileSync(exe, [`${exe}.in`, `${exe}.out`]);
      const out = readFileSync(`${exe}.out`);
      let at = 0;
      const take = (t: DType, count: number) => valuesOf(t, out.subarray(at, (at += count * (t === "i32" ? 4 : es))));
      const got = { counts: take("i32", B * G), perm: take("i32", B * n), rows: take(dtype, B * n * D), yw: take(dtype, B * S * D), yu: take(dtype, B * S * D), yk: take(dtype, B * n * D), rt: take(dtype, B * n * D), rs: take(dtype, B * n * D), ywv: take(dtype, B * S * D), yuv: take(dtype, B * S * D), ykv: take(dtype, B * n * D) };

      // the references
      const tx = T([["b", B], ["s", S], ["d", D]], dtype), ti = T([["b", B], ["s", S], ["k", K]], "i32"), tw = T([["b", B], ["s", S], ["k", K]], dtype);
      const tRows = T([["b", B], ["rows", n, true], ["d", D]], dtype), tPerm = T([["b", B], ["rows", n, true]], "i32");
      const dAttrs: Attrs = { axis: null, dim: "s", k: "k", rows: "rows", groups: "e", numGroups: G };
      const [rows, perm, counts] = getOp("moe_dispatch").global!([L(dtype, [B, S, D], x), L("i32", [B, S, K], ids)], dAttrs, [tx, ti], [tRows, tPerm, T([["b", B], ["e", G]], "i32")]);
      const cAttrs = (keepK: boolean): Attrs => ({ axis: null, dim: "s", size: S, k: "k", numK: K, keepK });
      const tY = T([["b", B], ["s", S], ["d", D]], dtype), tYk = T([["b", B], ["s", S], ["k", K], ["d", D]], dtype);
      const P = L("i32", [B, n], perm!.data), RIn = L(dtype, [B, n, D], rowsIn), Wt = L(dtype, [B, S, K], w);
      const comb = (ins: LocalTensor[], types: TensorType[], keepK: boolean) => getOp("moe_combine").global!(ins, cAttrs(keepK), types, [keepK ? tYk : tY])[0]!.data;
      const redis = (src: LocalTensor, ts: TensorType) => getOp("moe_redispatch").global!([src, P, Wt], cAttrs(false), [ts, tPerm, tw], [tRows])[0]!.data;
      const want0 = {
        counts: counts!.data, perm: perm!.data, rows: rows!.data,
        yw: comb([RIn, P, Wt], [tRows, tPerm, tw], false), yu: comb([RIn, P], [tRows, tPerm], false), yk: comb([RIn, P], [tRows, tPerm], true),
        rt: redis(L(dtype, [B, S, D], x), tx), rs: redis(L(dtype, [B, S, K, D], rowsIn), T([["b", B], ["s", S], ["k", K], ["d", D]], dtype)),
      };
      const want = { ...want0, ywv: want0.yw, yuv: want0.yu, ykv: want0.yk };
      for (const k of Object.keys(want) as (keyof typeof want)[]) {
        const a = got[k], b = Array.from(want[k]);
        let diff = 0, first = -1;
        for (let i = 0; i < b.length; i++) if (!Object.is(a[i], b[i]) && !(Object.is(a[i], 0) && Object.is(b[i], -0)) && !(Object.is(a[i], -0) && Object.is(b[i], 0))) (diff++, first < 0 && (first = i));
        if (diff) bad.push(`${c.label}: ${k}: ${diff}/${b.length} differ, first at ${first}: got ${a[first]} want ${b[first]}`);
      }
      // the routing is what the label says
      if (c.G === 9) expect(Array.from(want.counts).filter((v) => v === 0).length).toBeGreaterThan(0);
    }
    expect(bad).toEqual([]);
  }, 300_000);
  // d: 6 (bytewise), 12 (4-byte words; scales 4 B), 130 (bytewise; scales 8 B), 384 (16 B; scales 12 B), 2048 (16 B; scales 64 B)
  it("FP8 dispatch: e4m3 code rows and their scale rows gathered by the permute's perm equal moe_dispatch / moe_redispatch bit for bit", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-moeemu-fp8-"));
    const run = promisify(execFile);
    const bad: string[] = [];
    for (const D of [6, 12, 130, 384, 2048]) {
      const B = 2, S = 40, K = 3, G = 6, n = S * K, tiles = Math.ceil(D / 128);
      const rnd = mulberry32(D);
      const ids = Array.from({ length: B * n }, () => (rnd() < 0.05 ? -1 : rnd() < 0.5 ? 1 : Math.floor(rnd() * (G - 1)))); // expert G-1 empty
      const x = Float32Array.from({ length: B * S * D }, () => Math.fround((rnd() - 0.5) * 8));
      const { q, scales } = quantizeValues(x, [B * S, D], [false, true]);
      const codes = Buffer.from(Uint8Array.from(q, (v) => e4m3ToBits(v)));
      const VQ = gatherWord(D, [0n]), VS = gatherWord(4 * tiles, [0n]);
      const gq = moeGatherRows(VQ), gs = moeGatherRows(VS), route = moeRoute();
      const word = (v: number) => (v === 16 ? "uint4" : v === 4 ? "unsigned int" : "unsigned char");
      const strip = (src: string) => src.slice(src.indexOf("typedef"));
      const exe = join(dir, `fp8_d${D}`);
      writeFileSync(`${exe}.cpp`, `#include "cuda-emu.h"
${route.source}
${strip(gq.source)}
${VS === VQ ? "" : strip(gs.source)}
int main(int, char** argv) {
  const long long B = ${B}, S = ${S}, K = ${K}, G = ${G}, n = S * K, qb = ${D}, sb = ${4 * tiles};
  FILE* f = fopen(argv[1], "rb");
  int* keys = (int*)calloc(B * n, 4); unsigned char* x = (unsigned char*)calloc(B * S * qb, 1); unsigned char* sc = (unsigned char*)calloc(B * S * sb, 1);
  if (fread(keys, 4, B * n, f) != (size_t)(B * n) || fread(x, 1, B * S * qb, f) != (size_t)(B * S * qb) || fread(sc, 1, B * S * sb, f) != (size_t)(B * S * sb)) return 2;
  fclose(f);
  int* counts = (int*)calloc(B * G, 4), *perm = (int*)calloc(B * n, 4);
  unsigned char* rows = (unsigned char*)malloc(B * n * qb); unsigned char* rs = (unsigned char*)malloc(B * n * sb);
  memset(rows, 0x5a, B * n * qb); memset(rs, 0x5a, B * n * sb);
  emu_launch(2, ${MOE_ROUTE_BLOCK}, [&] { ${route.name}(counts, perm, keys, B, (int)n, (int)G); });
  emu_launch(3, 64, [&] { ${gq.name}((${word(VQ)}*)rows, (const ${word(VQ)}*)x, perm, B * n, (int)n, (int)K, S, qb / ${VQ}); });
  emu_launch(3, 64, [&] { ${gs.name}((${word(VS)}*)rs, (const ${word(VS)}*)sc, perm, B * n, (int)n, (int)K, S, sb / ${VS}); });
  FILE* o = fopen(argv[2], "wb");
  fwrite(perm, 4, B * n, o); fwrite(rows, 1, B * n * qb, o); fwrite(rs, 1, B * n * sb, o);
  fclose(o);
  return 0;
}
`);
      writeFileSync(`${exe}.in`, Buffer.concat([bytesOf("i32", ids), codes, bytesOf("f32", scales)]));
      await run(GXX!, ["-std=c++20", "-O1", "-pthread", "-w", `-I${EMU}`, `-I${join(EMU, "include")}`, "-x", "c++", `${exe}.cpp`, "-o", exe]);
      execFileSync(exe, [`${exe}.in`, `${exe}.out`]);
      const out = readFileSync(`${exe}.out`);
      const perm = valuesOf("i32", out.subarray(0, B * n * 4));
      const rows = Array.from(out.subarray(B * n * 4, B * n * (4 + D)), e4m3FromBits);
      const rowScales = valuesOf("f32", out.subarray(B * n * (4 + D)));

      const tPerm = T([["b", B], ["rows", n, true]], "i32");
      const [wantRows, wantPerm] = getOp("moe_dispatch").global!(
        [L("fp8e4m3", [B, S, D], q), L("i32", [B, S, K], ids)], { axis: null, dim: "s", k: "k", rows: "rows", groups: "e", numGroups: G },
        [T([["b", B], ["s", S], ["d", D]], "fp8e4m3"), T([["b", B], ["s", S], ["k", K]], "i32")], [T([["b", B], ["rows", n, true], ["d", D]], "fp8e4m3"), tPerm, T([["b", B], ["e", G]], "i32")]);
      const [wantScales] = getOp("moe_redispatch").global!(
        [L("f32", [B, S, tiles], scales), L("i32", [B, n], wantPerm!.data)], { axis: null, dim: "s", size: S, k: "k", numK: K, keepK: false },
        [T([["b", B], ["s", S], ["d_tiles", tiles]], "f32"), tPerm], [T([["b", B], ["rows", n, true], ["d_tiles", tiles]], "f32")]);
      const same = (a: number[], b: ArrayLike<number>) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]) || (v === 0 && b[i] === 0));
      if (!same(perm, wantPerm!.data)) bad.push(`d ${D}: perm`);
      if (!same(rows, wantRows!.data)) bad.push(`d ${D}: code rows (${VQ}-byte words)`);
      if (!same(rowScales, wantScales!.data)) bad.push(`d ${D}: scale rows (${VS}-byte words)`);
    }
    expect(bad).toEqual([]);
  }, 300_000);
});
