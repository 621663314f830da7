// The verifier: between passes (and in tests), every node's inputs exist and come earlier, and its
// recorded output types are exactly what its op's rules give. Failures name the pass and the node.
import type { Graph } from "../ir/types.ts";
import { CompileError, ShardtsError } from "../errors.ts";
import { getOp, inferTypes } from "../ops/index.ts";
import { fmtType } from "../ir/placement.ts";
import { SELF } from "../ops/routing.ts";

const norm = (v: unknown, id: number) => JSON.stringify(v, (k, x) => (k === "node" && x === id ? SELF : x));

export function verify(g: Graph, after = "trace"): void {
  g.nodes.forEach((n, i) => {
    const where = `after ${after}: node %${n.id} (${n.op})`;
    if (n.id !== i) throw new CompileError(`${where} has id ${n.id} at position ${i}`);
    for (const v of n.inputs) {
      if (v.node >= i) throw new CompileError(`${where} reads %${v.node}, which does not come before it`);
      if (!g.nodes[v.node]!.outputs[v.out]) throw new CompileError(`${where} reads %${v.node}.${v.out}, which does not exist`);
    }
    const ins = n.inputs.map((v) => g.nodes[v.node]!.outputs[v.out]!);
    let want;
    try {
      want = inferTypes(getOp(n.op), ins, n.attrs, g.mesh);
    } catch (e) {
      const msg = e instanceof ShardtsError ? e.message : String(e);
      throw new CompileError(`${where} no longer type-checks: ${msg}\n  inputs: ${ins.map(fmtType).join("; ")}`);
    }
    if (norm(want, n.id) !== norm(n.outputs, n.id))
      throw new CompileError(`${where} records ${n.outputs.map(fmtType).join("; ")} but its rules give ${want.map(fmtType).join("; ")}\n  inputs: ${ins.map(fmtType).join("; ")}`);
  });
}
