// Builds the KernelSpec of a candidate group of plan instructions, or says why the group is not one
// kernel. The fusion pass calls this for every merge it considers, so legality lives here in one
// place: one iteration space, results that cover it, one column axis for every reduction.
import type { DType, TensorType } from "../ir/types.ts";
import type { Instr, Plan } from "../plan.ts";
import type { AxisInfo, AxisUse, ExprNode, KernelSpec } from "./types.ts";
import { numel } from "../ir/types.ts";
import { shardDim } from "../ir/placement.ts";
import { CUDA_EXPR } from "./cuda/ops.ts";
import { tilesName } from "../ops/quantize.ts";

type OpInstr = Extract<Instr, { kind: "op" }>;

/** What the builder needs to know about the plan around a group. */
export interface GroupCtx {
  plan: Plan;
  /** The instruction that produces each slot (-1: none). */
  producer: number[];
  /** True when the slot is read outside `members` (or must exist: a plan output, a counts tensor). */
  escapes(slot: number, members: ReadonlySet<number>): boolean;
  /** The value of a `full` that can be inlined as a literal, or undefined. */
  constOf(slot: number): number | undefined;
}

export interface BuiltGroup {
  spec: KernelSpec;
  inputs: number[];
  outputs: number[];
  axes: AxisInfo[];
}

/** A kernel this large stops being readable (and its registers grow); start a new one. */
const MAX_NODES = 160, MAX_TENSORS = 24;

const REDUCERS = new Set(["sum", "mean", "max"]);
const ROW_OPS = new Set(["softmax", "log_softmax", "rmsnorm"]);

/** A quantize that can be a map kernel's epilogue: 1x128 tiles along its input's innermost dim. */
export function epilogueQuantize(ins: Instr, plan: Plan): boolean {
  if (ins.kind !== "op" || ins.op !== "quantize" || ins.attrs.tiling !== "1x128") return false;
  const dims = ins.attrs.dims as string[], x = plan.values[ins.inputs[0]!]!.type;
  return Array.isArray(dims) && dims.length === 1 && x.dims[x.dims.length - 1]?.name === dims[0] && ["f32", "bf16"].includes(x.dtype);
}

/**
 * Ops that can be part of a kernel; `gather` only joins a row kernel (as a pick), and `quantize` a
 * map kernel (as its epilogue), never starting one.
 */
export function fusible(ins: Instr, plan: Plan): boolean {
  if (ins.kind !== "op") return false;
  if (ins.op in CUDA_EXPR || ins.op === "expand" || ROW_OPS.has(ins.op) || ins.op === "gather" || epilogueQuantize(ins, plan)) return true;
  // integer reductions keep their own (exact, wrapping) CPU semantics; only float rows are fused
  return REDUCERS.has(ins.op) && ["f32", "bf16"].includes(plan.values[ins.inputs[0]!]!.type.dtype);
}

const names = (t: TensorType) => t.dims.map((d) => d.name);
const sameSet = (a: readonly string[], b: ReadonlySet<string>) => a.length === b.size && a.every((x) => b.has(x));

export function buildGroup(ctx: GroupCtx, members: readonly number[]): BuiltGroup | { why: string } {
  const { plan } = ctx;
  const typeOf = (s: number) => plan.values[s]!.type;
  const memberSet = new Set(members);
  const nodes: ExprNode[] = [];
  const nodeOf = new Map<number, number>();
  const inputs: number[] = [];
  const literals: number[] = [];
  let reduceDims: string[] | null = null;
  const space = new Set<string>();
  const picks: { ins: OpInstr; node: number }[] = [];
  let quant: { node: number; q: number; scales: number; dim: string } | undefined;
  let of = "";

  const node = (n: ExprNode) => (nodes.push(n), nodes.length - 1);
  const constant = (value: number, ir: number, dtype: DType = "f32", from = of) => node({ k: "const", value: dtype === "f32" ? Math.fround(value) : value, dtype, col: false, ir, of: from });
  const arg = (s: number): number => {
    let k = nodeOf.get(s);
    if (k !== undefined) return k;
    // a leaf: its producer outside the group (a literal `full`, or a tensor read from memory)
    const p = plan.instrs[ctx.producer[s]!], c = ctx.constOf(s);
    const ir = p?.node ?? -1, from = p?.kind === "op" ? p.op : "redistribute";
    if (c !== undefined) {
      k = constant(c, ir, typeOf(s).dtype, from);
      literals.push(s);
    } else {
      inputs.push(s);
      names(typeOf(s)).forEach((d) => space.add(d));
      k = node({ k: "load", operand: inputs.length - 1, dtype: typeOf(s).dtype, col: false, ir, of: from });
    }
    nodeOf.set(s, k);
    return k;
  };
  const op = (op: string, args: number[], dtype: DType, ir: number) => node({ k: "op", op, args, dtype, col: false, ir, of });
  const reduce = (fn: "sum" | "max", x: number, dtype: DType, ir: number) => node({ k: "reduce", fn, arg: x, dtype, col: false, ir, of });

  for (const i of members) {
    const ins = plan.instrs[i] as OpInstr;
    const out = ins.outputs[0]!, dt = typeOf(out).dtype, ir = ins.node;
    of = ins.op;
    names(typeOf(out)).forEach((d) => space.add(d));
    if (ins.op === "expand") {
      nodeOf.set(out, arg(ins.inputs[0]!));
      continue;
    }
    if (ins.op in CUDA_EXPR) {
      nodeOf.set(out, op(ins.op, ins.inputs.map(arg), dt, ir));
      continue;
    }
    if (ins.op === "quantize") {
      if (quant) return { why: "one quantize epilogue per kernel" };
      const x = arg(ins.inputs[0]!);
      quant = { node: x, q: out, scales: ins.outputs[1]!, dim: (ins.attrs.dims as string[])[0]! };
      nodeOf.set(out, x);
      nodeOf.set(quant.scales, x);
      continue;
    }
    if (ins.op === "gather") {
      const x = nodeOf.get(ins.inputs[0]!);
      if (x === undefined) return { why: "gather joins a row kernel only after the value it picks from" };
      const k = node({ k: "pick", arg: x, index: arg(ins.inputs[1]!), dtype: dt, col: false, ir, of });
      nodeOf.set(out, k);
      picks.push({ ins, node: k });
      continue;
    }
    // a reduction: its dims become the column axis, in the input's layout order
    const xt = typeOf(ins.inputs[0]!);
    const red = ROW_OPS.has(ins.op) ? [String(ins.attrs.dim)] : (ins.attrs.dims as string[]);
    const ordered = names(xt).filter((d) => red.includes(d));
    if (reduceDims && !(reduceDims.length === ordered.length && ordered.every((d) => reduceDims!.includes(d))))
      return { why: `${ins.op} reduces [${ordered}] but the kernel's rows run over [${reduceDims}]` };
    reduceDims ??= ordered;
    const x = arg(ins.inputs[0]!);
    let y: number;
    if (ins.op === "sum" || ins.op === "max") y = reduce(ins.op, x, dt, ir);
    else if (ins.op === "mean") {
      // the GLOBAL count, so that the Partial<sum> of the ranks' pieces is the mean (as on CPU)
      const count = red.reduce((a, d) => a * xt.dims.find((e) => e.name === d)!.size, 1);
      y = op("div", [reduce("sum", x, "f32", ir), constant(count, ir)], dt, ir);
    } else if (ins.op === "rmsnorm") {
      const n = xt.dims.find((d) => d.name === red[0])!.size;
      const ss = reduce("sum", op("mul", [x, x], "f32", ir), "f32", ir);
      const r = op("rsqrt", [op("add", [op("div", [ss, constant(n, ir)], "f32", ir), constant(Number(ins.attrs.eps ?? 1e-6), ir)], "f32", ir)], "f32", ir);
      y = op("mul", [op("mul", [x, r], "f32", ir), arg(ins.inputs[1]!)], dt, ir);
    } else {
      const m = reduce("max", x, "f32", ir);
      const e = op("exp", [op("sub", [x, m], "f32", ir)], "f32", ir);
      const s = reduce("sum", e, "f32", ir);
      // as the CPU reference: softmax = e / s; log_softmax = x - (log s + m)
      y = ins.op === "softmax" ? op("div", [e, s], dt, ir) : op("sub", [x, op("add", [op("log", [s], "f32", ir), m], "f32", ir)], dt, ir);
    }
    nodeOf.set(out, y);
  }
  if (nodes.length > MAX_NODES) return { why: `more than ${MAX_NODES} expression nodes` };

  // results: every value that is read outside the group
  // (a quantize epilogue writes its bytes and scales both)
  const outputs = members.flatMap((i) => (plan.instrs[i] as OpInstr).outputs).filter((s) => s === quant?.q || s === quant?.scales || ctx.escapes(s, memberSet));
  if (outputs.length === 0) return { why: "no value leaves the group" };
  if (quant && reduceDims) {
    // a row kernel takes the epilogue along its rows, with one level of reductions and no picks (row-quant.ts)
    if (reduceDims.length !== 1 || reduceDims[0] !== quant.dim) return { why: `quantize tiles '${quant.dim}' but the kernel's rows run over [${reduceDims}]` };
    if (picks.length) return { why: "a row kernel with a pick takes no quantize epilogue" };
    const deep = (i: number): boolean => { const n = nodes[i]!; return n.k === "reduce" || (n.k === "op" && n.args.some(deep)); };
    if (nodes.some((n) => n.k === "reduce" && deep(n.arg))) return { why: "a row kernel with reductions of reductions (softmax) takes no quantize epilogue" };
  }
  if (quant && quant.q !== (plan.instrs[members[members.length - 1]!] as OpInstr).outputs[0]) return { why: "a quantize epilogue is the kernel's last op" };
  if (inputs.length + outputs.length > MAX_TENSORS) return { why: `more than ${MAX_TENSORS} tensors` };
  const col = reduceDims ?? [];
  const colSet = new Set(col);
  const outer = new Set([...space].filter((d) => !colSet.has(d)));
  const full = new Set([...outer, ...col]);
  for (const s of outputs) {
    if (s === quant?.scales) continue;
    const ds = names(typeOf(s));
    if (!sameSet(ds, full) && !(col.length > 0 && sameSet(ds, outer)))
      return { why: `result $${s} [${ds}] does not cover the iteration space [${[...full]}]` + (col.length ? ` or its rows [${[...outer]}]` : "") };
  }

  // iteration order: a covering result's layout (the one written most), the column dims last
  const cover = outputs.find((s) => s !== quant?.scales && names(typeOf(s)).length === full.size) ?? outputs[0]!;
  const order = [...names(typeOf(cover)).filter((d) => !colSet.has(d)), ...col];
  if (quant && order[order.length - 1] !== quant.dim) return { why: `quantize tiles '${quant.dim}', which is not the kernel's innermost dim (${order[order.length - 1]})` };
  const tensors = [...inputs, ...outputs].map((s) => names(typeOf(s)));
  const axesDims: string[][] = [];
  order.forEach((d, i) => {
    const prev = order[i - 1];
    const joins = prev !== undefined && colSet.has(prev) === colSet.has(d) &&
      tensors.every((t) => (t.includes(prev) ? t.indexOf(d) === t.indexOf(prev) + 1 : !t.includes(d)));
    if (joins) axesDims[axesDims.length - 1]!.push(d);
    else axesDims.push([d]);
  });
  if (col.length > 0 && !sameSet(axesDims[axesDims.length - 1]!, colSet)) return { why: `the reduced dims [${col}] are not one contiguous run in every tensor` };
  const use = (t: string[], ax: string[]): AxisUse => (!t.includes(ax[0]!) ? "none" : t[t.length - 1] === ax[ax.length - 1] ? "unit" : "stride");
  // the scales walk the tiled (innermost) axis by tiles: their `d_tiles` dim stands for `d`
  const namesOf = (s: number) => (s === quant?.scales ? names(typeOf(s)).map((d) => (d === tilesName(quant!.dim) ? quant!.dim : d)) : names(typeOf(s)));
  const spec = (s: number) => ({ dtype: typeOf(s).dtype, axes: axesDims.map((ax) => use(namesOf(s), ax)) });
  const operands = inputs.map(spec);

  // which values vary along the column axis (row kernels evaluate the others once per row)
  const last = axesDims.length - 1;
  for (const n of nodes) {
    if (n.k === "load") n.col = col.length > 0 && operands[n.operand]!.axes[last] !== "none";
    else if (n.k === "op") n.col = n.args.some((a) => nodes[a]!.col);
  }
  for (const { ins, node: k } of picks) {
    const [xt, it] = [typeOf(ins.inputs[0]!), typeOf(ins.inputs[1]!)];
    const dim = String(ins.attrs.dim);
    if (col.length !== 1 || col[0] !== dim) return { why: `gather over '${dim}' is not a pick along the kernel's rows [${col}]` };
    const index = (nodes[k] as Extract<ExprNode, { k: "pick" }>).index;
    if (nodes[index]!.col || !names(it).every((d) => outer.has(d)) || !names(xt).every((d) => d === dim || names(it).includes(d)))
      return { why: "gather's index must be one entry per row" };
    if (xt.placements.some((p) => shardDim(p) === dim)) return { why: `gather over the sharded dim '${dim}'` };
  }

  // every slot of the group has its local shapes in the plan, literals' and internal values' too
  const slotWith = (d: string) => [...outputs.filter((s) => s !== quant?.scales), ...inputs, ...members.map((i) => (plan.instrs[i] as OpInstr).outputs[0]!), ...literals].find((s) => names(typeOf(s)).includes(d))!;
  const axes: AxisInfo[] = axesDims.map((ds) => ({ dims: ds, from: ds.map((d) => ({ slot: slotWith(d), dim: names(typeOf(slotWith(d))).indexOf(d) })) }));
  let elems = 0, row = 0;
  for (let r = 0; r < plan.world; r++) {
    const sizes = axes.map((a) => a.from.reduce((p, f) => p * plan.values[f.slot]!.shapes[r]![f.dim]!, 1));
    elems = Math.max(elems, numel(sizes), ...[...inputs, ...outputs].map((s) => numel(plan.values[s]!.shapes[r]!)));
    if (col.length) row = Math.max(row, sizes[last]!);
  }
  if (row >= 2 ** 31) return { why: "rows of 2^31 or more elements" };
  return {
    spec: {
      kind: col.length ? "row" : "map",
      axes: axesDims.length,
      operands,
      results: outputs.map((s) => ({ ...spec(s), node: nodeOf.get(s)! })),
      nodes,
      ops: members.map((i) => (plan.instrs[i] as OpInstr).op),
      bounds: { elems, row },
      ...(quant ? { quant: { node: quant.node, q: outputs.indexOf(quant.q), scales: outputs.indexOf(quant.scales) } } : {}),
    },
    inputs,
    outputs,
    axes,
  };
}
