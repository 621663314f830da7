// The tracer's graph builder: stdlib ops call `add`, which runs the op's rules on the inputs' types
// (so a bad program fails at the call that made it, with the same text tsc shows) and appends one node.
import type { Attrs, Graph, MeshSpec, Node, TensorType, ValueRef } from "../ir/types.ts";
import { typeOf } from "../ir/types.ts";
import { ShardtsError } from "../errors.ts";
import { getOp, inferTypes } from "../ops/index.ts";
import { SELF } from "../ops/routing.ts";

/** A node with an optional payload (factory data); payloads are not part of the printed IR. */
export interface TracedNode extends Node {
  payload?: unknown;
}

export interface TracedGraph extends Graph {
  nodes: TracedNode[];
}

const OWN_FILES = /[\\/](compiler|stdlib|runtime)[\\/]|node:internal|node_modules/;

/** The first stack frame outside shardts itself: the user's line. */
export function userSite(): string | undefined {
  const stack = new Error().stack?.split("\n").slice(1) ?? [];
  for (const line of stack) {
    const m = /\(?((?:file:\/\/)?[^()\s]+:\d+:\d+)\)?$/.exec(line.trim());
    if (m && !OWN_FILES.test(m[1]!)) return m[1]!.replace(/^file:\/\//, "");
  }
  return undefined;
}

/** Points segmented dims that say "my own output k" at this node. */
function resolveSelf(types: TensorType[], id: number): TensorType[] {
  return types.map((t) => ({
    ...t,
    dims: t.dims.map((d) => (d.segmented && d.segmented.counts.node === SELF ? { ...d, segmented: { ...d.segmented, counts: { node: id, out: d.segmented.counts.out } } } : d)),
  }));
}

export class GraphBuilder {
  readonly graph: TracedGraph;

  constructor(readonly mesh: MeshSpec) {
    this.graph = { mesh, nodes: [] };
  }

  type(v: ValueRef): TensorType {
    return typeOf(this.graph, v);
  }

  add(op: string, inputs: ValueRef[], attrs: Attrs = {}, payload?: unknown): ValueRef[] {
    const def = getOp(op);
    const key = this.pureKey(op, def.family, inputs, attrs, payload);
    const seen = key === undefined ? undefined : this.pure.get(key);
    if (seen) return seen.map((v) => ({ ...v }));
    const site = userSite();
    let outputs: TensorType[];
    try {
      outputs = inferTypes(def, inputs.map((v) => this.type(v)), attrs, this.mesh);
    } catch (e) {
      if (e instanceof ShardtsError && site && !e.site) {
        const E = e.constructor as new (m: string, s?: string) => ShardtsError;
        throw new E(e.message, site);
      }
      throw e;
    }
    const id = this.graph.nodes.length;
    const node: TracedNode = { id, op, inputs, attrs, outputs: resolveSelf(outputs, id), site };
    if (payload !== undefined) node.payload = payload;
    this.graph.nodes.push(node);
    const refs = node.outputs.map((_, out) => ({ node: id, out }));
    if (key !== undefined) this.pure.set(key, refs);
    return refs.map((v) => ({ ...v }));
  }
  private readonly pure = new Map<string, ValueRef[]>();

  /**
   * The quantize family is pure and its outputs are activation-sized: the FP8 recipe traces the same
   * quantize of an activation once per consumer (fp8Dispatch and every fp8Dot of x), and each
   * scaled_dot's Wgrad dequantizes and requantizes its own copy of it. The same op on the same inputs
   * with the same attrs is then that node again. A quantize merges only where its gradients need no
   * cast: of bf16 (the FP8 contractions' Dgrads are bf16), or of a dequantize's output (the Wgrad's
   * requantization, in the backward). Of an f32 value, the bf16 gradients of two consumers would be
   * summed in bf16 before quantize's cast instead of in f32 after it.
   */
  private pureKey(op: string, family: string, inputs: ValueRef[], attrs: Attrs, payload: unknown): string | undefined {
    if (family !== "quantize" || payload !== undefined) return undefined;
    if (op === "quantize") {
      const x = inputs[0]!;
      if (this.type(x).dtype !== "bf16" && this.graph.nodes[x.node]?.op !== "dequantize") return undefined;
    }
    return `${op}|${inputs.map((v) => `${v.node}:${v.out}`).join(",")}|${JSON.stringify(attrs)}`;
  }
}
