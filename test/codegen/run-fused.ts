// Runs a FusedPlan on the CPU: kernel instructions through the KernelSpec interpreter, everything
// else exactly as runtime/cpu does (registry CPU ops, ops with a global reference, simulated
// collectives). Test helper only.
import type { LocalTensor } from "../../compiler/ir/local.ts";
import type { CpuCtx } from "../../compiler/ops/registry.ts";
import type { FusedPlan, KernelInstr } from "../../compiler/codegen/types.ts";
import type { Plan } from "../../compiler/plan.ts";
import { getOp } from "../../compiler/ops/index.ts";
import { coordsOf } from "../../compiler/ir/placement.ts";
import { interpretKernel } from "../../compiler/codegen/interpret.ts";
import { runStep } from "../../runtime/cpu/collectives.ts";
import { assemble, type GlobalTensor } from "../../runtime/cpu/assemble.ts";
import { runGlobalOp } from "../../runtime/cpu/executor.ts";

/**
 * `onKernel` sees every kernel launch: the instruction, the rank, its input pieces and the
 * interpreter's results; results it returns replace the interpreter's (a kernel run another way).
 */
export function runFusedCpu(
  fp: FusedPlan, feeds?: ReadonlyMap<string, LocalTensor[]>,
  onKernel?: (k: KernelInstr, rank: number, inputs: LocalTensor[], outputs: LocalTensor[]) => LocalTensor[] | void,
): { outputs: GlobalTensor[]; locals: LocalTensor[][] } {
  const plan = fp as unknown as Plan; // the same values, outputs and mesh; instrs are only read here
  const slots: (LocalTensor[] | undefined)[] = new Array(fp.values.length);
  const coords = Array.from({ length: fp.world }, (_, r) => coordsOf(fp.mesh, r));
  const counts = (s: number): GlobalTensor => assemble(plan, s, slots[s]!, counts);
  for (const ins of fp.instrs) {
    if (ins.kind === "comm") slots[ins.output] = runStep(plan, ins.step, ins.input, ins.output, slots[ins.input]!, counts);
    else if (ins.kind === "kernel") {
      const per = ins.outputs.map(() => new Array<LocalTensor>(fp.world));
      for (let r = 0; r < fp.world; r++) {
        const inputs = ins.inputs.map((s) => slots[s]![r]!);
        const outs = interpretKernel(ins, plan, r, inputs);
        (onKernel?.(ins, r, inputs, outs) ?? outs).forEach((o, j) => (per[j]![r] = o));
      }
      ins.outputs.forEach((s, j) => (slots[s] = per[j]));
    } else if (getOp(ins.op).global) {
      runGlobalOp(plan, ins, (s) => slots[s]!, counts).forEach((per, k) => (slots[ins.outputs[k]!] = per));
    } else {
      const def = getOp(ins.op);
      const per = ins.outputs.map(() => new Array<LocalTensor>(fp.world));
      for (let r = 0; r < fp.world; r++) {
        const ctx: CpuCtx = {
          inTypes: ins.inputs.map((s) => fp.values[s]!.type),
          outTypes: ins.outputs.map((s) => fp.values[s]!.type),
          inBoxes: ins.inputs.map((s) => fp.values[s]!.boxes[r]!),
          outBoxes: ins.outputs.map((s) => fp.values[s]!.boxes[r]!),
          outShapes: ins.outputs.map((s) => fp.values[s]!.shapes[r]!),
          coords: coords[r]!,
          rank: r,
          payload: ins.payload,
          feeds,
        };
        def.cpu(ins.inputs.map((s) => slots[s]![r]!), ins.attrs, ctx).forEach((o, k) => (per[k]![r] = o));
      }
      ins.outputs.forEach((s, k) => (slots[s] = per[k]));
    }
  }
  return { outputs: fp.outputs.map((s) => assemble(plan, s, slots[s]!, counts)), locals: fp.outputs.map((s) => slots[s]!) };
}
