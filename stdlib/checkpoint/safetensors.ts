// The safetensors container (https://github.com/huggingface/safetensors, "Format"): an 8-byte
// little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]},
// "__metadata__": {string: string}} (padded with spaces to a multiple of 8), then the tensors' raw
// little-endian bytes, offsets relative to the end of the header, contiguous and covering the rest
// of the file. The reader checks every one of those rules before it trusts a number.
import type { DType } from "../../compiler/ir/types.ts";
import { CheckpointError } from "./errors.ts";
import { FROM_ST, ITEM_BYTES, ST_DTYPE } from "./dtypes.ts";

/** Bounds on what a header may claim before anything is allocated for it. */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;
const MAX_ENTRIES = 1 << 20;
const MAX_RANK = 64;

export interface HeaderEntry {
  key: string;
  dtype: DType;
  shape: number[];
  /** Relative to the start of the data region. */
  begin: number;
  end: number;
}

export interface Header {
  /** JSON byte length N; the data region starts at 8 + N. */
  jsonBytes: number;
  entries: Map<string, HeaderEntry>;
  metadata: Map<string, string>;
}

/** The header bytes (length field, JSON, padding) for tensors laid out back to back in the given order. */
export function buildHeader(tensors: { key: string; dtype: DType; shape: number[]; bytes: number }[], metadata: Record<string, string>): { bytes: Uint8Array; offsets: [number, number][] } {
  const obj: Record<string, unknown> = { __metadata__: metadata };
  const offsets: [number, number][] = [];
  let at = 0;
  for (const t of tensors) {
    if (t.key === "__metadata__" || t.key in obj) throw new Error(`safetensors: key '${t.key}' is reserved or repeated`);
    offsets.push([at, at + t.bytes]);
    obj[t.key] = { dtype: ST_DTYPE[t.dtype], shape: t.shape, data_offsets: [at, at + t.bytes] };
    at += t.bytes;
  }
  let json = JSON.stringify(obj);
  const len = Buffer.byteLength(json, "utf8");
  json += " ".repeat((8 - (len % 8)) % 8);
  const body = Buffer.from(json, "utf8");
  const out = new Uint8Array(8 + body.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(body.length), true);
  out.set(body, 8);
  return { bytes: out, offsets };
}

/** The header length field, checked against the limit and the file's size before anything is read. */
export function headerLength(file: string, first8: Uint8Array, fileSize: number): number {
  if (fileSize < 8 || first8.length < 8) throw new CheckpointError(`${fileSize} bytes is too short for a safetensors file (the header length alone is 8 bytes)`, file);
  const n = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) throw new CheckpointError(`header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`, file);
  if (n + 8n > BigInt(fileSize)) throw new CheckpointError(`header length ${n} runs past the end of the file (${fileSize} bytes)`, file);
  if (n < 2n) throw new CheckpointError(`header length ${n} cannot hold a JSON object`, file);
  return Number(n);
}

const isCount = (x: unknown): x is number => typeof x === "number" && Number.isSafeInteger(x) && x >= 0;

/** Parses and validates the JSON header (`json` holds exactly N bytes). */
export function parseHeader(file: string, json: Uint8Array, fileSize: number): Header {
  const n = json.length;
  let text: string, raw: unknown;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(json);
  } catch {
    throw new CheckpointError("header is not valid UTF-8", file);
  }
  if (!text.startsWith("{")) throw new CheckpointError("header does not start with '{'", file);
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(`header is not valid JSON (${(e as Error).message})`, file);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new CheckpointError("header is not a JSON object", file);
  const keys = Object.keys(raw);
  if (keys.length > MAX_ENTRIES) throw new CheckpointError(`header lists ${keys.length} entries (limit ${MAX_ENTRIES})`, file);
  const obj = raw as Record<string, unknown>;
  const metadata = new Map<string, string>();
  const entries = new Map<string, HeaderEntry>();
  for (const key of keys) {
    const v = obj[key];
    if (key === "__metadata__") {
      if (typeof v !== "object" || v === null || Array.isArray(v)) throw new CheckpointError("__metadata__ is not an object", file);
      for (const [mk, mv] of Object.entries(v)) {
        if (typeof mv !== "string") throw new CheckpointError(`__metadata__['${mk}'] is not a string`, file);
        metadata.set(mk, mv);
      }
      continue;
    }
    const bad = (why: string): never => {
      throw new CheckpointError(`header entry ${why}`, file, key);
    };
    if (typeof v !== "object" || v === null || Array.isArray(v)) bad("is not an object");
    const e = v as Record<string, unknown>;
    const fields = Object.keys(e).sort().join(",");
    if (fields !== "data_offsets,dtype,shape") bad(`has fields {${fields}}; expected {data_offsets, dtype, shape}`);
    const dtype = typeof e.dtype === "string" ? FROM_ST.get(e.dtype) : undefined;
    if (!dtype) bad(`has dtype ${JSON.stringify(e.dtype)}; known: ${[...FROM_ST.keys()].join(", ")}`);
    const shape = e.shape;
    if (!Array.isArray(shape) || shape.length > MAX_RANK || !shape.every(isCount)) bad(`has shape ${JSON.stringify(shape)}`);
    let numel = 1;
    for (const s of shape as number[]) {
      numel *= s;
      if (numel > Number.MAX_SAFE_INTEGER) bad(`has shape ${JSON.stringify(shape)}, too many elements`);
    }
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every(isCount) || off[0] > off[1]) bad(`has data_offsets ${JSON.stringify(off)}`);
    const [begin, end] = off as [number, number];
    const want = numel * ITEM_BYTES[dtype!];
    if (end - begin !== want) bad(`has data_offsets [${begin}, ${end}] (${end - begin} bytes) for ${numel} ${e.dtype} elements (${want} bytes)`);
    entries.set(key, { key, dtype: dtype!, shape: shape as number[], begin, end });
  }
  // the tensors tile the data region exactly: sorted, back to back, ending at the end of the file
  const dataBytes = fileSize - 8 - n;
  const sorted = [...entries.values()].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const e of sorted) {
    if (e.begin !== at) throw new CheckpointError(`data_offsets [${e.begin}, ${e.end}] ${e.begin < at ? "overlap the previous tensor" : "leave a gap after the previous tensor"} (expected to start at ${at})`, file, e.key);
    at = e.end;
  }
  if (at !== dataBytes) throw new CheckpointError(`the tensors' data ends at ${at} but the data region holds ${dataBytes} bytes (truncated or extended file)`, file);
  return { jsonBytes: n, entries, metadata };
}
