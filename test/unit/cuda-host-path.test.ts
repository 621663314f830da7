// The CUDA executor's host path on the CPU, over a native layer that does no device work
// (test/fakes/native-addon.ts): the launch of each fused kernel is worked out once per instruction
// and rank (runtime/cuda/launches.ts) and must pass exactly the argument blocks a launch worked out
// afresh would, pointers included, as buffers move between runs; a new emit tuning starts over.
import { describe, expect, it } from "vitest";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { tuning } from "../../compiler/codegen/cuda/tuning.ts";
import { compile } from "../../compiler/pipeline.ts";
import { buildOn } from "../../stdlib/model.ts";
import { Mesh, fromGlobal, type AnyDTensor } from "../../stdlib/index.ts";
import { gather } from "../../stdlib/ops/routing.ts";
import { fakeAddon } from "../fakes/native-addon.ts";
import { packArgs } from "../../runtime/cuda/kernel-args.ts";
import { MAX_DIMS } from "../../runtime/cuda/kernels/sources.ts";
import { CachingAllocator, downloadAll, empty } from "../../runtime/cuda/memory.ts";
import tpMlp from "../../examples/tp-mlp.ts";
import { useTempKernelCache } from "../fakes/kernel-cache.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

/** An executor whose every kernel launch is logged as "function grid block argument-bytes". */
function logged() {
  const launches: string[] = [];
  const f = fakeAddon({ spy: (m, a) => void (m === "launchKernel" && launches.push(`${a[0]} ${a[1]} ${a[2]} ${hex(a[5] as Uint8Array)}`)) });
  return { ex: new CudaExecutor(f.addon, 0), launches };
}

function plan(sizes: Record<string, number>) {
  const { mesh, outputs } = buildOn(tpMlp, sizes);
  return compile(mesh.builder.graph, Object.values(outputs).map((o) => (o as AnyDTensor).ref));
}

describe("CUDA executor host path (fake native layer)", () => {
  useTempKernelCache();

  it("a warm launch cache passes the argument blocks that launches worked out afresh pass, as buffers move", () => {
    for (const sizes of [{ dp: 1, tp: 1 }, { dp: 2, tp: 2 }]) {
      const p = plan(sizes), warm = logged(), fresh = logged();
      for (let i = 0; i < 3; i++) {
        // a block held across the run on both: later runs get other buffers than the first
        if (i > 0) for (const x of [warm, fresh]) x.ex.mem.alloc(4096 * i);
        warm.ex.run(p, undefined, undefined, { download: false });
        fresh.ex.tuning = { ...fresh.ex.tuning }; // a new lowering: every launch worked out again
        fresh.ex.run(p, undefined, undefined, { download: false });
      }
      expect(warm.launches.length, JSON.stringify(sizes)).toBeGreaterThan(0);
      expect(warm.launches).toEqual(fresh.launches);
      // the held blocks did move the buffers: the runs' argument blocks differ
      const per = warm.launches.length / 3;
      expect(warm.launches.slice(per, 2 * per)).not.toEqual(warm.launches.slice(0, per));
    }
  });

  it("a new emit tuning launches the kernels it emits, not the cached launches of the old ones", () => {
    const p = plan({ dp: 1, tp: 1 }), { ex, launches } = logged();
    ex.run(p, undefined, undefined, { download: false });
    const before = launches.splice(0).map((l) => l.split(" ")[0]);
    ex.tuning = tuning({ fast: false }); // silu and rmsnorm's kernels change source: new functions
    ex.run(p, undefined, undefined, { download: false });
    const after = launches.map((l) => l.split(" ")[0]);
    expect(after.length).toBe(before.length);
    expect(after.some((fn) => !before.includes(fn))).toBe(true);
  });

  it("a strided copy passes the kernel's (out, in, Geo) block exactly as packArgs lays out the C struct", () => {
    const { ex, launches } = logged();
    const cases: [number[], number[], number[]][] = [
      [[3, 5], [5, 1], [1, 3]],
      [[2, 1, 4], [0, 0, 1], [4, 4, 1]], // broadcast
      [[2, 3], [2 ** 33 + 7, 1], [3, 1]], // a stride past 32 bits
    ];
    for (const [shape, ist, ost] of cases) {
      ex.copyStrided("bf16", 0x7000n, 0x9000n, shape, ist, ost);
      // struct Geo { int nd; long long n; int shape[8]; long long istride[8]; long long ostride[8]; }
      const geo = new DataView(new ArrayBuffer(16 + 4 * MAX_DIMS + 16 * MAX_DIMS)), so = 16 + 4 * MAX_DIMS;
      geo.setInt32(0, shape.length, true);
      geo.setBigInt64(8, BigInt(shape.reduce((a, b) => a * b, 1)), true);
      shape.forEach((x, i) => geo.setInt32(16 + 4 * i, x, true));
      ist.forEach((x, i) => geo.setBigInt64(so + 8 * i, BigInt(x), true));
      ost.forEach((x, i) => geo.setBigInt64(so + 8 * MAX_DIMS + 8 * i, BigInt(x), true));
      const want = packArgs(["ptr", 0x7000n], ["ptr", 0x9000n], ["bytes", new Uint8Array(geo.buffer), 8]);
      expect(launches.pop()!.split(" ")[3]).toBe(hex(want));
    }
  });

  it("reads pieces back with every copy issued before one wait, each converted from its device bits", () => {
    const seen: string[] = [];
    const f = fakeAddon({
      spy: (m) => void (m.startsWith("memcpy") || m === "streamSynchronize" ? seen.push(m) : undefined),
      // device bits of 1.0 in each width: bf16 0x3f80, e4m3 0x38; f32 and i32 as themselves
      read: (dst) => void (dst instanceof Uint16Array ? dst.fill(0x3f80) : dst instanceof Uint8Array ? dst.fill(0x38) : (dst as Float32Array).fill(1)),
    });
    const mem = new CachingAllocator(f.addon);
    const ds = [empty(mem, "f32", [3]), empty(mem, "bf16", [2]), empty(mem, "i32", [0]), empty(mem, "fp8e4m3", [2])];
    const got = downloadAll(f.addon, ds, 0n);
    expect(seen).toEqual(["memcpyDtoHAsync", "memcpyDtoHAsync", "memcpyDtoHAsync", "streamSynchronize"]);
    expect(got.map((t) => [t.dtype, Array.from(t.data)])).toEqual([["f32", [1, 1, 1]], ["bf16", [1, 1]], ["i32", []], ["fp8e4m3", [1, 1]]]);
    seen.length = 0;
    expect(downloadAll(f.addon, [ds[2]!], 0n)[0]!.data.length).toBe(0);
    expect(seen).toEqual([]); // nothing to copy: no wait
  });

  it("on a one-rank mesh the plan's comm steps move nothing: no read-back to the host while it runs", () => {
    const p = plan({ dp: 1, tp: 1 });
    expect(p.instrs.some((i) => i.kind === "comm")).toBe(true); // (the plan has steps to skip)
    const seen: string[] = [];
    const f = fakeAddon({ spy: (m) => void (m.startsWith("memcpy") ? seen.push(m) : undefined) });
    new CudaExecutor(f.addon, 0).run(p, undefined, undefined, { download: false });
    expect(seen.filter((m) => m.startsWith("memcpyDtoH"))).toEqual([]);
  });

  it("index checks are read once at the end of the run, not with a wait each; a flagged index still fails the run, naming the op", () => {
    // three gathers in a row on one rank: nothing else reads the device back while the run goes on
    const m = Mesh.of({ d: 1 });
    const x = fromGlobal(m, { r: 8, c: 4 }, "f32", Array.from({ length: 32 }, (_, i) => i)) as AnyDTensor;
    const idx = fromGlobal(m, { j: 8 }, "i32", [7, 6, 5, 4, 3, 2, 1, 0]) as AnyDTensor;
    const jdx = fromGlobal(m, { r: 8 }, "i32", [0, 2, 4, 6, 1, 3, 5, 7]) as AnyDTensor;
    const y = gather(gather(gather(x, idx as never, "r") as AnyDTensor, jdx as never, "j") as AnyDTensor, idx as never, "r") as AnyDTensor;
    const p = compile(m.builder.graph, [y.ref]);
    const runOnce = (flag?: (fill: number) => number) => {
      const seen = { syncs: 0, flags: 0 };
      const f = fakeAddon({ flag, spy: (m) => void (m === "streamSynchronize" ? seen.syncs++ : m === "memsetD32" ? seen.flags++ : 0) });
      const ex = new CudaExecutor(f.addon, 0);
      let err: unknown;
      try {
        ex.run(p, undefined, undefined, { download: false });
      } catch (e) {
        err = e;
      }
      return { ...seen, err, live: ex.mem.live };
    };
    const ok = runOnce();
    expect(ok.err).toBeUndefined();
    expect(ok.flags).toBe(3);
    expect(ok.syncs).toBe(2); // the run's end, then one read of all three flags (was a wait per flag: 4)
    let n = 0;
    const bad = runOnce((fill) => (++n === 2 ? 99 : fill));
    expect(String(bad.err)).toMatch(/ShapeError: gather\(\): index 99 is out of range for 'j' of size 8/);
    expect(bad.live).toBe(0); // the failed run's outputs and flags were freed
  });
});
