// The fused kernels' launches, worked out once per plan instruction and rank. A training step runs
// the same plan every step, and a launch's geometry (compiler/codegen/cuda/launch.ts: grid, block,
// sizes and strides from the plan's static local shapes) and its scalar arguments never change;
// only the buffers do. So each launch keeps its packed argument block with the scalars filled in,
// and a launch writes just the pointers into it (cuLaunchKernel copies the block, so one block serves
// every launch). The cache lives with the lowered plan (CudaExecutor.lowered), so a new emit tuning,
// which makes new kernels, starts a new one.
import type { Plan } from "../../compiler/plan.ts";
import type { KernelInstr } from "../../compiler/codegen/types.ts";
import type { CudaKernel } from "../../compiler/codegen/cuda/emit.ts";
import { launchOf } from "../../compiler/codegen/cuda/launch.ts";
import { argOffsets, packArgs, type KernelArg } from "./kernel-args.ts";
import type { DeviceTensor } from "./memory.ts";

export interface PackedLaunch {
  grid: [number, number, number];
  block: [number, number, number];
  /** The argument block; pointers are written in by `fillPointers` before each launch. */
  params: Uint8Array;
  view: DataView;
  /** Per pointer argument: its offset in the block, its slot, and its index among the outputs (-1: an input). */
  ptrs: { at: number; slot: number; out: number }[];
}

/** Per instruction, per rank: its launch, or null where the rank has nothing to do (grid 0). */
export type LaunchCache = Map<KernelInstr, (PackedLaunch | null | undefined)[]>;

export function packedLaunch(cache: LaunchCache, kernel: CudaKernel, ins: KernelInstr, plan: Pick<Plan, "values">, r: number, device: { smCount: number; blocksPerSM: () => number }): PackedLaunch | null {
  let per = cache.get(ins);
  if (!per) cache.set(ins, (per = []));
  const hit = per[r];
  if (hit !== undefined) return hit;
  const l = launchOf(kernel, ins, plan, r, { smCount: device.smCount, aligned: true, blocksPerSM: device.blocksPerSM() });
  if (l.grid === 0) return (per[r] = null);
  const wide = kernel.launch.index !== "u32";
  const ptrs: { j: number; slot: number }[] = [];
  const args: KernelArg[] = kernel.launch.params.map((p, j) => {
    const a = l.args[j]!;
    if (p.k === "ptr") {
      ptrs.push({ j, slot: (a as { slot: number }).slot });
      return ["ptr", 0n];
    }
    const v = (a as { value: number }).value;
    if (p.k === "vec" || (p.k === "size" && p.name === "ncol")) return ["i32", v];
    return wide ? ["u64", v] : ["u32", v];
  });
  const { offsets } = argOffsets(args), params = packArgs(...args);
  return (per[r] = {
    grid: [l.grid, 1, 1], block: [l.block, 1, 1], params, view: new DataView(params.buffer),
    ptrs: ptrs.map(({ j, slot }) => ({ at: offsets[j]!, slot, out: ins.outputs.indexOf(slot) })),
  });
}

/** Writes rank r's buffers into the launch's argument block: the instruction's new outputs, else the slots' pieces. */
export function fillPointers(pl: PackedLaunch, r: number, outs: DeviceTensor[][], slots: readonly (DeviceTensor[] | undefined)[]): void {
  for (const p of pl.ptrs) pl.view.setBigUint64(p.at, p.out >= 0 ? outs[p.out]![r]!.ptr : slots[p.slot]![r]!.ptr, true);
}
