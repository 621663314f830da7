// Fuzzing the loader: more than a thousand mutated checkpoints (bit flips, truncations and extensions
// of every file, header length fields, semantic edits of safetensors headers and of metadata.json
// with its checksum recomputed, missing and swapped files, `latest` pointing anywhere) are each
// rejected with a CheckpointError that names a file of the checkpoint: no other exception, no hang
// (each case is bounded in time), no allocation beyond the files' own sizes.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MeshSpec, TensorType } from "../../compiler/ir/types.ts";
import { CheckpointError, load, newReadStats, save, type ReadStats } from "../../stdlib/checkpoint/index.ts";
import { stateOf } from "./fixtures/checkpoint-state.ts";
import { mulberry32 } from "../helpers/prng.ts";

const root = mkdtempSync(join(tmpdir(), "ckpt-fuzz-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const MESH: MeshSpec = { axes: ["dp", "ep"], sizes: [2, 2] };
const t = (dims: [string, number][], dtype: TensorType["dtype"], placements: TensorType["placements"]): TensorType => ({ dims: dims.map(([name, size]) => ({ name, size })), dtype, placements });
// no empty pieces and no dim smaller than an axis that splits it, so every edit below changes meaning
const TYPES: Record<string, TensorType> = {
  w: t([["e", 4], ["m", 6]], "f32", ["R", "S(e)"]),
  m: t([["e", 4], ["m", 6]], "bf16", ["S(m)", "S(e)"]),
  q: t([["r", 8], ["c", 4]], "fp8e4m3", ["S(r)", "S(r)"]),
  g: t([["r", 6], ["c", 4]], "fp8e5m2", ["R", "R"]),
  ids: t([["n", 8]], "i32", ["S(n)", "R"]),
  big: t([["a", 8], ["b", 8]], "f32", ["S(a)", "S(b)"]),
};
const STEP = "step-5";
const FILES = ["metadata.json", "rank-0.safetensors", "rank-1.safetensors", "rank-2.safetensors", "rank-3.safetensors"];

type Files = Map<string, Buffer>; // name (relative to the checkpoint root) → bytes; undefined entries are deleted
let pristine: Files;
const work = join(root, "work");
const stepDir = join(work, STEP);
const rnd = mulberry32(12345);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
const int = (n: number) => Math.floor(rnd() * n);
let lastEdit = "";

beforeAll(async () => {
  const { state } = stateOf(MESH, 5, TYPES);
  await save(work, { ...state, extras: { data: { kind: "BatchLoader", step: 5, rng: 123 } } }, { chunkBytes: 16 });
  pristine = new Map([...FILES.map((f): [string, Buffer] => [`${STEP}/${f}`, readFileSync(join(stepDir, f))]), ["latest", readFileSync(join(work, "latest"))]]);
  expect(readdirSync(stepDir).sort()).toEqual(FILES);
});

let dirty = new Set<string>();
function apply(changes: Map<string, Buffer | undefined>): void {
  for (const f of dirty) writeFileSync(join(work, f), pristine.get(f)!);
  dirty = new Set();
  for (const [f, b] of changes) {
    dirty.add(f);
    if (b === undefined) rmSync(join(work, f), { force: true });
    else writeFileSync(join(work, f), b);
  }
}

interface Outcome {
  error: unknown;
  ms: number;
  stats: ReadStats;
}
async function attempt(fromRoot: boolean): Promise<Outcome> {
  const stats = newReadStats(), t0 = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error("HANG: no answer within 5 s")), 5000)));
  try {
    await Promise.race([load(fromRoot ? work : stepDir, { mesh: MESH, tensors: TYPES }, { stats }), timeout]);
    return { error: undefined, ms: performance.now() - t0, stats };
  } catch (e) {
    return { error: e, ms: performance.now() - t0, stats };
  } finally {
    clearTimeout(timer);
  }
}

// ----- mutations --------------------------------------------------------------------------------

const rankFiles = FILES.slice(1).map((f) => `${STEP}/${f}`);
const headerLen = (b: Buffer) => Number(b.readBigUInt64LE(0));

function flipBit(name: string, region: "any" | "length" | "header" | "data"): Map<string, Buffer> {
  const b = Buffer.from(pristine.get(name)!);
  let at: number;
  if (region === "length") at = int(8);
  else if (region === "header") at = 8 + int(headerLen(b));
  else if (region === "data") at = 8 + headerLen(b) + int(b.length - 8 - headerLen(b));
  else at = int(b.length);
  b[at]! ^= 1 << int(8);
  return new Map([[name, b]]);
}

/** A rank file with its header JSON replaced (length field and padding made consistent). */
function withHeader(name: string, edit: (h: Record<string, any>) => unknown): Map<string, Buffer> {
  const b = pristine.get(name)!, n = headerLen(b);
  const h = JSON.parse(b.subarray(8, 8 + n).toString("utf8"));
  const out = edit(h);
  let json = typeof out === "string" ? out : JSON.stringify(out === undefined ? h : out);
  // keep the file's size where the edit fits, so the checks behind the size check are reached
  const len0 = Buffer.byteLength(json);
  json += " ".repeat(len0 <= n ? n - len0 : (8 - (len0 % 8)) % 8);
  const body = Buffer.from(json);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(body.length));
  return new Map([[name, Buffer.concat([len, body, b.subarray(8 + n)])]]);
}

/** metadata.json with its body edited and its checksum recomputed (an adversary who knows the format). */
function withMeta(edit: (m: Record<string, any>) => unknown): Map<string, Buffer> {
  const name = `${STEP}/metadata.json`, b = pristine.get(name)!;
  const text = b.toString("utf8");
  const bodyText = text.slice(text.indexOf('"metadata": ') + 12, -2);
  const m = JSON.parse(bodyText);
  const out = edit(m);
  const body = Buffer.from(typeof out === "string" ? out : JSON.stringify(out === undefined ? m : out, null, 1));
  const hex = createHash("sha256").update(body).digest("hex");
  return new Map([[name, Buffer.concat([Buffer.from(`{"sha256": "${hex}", "metadata": `), body, Buffer.from("}\n")])]]);
}

const tensorNames = Object.keys(TYPES);
const other = <T>(xs: readonly T[], not: T): T => pick(xs.filter((x) => JSON.stringify(x) !== JSON.stringify(not)));
const ST = ["F32", "BF16", "F8_E4M3", "F8_E5M2", "I32"];

const headerEdits: ((h: Record<string, any>) => unknown)[] = [
  (h) => { const k = pick(Object.keys(h).filter((x) => x !== "__metadata__")); h[k].dtype = other([...ST, "F16", "f32", "", 7, null], h[k].dtype); },
  (h) => { const k = pick(Object.keys(h).filter((x) => x !== "__metadata__")); const s = h[k].shape; s[int(s.length)] += pick([1, -1, 2]); },
  (h) => { const k = pick(Object.keys(h).filter((x) => x !== "__metadata__")); const r = [...h[k].shape].reverse(); h[k].shape = JSON.stringify(r) === JSON.stringify(h[k].shape) ? [...r, 1] : r; },
  (h) => { const k = pick(Object.keys(h).filter((x) => x !== "__metadata__")); h[k].shape = pick([[2 ** 40, 2 ** 40], [-1], [1.5], "4", [], [2 ** 53]]); },
  (h) => { const k = pick(Object.keys(h).filter((x) => x !== "__metadata__")); const d = pick([1, -1, 8, -8]); h[k].data_offsets = h[k].data_offsets.map((x: number) => x + d); },
  (h) => { const k = pick(Object.keys(h).filter((x) => x !== "__metadata__")); h[k].data_offsets = pick([[0], [0, 1, 2], "0,4", [null, 4], [4, 0], [-4, 0], [0, 2 ** 60]]); },
  (h) => { const ks = Object.keys(h).filter((x) => x !== "__metadata__"); const [a, b] = [ks[0]!, ks[ks.length - 1]!]; [h[a].data_offsets, h[b].data_offsets] = [h[b].data_offsets, h[a].data_offsets]; h[a].dtype === h[b].dtype && JSON.stringify(h[a].shape) === JSON.stringify(h[b].shape) && (h[a].shape = [...h[a].shape, 1]); },
  (h) => { delete h[pick(Object.keys(h).filter((x) => x !== "__metadata__"))]; },
  (h) => { const k = pick(Object.keys(h).filter((x) => x !== "__metadata__")); h[`${k}_copy`] = h[k]; },
  (h) => { const k = pick(Object.keys(h).filter((x) => x !== "__metadata__")); h[k.toUpperCase() + "x"] = h[k]; delete h[k]; },
  (h) => { const k = pick(Object.keys(h).filter((x) => x !== "__metadata__")); h[k].extra = 1; },
  (h) => { const k = pick(Object.keys(h).filter((x) => x !== "__metadata__")); h[k] = pick([null, [], "x", 3]); },
  (h) => { h.__metadata__.rank = String((Number(h.__metadata__.rank) + 1) % 4); },
  (h) => { h.__metadata__.step = pick(["4", "6", "05", ""]); },
  (h) => { h.__metadata__.format = "pytorch"; },
  (h) => { delete h.__metadata__; },
  (h) => { h.__metadata__.extra = "1"; },
  (h) => { h.__metadata__.version = pick([1, "2", null]); },
  () => pick(["[]", "null", '"x"', "1", "{", "{}x", "{\"a\":1,}", "\u00ff{}"]),
  () => "[".repeat(200_000) + "]".repeat(200_000),
  () => '{"a":' + "{\"b\":".repeat(50_000) + "1" + "}".repeat(50_001),
];

const metaEdits: ((m: Record<string, any>) => unknown)[] = [
  (m) => { const x = m.tensors[pick(tensorNames)]; x.dtype = other(["f32", "bf16", "fp8e4m3", "fp8e5m2", "i32", "f16", 3], x.dtype); },
  (m) => { const x = m.tensors[pick(tensorNames)]; x.shape[int(x.shape.length)] += pick([1, -1, 3]); },
  (m) => { const x = m.tensors[pick(tensorNames)]; x.shape = pick([[-1], [1.5], "8", null, [2 ** 60, 2 ** 60]]); },
  (m) => { const x = m.tensors[pick(tensorNames)]; x.dims = pick([[], ["a b"], ["x", "x", "y"].slice(0, x.dims.length + 1), null]); },
  (m) => { const x = m.tensors[pick(tensorNames)]; const a = int(2); x.placements[a] = other(["R", ...x.dims.map((d: string) => `S(${d})`), "P(sum)", "S(zz)", "S(", "", 0], x.placements[a]); },
  (m) => { const x = m.tensors[pick(tensorNames)]; x.placements = pick([["R"], ["R", "R", "R"], "R,R", null]); },
  (m) => { const x = m.tensors[pick(tensorNames)]; x.pieces.push(x.pieces[int(x.pieces.length)]); },
  (m) => { const x = m.tensors[pick(tensorNames)]; x.pieces.splice(int(x.pieces.length), 1); },
  (m) => { const x = m.tensors[pick(tensorNames)]; const p = x.pieces[int(x.pieces.length)]; p.rank = other([0, 1, 2, 3, 4, -1, 1.5, "0"], p.rank); },
  (m) => { const x = m.tensors[pick(tensorNames)]; const p = x.pieces[int(x.pieces.length)]; p.file = other(["../rank-0.safetensors", "/etc/passwd", "rank-0.safetensors", "rank-1.safetensors", "rank-9.safetensors", "metadata.json", ""], p.file); },
  (m) => { const x = m.tensors[pick(tensorNames)]; const p = x.pieces[int(x.pieces.length)]; p.key = p.key + "_"; },
  (m) => { const x = m.tensors[pick(tensorNames)]; const p = x.pieces[int(x.pieces.length)]; p.offset[int(p.offset.length)] += pick([1, -1]); },
  (m) => { const x = m.tensors[pick(tensorNames)]; const p = x.pieces[int(x.pieces.length)]; p.shape[int(p.shape.length)] += pick([1, -1]); },
  (m) => { const x = m.tensors[pick(tensorNames)]; const p = x.pieces[int(x.pieces.length)]; const d = pick([1, -1, 8, -8, 10_000]); p.byte_range = p.byte_range.map((v: number) => v + d); },
  (m) => { const x = m.tensors[pick(tensorNames)]; const p = x.pieces[int(x.pieces.length)]; p.byte_range = pick([[p.byte_range[0], p.byte_range[1] + 1], [0, p.byte_range[1] - p.byte_range[0]], null, [1, 2, 3], [-8, 0]]); },
  (m) => { const x = m.tensors[pick(tensorNames)]; const p = x.pieces[int(x.pieces.length)]; const c = int(p.sha256.length); p.sha256[c] = p.sha256[c].replace(/^./, (ch: string) => (ch === "0" ? "1" : "0")); },
  (m) => { const x = m.tensors[pick(tensorNames)]; const p = x.pieces[int(x.pieces.length)]; p.sha256 = pick([p.sha256.slice(1), [...p.sha256, p.sha256[0]], p.sha256.map((h: string) => h.toUpperCase()), "abc"]); },
  (m) => { const ps = Object.values(m.tensors).flatMap((x: any) => x.pieces.map((p: any) => p)); const [a, b] = [pick(ps), pick(ps)]; if (a === b || (a.byte_range[1] - a.byte_range[0] !== b.byte_range[1] - b.byte_range[0])) a.sha256[0] = b.sha256[0] === a.sha256[0] ? "0".repeat(64) : b.sha256[0]; else [a.sha256, b.sha256] = [b.sha256, a.sha256]; },
  (m) => { m.step = other([4, 6, -1, 1.5, "5", null], m.step); },
  (m) => { m.version = other([0, 2, "1", null], m.version); },
  (m) => { m.format = "safetensors"; },
  (m) => { m.chunk_bytes = other([8, 24, 32, 4, 0, 17, 2 ** 31, "16"], m.chunk_bytes); },
  (m) => { m.mesh.sizes = other([[4, 1], [1, 4], [2, 2, 1], [2], [0, 4], [2, 2.5]], m.mesh.sizes); },
  (m) => { m.mesh.axes = pick([["dp"], ["dp", "dp"], ["dp", "e p"], null]); },
  (m) => { m.files.splice(int(m.files.length), 1); },
  (m) => { m.files.reverse(); },
  (m) => { const f = m.files[int(m.files.length)]; f.bytes += pick([1, -1, 1000]); },
  (m) => { const f = m.files[int(m.files.length)]; f.header_bytes += pick([8, -8, 1]); },
  (m) => { const f = m.files[int(m.files.length)]; f.file = "../" + f.file; },
  (m) => { delete m.tensors[pick(tensorNames)]; },
  (m) => { m.tensors = pick([null, [], "x"]); },
  (m) => { m.extras = pick([null, [], 3]); },
  (m) => { delete m[pick(["format", "version", "step", "mesh", "chunk_bytes", "files", "tensors", "extras"])]; },
  () => pick(["[]", "null", "{", '{"format": "shardts-checkpoint"', "\"x\""]),
];

describe("loader fuzz", () => {
  it("rejects every one of >1,000 mutated checkpoints with a CheckpointError naming a file", async () => {
    const cases: { kind: string; changes: () => Map<string, Buffer | undefined>; fromRoot?: boolean }[] = [];
    const add = (kind: string, n: number, changes: () => Map<string, Buffer | undefined>, fromRoot = false) => {
      for (let i = 0; i < n; i++) cases.push({ kind, changes, fromRoot });
    };
    add("bit flip: rank file length field", 40, () => flipBit(pick(rankFiles), "length"));
    add("bit flip: rank file header", 160, () => flipBit(pick(rankFiles), "header"));
    add("bit flip: rank file data", 120, () => flipBit(pick(rankFiles), "data"));
    add("bit flip: metadata.json", 180, () => flipBit(`${STEP}/metadata.json`, "any"));
    add("truncation", 120, () => {
      const f = pick([...rankFiles, `${STEP}/metadata.json`]), b = pristine.get(f)!;
      return new Map([[f, b.subarray(0, pick([0, 1, 7, 8, 9, int(b.length)]))]]);
    });
    add("extension", 20, () => {
      const f = pick([...rankFiles, `${STEP}/metadata.json`]);
      return new Map([[f, Buffer.concat([pristine.get(f)!, Buffer.from(Array.from({ length: 1 + int(64) }, () => int(256)))])]]);
    });
    add("length field", 60, () => {
      const f = pick(rankFiles), b = Buffer.from(pristine.get(f)!), n = headerLen(b);
      const v = pick([0n, 1n, 2n, BigInt(n - 1), BigInt(n + 1), BigInt(n - 8), BigInt(n + 8), BigInt(b.length - 8), BigInt(b.length), 2n ** 32n, 2n ** 40n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n]);
      b.writeBigUInt64LE(v);
      return new Map([[f, b]]);
    });
    add("header JSON edit", 180, () => { const e = int(headerEdits.length); lastEdit = `header edit #${e}`; return withHeader(pick(rankFiles), headerEdits[e]!); });
    add("metadata JSON edit (checksum recomputed)", 220, () => { const e = int(metaEdits.length); lastEdit = `metadata edit #${e}`; return withMeta(metaEdits[e]!); });
    add("missing or swapped file", 12, () => {
      const f = pick(FILES), m = new Map<string, Buffer | undefined>([[`${STEP}/${f}`, undefined]]);
      if (rnd() < 0.5 && f !== "metadata.json") m.set(`${STEP}/${f}`, pristine.get(pick(rankFiles.filter((x) => x !== `${STEP}/${f}`)))!);
      return m;
    });
    add("latest", 60, () => {
      const choices = ["", "\n", "step-9\n", "step-05\n", "../step-5\n", "/etc/passwd", `${STEP}/../../x`, "step-5 \n", "step-5\n\n", "\0", "x".repeat(300), `${STEP}/metadata.json`];
      let v: Buffer;
      if (rnd() < 0.5) v = Buffer.from(pick(choices));
      else (v = Buffer.from(pristine.get("latest")!)), (v[int(v.length)]! ^= 1 << int(8));
      return new Map([["latest", v]]);
    }, true);

    // the pristine checkpoint loads (from its directory and through latest)
    apply(new Map());
    for (const fromRoot of [false, true]) expect((await attempt(fromRoot)).error).toBeUndefined();

    const byKind = new Map<string, number>(), example = new Map<string, string>();
    let slowest = 0, largest = 0;
    const maxFile = Math.max(...[...pristine.values()].map((b) => b.length));
    for (const [i, c] of cases.entries()) {
      const changes = c.changes();
      apply(changes);
      const r = await attempt(!!c.fromRoot);
      const what = `case ${i} (${c.kind}${c.kind.includes("edit") ? `, ${lastEdit}` : ""}): ${[...changes.keys()].join(", ")}`;
      if (!(r.error instanceof CheckpointError)) throw new Error(`${what} was ${r.error ? `rejected with ${(r.error as Error).name}: ${(r.error as Error).message}` : "accepted"}`);
      // the message names a file of the checkpoint (or the checkpoint directory's latest)
      expect(r.error.file.startsWith(work), what).toBe(true);
      expect(r.error.message, what).toContain(r.error.file);
      // never a buffer larger than the largest file actually there
      const bound = Math.max(...[...pristine].map(([f, buf]) => (changes.has(f) ? changes.get(f)?.length ?? 0 : buf.length)));
      expect(r.stats.largestRead, `${what}: allocated ${r.stats.largestRead} bytes`).toBeLessThanOrEqual(bound);
      if (c.kind === "length field" && headerLen(changes.values().next().value!) > 2 ** 32) expect(r.stats.largestRead, what).toBeLessThanOrEqual(8 * 1024);
      slowest = Math.max(slowest, r.ms);
      largest = Math.max(largest, r.stats.largestRead);
      byKind.set(c.kind, (byKind.get(c.kind) ?? 0) + 1);
      if (!example.has(c.kind)) example.set(c.kind, r.error.message.replace(work, "<dir>"));
    }
    apply(new Map());
    expect(cases.length).toBeGreaterThanOrEqual(1000);
    expect(slowest).toBeLessThan(5000);
    console.log(
      `loader fuzz: ${cases.length} mutated checkpoints, all rejected with CheckpointError naming a file; slowest case ${slowest.toFixed(0)} ms; largest read buffer ${largest} B (the pristine files are at most ${maxFile} B)\n  ` +
        [...byKind].map(([k, n]) => `${k}: ${n}, e.g. ${example.get(k)}`).join("\n  "),
    );
  }, 120_000);

  it("refuses a header that claims 2^40 bytes before allocating anything for it", async () => {
    const f = `${STEP}/rank-1.safetensors`, b = Buffer.from(pristine.get(f)!);
    b.writeBigUInt64LE(2n ** 40n);
    apply(new Map([[f, b]]));
    const r = await attempt(false);
    apply(new Map());
    expect(r.error).toBeInstanceOf(CheckpointError);
    expect((r.error as Error).message).toMatch(/rank-1\.safetensors: header length 1099511627776 exceeds the 104857600-byte limit/);
    expect(r.stats.largestRead).toBeLessThanOrEqual(8 * 1024); // metadata.json and 8 bytes of the length field
  });

  it("names the tensor whose chunk fails its checksum", async () => {
    const f = `${STEP}/rank-2.safetensors`, b = Buffer.from(pristine.get(f)!);
    b[b.length - 1]! ^= 0x10; // the last tensor's last byte
    apply(new Map([[f, b]]));
    const r = await attempt(false);
    apply(new Map());
    expect((r.error as Error).message).toMatch(/rank-2\.safetensors, tensor '\w+': checksum mismatch in bytes \[\d+, \d+\) of rank 2's piece/);
  });
});
