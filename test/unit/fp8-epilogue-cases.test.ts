// bench/gpu/lib/fp8-epilogue-cases.ts on the CPU: every epilogue program of the fp8-quant bench fuses its
// quantize into the producing kernel (so the bench adds no standalone quantize to its time), and the
// check that says otherwise does so for a quantize with no producer to fuse into.
import { describe, expect, it } from "vitest";
import { EPILOGUES, prepare, standaloneQuantize } from "../../bench/gpu/lib/fp8-epilogue-cases.ts";
import { compile } from "../../compiler/pipeline.ts";
import { Mesh, type AnyDTensor } from "../../stdlib/index.ts";
import { input } from "../../stdlib/program.ts";
import { quantize } from "../../stdlib/ops/quantize.ts";

describe("fp8-quant bench epilogue programs", () => {
  it("fuse the quantize into one kernel: no standalone quantize runs", () => {
    for (const c of EPILOGUES) expect([c.name, standaloneQuantize(prepare(c, 64, 256).plan)]).toEqual([c.name, false]);
  });
  it("a quantize of a program input stays standalone, and is reported so", () => {
    const mesh = Mesh.of({ d: 1 });
    const x = input(mesh, "x", { r: 64, c: 256 }, "bf16") as AnyDTensor;
    const { q, scales } = quantize(x, "1x128", "c");
    expect(standaloneQuantize(compile(mesh.builder.graph, [q.ref, scales.ref]))).toBe(true);
  });
});
