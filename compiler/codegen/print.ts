// Prints a fused plan like printPlan: one line per instruction; a kernel shows its kind, the ops it
// fuses and its iteration axes.
import type { FusedPlan } from "./types.ts";
import { printPlan } from "../passes/print-plan.ts";

export function printFusedPlan(fp: FusedPlan): string {
  const lines = printPlan({ ...fp, instrs: [] }).split("\n");
  const v = (s: number) => {
    const val = fp.values[s]!;
    return `$${s}:${val.type.dtype}[${val.shapes[0]!.join(",")}]`;
  };
  const body = fp.instrs.map((ins) => {
    if (ins.kind !== "kernel") return printPlan({ ...fp, instrs: [ins] }).split("\n")[1]!;
    const axes = ins.axes.map((a) => a.dims.join("*")).join(", ");
    return `${ins.outputs.map(v).join(", ")} = kernel k${ins.id} ${ins.spec.kind}[${ins.spec.ops.join(" -> ")}] over (${axes})(${ins.inputs.map((s) => `$${s}`).join(", ")})`;
  });
  return [lines[0]!.replace("plan", "fused plan"), ...body, lines[lines.length - 1]!, `kept in registers: ${fp.internal.map((s) => `$${s}`).join(", ") || "none"}`].join("\n");
}
