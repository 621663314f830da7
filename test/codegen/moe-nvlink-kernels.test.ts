// The NVLink MoE transport's kernels (runtime/cuda/kernels/moe-nvlink-sources.ts): every variant
// compiles for sm_90a with nvcc and no spills; and, on the g++ emulation of test/codegen/emu, the
// ranks of one expert-axis group run as one process sharing host "windows": each phase (notify,
// push, consume) runs for every rank before the next, so each barrier is already met when waited on
// (a wait that is not would abort the emulation). Dispatch (16- and 4-byte words), combine's push
// back and the weighted redispatch, three ops in a row over the same windows (the kernels count the
// epochs 1..3 on the "device", so both parity areas are used): outputs must equal the CPU reference's
// pieces bit for bit, and every block's epoch counter must read 3 after. Skipped without nvcc/g++.
import { describe, expect, it } from "vitest";
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { moeNvlCombine, moeNvlPush, moeNvlSources } from "../../runtime/cuda/kernels/moe-nvlink-sources.ts";
import { nvlGeometry, parityAreas, windowLayout } from "../../runtime/cuda/moe-nvlink-layout.ts";
import { getOp } from "../../compiler/ops/index.ts";
import type { TensorType } from "../../compiler/ir/types.ts";
import { moeCase, S, K, type Routing } from "../helpers/moe-nvlink-case.ts";
import { EMU, GXX, NVCC, noteIfNoGxx, noteIfNoNvcc } from "./gxx.ts";

noteIfNoNvcc("moe-nvlink-kernels.test.ts");
noteIfNoGxx("moe-nvlink-kernels.test.ts");
const run = promisify(execFile);

describe.skipIf(!NVCC)("NVLink MoE kernels compile for sm_90a", () => {
  it("every variant compiles with no spills", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-nvl-"));
    for (const k of moeNvlSources()) {
      const cu = join(dir, `${k.name}.cu`);
      writeFileSync(cu, k.source);
      const { stderr } = await run(NVCC!, ["-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-Xptxas", "-v", "-o", cu.replace(/\.cu$/, ".cubin"), cu]);
      expect(/(\d+) bytes spill stores/.exec(stderr)?.[1], k.name).toBe("0");
      expect(stderr, k.name).not.toMatch(/warning/);
    }
  }, 120_000);
});

const CASES: { axes: Record<string, number>; B: number; E: number; routing: Routing; D: number }[] = [
  { axes: { ep: 2 }, B: 5, E: 7, routing: "random", D: 5 }, // 20-byte rows: 4-byte words; uneven batch
  { axes: { ep: 4 }, B: 8, E: 9, routing: "skewed", D: 8 }, // 32-byte rows: 16-byte words
  { axes: { ep: 3 }, B: 3, E: 6, routing: "empty", D: 4 },
  { axes: { ep: 2 }, B: 4, E: 5, routing: "random", D: 520 }, // 130 words a row: the 4-deep copy loop and its tail
];
const NB = 3, THREADS = 64;

describe.skipIf(!GXX)("NVLink MoE kernels on the CPU emulation, every rank of a group in one process", () => {
  for (const c of CASES)
    it(`${JSON.stringify(c.axes)} B=${c.B} E=${c.E} ${c.routing} d=${c.D}: pieces equal the CPU reference`, async () => {
      const m = moeCase(c.axes, c.B, c.E, c.routing, c.D);
      const W = m.plan.world, n = S * K, G = c.E, D = c.D, V = (D * 4) % 16 === 0 ? 16 : 4;
      const geos = Array.from({ length: W }, (_, r) => nvlGeometry(m.plan, m.rowsSlot, m.ins.inputs[1]!, "ep", "rows", ["b"], r));
      const g0 = geos[0]!, Bdst = g0.Bdst, Bloc = g0.dstOf.map((d) => d.length);
      const L = windowLayout(W, NB, Bdst * G, W * Bdst, Bdst * n * D * 4);
      const even = parityAreas(L, 0), odd = parityAreas(L, 1);
      // the reference of the weighted redispatch of the tokens, as each expert rank's piece
      const tx: TensorType = { dims: [{ name: "b", size: c.B }, { name: "s", size: S }, { name: "d", size: D }], dtype: "f32", placements: [] };
      const tp = m.plan.values[m.ins.outputs[1]!]!.type, tw: TensorType = { ...tx, dims: [tx.dims[0]!, tx.dims[1]!, { name: "k", size: K }] };
      const tr = m.plan.values[m.rowsSlot]!.type;
      const [redis] = getOp("moe_redispatch").global!([m.gx, m.gPerm, m.gw], { axis: null, dim: "s", size: S, k: "k", numK: K }, [tx, { ...tp, placements: [] }, tw], [{ ...tr, placements: [] }]);
      const d = moeNvlPush({ redispatch: false, V }), comb = moeNvlCombine(V), rw = moeNvlPush({ redispatch: true, V: 1, weighted: "f32" });
      // one translation unit: the shared head once, then each kernel from its word typedef on
      const strip = (src: string) => src.slice(src.indexOf("typedef"));
      const arr = (name: string, type: string, per: (r: number) => number) => `${type}* ${name}[${W}]; for (int r = 0; r < W; r++) ${name}[r] = rd<${type}>(f, {${Array.from({ length: W }, (_, r) => per(r)).join(",")}}, r);`;
      const dir = mkdtempSync(join(tmpdir(), "shardts-nvlemu-")), exe = join(dir, "nvl");
      writeFileSync(`${exe}.cpp`, `#include "cuda-emu.h"
${d.source}
${strip(comb.source)}
${strip(rw.source)}
template <typename X> X* rd(FILE* f, std::initializer_list<long long> ns, int r) { long long nn = ns.begin()[r]; X* p = (X*)calloc(nn + 16, sizeof(X)); if (nn && fread(p, sizeof(X), nn, f) != (size_t)nn) exit(2); return p; }
int main(int, char** argv) {
  const int W = ${W}, G = ${G}, n = ${n}, Bdst = ${Bdst}, K = ${K}, S = ${S}, D = ${D};
  const int Bloc[W] = {${Bloc.join(",")}};
  FILE* f = fopen(argv[1], "rb");
  ${arr("x", "float", (r) => Bloc[r]! * S * D)} ${arr("perm", "int", (r) => Bloc[r]! * n)} ${arr("cnt", "int", (r) => Bloc[r]! * G)} ${arr("w", "float", (r) => Bloc[r]! * n)}
  ${arr("geoD", "int", (r) => W + 1 + Bloc[r]!)} ${arr("rowsE", "float", () => Bdst * n * D)} ${arr("cntE", "int", (r) => Bdst * (geos[r]!.efirst[r + 1]! - geos[r]!.efirst[r]!))} ${arr("geoC", "int", () => W + 1 + 2 * Bdst)}
  fclose(f);
  unsigned long long peers[W];
  for (int r = 0; r < W; r++) peers[r] = (unsigned long long)calloc(${L.bytes}, 1);
  unsigned long long* ep[W];
  for (int r = 0; r < W; r++) ep[r] = (unsigned long long*)calloc(${NB}, 8);
  float* out[W]; int* outC[W]; float* outR[W];
  for (int r = 0; r < W; r++) { out[r] = (float*)malloc(Bdst * n * D * 4 + 64); outC[r] = (int*)calloc(Bdst * G + 16, 4); outR[r] = (float*)malloc(Bdst * n * D * 4 + 64); memset(out[r], 0x7f, Bdst * n * D * 4); memset(outR[r], 0x7f, Bdst * n * D * 4); }
  const long long T = 2000000000LL;
  for (int ph = 1; ph <= 4; ph <<= 1) for (int r = 0; r < W; r++)
    emu_launch(${NB}, ${THREADS}, [&] { ${d.name}(peers, geoD[r], W, r, ep[r], ph, T, ${L.flagN}, ${L.flagR}, ${even.counts}, ${odd.counts}, ${even.lens}, ${odd.lens}, ${L.rows},
      (const ${d.name}_t*)x[r], perm[r], cnt[r], nullptr, Bloc[r], Bdst, G, n, K, S, ${(D * 4) / V}, (${d.name}_t*)out[r], outC[r]); });
  for (int ph = 1; ph <= 4; ph <<= 1) for (int r = 0; r < W; r++)
    emu_launch(${NB}, ${THREADS}, [&] { ${comb.name}(peers, geoC[r], W, r, ep[r], ph, T, ${L.flagN}, ${L.flagR}, ${even.lens}, ${odd.lens}, ${L.rows},
      (const ${comb.name}_t*)rowsE[r], cntE[r], Bdst, n, ${(D * 4) / V}); });
  FILE* o = fopen(argv[2], "wb");
  for (int r = 0; r < W; r++) fwrite((char*)peers[r] + ${L.rows}, 4, (size_t)Bloc[r] * n * D, o);
  for (int ph = 1; ph <= 4; ph <<= 1) for (int r = 0; r < W; r++)
    emu_launch(${NB}, ${THREADS}, [&] { ${rw.name}(peers, geoD[r], W, r, ep[r], ph, T, ${L.flagN}, ${L.flagR}, ${even.counts}, ${odd.counts}, ${even.lens}, ${odd.lens}, ${L.rows},
      x[r], perm[r], cntE[r], w[r], Bloc[r], Bdst, G, n, K, S, D, outR[r], nullptr); });
  for (int r = 0; r < W; r++) for (int b = 0; b < ${NB}; b++) { const int e = (int)ep[r][b]; fwrite(&e, 4, 1, o); }
  for (int r = 0; r < W; r++) { fwrite(out[r], 4, (size_t)Bdst * n * D, o); fwrite(outC[r], 4, (size_t)Bdst * (${"geoD[r][r + 1] - geoD[r][r]"}), o); fwrite(outR[r], 4, (size_t)Bdst * n * D, o); }
  fclose(o);
  return 0;
}
`);
      const i32 = (a: ArrayLike<number>) => Buffer.from(Int32Array.from(a).buffer), f32 = (a: ArrayLike<number>) => Buffer.from(Float32Array.from(a).buffer);
      const ranks = [...Array(W).keys()];
      // the gate weights in the permute's slot order [lb, s*K + k]: w's piece is [lb, s, k] already
      writeFileSync(`${exe}.in`, Buffer.concat([
        ...ranks.map((r) => f32(m.srcX[r]!.data)), ...ranks.map((r) => i32(m.res.locals[1]![r]!.data)), ...ranks.map((r) => i32(m.srcCounts[r]!.data)), ...ranks.map((r) => f32(m.srcW[r]!.data)),
        ...ranks.map((r) => i32([...geos[r]!.efirst, ...geos[r]!.dstOf[r]!])), ...ranks.map((r) => f32(m.res.locals[0]![r]!.data)), ...ranks.map((r) => i32(m.res.locals[2]![r]!.data)),
        ...ranks.map((r) => i32([...geos[r]!.efirst, ...geos[r]!.srcRank, ...geos[r]!.srcLb])),
      ]));
      await run(GXX!, ["-std=c++20", "-O1", "-pthread", "-w", `-I${EMU}`, `-I${join(EMU, "include")}`, "-x", "c++", `${exe}.cpp`, "-o", exe]);
      execFileSync(exe, [`${exe}.in`, `${exe}.out`]);
      const out = readFileSync(`${exe}.out`);
      let at = 0;
      const take = (count: number, int = false) => {
        const b = out.subarray(at, (at += count * 4)), ab = b.buffer.slice(b.byteOffset, b.byteOffset + b.length);
        return Array.from(int ? new Int32Array(ab) : new Float32Array(ab));
      };
      const back = ranks.map((r) => take(Bloc[r]! * n * D));
      expect(take(W * NB, true), "every block's epoch counter after three ops").toEqual(new Array(W * NB).fill(3));
      for (const r of ranks) {
        const ne = g0.efirst[r + 1]! - g0.efirst[r]!;
        expect(take(Bdst * n * D), `dispatch rows on rank ${r}`).toEqual(Array.from(m.res.locals[0]![r]!.data));
        expect(take(Bdst * ne, true), `dispatch counts on rank ${r}`).toEqual(Array.from(m.res.locals[2]![r]!.data));
        expect(take(Bdst * n * D), `redispatch rows on rank ${r}`).toEqual(Array.from(m.pieceOfRows(redis!, r).data));
        // combine's push: every kept row of the token side, in sorted order (the rest is never read)
        for (let lb = 0; lb < Bloc[r]!; lb++) {
          let kept = 0;
          for (let g = 0; g < G; g++) kept += m.srcCounts[r]!.data[lb * G + g]!;
          const a = lb * n * D;
          expect(back[r]!.slice(a, a + kept * D), `combine push back to rank ${r} entry ${lb}`).toEqual(Array.from(m.srcRows[r]!.data.subarray(a, a + kept * D)));
        }
      }
    }, 120_000);
});
