// compiler/codegen/cuda/gemm/stream-k.ts: the last partial wave's K blocks cut into one range per CTA.
import { describe, expect, it } from "vitest";
import { streamKParts, streamKSplit, streamKUnits, streamKWorkspace } from "../../compiler/codegen/cuda/gemm/stream-k.ts";

/** Every CTA's units, and per (tile, k) which CTA ran it (each exactly once, or the test fails). */
function cover(tiles: number, kb: number, grid: number) {
  const owner = new Map<string, number>();
  const units = Array.from({ length: grid }, (_, c) => streamKUnits(tiles, kb, grid, c));
  units.forEach((us, c) =>
    us.forEach((u) => {
      expect(u.k0).toBeLessThan(u.k1);
      for (let k = u.k0; k < u.k1; k++) {
        const key = `${u.tile}:${k}`;
        expect(owner.has(key), `tile ${u.tile} block ${k} twice`).toBe(false);
        owner.set(key, c);
      }
    }),
  );
  expect(owner.size).toBe(tiles * kb);
  return { units, owner };
}

describe("stream-K decomposition", () => {
  // the shapes on 132 SMs with 128 x 256 tiles, and edges: nothing cut, fewer K blocks than CTAs
  const cases: [string, number, number, number][] = [
    ["8192^3", 2048, 64, 132],
    ["4096x7168x2048", 896, 16, 132],
    ["4096x2048x7168", 256, 56, 132],
    ["4096x4096x7168", 512, 56, 132],
    ["exact waves", 264, 16, 132],
    ["fewer K blocks than CTAs", 133, 1, 132],
    ["fewer tiles than CTAs", 100, 16, 132],
    ["small", 7, 5, 3],
  ];
  for (const [name, tiles, kb, grid] of cases)
    it(`${name}: every K block of every tile runs once; cut tiles are contiguous ranges whose parts the formula counts`, () => {
      const { units, owner } = cover(tiles, kb, grid);
      const { full, rem, iters, cut } = streamKSplit(tiles, kb, grid);
      // whole waves first, whole tiles
      units.forEach((us, c) => us.slice(0, full).forEach((u, i) => expect(u).toEqual({ tile: c + i * grid, k0: 0, k1: kb })));
      if (!cut) {
        units.flat().forEach((u) => expect([u.k0, u.k1]).toEqual([0, kb]));
        return;
      }
      // the cut region: CTA ranges differ by at most one K block, and the parts formula matches who ran them
      const sizes = units.map((us) => us.slice(full).reduce((s, u) => s + u.k1 - u.k0, 0));
      expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1);
      for (let q = 0; q < rem; q++) {
        const tile = full * grid + q, ctas = new Set<number>();
        for (let k = 0; k < kb; k++) ctas.add(owner.get(`${tile}:${k}`)!);
        const { first, parts } = streamKParts(q, kb, iters, grid);
        expect([...ctas].sort((a, b) => a - b)).toEqual(Array.from({ length: parts }, (_, i) => first + i));
      }
      const ws = streamKWorkspace(tiles, kb, grid, 128, 256);
      expect(ws.slots).toBeGreaterThanOrEqual(2);
      expect(ws.workBytes).toBe(rem * ws.slots * 128 * 256 * 4);
    });

  it("the shapes' cut tiles have at most 3 parts, and the last wave is gone", () => {
    expect(streamKWorkspace(2048, 64, 132, 128, 256).slots).toBe(3);
    expect(streamKWorkspace(896, 16, 132, 128, 256).slots).toBe(3);
    // 8192^3: the 68 tiles of the 16th wave become 33 K blocks (about half a tile) on every CTA
    const per = Array.from({ length: 132 }, (_, c) => streamKUnits(2048, 64, 132, c).reduce((s, u) => s + u.k1 - u.k0, 0));
    expect(Math.max(...per)).toBe(15 * 64 + 33);
    expect(Math.min(...per)).toBe(15 * 64 + 32);
  });

  it("nothing is cut where the tiles fill whole waves, the K blocks are fewer than the CTAs, or a tile would have more than 4 parts: no workspace", () => {
    expect(streamKWorkspace(264, 16, 132, 128, 256)).toEqual({ slots: 0, workBytes: 0, flagBytes: 0 });
    expect(streamKWorkspace(133, 1, 132, 128, 256).workBytes).toBe(0);
    // 8 tiles of 64 blocks left over 132 CTAs: ~4 blocks a CTA, ~17 parts a tile
    expect(streamKSplit(140, 64, 132).cut).toBe(false);
    expect(streamKWorkspace(140, 64, 132, 128, 256).slots).toBe(0);
    cover(140, 64, 132);
  });
});
