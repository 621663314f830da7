// metadata.json: the mesh, every tensor's global shape, dtype and placements, and for each saved
// piece its file, key, byte range, global region and chunk checksums. The file is
//   {"sha256": "<hex of the body's bytes>", "metadata": <body>}\n
// so a flipped byte anywhere is caught before a field is trusted; then every field is checked,
// and each tensor's pieces must be exactly the pieces its placements put on the saved mesh.
import { createHash } from "node:crypto";
import type { DType, MeshSpec, Placement, TensorType } from "../../compiler/ir/types.ts";
import { DTYPES, numel } from "../../compiler/ir/types.ts";
import { worldSize } from "../../compiler/ir/placement.ts";
import { CheckpointError } from "./errors.ts";
import { ITEM_BYTES } from "./dtypes.ts";
import { layoutProblem, savedRegions, writerCount } from "./geometry.ts";
import { MAX_HEADER_BYTES } from "./safetensors.ts";

export const FORMAT = "shardts-checkpoint";
export const VERSION = 1;
export const METADATA_FILE = "metadata.json";
export const MAX_METADATA_BYTES = 256 * 1024 * 1024;
export const rankFile = (rank: number) => `rank-${rank}.safetensors`;

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export interface PieceMeta {
  file: string;
  key: string;
  rank: number;
  /** Global offsets of the piece's first element, per dim. */
  offset: number[];
  shape: number[];
  /** Absolute [begin, end) byte offsets in the file. */
  byte_range: [number, number];
  /** SHA-256 of each `chunk_bytes` slice of the piece's bytes (the last one shorter). */
  sha256: string[];
}

export interface TensorMeta {
  dtype: DType;
  dims: string[];
  shape: number[];
  placements: Placement[];
  pieces: PieceMeta[];
}

export interface FileMeta {
  file: string;
  rank: number;
  bytes: number;
  /** JSON header length N (data starts at 8 + N). */
  header_bytes: number;
}

export interface Metadata {
  format: typeof FORMAT;
  version: typeof VERSION;
  step: number;
  mesh: MeshSpec;
  chunk_bytes: number;
  files: FileMeta[];
  tensors: Record<string, TensorMeta>;
  extras: { [k: string]: Json };
}

export const typeOfMeta = (t: TensorMeta): TensorType => ({ dims: t.dims.map((name, i) => ({ name, size: t.shape[i]! })), dtype: t.dtype, placements: t.placements });

const PREFIX = '{"sha256": "', MID = '", "metadata": ', SUFFIX = "}\n";

const flat = (v: unknown): boolean => typeof v !== "object" || v === null || (Array.isArray(v) && v.every((x) => typeof x !== "object" || x === null));

/** JSON with one line per piece and per file entry, lists of numbers inline. */
function pretty(v: unknown, ind: string): string {
  if (typeof v !== "object" || v === null) return JSON.stringify(v);
  const next = ind + "  ";
  if (Array.isArray(v)) {
    if (v.every((x) => typeof x !== "object" || x === null)) return `[${v.map((x) => JSON.stringify(x)).join(", ")}]`;
    return `[\n${v.map((x) => next + pretty(x, next)).join(",\n")}\n${ind}]`;
  }
  const entries = Object.entries(v);
  if (entries.length > 0 && ind.length >= 4 && entries.every(([, x]) => flat(x))) return `{${entries.map(([k, x]) => `${JSON.stringify(k)}: ${pretty(x, next)}`).join(", ")}}`;
  if (entries.length === 0) return "{}";
  return `{\n${entries.map(([k, x]) => `${next}${JSON.stringify(k)}: ${pretty(x, next)}`).join(",\n")}\n${ind}}`;
}

export function encodeMetadata(meta: Metadata): Buffer {
  const text = pretty(meta, "");
  const body = Buffer.from(text, "utf8");
  const hex = createHash("sha256").update(body).digest("hex");
  return Buffer.concat([Buffer.from(PREFIX + hex + MID, "utf8"), body, Buffer.from(SUFFIX, "utf8")]);
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
const HEX64 = /^[0-9a-f]{64}$/;
const FILE_RE = /^rank-(0|[1-9][0-9]{0,6})\.safetensors$/;
const isCount = (x: unknown): x is number => typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
const isObj = (x: unknown): x is Record<string, unknown> => typeof x === "object" && x !== null && !Array.isArray(x);

function jsonDepth(x: unknown, limit: number): number {
  let depth = 0;
  const stack: [unknown, number][] = [[x, 1]];
  while (stack.length) {
    const [v, d] = stack.pop()!;
    if (d > depth) depth = d;
    if (depth > limit) return depth;
    if (typeof v === "object" && v !== null) for (const c of Object.values(v)) stack.push([c, d + 1]);
  }
  return depth;
}

/** Parses and validates metadata.json's bytes; `file` names it in errors. */
export function parseMetadata(file: string, bytes: Uint8Array): Metadata {
  const fail = (why: string, tensor?: string): never => {
    throw new CheckpointError(why, file, tensor);
  };
  const pre = Buffer.from(PREFIX, "ascii"), mid = Buffer.from(MID, "ascii"), suf = Buffer.from(SUFFIX, "ascii");
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const bodyAt = pre.length + 64 + mid.length;
  if (buf.length < bodyAt + suf.length) fail(`${buf.length} bytes is too short (truncated?)`);
  if (!buf.subarray(0, pre.length).equals(pre) || !buf.subarray(pre.length + 64, bodyAt).equals(mid)) fail('does not start with {"sha256": "…", "metadata": ');
  if (!buf.subarray(buf.length - suf.length).equals(suf)) fail("does not end with '}\\n' (truncated?)");
  const hex = buf.subarray(pre.length, pre.length + 64).toString("latin1");
  if (!HEX64.test(hex)) fail("the sha256 field is not 64 lowercase hex digits");
  const body = buf.subarray(bodyAt, buf.length - suf.length);
  if (createHash("sha256").update(body).digest("hex") !== hex) fail("checksum mismatch: the metadata body does not match its sha256 (corrupted)");
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch (e) {
    fail(`body is not valid JSON (${(e as Error).message})`);
  }
  if (!isObj(raw)) return fail("body is not a JSON object");
  if (raw.format !== FORMAT) fail(`format is ${JSON.stringify(raw.format)}, expected "${FORMAT}"`);
  if (raw.version !== VERSION) fail(`version ${JSON.stringify(raw.version)} is not supported (this reader knows ${VERSION})`);
  if (!isCount(raw.step)) fail(`step ${JSON.stringify(raw.step)} is not a non-negative integer`);
  const m = raw.mesh;
  if (!isObj(m) || !Array.isArray(m.axes) || !Array.isArray(m.sizes) || m.axes.length !== m.sizes.length || m.axes.length < 1 || m.axes.length > 16) return fail(`mesh ${JSON.stringify(m)} is not {axes, sizes} of 1 to 16 axes`);
  if (!m.axes.every((a) => typeof a === "string" && IDENT.test(a)) || new Set(m.axes).size !== m.axes.length) fail(`mesh axes ${JSON.stringify(m.axes)} are not distinct names`);
  if (!m.sizes.every((s) => isCount(s) && s >= 1 && s <= 1 << 20)) fail(`mesh sizes ${JSON.stringify(m.sizes)} are not positive integers`);
  const mesh: MeshSpec = { axes: m.axes as string[], sizes: m.sizes as number[] };
  const world = (mesh.sizes as number[]).reduce((a, b) => a * b, 1);
  if (world > 1 << 20) fail(`mesh of ${world} ranks is larger than supported`);
  const chunk = raw.chunk_bytes;
  if (!isCount(chunk) || chunk < 8 || chunk % 8 !== 0 || chunk > 1 << 30) fail(`chunk_bytes ${JSON.stringify(chunk)} is not a multiple of 8 in [8, 2^30]`);
  if (!isObj(raw.extras) || jsonDepth(raw.extras, 64) > 64) fail("extras is not a JSON object of depth at most 64");

  // files: one per rank, named by rank
  if (!Array.isArray(raw.files) || raw.files.length !== world) return fail(`files must list one file per rank (${world})`);
  const files = new Map<string, FileMeta>();
  raw.files.forEach((f, i) => {
    if (!isObj(f) || Object.keys(f).sort().join(",") !== "bytes,file,header_bytes,rank") return fail(`files[${i}] is not {file, rank, bytes, header_bytes}`);
    if (f.rank !== i || f.file !== rankFile(i) || typeof f.file !== "string" || !FILE_RE.test(f.file)) fail(`files[${i}] is ${JSON.stringify(f.file)} for rank ${JSON.stringify(f.rank)}; expected ${rankFile(i)} for rank ${i}`);
    if (!isCount(f.header_bytes) || f.header_bytes < 2 || f.header_bytes > MAX_HEADER_BYTES || !isCount(f.bytes) || f.bytes < 8 + f.header_bytes) fail(`files[${i}] has sizes bytes=${JSON.stringify(f.bytes)} header_bytes=${JSON.stringify(f.header_bytes)}`);
    files.set(f.file as string, { file: f.file as string, rank: i, bytes: f.bytes as number, header_bytes: f.header_bytes as number });
  });

  if (!isObj(raw.tensors)) return fail("tensors is not an object");
  const tensors: Record<string, TensorMeta> = Object.create(null);
  const ranges = new Map<string, [number, number, string][]>();
  let budget = 1_000_000 + 64 * bytes.length;
  for (const [name, t] of Object.entries(raw.tensors)) {
    const bad = (why: string): never => fail(why, name);
    if (name.length === 0 || name.length > 1024 || name === "__metadata__") bad("tensor name is empty, too long or reserved");
    if (!isObj(t) || Object.keys(t).sort().join(",") !== "dims,dtype,pieces,placements,shape") return bad("entry is not {dtype, dims, shape, placements, pieces}");
    if (typeof t.dtype !== "string" || !DTYPES.includes(t.dtype as DType)) bad(`dtype ${JSON.stringify(t.dtype)} is not one of ${DTYPES.join(", ")}`);
    if (!Array.isArray(t.shape) || t.shape.length > 64 || !t.shape.every(isCount)) bad(`shape ${JSON.stringify(t.shape)} is not a list of sizes`);
    if (!Array.isArray(t.dims) || t.dims.length !== (t.shape as unknown[]).length || !t.dims.every((d) => typeof d === "string" && IDENT.test(d))) bad(`dims ${JSON.stringify(t.dims)} do not name each dim of shape ${JSON.stringify(t.shape)}`);
    const shape = t.shape as number[];
    let total = 1;
    for (const s of shape) if ((total *= s) > Number.MAX_SAFE_INTEGER) bad(`shape ${JSON.stringify(shape)} has too many elements`);
    if (!Array.isArray(t.placements) || t.placements.some((p) => typeof p !== "string")) bad(`placements ${JSON.stringify(t.placements)} is not a list of strings`);
    const tm: TensorMeta = { dtype: t.dtype as DType, dims: t.dims as string[], shape, placements: t.placements as Placement[], pieces: [] };
    const type = typeOfMeta(tm);
    const problem = layoutProblem(type, mesh);
    if (problem) bad(`placements ${JSON.stringify(t.placements)} on mesh ${JSON.stringify(mesh)}: the tensor ${problem}`);
    // validation work stays proportional to the file: a tensor may not make us visit more writer
    // ranks than the whole file could describe
    if ((budget -= writerCount(type, mesh)) < 0) bad(`placements ${JSON.stringify(t.placements)} on mesh ${JSON.stringify(mesh.sizes)} make more pieces than the metadata can describe`);
    const expected = new Map(savedRegions(type, mesh).map((e) => [e.rank, e.region]));
    if (!Array.isArray(t.pieces) || t.pieces.length !== expected.size) return bad(`lists ${Array.isArray(t.pieces) ? t.pieces.length : "no"} pieces; placements ${JSON.stringify(t.placements)} on this mesh save ${expected.size}`);
    const item = ITEM_BYTES[tm.dtype];
    let volume = 0;
    const seen = new Set<number>();
    for (const [i, p] of (t.pieces as unknown[]).entries()) {
      const where = `pieces[${i}]`;
      if (!isObj(p) || Object.keys(p).sort().join(",") !== "byte_range,file,key,offset,rank,sha256,shape") return bad(`${where} is not {file, key, rank, offset, shape, byte_range, sha256}`);
      const region = isCount(p.rank) ? expected.get(p.rank) : undefined;
      if (!region || seen.has(p.rank as number)) return bad(`${where}: rank ${JSON.stringify(p.rank)} is not a rank that saves a piece of this tensor, or is listed twice`);
      seen.add(p.rank as number);
      if (p.file !== rankFile(p.rank as number)) bad(`${where}: file ${JSON.stringify(p.file)} is not rank ${p.rank}'s file`);
      if (p.key !== name) bad(`${where}: key ${JSON.stringify(p.key)} is not the tensor's name`);
      const same = (a: unknown, b: number[]) => Array.isArray(a) && a.length === b.length && a.every((x, d) => x === b[d]);
      if (!same(p.offset, region.offset) || !same(p.shape, region.shape)) bad(`${where}: region offset ${JSON.stringify(p.offset)} shape ${JSON.stringify(p.shape)} is not rank ${p.rank}'s [${region.offset}] + [${region.shape}] under the placements`);
      const f = files.get(p.file as string)!;
      const bytes = numel(region.shape) * item;
      const okRange = Array.isArray(p.byte_range) && p.byte_range.length === 2 && p.byte_range.every(isCount);
      const br = (okRange ? p.byte_range : [0, 0]) as [number, number];
      if (!okRange || br[1] - br[0] !== bytes || br[0] < 8 + f.header_bytes || br[1] > f.bytes) bad(`${where}: byte_range ${JSON.stringify(p.byte_range)} is not ${bytes} bytes inside the data region of ${f.file} [${8 + f.header_bytes}, ${f.bytes})`);
      const nChunks = Math.ceil(bytes / (chunk as number));
      if (!Array.isArray(p.sha256) || p.sha256.length !== nChunks || !p.sha256.every((h) => typeof h === "string" && HEX64.test(h))) bad(`${where}: sha256 must list ${nChunks} hex digests`);
      volume += numel(region.shape);
      if (!ranges.has(f.file)) ranges.set(f.file, []);
      ranges.get(f.file)!.push([br[0], br[1], name]);
      tm.pieces.push({ file: f.file, key: name, rank: p.rank as number, offset: region.offset, shape: region.shape, byte_range: [br[0], br[1]], sha256: p.sha256 as string[] });
    }
    if (volume !== total) bad(`pieces hold ${volume} elements; the tensor has ${total}`);
    tensors[name] = tm;
  }
  for (const [f, rs] of ranges) {
    rs.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < rs.length; i++) if (rs[i]![0] < rs[i - 1]![1]) fail(`byte ranges of '${rs[i - 1]![2]}' and '${rs[i]![2]}' overlap in ${f}`, rs[i]![2]);
  }
  return { format: FORMAT, version: VERSION, step: raw.step as number, mesh, chunk_bytes: chunk as number, files: [...files.values()], tensors, extras: raw.extras as { [k: string]: Json } };
}

export const worldOf = (meta: Metadata) => worldSize(meta.mesh);
