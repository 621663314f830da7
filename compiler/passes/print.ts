// The IR printer: one line per node in the compact notation, e.g.
//   %3 = dot(%1, %2) {contract: model} : f32[tokens:8, ffn:32] (S(tokens), P(sum))
import type { Graph, ValueRef } from "../ir/types.ts";
import { fmtType } from "../ir/placement.ts";

const ref = (v: ValueRef) => (v.out === 0 ? `%${v.node}` : `%${v.node}.${v.out}`);

function fmtAttrs(attrs: Record<string, unknown>): string {
  const parts = Object.entries(attrs)
    .filter(([k]) => k !== "dims" && k !== "dtype" && k !== "placements")
    .map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`);
  return parts.length ? ` {${parts.join(", ")}}` : "";
}

export function printGraph(g: Graph): string {
  const head = `mesh (${g.mesh.axes.map((a, i) => `${a}=${g.mesh.sizes[i]}`).join(", ")})`;
  const lines = g.nodes.map((n) => {
    const outs = n.outputs.map(fmtType).join(", ");
    return `%${n.id} = ${n.op}(${n.inputs.map(ref).join(", ")})${fmtAttrs(n.attrs)} : ${outs}`;
  });
  return [head, ...lines].join("\n");
}
