// The colour/key math that splits the world communicator into one per mesh axis: ranks with one
// colour are exactly the axis group (groupAlong), and the key orders them by their axis coordinate.
import { describe, it, expect } from "vitest";
import { splitColorKey } from "../../runtime/cuda/nccl/communicators.ts";
import { coordsOf, groupAlong, worldSize } from "../../compiler/ir/placement.ts";

describe("splitColorKey", () => {
  for (const sizes of [[2], [2, 2], [2, 3], [3, 1, 2], [2, 2, 2]])
    it(`mesh ${sizes.join("x")}: one colour per axis group, key = the axis coordinate`, () => {
      const mesh = { axes: sizes.map((_, i) => `a${i}`), sizes };
      const W = worldSize(mesh);
      sizes.forEach((n, axis) => {
        const byColor = new Map<number, number[]>();
        for (let r = 0; r < W; r++) {
          const { color, key } = splitColorKey(mesh, r, axis);
          expect(key).toBe(coordsOf(mesh, r)[axis]);
          expect(color).toBeGreaterThanOrEqual(0);
          byColor.set(color, [...(byColor.get(color) ?? []), r]);
        }
        expect(byColor.size).toBe(W / n);
        for (const members of byColor.values()) {
          const sorted = members.slice().sort((x, y) => splitColorKey(mesh, x, axis).key - splitColorKey(mesh, y, axis).key);
          expect(sorted).toEqual(groupAlong(mesh, members[0]!, axis));
        }
      });
    });
});
