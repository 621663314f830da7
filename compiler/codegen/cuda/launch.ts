// One rank's launch of a kernel instruction: grid, block and the argument values in parameter
// order. Pointers are left to the backend (it knows the buffers); everything else is read from the
// plan's local shapes, so the runtime re-derives nothing.
import type { Plan } from "../../plan.ts";
import type { KernelInstr } from "../types.ts";
import type { CudaKernel } from "./emit.ts";
import { geometry } from "../geometry.ts";
import { numel } from "../../ir/types.ts";
import { CompileError } from "../../errors.ts";

export type LaunchArg = { name: string; slot: number } | { name: string; value: number };

export interface Launch {
  /** 0: nothing to do on this rank (an empty piece); skip the launch. */
  grid: number;
  block: number;
  args: LaunchArg[];
  vec: boolean;
}

export interface DeviceInfo {
  smCount: number;
  /** Whether every buffer passed is 16-byte aligned (a caching allocator's blocks are). */
  aligned: boolean;
  /** Row kernels: blocks of this kernel resident on an SM at once (from its compiled registers; see residentBlocks). */
  blocksPerSM?: number;
}

export function launchOf(kernel: CudaKernel, k: KernelInstr, plan: Pick<Plan, "values">, rank: number, device: DeviceInfo): Launch {
  const r = kernel.launch, A = k.spec.axes;
  const g = geometry(k, plan, rank);
  const slots = [...k.inputs, ...k.outputs];
  const inner = A ? g.sizes[A - 1]! : 0;
  const vec = r.vec > 1 && device.aligned && A > 0 && (inner % r.vec === 0 || (r.kind === "map" && A === 1));
  const resident = device.smCount * Math.max(1, Math.floor(2048 / r.block));
  let grid: number;
  if (r.kind === "map") {
    const total = numel(g.sizes);
    const units = vec ? Math.ceil(total / r.vec) : total;
    grid = total === 0 ? 0 : Math.min(Math.ceil(units / (r.block * (r.unroll ?? 1) * (r.packs ?? 1))), resident);
  } else {
    // (a split kernel's rows are parts of at most `chunk` columns; its outer axes count the parts)
    const row = Math.min(inner, k.spec.split?.chunk ?? inner);
    if (r.chunks && row > r.chunks * r.vec * r.rowThreads)
      throw new CompileError(`kernel ${kernel.name} holds rows of up to ${r.chunks * r.vec * r.rowThreads} columns in registers; rank ${rank} has ${row} (the kernel was generated for another plan)`);
    const rows = numel(g.sizes.slice(0, -1));
    // one wave: every block resident at once, striding over the rows
    grid = rows === 0 ? 0 : Math.min(Math.ceil(rows / (r.block / r.rowThreads)), device.blocksPerSM ? device.smCount * device.blocksPerSM : resident);
  }
  const args = r.params.map((p): LaunchArg => {
    if (p.k === "ptr") return { name: p.name, slot: slots[p.tensor]! };
    if (p.k === "size") return { name: p.name, value: g.sizes[p.axis]! };
    if (p.k === "stride") return { name: p.name, value: g.strides[p.tensor]![p.axis]! };
    return { name: p.name, value: vec ? 1 : 0 };
  });
  return { grid, block: r.block, args, vec };
}

/**
 * Blocks of `block` threads that fit on one SM at once, given the compiled kernel's registers per
 * thread and static shared memory (registers are granted per warp in units of 256).
 */
export function residentBlocks(block: number, regs: number, smem: number, sm: { regsPerSM: number; threadsPerSM: number; smemPerSM: number; maxBlocksPerSM: number }): number {
  const warps = Math.ceil(block / 32);
  const perWarp = Math.ceil((Math.max(1, regs) * 32) / 256) * 256;
  const byRegs = Math.floor(sm.regsPerSM / (perWarp * warps));
  const byThreads = Math.floor(sm.threadsPerSM / block);
  const bySmem = smem > 0 ? Math.floor(sm.smemPerSM / (smem + 1024)) : Infinity;
  return Math.max(1, Math.min(byRegs, byThreads, bySmem, sm.maxBlocksPerSM));
}
