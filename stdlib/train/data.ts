// Tokens and batches for the CPU language-model runs.
//
//   ByteTokenizer       — UTF-8 bytes as tokens (vocab 256): nothing to train, nothing to download.
//   unigram/bigram entropy — the loss floors of models that learn only token frequencies
//                         (unigram) or only the previous token (bigram): a trained model that does
//                         not beat the unigram number has learned nothing.
//   BatchLoader         — seeded, resumable (inputs, targets) windows from a train split, plus
//                         fixed held-out batches from the tail.

import { DataError } from "./text.ts";

export { DataError };

// ---- tokenizer -----------------------------------------------------------------------------------

/** Bytes as tokens: `encode` is the UTF-8 encoding, `decode` its inverse (invalid UTF-8 → U+FFFD). */
export class ByteTokenizer {
  readonly vocabSize = 256;
  private readonly encoder = new TextEncoder();
  private readonly decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });

  encode(text: string): Int32Array {
    return Int32Array.from(this.encoder.encode(text));
  }

  decode(ids: ArrayLike<number>): string {
    const bytes = new Uint8Array(ids.length);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!Number.isInteger(id) || id < 0 || id > 255) {
        throw new RangeError(`ByteTokenizer.decode: id ${id} at position ${i} is not a byte (0..255)`);
      }
      bytes[i] = id;
    }
    return this.decoder.decode(bytes);
  }
}

// ---- entropy ---------------------------------------------------------------------------------------

function checkIds(ids: ArrayLike<number>, vocab: number, who: string): void {
  if (!Number.isInteger(vocab) || vocab <= 0) throw new RangeError(`${who}: vocab must be a positive integer, got ${vocab}`);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (!(id >= 0 && id < vocab) || !Number.isInteger(id)) {
      throw new RangeError(`${who}: id ${id} at position ${i} is outside 0..${vocab - 1}`);
    }
  }
}

function entropyOfCounts(counts: ArrayLike<number>, total: number): number {
  let h = 0;
  for (let i = 0; i < counts.length; i++) {
    const c = counts[i]!;
    if (c > 0) h -= (c / total) * Math.log2(c / total);
  }
  return h;
}

/**
 * Entropy of the empirical token distribution, in bits per token: the cross-entropy a model that
 * predicts every token from the overall frequencies alone achieves on `ids`. 0 for an empty or
 * constant stream; log2(k) for a uniform stream over k symbols.
 */
export function unigramEntropyBits(ids: ArrayLike<number>, vocab: number): number {
  checkIds(ids, vocab, "unigramEntropyBits");
  if (ids.length === 0) return 0;
  const counts = new Float64Array(vocab);
  for (let i = 0; i < ids.length; i++) counts[ids[i]!]!++;
  return Math.max(0, entropyOfCounts(counts, ids.length));
}

/** `unigramEntropyBits` in nats (the unit of a cross-entropy loss computed with `ln`). */
export function unigramEntropyNats(ids: ArrayLike<number>, vocab: number): number {
  return unigramEntropyBits(ids, vocab) * Math.LN2;
}

/**
 * Conditional entropy H(next | previous) of the empirical bigram distribution, in bits per token:
 * what a model that sees only the previous token can achieve (on the data it was counted on; a
 * lower bound for held-out data). 0 for fewer than two tokens.
 */
export function bigramEntropyBits(ids: ArrayLike<number>, vocab: number): number {
  checkIds(ids, vocab, "bigramEntropyBits");
  const n = ids.length - 1;
  if (n <= 0) return 0;
  // counts of (prev, next) pairs (dense for small vocabularies) and of prev
  const prevCounts = new Float64Array(vocab);
  for (let i = 0; i < n; i++) prevCounts[ids[i]!]!++;
  let h = 0; // H(B|A) = -sum p(a,b) log2 p(b|a)
  if (vocab <= 2048) {
    const pairs = new Float64Array(vocab * vocab);
    for (let i = 0; i < n; i++) pairs[ids[i]! * vocab + ids[i + 1]!]!++;
    for (let key = 0; key < pairs.length; key++) {
      const c = pairs[key]!;
      if (c > 0) h -= (c / n) * Math.log2(c / prevCounts[Math.floor(key / vocab)]!);
    }
  } else {
    const pairs = new Map<number, number>();
    for (let i = 0; i < n; i++) {
      const key = ids[i]! * vocab + ids[i + 1]!;
      pairs.set(key, (pairs.get(key) ?? 0) + 1);
    }
    for (const [key, c] of pairs) h -= (c / n) * Math.log2(c / prevCounts[Math.floor(key / vocab)]!);
  }
  return Math.max(0, h);
}

/** `bigramEntropyBits` in nats. */
export function bigramEntropyNats(ids: ArrayLike<number>, vocab: number): number {
  return bigramEntropyBits(ids, vocab) * Math.LN2;
}

// ---- batches ---------------------------------------------------------------------------------------

/** One step's data: row-major [batch, seq]; `targets[b, t] = tokens[start_b + t + 1]`. */
export interface Batch {
  inputs: Int32Array;
  targets: Int32Array;
  batch: number;
  seq: number;
  /** Start offset of each window in the full token array (for debugging and tests). */
  starts: number[];
}

export interface BatchLoaderOptions {
  /** Windows per step. */
  batch: number;
  /** Tokens per window. */
  seq: number;
  /** PRNG seed (uint32). Default 0. */
  seed?: number;
  /** Fraction of the tokens, at the end, held out for validation. Default 0.05. */
  valFraction?: number;
}

/**
 * Everything needed to resume a BatchLoader exactly: plain JSON. `tokens` fingerprints the data it
 * was made on so that resuming on different data is an error, not a silent change of stream.
 */
export interface BatchLoaderState {
  kind: "BatchLoader";
  version: 1;
  seed: number;
  /** Number of `next()` calls made so far. */
  step: number;
  /** The PRNG's internal state (uint32) before the next draw. */
  rng: number;
  batch: number;
  seq: number;
  valFraction: number;
  tokens: { length: number; fingerprint: string };
}

/** splitmix32-style generator: one uint32 of state, so the state is a plain number. */
function nextU32(state: number): [value: number, state: number] {
  const s = (state + 0x9e3779b9) >>> 0;
  let z = s;
  z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
  z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
  z = (z ^ (z >>> 15)) >>> 0;
  return [z, s];
}

/** Uniform integer in [0, n) from 53 random bits (two draws): bias < 2^-20 for n < 2^33. */
function uniformInt(state: number, n: number): [value: number, state: number] {
  const [hi, s1] = nextU32(state);
  const [lo, s2] = nextU32(s1);
  const u = ((hi >>> 5) * 67108864 + (lo >>> 6)) / 9007199254740992; // [0, 1) with 53 bits
  return [Math.floor(u * n), s2];
}

/** FNV-1a over the length and a strided sample of ≤ 65,536 tokens (cheap, order-sensitive). */
export function tokensFingerprint(tokens: ArrayLike<number>): string {
  let h = 0x811c9dc5;
  const mix = (x: number) => {
    for (let k = 0; k < 4; k++) {
      h ^= (x >>> (8 * k)) & 0xff;
      h = Math.imul(h, 0x01000193) >>> 0;
    }
  };
  mix(tokens.length);
  const stride = Math.max(1, Math.floor(tokens.length / 65536));
  for (let i = 0; i < tokens.length; i += stride) mix(tokens[i]! | 0);
  if (tokens.length > 0) mix(tokens[tokens.length - 1]! | 0);
  return h.toString(16).padStart(8, "0");
}

function positiveInt(x: unknown, what: string): number {
  if (typeof x !== "number" || !Number.isInteger(x) || x <= 0) {
    throw new RangeError(`BatchLoader: ${what} must be a positive integer, got ${String(x)}`);
  }
  return x;
}

/**
 * Deterministic training batches: each `next()` draws `batch` window starts uniformly from the
 * train split (the first `1 - valFraction` of the tokens) with a seeded PRNG, and returns the
 * windows `tokens[s .. s+seq)` as inputs and `tokens[s+1 .. s+seq+1)` as targets. The PRNG state
 * and step count are in `state()`; `BatchLoader.fromState(tokens, state)` continues the exact same
 * stream. `valBatches(n)` reads the held-out tail, independent of the training stream.
 */
export class BatchLoader {
  readonly batch: number;
  readonly seq: number;
  readonly seed: number;
  readonly valFraction: number;
  /** Train tokens are `tokens[0, trainEnd)`, validation tokens `tokens[trainEnd, length)`. */
  readonly trainEnd: number;
  private readonly tokens: Int32Array;
  private readonly fingerprint: string;
  private rng: number;
  private _step = 0;

  constructor(tokens: Int32Array, opts: BatchLoaderOptions) {
    this.batch = positiveInt(opts.batch, "batch");
    this.seq = positiveInt(opts.seq, "seq");
    const seed = opts.seed ?? 0;
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
      throw new RangeError(`BatchLoader: seed must be a uint32, got ${seed}`);
    }
    this.seed = seed;
    const vf = opts.valFraction ?? 0.05;
    if (!(vf > 0 && vf < 1)) throw new RangeError(`BatchLoader: valFraction must be in (0, 1), got ${vf}`);
    this.valFraction = vf;
    this.tokens = tokens;
    this.trainEnd = Math.floor(tokens.length * (1 - vf));
    const need = this.seq + 1;
    if (this.trainEnd < need || tokens.length - this.trainEnd < need) {
      throw new DataError(
        `BatchLoader: ${tokens.length} tokens split ${this.trainEnd} train / ${tokens.length - this.trainEnd} ` +
          `validation; each split needs at least seq + 1 = ${need}`,
      );
    }
    this.fingerprint = tokensFingerprint(tokens);
    this.rng = nextU32(seed ^ 0x5bd1e995)[0]; // decorrelate nearby seeds
  }

  /** Number of `next()` calls so far. */
  get step(): number {
    return this._step;
  }
  /** Tokens (positions) per batch: batch * seq. */
  get tokensPerBatch(): number {
    return this.batch * this.seq;
  }
  get trainTokens(): Int32Array {
    return this.tokens.subarray(0, this.trainEnd);
  }
  get valTokens(): Int32Array {
    return this.tokens.subarray(this.trainEnd);
  }

  /** The next training batch; advances the PRNG and the step. */
  next(): Batch {
    const starts: number[] = [];
    const range = this.trainEnd - this.seq; // s + seq + 1 <= trainEnd  ⇔  s < trainEnd - seq
    for (let b = 0; b < this.batch; b++) {
      const [s, st] = uniformInt(this.rng, range);
      this.rng = st;
      starts.push(s);
    }
    this._step++;
    return this.windows(starts);
  }

  /**
   * `n` fixed validation batches: consecutive non-overlapping windows over the held-out tail, in
   * order, wrapping around when the tail holds fewer than `n * batch` windows. The same for every
   * loader with the same tokens, batch, seq and valFraction; independent of the training stream.
   */
  valBatches(n: number): Batch[] {
    if (!Number.isInteger(n) || n < 0) throw new RangeError(`valBatches: n must be a non-negative integer, got ${n}`);
    const count = this.valWindowCount;
    const out: Batch[] = [];
    for (let i = 0; i < n; i++) {
      const starts: number[] = [];
      for (let b = 0; b < this.batch; b++) starts.push(this.trainEnd + ((i * this.batch + b) % count) * this.seq);
      out.push(this.windows(starts));
    }
    return out;
  }

  /** Distinct non-overlapping validation windows in the held-out tail. */
  get valWindowCount(): number {
    return Math.floor((this.tokens.length - this.trainEnd - 1) / this.seq);
  }

  /** A plain JSON-serialisable snapshot; `BatchLoader.fromState(tokens, state)` resumes from it. */
  state(): BatchLoaderState {
    return {
      kind: "BatchLoader",
      version: 1,
      seed: this.seed,
      step: this._step,
      rng: this.rng,
      batch: this.batch,
      seq: this.seq,
      valFraction: this.valFraction,
      tokens: { length: this.tokens.length, fingerprint: this.fingerprint },
    };
  }

  /** A loader that continues exactly where the one that produced `state` was. */
  static fromState(tokens: Int32Array, state: BatchLoaderState): BatchLoader {
    if (!state || state.kind !== "BatchLoader" || state.version !== 1) {
      throw new DataError(`BatchLoader.fromState: not a BatchLoader state (version 1): ${JSON.stringify(state)}`);
    }
    if (!Number.isInteger(state.step) || state.step < 0) throw new DataError(`BatchLoader.fromState: bad step ${state.step}`);
    if (!Number.isInteger(state.rng) || state.rng < 0 || state.rng > 0xffffffff) {
      throw new DataError(`BatchLoader.fromState: bad rng state ${state.rng}`);
    }
    const loader = new BatchLoader(tokens, {
      batch: state.batch,
      seq: state.seq,
      seed: state.seed,
      valFraction: state.valFraction,
    });
    const fp = loader.fingerprint;
    if (state.tokens.length !== tokens.length || state.tokens.fingerprint !== fp) {
      throw new DataError(
        `BatchLoader.fromState: the state was made on different tokens (length ${state.tokens.length}, ` +
          `fingerprint ${state.tokens.fingerprint}) than given (length ${tokens.length}, fingerprint ${fp})`,
      );
    }
    loader.rng = state.rng;
    loader._step = state.step;
    return loader;
  }

  private windows(starts: number[]): Batch {
    const { batch, seq } = this;
    const inputs = new Int32Array(batch * seq);
    const targets = new Int32Array(batch * seq);
    for (let b = 0; b < batch; b++) {
      const s = starts[b]!;
      inputs.set(this.tokens.subarray(s, s + seq), b * seq);
      targets.set(this.tokens.subarray(s + 1, s + seq + 1), b * seq);
    }
    return { inputs, targets, batch, seq, starts };
  }
}

/** Tokenize the training text once: `{ tokenizer, tokens }` (byte-level). */
export function tokenizeText(text: string): { tokenizer: ByteTokenizer; tokens: Int32Array } {
  const tokenizer = new ByteTokenizer();
  return { tokenizer, tokens: tokenizer.encode(text) };
}
