// Outputs carried to the next run on the device (runtime/cuda/carried.ts), over the native layer that
// does no device work (test/fakes/native-addon.ts): what crosses the host boundary, which buffers the
// next run reads, and that no block leaks or is freed twice; then the same API on the CPU backend,
// where carrying must equal feeding the outputs back by hand.
import { describe, expect, it } from "vitest";
import { Mesh, type AnyDTensor } from "../../stdlib/index.ts";
import { input, piecesOf, Program } from "../../stdlib/program.ts";
import { add } from "../../stdlib/nn/ops-internal.ts";
import { sum } from "../../stdlib/ops/reduce.ts";
import { compile } from "../../compiler/pipeline.ts";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { fakeAddon } from "../fakes/native-addon.ts";
import { useTempKernelCache } from "../fakes/kernel-cache.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";

const R = 64, C = 32, BYTES = R * C * 4;

/** w2 = w + w, s = sum(w) over c, and w itself passed through; inputs w and v (same type). */
function build(dp = 1) {
  const mesh = Mesh.of({ dp });
  const w = input(mesh, "w", { r: R, c: C }, "f32") as AnyDTensor;
  const v = input(mesh, "v", { r: R, c: C }, "f32") as AnyDTensor;
  const outs = { w2: add(w, w) as AnyDTensor, s: sum(add(w, v) as AnyDTensor, "c") as AnyDTensor, same: w };
  return { mesh, outs, plan: compile(mesh.builder.graph, Object.values(outs).map((o) => o.ref)) };
}

function counted() {
  const bytes = { htod: 0, dtoh: 0 };
  const f = fakeAddon({
    spy: (m, a) => {
      if (m === "memcpyHtoDAsync") bytes.htod += Number(a[2]);
      if (m === "memcpyDtoHAsync") bytes.dtoh += Number(a[2]);
    },
  });
  return { ex: new CudaExecutor(f.addon, 0), bytes };
}

const feed = (mesh: Mesh<string>, name: string, x: number) => [name, piecesOf(mesh.spec, { dims: [{ name: "r", size: R }, { name: "c", size: C }], dtype: "f32", placements: ["R"] }, new Float32Array(R * C).fill(x))] as const;

describe("carried outputs (CUDA executor, fake native layer)", () => {
  useTempKernelCache();

  it("the next run reads the carried output where it is: no upload of it, no read-back unless asked", () => {
    const { mesh, plan } = build(), { ex, bytes } = counted();
    const carry = new Map([[0, "w"]]); // w2 -> w
    ex.run(plan, new Map([feed(mesh, "w", 1), feed(mesh, "v", 1)]), [1], { carry });
    expect(bytes.htod).toBeGreaterThanOrEqual(2 * BYTES); // w and v uploaded
    const first = ex.carried.get(plan, "w")![0]!.ptr;
    const live = ex.mem.live;
    for (let i = 0; i < 4; i++) {
      bytes.htod = bytes.dtoh = 0;
      ex.run(plan, new Map([feed(mesh, "v", 1)]), [1], { carry });
      expect(bytes.htod).toBe(BYTES); // v only: w is carried
      expect(bytes.dtoh).toBe(BYTES + R * 4); // s and the uncarried output same come back, w2 does not
      expect(ex.mem.live, `run ${i + 2}`).toBe(live); // the old carried block freed as the new one is kept
    }
    expect(ex.carried.get(plan, "w")![0]!.ptr).not.toBe(first);
    // asked for: the carried output is read back too, and still carried
    bytes.dtoh = 0;
    const res = ex.run(plan, new Map([feed(mesh, "v", 1)]), [0, 1], { carry });
    expect(bytes.dtoh).toBe(2 * BYTES + R * 4);
    expect(res.locals[0]![0]!.shape).toEqual([R, C]);
    expect(ex.carried.get(plan, "w")).toBeDefined();
  });

  it("a feed of the same name wins over the carried value for that run", () => {
    const { mesh, plan } = build(), { ex, bytes } = counted();
    const carry = new Map([[0, "w"]]);
    ex.run(plan, new Map([feed(mesh, "w", 1), feed(mesh, "v", 1)]), [1], { carry });
    bytes.htod = 0;
    ex.run(plan, new Map([feed(mesh, "w", 3), feed(mesh, "v", 1)]), [1], { carry });
    expect(bytes.htod).toBe(2 * BYTES);
  });

  it("an output that is an input passes through without a copy; one that is a resident input is copied", () => {
    const { mesh, plan } = build(), { ex } = counted();
    const carry = new Map([[2, "w"]]); // same (= w) -> w
    ex.run(plan, new Map([feed(mesh, "w", 1), feed(mesh, "v", 1)]), [1], { carry });
    const kept = ex.carried.get(plan, "w")![0]!;
    const live = ex.mem.live;
    for (let i = 0; i < 3; i++) ex.run(plan, new Map([feed(mesh, "v", 1)]), [1], { carry });
    expect(ex.carried.get(plan, "w")![0]).toBe(kept);
    expect(ex.mem.live).toBe(live);

    const r = counted(), p2 = build().plan;
    r.ex.setResident("w", [feed(mesh, "w", 2)[1][0]! as LocalTensor]);
    r.ex.run(p2, new Map([feed(mesh, "v", 1)]), [1], { carry: new Map([[2, "v"]]) }); // same (= resident w) -> v
    const copy = r.ex.carried.get(p2, "v")![0]!;
    r.ex.setResident("w", undefined); // frees the resident block; the carried copy is its own
    expect(r.ex.mem.live).toBe(BYTES_CLASS); // w freed, the copy held
    r.ex.carried.drop(p2);
    expect(r.ex.mem.live).toBe(0);
    expect(copy.bytes).toBe(BYTES_CLASS);
  });

  it("refuses a carry into a non-input, out of range, or of another type, before running", () => {
    const { plan } = build(), { ex } = counted();
    expect(() => ex.run(plan, undefined, [], { carry: new Map([[0, "nope"]]) })).toThrow(/'nope' is not an input/);
    expect(() => ex.run(plan, undefined, [], { carry: new Map([[7, "w"]]) })).toThrow(/output index 7/);
    expect(() => ex.run(plan, undefined, [], { carry: new Map([[1, "w"]]) })).toThrow(/the types differ/);
  });

  it("rank-local pieces of a simulated 2-rank mesh are carried per rank", () => {
    const { mesh, plan } = build(2), { ex, bytes } = counted();
    const carry = new Map([[0, "w"]]);
    ex.run(plan, new Map([feed(mesh, "w", 1), feed(mesh, "v", 1)]), [1], { carry });
    expect(ex.carried.get(plan, "w")!.length).toBe(2);
    bytes.htod = 0;
    ex.run(plan, new Map([feed(mesh, "v", 1)]), [1], { carry });
    expect(bytes.htod).toBe(2 * BYTES);
  });
});

const BYTES_CLASS = 2 ** Math.ceil(Math.log2(BYTES));

describe("Program carry (CPU backend)", () => {
  it("carrying w2 into w for 4 runs equals feeding it back by hand; carried() reads it; dropCarried() asks for feeds again", () => {
    const { mesh, outs } = build();
    const prog = new Program(mesh, outs);
    const [, w0] = feed(mesh, "w", 0.5), [, v] = feed(mesh, "v", 0.25);
    let byHand = w0;
    const sums: number[] = [], hand: number[] = [];
    for (let i = 0; i < 4; i++) {
      const a = prog.runGlobal(i === 0 ? { w: w0, v } : { v }, ["s"], { carry: { w2: "w" } });
      sums.push(a.values.s.data[0]!);
      const b = new Program(mesh, outs).runGlobal({ w: byHand, v }, ["s", "w2"]);
      hand.push(b.values.s.data[0]!);
      byHand = b.pieces.w2;
    }
    expect(sums).toEqual(hand);
    expect(sums).toEqual([0.75 * C, 1.25 * C, 2.25 * C, 4.25 * C]);
    expect(Array.from(prog.carried("w")![0]!.data.slice(0, 2))).toEqual([8, 8]);
    prog.dropCarried();
    expect(prog.carried("w")).toBeUndefined();
    expect(() => prog.runGlobal({ v }, ["s"])).toThrow(/input 'w' was not fed/);
    expect(() => prog.runGlobal({ w: w0, v }, ["s"], { carry: { nope: "w" } as never })).toThrow(/not an output/);
  });
});
