// CUDA C++ for every kernel instruction of a fused plan. Each kernel's source is self-contained
// (prelude included), deterministic, and says in comments what it computes and how to launch it.
// Kernels with the same code are emitted once: the source names ops, not IR nodes, so the layers
// of a model share one kernel and one compile; which IR nodes each instance fuses is kept beside it
// (and written by dump.ts). `hash` (sha256 of source and architecture) keys the NVRTC disk cache.
import { createHash } from "node:crypto";
import type { FusedPlan, KernelInstr, KernelSpec } from "../types.ts";
import { prelude } from "./prelude.ts";
import { emitMap } from "./map.ts";
import { emitRow, rowRule } from "./row.ts";
import { emitQuant, quantVec } from "./quant.ts";
import { emitRowQuant, rowQuantChunks } from "./row-quant.ts";
import { describeTensor, paramsOf, tensorCount, vecWidth, type LaunchRule, Src } from "./common.ts";
import { isFp8 } from "../../ir/types.ts";
import { DEFAULT_TUNING, type EmitTuning } from "./tuning.ts";

export const DEFAULT_ARCH = "sm_90a";

export interface CudaKernel {
  name: string;
  /** What NVRTC compiles. */
  source: string;
  /** sha256 of source and arch, hex. */
  hash: string;
  arch: string;
  spec: KernelSpec;
  launch: LaunchRule;
  /** The kernel instructions it serves: their ids and the IR nodes each fuses. */
  instances: { id: number; fuses: KernelInstr["fuses"] }[];
}

export interface CudaProgram {
  arch: string;
  kernels: CudaKernel[];
  /** Per kernel instruction id, the index of its kernel. */
  kernelOf: number[];
}

const NAME = "SHARDTS_KERNEL_NAME";
const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

function launchRule(spec: KernelSpec, tune: EmitTuning): LaunchRule {
  const index = spec.bounds.elems < 2 ** 31 ? "u32" : "u64";
  const params = paramsOf(spec);
  if (spec.kind === "row" && spec.quant) return { kind: "row", block: 256, vec: quantVec(spec), rowThreads: 256, chunks: tune.quantRowRegs ? rowQuantChunks(spec, 256, quantVec(spec)) : 0, index, params };
  if (spec.kind === "row") return rowRule(spec, index, params, tune);
  if (spec.quant) return { kind: "map", block: 256, vec: quantVec(spec), rowThreads: 0, chunks: 0, unroll: tune.quantUnroll, packs: tune.quantPacks, index, params };
  return { kind: "map", block: 256, vec: spec.axes ? vecWidth(spec, spec.axes - 1) : 1, rowThreads: 0, chunks: 0, index, params };
}

function describeLaunch(r: LaunchRule, quant: boolean): string[] {
  const vec = (what: string) => `vec = 1 when ${what} divides by ${r.vec} and every pointer is 16-byte aligned`;
  if (quant && r.kind === "row")
    return [
      `launch: one row per ${r.block}-thread block (groups of ${128 / r.vec} lanes take its 128-column tiles in turn); grid = min(rows, SMs * the blocks resident per SM at this kernel's register count)`,
      r.chunks ? `  ${vec("ncol")}; rows up to ${r.chunks * r.vec * r.block} columns, held in registers (${r.chunks} chunk(s) of ${r.vec} a thread, loaded together)` : `  ${vec("ncol")}; any row length (each pass rereads the row)`,
    ];
  const u = r.unroll ?? 1, p = r.packs ?? 1;
  if (quant)
    return [
      `launch: ${r.block} threads per block, ${u} 128-column tile(s) per ${128 / r.vec / p} lanes a trip (${p} pack(s) of ${r.vec} a lane; every tile's loads first), grid-stride; grid = min(ceil(units / ${r.block * u * p}), SMs * ${2048 / r.block})`,
      `  units = ceil(elements / ${r.vec}) with ${vec("the innermost axis")}; else elements (the kernel takes its vector path only where ncol divides by ${r.vec})`,
    ];
  if (r.kind === "map")
    return [
      `launch: ${r.block} threads per block, grid-stride; grid = min(ceil(units / ${r.block}), SMs * ${2048 / r.block})`,
      r.vec > 1 ? `  units = ceil(elements / ${r.vec}) with ${vec("the innermost axis (or a one-axis space)")}; else elements` : "  units = elements (vec is ignored)",
    ];
  const per = r.rowThreads === 32 ? `one row per warp, ${r.block / 32} rows per ${r.block}-thread block`
    : r.rowThreads < 32 ? `one row per ${r.rowThreads} lane(s), ${r.block / r.rowThreads} rows per ${r.block}-thread block` : `one row per ${r.block}-thread block`;
  return [
    `launch: ${per}; grid = min(ceil(rows / ${r.block / r.rowThreads}), SMs * the blocks resident per SM at this kernel's register count); ${r.vec > 1 ? vec("ncol") : "vec is ignored"}`,
    r.chunks ? `  rows up to ${r.chunks * r.vec * r.rowThreads} columns (registers hold ${r.chunks} chunk(s) of ${r.vec} per thread)` : "  any row length (each pass rereads the row)",
  ];
}

/** The source of one kernel (deterministic: a function of the spec and nothing else). */
/** `tune`: how, not what (compiler/codegen/cuda/tuning.ts); the defaults are the measured fastest. */
export function emitKernel(spec: KernelSpec, arch = DEFAULT_ARCH, tune: EmitTuning = DEFAULT_TUNING): Omit<CudaKernel, "instances" | "spec"> {
  const launch = launchRule(spec, tune);
  const body = new Src();
  (spec.quant ? (spec.kind === "row" ? emitRowQuant : emitQuant) : spec.kind === "map" ? emitMap : emitRow)(body, spec, NAME, launch, tune);
  const ops = spec.ops.filter((o, i) => o !== spec.ops[i - 1]);
  const header = [
    `// ${NAME}: generated by shardts (compiler/codegen/cuda); do not edit`,
    `// fuses: ${ops.join(" -> ")}`,
    `// ${spec.kind === "map" ? `elementwise over ${spec.axes} axis(es)${spec.quant ? ", then quantized to e4m3 in 1x128 tiles along the innermost" : ""}` : `row kernel: ${spec.axes - 1} outer axis(es), then the reduced column axis${spec.quant ? ", quantized to e4m3 in 1x128 tiles along it" : ""}`}; tensors [use per axis]:`,
    ...(spec.split ? [`// split: the last outer axis counts parts of ${spec.split.chunk} columns, each reduced as a row; the reductions' results are per part (another kernel reduces them)`] : []),
    ...Array.from({ length: tensorCount(spec) }, (_, t) => `//   ${describeTensor(spec, t)}`),
    ...describeLaunch(launch, !!spec.quant).map((l) => `// ${l}`),
  ].join("\n");
  const fp8 = [...spec.operands, ...spec.results].some((t) => isFp8(t.dtype)) || spec.nodes.some((n) => isFp8(n.dtype));
  const text = `${header}\n${prelude(fp8)}\n${body.text()}\n`;
  // the ops that fit in 40 characters name it; the code's hash tells kernels apart
  const label = ops.reduce((l, o) => (l.length + o.length < 40 ? (l ? `${l}_${o}` : o) : l), "");
  const name = `sh_${spec.kind}_${label}_${sha256(text).slice(0, 8)}`;
  const source = text.replaceAll(NAME, name);
  return { name, source, hash: sha256(`${source}\n${arch}`), arch, launch };
}

export function emitCuda(fp: FusedPlan, arch = DEFAULT_ARCH, tune: EmitTuning = DEFAULT_TUNING): CudaProgram {
  const kernels: CudaKernel[] = [];
  const bySource = new Map<string, number>();
  const kernelOf: number[] = [];
  for (const ins of fp.instrs) {
    if (ins.kind !== "kernel") continue;
    const k = emitKernel(ins.spec, arch, tune);
    let at = bySource.get(k.source);
    if (at === undefined) {
      at = kernels.length;
      bySource.set(k.source, at);
      kernels.push({ ...k, spec: ins.spec, instances: [] });
    }
    kernels[at]!.instances.push({ id: ins.id, fuses: ins.fuses });
    kernelOf[ins.id] = at;
  }
  return { arch, kernels, kernelOf };
}
