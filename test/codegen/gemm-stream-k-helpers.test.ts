// The kernel's stream-K helpers (STREAM_K_HELPERS: sk_unit, sk_cta), compiled by g++ with gridDim and
// blockIdx as plain variables, walk the same units as the TypeScript the host and the tests use
// (compiler/codegen/cuda/gemm/stream-k.ts), and find the same parts of every cut tile. Skipped without g++.
import { describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { STREAM_K_HELPERS, streamKParts, streamKSplit, streamKUnits } from "../../compiler/codegen/cuda/gemm/stream-k.ts";
import { GXX, noteIfNoGxx } from "./gxx.ts";

noteIfNoGxx("gemm-stream-k-helpers");

describe.skipIf(!GXX)("stream-K helpers on the host", () => {
  it("sk_unit and sk_cta agree with streamKUnits and streamKParts on the issue's shapes and the edges", () => {
    const dir = mkdtempSync(join(tmpdir(), "shardts-sk-"));
    const helpers = STREAM_K_HELPERS.slice(0, STREAM_K_HELPERS.indexOf("static __device__ __forceinline__ int sk_ld_acquire")) + "#endif\n";
    const src = `#include <cstdio>
#include <cstdlib>
#include <algorithm>
using std::min;
#define __device__
#define __forceinline__ inline
struct Dim { unsigned x; };
static Dim gridDim, blockIdx;
${helpers}
int main(int argc, char** argv) {
  const int tiles = atoi(argv[1]), KB = atoi(argv[2]), G = atoi(argv[3]), slots = atoi(argv[4]);
  gridDim.x = G;
  for (int c = 0; c < G; ++c) {
    blockIdx.x = c;
    for (int u = 0;; ++u) {
      int t, k0, k1;
      if (!sk_unit(u, tiles, KB, slots > 0, t, k0, k1)) break;
      std::printf("u %d %d %d %d\\n", c, t, k0, k1);
    }
  }
  const int rem = tiles % G, iters = rem * KB;
  if (slots > 0)
    for (int q = 0; q < rem; ++q) {
      const int first = sk_cta(q * KB, iters, G);
      std::printf("p %d %d %d\\n", q, first, sk_cta(q * KB + KB - 1, iters, G) - first + 1);
    }
  return 0;
}
`;
    writeFileSync(join(dir, "sk.cc"), src);
    execFileSync(GXX!, ["-O1", "-std=c++17", "-o", join(dir, "sk"), join(dir, "sk.cc")]);
    for (const [tiles, kb, grid] of [[2048, 64, 132], [896, 16, 132], [256, 56, 132], [512, 56, 132], [264, 16, 132], [140, 64, 132], [100, 16, 132], [7, 5, 3]]) {
      const { slots, rem, iters } = streamKSplit(tiles!, kb!, grid!);
      const out = execFileSync(join(dir, "sk"), [String(tiles), String(kb), String(grid), String(slots)], { encoding: "utf8" }).trim().split("\n");
      const want = Array.from({ length: grid! }, (_, c) => streamKUnits(tiles!, kb!, grid!, c).map((u) => `u ${c} ${u.tile} ${u.k0} ${u.k1}`)).flat();
      if (slots > 0) for (let q = 0; q < rem; q++) {
        const { first, parts } = streamKParts(q, kb!, iters, grid!);
        want.push(`p ${q} ${first} ${parts}`);
      }
      expect(out, `${tiles} tiles, KB ${kb}, grid ${grid}`).toEqual(want);
    }
  });
});
