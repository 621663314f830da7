// The CLI end to end (in-process): both examples run on their meshes and on uneven ones and match
// the single-device run; bad input gives a usage error and exit code 2.
import { describe, expect, it } from "vitest";
import { main } from "../../stdlib/cli/main.ts";
import { cudaAvailable } from "../../runtime/cuda/native.ts";

async function cli(...argv: string[]) {
  const out: string[] = [], err: string[] = [];
  const code = await main(argv, (s) => out.push(s), (s) => err.push(s));
  return { code, out: out.join("\n"), err: err.join("\n") };
}

describe("shardts run", () => {
  for (const [file, meshes] of [
    ["examples/moe-layer.ts", [undefined, "dp=1,ep=4", "dp=3,ep=5"]],
    ["examples/tp-mlp.ts", [undefined, "dp=3,tp=5"]],
  ] as const) {
    for (const mesh of meshes) {
      it(`${file} on ${mesh ?? "its own mesh"} matches one device`, async () => {
        const r = await cli("run", file, ...(mesh ? ["--mesh", mesh] : []));
        expect(r.err).toBe("");
        expect(r.code).toBe(0);
        expect(r.out).toMatch(/check against the unsharded run/);
        expect(r.out).not.toMatch(/FAIL/);
      });
    }
  }

  it("moe-layer dispatches and combines with all-to-all over ep", async () => {
    const r = await cli("run", "examples/moe-layer.ts");
    expect(r.out).toMatch(/all_to_all\[ep\] ×3/);
  });

  it("tp-mlp reduces its Partial with one all-reduce over tp", async () => {
    const r = await cli("run", "examples/tp-mlp.ts", "--dump", "partition");
    expect(r.out).toMatch(/all_reduce\[tp\] ×1/);
    expect(r.out).toMatch(/--- partition ---/);
  });

  it("rejects a mesh with other axis names, a missing file, unknown options and too many ranks", async () => {
    expect((await cli("run", "examples/tp-mlp.ts", "--mesh", "x=2")).err).toMatch(/must name the model's axes in order \(dp, tp\)/);
    expect((await cli("run", "nope.ts")).err).toMatch(/no such file: nope.ts/);
    expect((await cli("run", "examples/tp-mlp.ts", "--frobnicate")).code).toBe(2);
    expect((await cli("run", "examples/tp-mlp.ts", "--mesh", "dp=5,tp=5")).err).toMatch(/at most 16 ranks/);
    expect((await cli("run", "examples/tp-mlp.ts", "--backend", "cuda")).err).toMatch(/--backend cuda: no usable GPU: .*libcuda/);
    expect((await cli("run", "examples/tp-mlp.ts", "--mesh", "dp=two")).err).toMatch(/axis=size pairs/);
  });

  it("gives factories without seeds the same seeds on every trace, so the single-device check matches", async () => {
    const r = await cli("run", "test/unit/fixtures/unseeded-model.ts", "--mesh", "dp=3");
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/y {2}max rel diff 0 {2}ok/);
  });

  it("--dump-cuda writes the CUDA source of every fused kernel", async () => {
    const { mkdtempSync, readdirSync, readFileSync } = await import("node:fs");
    const { join } = await import("node:path");
    const dir = mkdtempSync(join((await import("node:os")).tmpdir(), "dump-cuda-"));
    const r = await cli("run", "examples/tp-mlp.ts", "--dump-cuda", dir);
    expect(r.code).toBe(0);
    const files = readdirSync(dir).filter((f) => f.endsWith(".cu"));
    expect(files.length).toBeGreaterThan(0);
    expect(r.out).toMatch(new RegExp(`wrote ${files.length} CUDA kernel source\\(s\\) and kernels.json`));
    for (const f of files) expect(readFileSync(join(dir, f), "utf8")).toMatch(/extern "C" __global__/);
  });

  it("prints help", async () => {
    expect((await cli("run", "--help")).out).toMatch(/usage: shardts run FILE.ts/);
    expect((await cli("--help")).out).toMatch(/commands/);
    expect((await cli("check", "--help")).out).toMatch(/usage: shardts check/);
  });
});

describe("shardts check", () => {
  it("passes the examples", async () => {
    const r = await cli("check", "examples/moe-layer.ts", "examples/tp-mlp.ts");
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/2 files, 0 errors/);
  });
});

describe("shardts tune-gemm", () => {
  it("prints help, and refuses malformed or unfit shapes and bad options with a usage error (exit 2)", async () => {
    expect((await cli("tune-gemm", "--help")).out).toMatch(/usage: shardts tune-gemm MxNxK/);
    expect((await cli("--help")).out).toMatch(/tune-gemm/);
    const refused: [string[], RegExp][] = [
      [[], /needs at least one problem shape/],
      [["4096x7168"], /a problem is MxNxK/],
      [["4096x7168x2048", "--experts", "0"], /--experts takes a positive integer/],
      [["300x7168x2048", "--experts", "8"], /multiple of 128; got 300/],
      [["4096x7168x2040"], /does not fit the generated FP8 GEMM kernels/],
      [["4096x7168x2048", "--warm"], /unknown option --warm/],
    ];
    for (const [args, why] of refused) {
      const r = await cli("tune-gemm", ...args);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.err).toMatch(why);
    }
  });

  it.skipIf(cudaAvailable().ok)("says there is no GPU to time on", async () => {
    const r = await cli("tune-gemm", "4096x7168x2048");
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/tune-gemm times kernels on a GPU, and there is no usable one/);
  });
});

describe("shardts launch", () => {
  it("refuses counts and ports that are not whole numbers with what was typed (exit 2), before starting anything", async () => {
    const refused: [string[], RegExp][] = [
      [["--nproc-per-node", "x", "examples/moe-layer.ts"], /--nproc-per-node must be a whole number, got 'x'/],
      [["--nproc-per-node", "2.5", "examples/moe-layer.ts"], /--nproc-per-node must be a whole number, got '2.5'/],
      [["--nproc-per-node", "0", "examples/moe-layer.ts"], /--nproc-per-node must be a positive integer, got 0/],
      [["--nproc-per-node", "2", "--master-port", "80a", "examples/moe-layer.ts"], /--master-port must be a whole number, got '80a'/],
    ];
    for (const [args, why] of refused) {
      const r = await cli("launch", ...args);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.err).toMatch(why);
    }
  });
});
