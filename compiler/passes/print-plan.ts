// Prints a plan: one line per instruction, with rank 0's local shapes. Ops that move data over a
// mesh axis themselves (MoE dispatch/combine) show it: moe_dispatch[ep].
import type { Plan } from "../plan.ts";
import { fmtPlacements } from "../ir/placement.ts";
import { fmtStep } from "./redistribute-plan.ts";

export function printPlan(p: Plan): string {
  const v = (s: number) => {
    const val = p.values[s]!;
    return `$${s}:${val.type.dtype}[${val.shapes[0]!.join(",")}]${fmtPlacements(val.type.placements)}`;
  };
  const lines = p.instrs.map((ins) =>
    ins.kind === "comm"
      ? `${v(ins.output)} = ${fmtStep(ins.step, p.mesh)}($${ins.input})`
      : `${ins.outputs.map(v).join(", ")} = ${ins.op}${typeof ins.attrs.axis === "string" ? `[${ins.attrs.axis}]` : ""}(${ins.inputs.map((s) => `$${s}`).join(", ")})`,
  );
  return [`plan for ${p.world} ranks (local shapes of rank 0)`, ...lines, `outputs: ${p.outputs.map((s) => `$${s}`).join(", ")}`].join("\n");
}
