// Few, long rows. A row kernel gives each row to one block, so a kernel over one row of 11.5M
// elements (a gradient's sum of squares for the global norm) runs on one SM at ~90 GB/s (H200).
// Such a kernel is cut in two, both ordinary row kernels:
//   stage 1 cuts each row into parts of CHUNK columns, each reduced as its own row (rows x parts
//           rows for the blocks), and writes one f32 partial per part and reduction to a new slot
//           [outer dims..., parts], besides the kernel's results along the row (an `add` it also
//           writes);
//   stage 2 reduces each row's partials (a short row) and computes from the totals what the row
//           results make of them (a mean's division, sums with per-row values).
// Partials are reduced in a fixed order and written, not accumulated with atomics: results are the
// same run to run. Only kernels whose reductions read no reduction and whose results along the row
// read none either (sums, maxes, means of elementwise chains) are cut; softmax and rmsnorm rows,
// picks and quantize epilogues keep their one kernel.
import type { Plan, PlanValue } from "../plan.ts";
import type { AxisInfo, AxisUse, ExprNode, KernelSpec, TensorSpec } from "./types.ts";
import type { BuiltGroup } from "./spec.ts";

/**
 * Columns per part (16 KiB of f32). Small enough that the part kernels' blocks are small (256..512
 * threads): several fit on an SM at once, so one block's reduction and write pass overlap another's
 * loads (8192 gave add -> mul -> sum 1024-thread blocks at 40 registers, one an SM); a row of 2^20
 * columns is 256 parts, about two per SM.
 */
export const CHUNK = 2 ** 12;
/**
 * Cut rows of at least MIN_COLS columns (32 parts or more) where there are fewer than MAX_ROWS:
 * one block reads a row at ~90 GB/s, so ~50 rows' blocks are what it takes to keep HBM (4.8 TB/s) busy.
 */
export const MIN_COLS = 2 ** 17, MAX_ROWS = 64;

export interface SplitRows {
  /** Stage 1 (partials) and stage 2 (the rows' results). */
  stages: [BuiltGroup, BuiltGroup];
  /** The partial slots stage 1 writes and stage 2 reads, one per reduction, numbered from `firstSlot`. */
  values: PlanValue[];
}

type Reduce = Extract<ExprNode, { k: "reduce" }>;
const argsOf = (n: ExprNode): number[] => (n.k === "op" ? n.args : n.k === "reduce" ? [n.arg] : n.k === "pick" ? [n.arg, n.index] : []);

/** Nodes `targets` need, ascending; `stop` nodes are taken but not entered. */
function needed(nodes: ExprNode[], targets: number[], stop: (i: number) => boolean = () => false): number[] {
  const seen = new Set<number>();
  const visit = (i: number): void => {
    if (seen.has(i)) return;
    seen.add(i);
    if (!stop(i)) argsOf(nodes[i]!).forEach(visit);
  };
  targets.forEach(visit);
  return [...seen].sort((a, b) => a - b);
}

/** The ops (one per IR node) whose values `nodes` compute, in order. */
const opsOf = (nodes: ExprNode[]): string[] => [...new Map(nodes.flatMap((n) => (n.k === "op" || n.k === "reduce" ? [[n.ir, n.of] as const] : []))).values()];

/** Why `spec` keeps its one kernel, or undefined where it can be cut (the sizes aside). */
export function unsplittable(spec: KernelSpec): string | undefined {
  if (spec.kind !== "row" || spec.quant || spec.split) return "not a plain row kernel";
  const { nodes } = spec, L = spec.axes - 1;
  if (nodes.some((n) => n.k === "pick")) return "a pick reads its row";
  const deep = nodes.map(() => false);
  nodes.forEach((n, i) => (deep[i] = n.k === "reduce" || argsOf(n).some((a) => deep[a]!)));
  if (nodes.some((n) => n.k === "reduce" && deep[n.arg]!)) return "a reduction reads a reduction (a softmax or norm row)";
  if (spec.results.some((r) => r.axes[L] !== "none" && deep[r.node]!)) return "a result along the row reads a reduction";
  if (!nodes.some((n) => n.k === "reduce")) return "no reduction";
  return undefined;
}

/** Per rank: the kernel's rows and row length. */
function rowsAndCols(axes: AxisInfo[], plan: Pick<Plan, "values" | "world">): { rows: number; cols: number }[] {
  return Array.from({ length: plan.world }, (_, r) => {
    const s = axes.map((a) => a.from.reduce((p, f) => p * plan.values[f.slot]!.shapes[r]![f.dim]!, 1));
    return { rows: s.slice(0, -1).reduce((a, b) => a * b, 1), cols: s[s.length - 1]! };
  });
}

/** Stage 1 and 2 of `g` where its rows are few and long (and it can be cut), else undefined. */
export function splitRows(g: BuiltGroup, plan: Pick<Plan, "values" | "world">, firstSlot: number): SplitRows | undefined {
  const { spec } = g;
  if (unsplittable(spec)) return undefined;
  const per = rowsAndCols(g.axes, plan);
  if (Math.max(...per.map((p) => p.rows)) >= MAX_ROWS || spec.bounds.row < MIN_COLS) return undefined;

  const { nodes } = spec, L = spec.axes - 1;
  const reduces = nodes.flatMap((n, i) => (n.k === "reduce" ? [i] : []));
  const colResults = spec.results.flatMap((r, j) => (r.axes[L] !== "none" ? [j] : []));
  const rowResults = spec.results.flatMap((r, j) => (r.axes[L] === "none" ? [j] : []));
  if (!rowResults.length) return undefined;

  // the partial slots: [outer dims..., parts], f32, placed as the kernel's first row result
  const outerDims = g.axes.slice(0, -1).flatMap((a) => a.from.map((f, k) => ({ name: a.dims[k]!, ...f })));
  const partDim = `${g.axes[L]!.dims.join("_")}_parts`;
  const parts = per.map((p) => Math.ceil(p.cols / CHUNK));
  const like = plan.values[g.outputs[rowResults[0]!]!]!.type;
  const partial = (): PlanValue => ({
    type: {
      dims: [...outerDims.map((d) => ({ name: d.name, size: plan.values[d.slot]!.type.dims[d.dim]!.size })), { name: partDim, size: Math.max(...parts) }],
      dtype: "f32",
      placements: like.placements,
    },
    boxes: parts.map((p, r) => {
      const box = (d: (typeof outerDims)[number]) => plan.values[d.slot]!.boxes[r]!;
      return {
        offset: [...outerDims.map((d) => box(d).offset[d.dim]!), 0],
        global: [...outerDims.map((d) => box(d).global[d.dim]!), p],
        seg: [...outerDims.map((d) => box(d).seg[d.dim] ?? null), null],
      };
    }),
    shapes: parts.map((p, r) => [...outerDims.map((d) => plan.values[d.slot]!.shapes[r]![d.dim]!), p]),
    segCounts: {},
  });
  const values = reduces.map(partial);
  const partSlots = reduces.map((_, k) => firstSlot + k);
  const partAxis: AxisInfo = { dims: [partDim], from: [{ slot: partSlots[0]!, dim: outerDims.length }] };
  // how a partial walks the outer axes (its innermost dim is the part)
  const partUses: AxisUse[] = g.axes.slice(0, -1).map(() => "stride");

  // stage 1: the column results and the reductions, each a result per part (f32, not yet rounded)
  const keep1 = needed(nodes, [...colResults.map((j) => spec.results[j]!.node), ...reduces]);
  const ops1 = keep1.filter((i) => nodes[i]!.k === "load").map((i) => (nodes[i] as Extract<ExprNode, { k: "load" }>).operand);
  const at1 = new Map(keep1.map((i, k) => [i, k]));
  const nodes1 = keep1.map((i): ExprNode => {
    const n = nodes[i]!;
    if (n.k === "load") return { ...n, operand: ops1.indexOf(n.operand) };
    if (n.k === "op") return { ...n, args: n.args.map((a) => at1.get(a)!) };
    if (n.k === "reduce") return { ...n, arg: at1.get(n.arg)!, dtype: "f32" };
    return n;
  });
  const withPart = (t: TensorSpec): TensorSpec => ({ dtype: t.dtype, axes: [...t.axes.slice(0, L), "none", t.axes[L]!] });
  const stage1: BuiltGroup = {
    spec: {
      kind: "row",
      axes: spec.axes + 1,
      operands: ops1.map((o) => withPart(spec.operands[o]!)),
      results: [
        ...colResults.map((j) => ({ ...withPart(spec.results[j]!), node: at1.get(spec.results[j]!.node)! })),
        ...reduces.map((r) => ({ dtype: "f32" as const, axes: [...partUses, "unit" as const, "none" as const], node: at1.get(r)! })),
      ],
      nodes: nodes1,
      ops: opsOf(nodes1),
      bounds: { elems: spec.bounds.elems, row: Math.min(CHUNK, spec.bounds.row) },
      split: { chunk: CHUNK },
    },
    inputs: ops1.map((o) => g.inputs[o]!),
    outputs: [...colResults.map((j) => g.outputs[j]!), ...partSlots],
    axes: [...g.axes.slice(0, -1), partAxis, g.axes[L]!],
  };

  // stage 2: each reduction over its partials, then the row results' nodes above the reductions
  const keep2 = needed(nodes, rowResults.map((j) => spec.results[j]!.node), (i) => nodes[i]!.k === "reduce");
  const ops2 = keep2.filter((i) => nodes[i]!.k === "load").map((i) => (nodes[i] as Extract<ExprNode, { k: "load" }>).operand);
  const nodes2: ExprNode[] = [];
  const at2 = new Map<number, number>();
  for (const i of keep2) {
    const n = nodes[i]!;
    if (n.k === "reduce") {
      const k = reduces.indexOf(i);
      nodes2.push({ k: "load", operand: ops2.length + k, dtype: "f32", col: true, ir: n.ir, of: n.of });
      nodes2.push({ ...(n as Reduce), arg: nodes2.length - 1 });
    } else if (n.k === "load") nodes2.push({ ...n, operand: ops2.indexOf(n.operand) });
    else if (n.k === "op") nodes2.push({ ...n, args: n.args.map((a) => at2.get(a)!) });
    else nodes2.push(n);
    at2.set(i, nodes2.length - 1);
  }
  const stage2: BuiltGroup = {
    spec: {
      kind: "row",
      axes: spec.axes,
      operands: [...ops2.map((o) => spec.operands[o]!), ...reduces.map((): TensorSpec => ({ dtype: "f32", axes: [...partUses, "unit"] }))],
      results: rowResults.map((j) => ({ ...spec.results[j]!, node: at2.get(spec.results[j]!.node)! })),
      nodes: nodes2,
      ops: opsOf(nodes2),
      bounds: { elems: spec.bounds.elems, row: Math.max(...parts) },
    },
    inputs: [...ops2.map((o) => g.inputs[o]!), ...partSlots],
    outputs: rowResults.map((j) => g.outputs[j]!),
    axes: [...g.axes.slice(0, -1), partAxis],
  };
  return { stages: [stage1, stage2], values };
}
