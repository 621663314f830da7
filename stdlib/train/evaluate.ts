// Forward-only programs over trained parameters: held-out loss, and text generation from logits.
import type { Pieces } from "../program.ts";
import { piecesOf, Program } from "../program.ts";
import type { Layout } from "../nn/layout.ts";
import { moeLayers, type LmConfig } from "../nn/transformer.ts";
import { traceLm } from "./trainer.ts";
import type { Backend } from "../run.ts";

export class Evaluator {
  private readonly program: Program<"ce" | "logits">;
  private readonly mesh;

  constructor(readonly layout: Layout, readonly model: LmConfig, readonly batch: number, backend?: Backend) {
    // without the redundant experts: replicas change where experts run, not what the model computes
    // (test/unit/moe-replicas.test.ts), and a forward-only program has no load to balance
    // and unsplit: micro-batches change how a step is scheduled, not what it computes
    const t = traceLm(layout, { ...model, microBatches: 1, ...(model.moe?.redundant ? { moe: { ...model.moe, redundant: undefined } } : {}) }, batch);
    this.mesh = t.mesh;
    this.program = new Program(t.mesh, { ce: t.out.ce, logits: t.out.logits[0]! }, { backend });
  }

  private feeds(params: Record<string, Pieces>, biases: Float32Array[], ids: Int32Array, targets: Int32Array): Record<string, Pieces> {
    const spec = this.mesh.spec, R = spec.axes.map(() => "R" as const);
    const act = this.layout.activation(["batch", "seq"]);
    const tok = { dims: [{ name: "batch", size: this.batch }, { name: "seq", size: this.model.seq }], dtype: "i32" as const, placements: act };
    const f: Record<string, Pieces> = { ...params, "data.ids": piecesOf(spec, tok, ids), "data.targets": piecesOf(spec, tok, targets) };
    moeLayers(this.model).forEach((l, i) => (f[`bias.l${l}`] = piecesOf(spec, { dims: [{ name: "experts", size: biases[i]!.length }], dtype: "f32", placements: R }, biases[i]!)));
    return f;
  }

  /** Mean cross-entropy (nats per token) of a batch. */
  loss(params: Record<string, Pieces>, biases: Float32Array[], ids: Int32Array, targets: Int32Array): number {
    return this.program.runGlobal(this.feeds(params, biases, ids, targets), ["ce"]).values.ce.data[0]!;
  }

  /** Logits [batch, seq, vocab] as a flat array. */
  logits(params: Record<string, Pieces>, biases: Float32Array[], ids: Int32Array): Float32Array {
    return this.program.runGlobal(this.feeds(params, biases, ids, ids), ["logits"]).values.logits.data as Float32Array;
  }
}

/**
 * Samples `n` tokens after `prompt` from a batch-1 evaluator: the last `seq` tokens are the window
 * (left-padded with `pad`), the next token is drawn from softmax(logits / temperature).
 */
export function generate(ev: Evaluator, params: Record<string, Pieces>, biases: Float32Array[], prompt: Int32Array, n: number, opts: { temperature: number; seed: number; pad: number }): Int32Array {
  const { seq, vocab } = ev.model;
  const out = Array.from(prompt);
  let s = opts.seed >>> 0 || 1;
  const rand = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  for (let i = 0; i < n; i++) {
    const window = out.slice(-seq);
    const ids = new Int32Array(seq).fill(opts.pad);
    ids.set(window, seq - window.length);
    const logits = ev.logits(params, biases, ids).subarray((seq - 1) * vocab, seq * vocab);
    let m = -Infinity;
    for (const v of logits) m = Math.max(m, v);
    const p = Array.from(logits, (v) => Math.exp((v - m) / opts.temperature));
    let r = rand() * p.reduce((a, b) => a + b, 0), next = 0;
    while (next < vocab - 1 && (r -= p[next]!) > 0) next++;
    out.push(next);
  }
  return Int32Array.from(out.slice(prompt.length));
}
