// Reverse-mode autodiff as a pass over the traced graph, in the global view: for each node on a
// path from the parameters to the loss (latest first), its gradient rule turns the outputs'
// gradients into the inputs'. Every node it adds goes through the same rules as user code, so the
// backward program is as well-sharded as the forward one. The gradient of a value arrives in that
// value's layout (a Partial value's gradient replicated), and each parameter's gradient is
// redistributed to the parameter's own placements: that is where data parallelism's all-reduce and
// FSDP's reduce-scatter come from.
import type { Attrs, DType, Placement, TensorType, ValueRef } from "../ir/types.ts";
import { isFloat, refKey } from "../ir/types.ts";
import { isPartial, fmtType } from "../ir/placement.ts";
import { CompileError } from "../errors.ts";
import { getOp } from "../ops/index.ts";
import type { GraphBuilder } from "../trace/builder.ts";
import type { GradOps } from "./types.ts";

/** The layout a gradient takes for a value of these placements. */
export const dualPlacements = (ps: readonly Placement[]): Placement[] => ps.map((p) => (isPartial(p) ? "R" : p));

export function gradOps(gb: GraphBuilder): GradOps {
  const type = (v: ValueRef) => gb.type(v);
  const ops = (name: string, inputs: ValueRef[], attrs: Attrs = {}) => gb.add(name, inputs, attrs);
  const op = (name: string, inputs: ValueRef[], attrs: Attrs = {}) => ops(name, inputs, attrs)[0]!;
  const fit = (v: ValueRef, to: readonly Placement[]) => {
    const cur = type(v).placements;
    return cur.every((p, i) => p === to[i]) ? v : op("redistribute", [v], { to: [...to] });
  };
  return {
    op, ops, type, fit,
    scalar: (value: number, dtype: DType) => op("full", [], { dims: [], dtype, placements: gb.mesh.axes.map(() => "R"), value }),
    add: (a, b) => op("add", [a, b]),
    sub: (a, b) => op("sub", [a, b]),
    mul: (a, b) => op("mul", [a, b]),
    div: (a, b) => op("div", [a, b]),
    sumTo: (g, like) => {
      const extra = type(g).dims.filter((d) => !like.dims.some((e) => e.name === d.name)).map((d) => d.name);
      return extra.length ? op("sum", [g], { dims: extra }) : g;
    },
    expandTo: (g, like) => {
      const t = type(g);
      const missing = like.dims.filter((d) => !t.dims.some((e) => e.name === d.name));
      // a segmented dim keeps its segments (they say where each rank's rows are)
      return missing.length ? op("expand", [g], { dims: missing.map((d) => (d.segmented ? [d.name, d.size, { ...d.segmented } as never] : [d.name, d.size])) }) : g;
    },
  };
}

/**
 * Appends the gradient computation of `loss` with respect to `wrt` to the graph and returns one
 * gradient per entry of `wrt`, in that value's placements. The loss's own gradient is 1 everywhere.
 */
export function appendGradients(gb: GraphBuilder, loss: ValueRef, wrt: ValueRef[]): ValueRef[] {
  const g = gb.graph;
  const b = gradOps(gb);
  const lossT = gb.type(loss);
  if (!isFloat(lossT.dtype)) throw new CompileError(`the loss must be floating point, got ${fmtType(lossT)}`);

  // nodes that depend on a wrt value and that the loss depends on
  const fromWrt = new Set<number>(wrt.map((v) => v.node));
  for (const n of g.nodes) if (n.inputs.some((v) => fromWrt.has(v.node))) fromWrt.add(n.id);
  const toLoss = new Set<number>([loss.node]);
  for (let i = loss.node; i >= 0; i--) if (toLoss.has(i)) for (const v of g.nodes[i]!.inputs) toLoss.add(v.node);
  const onPath = (id: number) => fromWrt.has(id) && toLoss.has(id);

  const grads = new Map<string, ValueRef>();
  const accumulate = (v: ValueRef, d: ValueRef) => {
    const t = gb.type(v);
    if (!isFloat(t.dtype)) return;
    const have = grads.get(refKey(v));
    grads.set(refKey(v), have ? b.add(have, b.fit(d, gb.type(have).placements)) : d);
  };
  const seedDims = lossT.dims.map((d) => [d.name, d.size]);
  grads.set(refKey(loss), b.op("full", [], { dims: seedDims, dtype: lossT.dtype, placements: dualPlacements(lossT.placements), value: 1 }));

  for (let id = loss.node; id >= 0; id--) {
    if (!onPath(id)) continue;
    const node = g.nodes[id]!;
    const gy = node.outputs.map((t, k) => {
      const v = grads.get(refKey({ node: id, out: k }));
      if (!v) return null;
      if (t.placements.includes("P(max)")) throw new CompileError(`autodiff through a Partial<max> value (node %${id} ${node.op}) is not supported; redistribute it to Replicate first`);
      return b.fit(v, dualPlacements(t.placements));
    });
    if (gy.every((v) => v === null) || node.inputs.length === 0) continue;
    const def = getOp(node.op);
    if (!def.grad) {
      if (node.outputs.every((t) => !isFloat(t.dtype))) continue;
      throw new CompileError(`op '${node.op}' (node %${id}) has no gradient rule${node.site ? ` (at ${node.site})` : ""}`);
    }
    const inTypes = node.inputs.map((v) => gb.type(v));
    let dx: (ValueRef | null)[];
    try {
      dx = def.grad({ b, x: node.inputs, y: node.outputs.map((_, out) => ({ node: id, out })), gy, attrs: node.attrs, inTypes, outTypes: node.outputs });
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      throw new CompileError(`gradient of ${node.op} (node %${id}${node.site ? ` at ${node.site}` : ""}) failed: ${msg}`);
    }
    dx.forEach((d, i) => {
      const v = node.inputs[i]!;
      if (d && onPath(v.node)) accumulate(v, d);
    });
  }

  return wrt.map((v) => {
    const t: TensorType = gb.type(v);
    const d = grads.get(refKey(v));
    const to = dualPlacements(t.placements);
    if (!d) return b.op("full", [], { dims: t.dims.map((e) => [e.name, e.size]), dtype: t.dtype, placements: to, value: 0 });
    let out = b.fit(d, to);
    if (gb.type(out).dtype !== t.dtype) out = b.op("cast", [out], { dtype: t.dtype });
    // the gradient is laid out like its parameter, so their pieces line up element for element
    const order = t.dims.map((e) => e.name);
    return gb.type(out).dims.every((e, i) => e.name === order[i]) ? out : b.op("permute", [out], { order });
  });
}
