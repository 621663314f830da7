// Loading onto any mesh and layout: every wanted piece is assembled from the saved pieces that
// overlap it, reading only the checksum chunks those overlaps touch, with positional reads. Before a
// byte of tensor data is read or a buffer is sized from the files, metadata.json and each opened
// file's header are validated against each other; every chunk read is verified against its SHA-256.
import { open, type FileHandle } from "node:fs/promises";
import { createHash } from "node:crypto";
import { join } from "node:path";
import type { MeshSpec, TensorType } from "../../compiler/ir/types.ts";
import { numel } from "../../compiler/ir/types.ts";
import type { LocalData, LocalTensor } from "../../compiler/ir/local.ts";
import { allocLocal } from "../../compiler/ir/local.ts";
import { worldSize } from "../../compiler/ir/placement.ts";
import { UsageError } from "../../compiler/errors.ts";
import { CheckpointError, guard } from "./errors.ts";
import { decodeInto, ITEM_BYTES, ST_DTYPE } from "./dtypes.ts";
import { intersect, layoutProblem, overlapRuns, regionOf, type Region } from "./geometry.ts";
import { headerLength, parseHeader } from "./safetensors.ts";
import { FORMAT, MAX_METADATA_BYTES, METADATA_FILE, parseMetadata, VERSION, type FileMeta, type Json, type Metadata } from "./metadata.ts";
import { exists, readLatest } from "./fsio.ts";

/** What to load: the target mesh and each wanted tensor's type on it (global shape and dtype must match the saved ones). */
export interface LoadTemplate {
  mesh: MeshSpec;
  tensors: Record<string, TensorType>;
}

/** Counters of what a load read (for tests and reports). */
export interface ReadStats {
  bytesRead: number;
  reads: number;
  /** The largest single buffer allocated for reading. */
  largestRead: number;
  files: Set<string>;
}
export const newReadStats = (): ReadStats => ({ bytesRead: 0, reads: 0, largestRead: 0, files: new Set() });

export interface LoadOptions {
  /** Target ranks to assemble (default: all). Pieces of other ranks are left undefined. */
  ranks?: readonly number[];
  stats?: ReadStats;
}

export interface Loaded {
  /** The checkpoint directory that was read (`latest` resolved). */
  path: string;
  step: number;
  /** The mesh it was saved on. */
  savedMesh: MeshSpec;
  extras: { [k: string]: Json };
  /** Per tensor, the target ranks' pieces in rank order. */
  tensors: Record<string, (LocalTensor | undefined)[]>;
}

/** Largest single positional read; bigger overlaps are read in several. */
const MAX_READ = 64 * 1024 * 1024;

/** `dir` itself when it holds metadata.json, else the checkpoint its `latest` names. */
export async function resolveCheckpoint(dir: string): Promise<string> {
  if (await exists(join(dir, METADATA_FILE))) return dir;
  const name = await readLatest(dir);
  if (name === undefined) throw new CheckpointError(`not found, and no '${LATEST_NAME}' in ${dir} names a checkpoint`, join(dir, METADATA_FILE));
  const path = join(dir, name);
  if (!(await exists(join(path, METADATA_FILE)))) throw new CheckpointError(`names '${name}', which has no ${METADATA_FILE}`, join(dir, LATEST_NAME));
  return path;
}
const LATEST_NAME = "latest";

interface OpenFile {
  fh: FileHandle;
  meta: FileMeta;
  path: string;
}

/** An open checkpoint: validated metadata, lazily opened and validated rank files. */
export class CheckpointReader {
  private readonly files = new Map<string, Promise<OpenFile>>();

  private constructor(readonly path: string, readonly meta: Metadata, readonly stats: ReadStats) {}

  static async open(dir: string, stats: ReadStats = newReadStats()): Promise<CheckpointReader> {
    const path = await resolveCheckpoint(dir);
    const file = join(path, METADATA_FILE);
    const bytes = await guard(file, "cannot read", async () => {
      const fh = await open(file, "r");
      try {
        const { size } = await fh.stat();
        if (size > MAX_METADATA_BYTES) throw new CheckpointError(`${size} bytes exceeds the ${MAX_METADATA_BYTES}-byte limit`, file);
        return await readExact(fh, file, 0, size, stats);
      } finally {
        await fh.close();
      }
    });
    return new CheckpointReader(path, parseMetadata(file, bytes), stats);
  }

  /** Opens a rank file once: size, header and every piece it should hold are checked against the metadata. */
  private file(name: string): Promise<OpenFile> {
    let f = this.files.get(name);
    if (!f) {
      f = this.openFile(name);
      f.catch(() => {}); // reported to whoever awaits it
      this.files.set(name, f);
    }
    return f;
  }

  private async openFile(name: string): Promise<OpenFile> {
    const meta = this.meta.files.find((f) => f.file === name)!;
    const path = join(this.path, name);
    const fh = await guard(path, "cannot open", () => open(path, "r"));
    try {
      const { size } = await guard(path, "cannot stat", () => fh.stat());
      if (size !== meta.bytes) throw new CheckpointError(`is ${size} bytes; metadata.json says ${meta.bytes} (truncated or replaced)`, path);
      const n = headerLength(path, await readExact(fh, path, 0, Math.min(8, size), this.stats), size);
      if (n !== meta.header_bytes) throw new CheckpointError(`header length ${n} differs from metadata.json's ${meta.header_bytes}`, path);
      const header = parseHeader(path, await readExact(fh, path, 8, n, this.stats), size);
      const want = { format: FORMAT, version: String(VERSION), rank: String(meta.rank), step: String(this.meta.step) };
      const got = Object.fromEntries(header.metadata);
      if (JSON.stringify(Object.entries(got).sort()) !== JSON.stringify(Object.entries(want).sort())) throw new CheckpointError(`__metadata__ ${JSON.stringify(got)} is not ${JSON.stringify(want)}`, path);
      const expected = Object.entries(this.meta.tensors).flatMap(([t, tm]) => tm.pieces.filter((p) => p.file === name).map((p) => ({ t, tm, p })));
      if (expected.length !== header.entries.size) throw new CheckpointError(`holds ${header.entries.size} tensors; metadata.json lists ${expected.length} in it`, path);
      for (const { t, tm, p } of expected) {
        const e = header.entries.get(p.key);
        if (!e) throw new CheckpointError("metadata.json lists a piece in this file that its header lacks", path, t);
        if (ST_DTYPE[tm.dtype] !== ST_DTYPE[e.dtype] || e.shape.length !== p.shape.length || e.shape.some((s, d) => s !== p.shape[d]) || 8 + n + e.begin !== p.byte_range[0] || 8 + n + e.end !== p.byte_range[1])
          throw new CheckpointError(`header says ${ST_DTYPE[e.dtype]}[${e.shape}] at [${8 + n + e.begin}, ${8 + n + e.end}); metadata.json says ${ST_DTYPE[tm.dtype]}[${p.shape}] at [${p.byte_range}]`, path, t);
      }
      this.stats.files.add(name);
      return { fh, meta, path };
    } catch (e) {
      await fh.close().catch(() => {});
      throw e;
    }
  }

  /** Fills `dst` (the region `want` of tensor `name`, row-major) from the saved pieces that overlap it. */
  async readRegion(name: string, want: Region, dst: LocalData): Promise<void> {
    const tm = this.meta.tensors[name]!;
    const item = ITEM_BYTES[tm.dtype], chunk = this.meta.chunk_bytes;
    for (const p of tm.pieces) {
      const src: Region = { offset: p.offset, shape: p.shape };
      const o = intersect(src, want);
      if (!o) continue;
      const { fh, path } = await this.file(p.file);
      const runs = overlapRuns(src, want, o);
      const pieceBytes = p.byte_range[1] - p.byte_range[0];
      // the checksum chunks the runs touch, merged into reads of consecutive chunks
      const reads: [number, number][] = [];
      const maxChunks = Math.max(1, Math.floor(MAX_READ / chunk));
      for (const [s, , len] of runs) {
        const c0 = Math.floor((s * item) / chunk), c1 = Math.floor(((s + len) * item - 1) / chunk) + 1;
        const last = reads[reads.length - 1];
        if (last && c0 <= last[1]) last[1] = Math.max(last[1], c1);
        else reads.push([c0, c1]);
      }
      const split: [number, number][] = [];
      for (const [a, b] of reads) for (let c = a; c < b; c += maxChunks) split.push([c, Math.min(b, c + maxChunks)]);
      let ri = 0;
      for (const [c0, c1] of split) {
        const start = c0 * chunk, end = Math.min(c1 * chunk, pieceBytes);
        const buf = await readExact(fh, path, p.byte_range[0] + start, end - start, this.stats, name);
        for (let c = c0; c < c1; c++) {
          const a = c * chunk - start, b = Math.min((c + 1) * chunk, pieceBytes) - start;
          if (createHash("sha256").update(buf.subarray(a, b)).digest("hex") !== p.sha256[c])
            throw new CheckpointError(`checksum mismatch in bytes [${p.byte_range[0] + start + a}, ${p.byte_range[0] + start + b}) of rank ${p.rank}'s piece (corrupted)`, path, name);
        }
        while (ri < runs.length && (runs[ri]![0] + runs[ri]![2]) * item <= start) ri++;
        for (let j = ri; j < runs.length && runs[j]![0] * item < end; j++) {
          const [s, t, len] = runs[j]!;
          const a = Math.max(s * item, start), b = Math.min((s + len) * item, end);
          if (b > a) decodeInto(tm.dtype, buf, a - start, (b - a) / item, dst, t + (a / item - s));
        }
      }
    }
  }

  /** Checks a template against the saved tensors (names, global shapes, dtypes). */
  check(template: LoadTemplate): void {
    const mfile = join(this.path, METADATA_FILE);
    for (const [name, type] of Object.entries(template.tensors)) {
      const problem = layoutProblem(type, template.mesh);
      if (problem) throw new UsageError(`load(): template tensor '${name}' ${problem}`);
      const tm = this.meta.tensors[name];
      if (!tm) throw new CheckpointError("the checkpoint has no such tensor", mfile, name);
      const dims = type.dims.map((d) => d.name), shape = type.dims.map((d) => d.size);
      if (tm.dtype !== type.dtype) throw new CheckpointError(`saved as ${tm.dtype}, the template wants ${type.dtype}`, mfile, name);
      if (JSON.stringify(tm.dims) !== JSON.stringify(dims) || JSON.stringify(tm.shape) !== JSON.stringify(shape))
        throw new CheckpointError(`saved with dims ${tm.dims.map((d, i) => `${d}:${tm.shape[i]}`).join(", ")}, the template has ${dims.map((d, i) => `${d}:${shape[i]}`).join(", ")}`, mfile, name);
    }
  }

  /** Assembles the template's tensors for one target rank. */
  async loadRank(template: LoadTemplate, rank: number): Promise<Record<string, LocalTensor>> {
    const out: Record<string, LocalTensor> = {};
    for (const [name, type] of Object.entries(template.tensors)) {
      const region = regionOf(type, template.mesh, rank);
      const t = allocLocal(type.dtype, region.shape);
      if (numel(region.shape) > 0) await this.readRegion(name, region, t.data);
      out[name] = t;
    }
    return out;
  }

  async close(): Promise<void> {
    const all = [...this.files.values()];
    this.files.clear();
    for (const f of all) await f.then((o) => o.fh.close()).catch(() => {});
  }
}

async function readExact(fh: FileHandle, path: string, position: number, length: number, stats: ReadStats, tensor?: string): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  stats.largestRead = Math.max(stats.largestRead, length);
  let at = 0;
  while (at < length) {
    const { bytesRead } = await guard(path, "cannot read", () => fh.read(buf, at, length - at, position + at), tensor);
    if (bytesRead === 0) throw new CheckpointError(`ends at byte ${position + at}; expected ${length - at} more (truncated)`, path, tensor);
    at += bytesRead;
    stats.reads++;
  }
  stats.bytesRead += length;
  return buf;
}

function checkRanks(template: LoadTemplate, ranks: readonly number[] | undefined): number[] {
  const world = worldSize(template.mesh);
  const list = ranks ? [...ranks] : Array.from({ length: world }, (_, r) => r);
  for (const r of list) if (!Number.isSafeInteger(r) || r < 0 || r >= world) throw new UsageError(`load(): rank ${r} is not in the target mesh of ${world} ranks`);
  return list;
}

/** Reads the checkpoint in `dir` (a checkpoint directory, or one with `latest`) onto the template's mesh and layout. */
export async function load(dir: string, template: LoadTemplate, opts: LoadOptions = {}): Promise<Loaded> {
  const ranks = checkRanks(template, opts.ranks);
  const reader = await CheckpointReader.open(dir, opts.stats);
  try {
    reader.check(template);
    const world = worldSize(template.mesh);
    const tensors: Loaded["tensors"] = Object.fromEntries(Object.keys(template.tensors).map((n) => [n, new Array<LocalTensor | undefined>(world).fill(undefined)]));
    for (const r of ranks) {
      const got = await reader.loadRank(template, r);
      for (const [n, t] of Object.entries(got)) tensors[n]![r] = t;
    }
    return { path: reader.path, step: reader.meta.step, savedMesh: reader.meta.mesh, extras: reader.meta.extras, tensors };
  } finally {
    await reader.close();
  }
}

/** One rank's pieces (what one process of a multi-process job loads). */
export async function loadRank(dir: string, rank: number, template: LoadTemplate, opts: { stats?: ReadStats } = {}): Promise<{ path: string; step: number; savedMesh: MeshSpec; extras: { [k: string]: Json }; tensors: Record<string, LocalTensor> }> {
  checkRanks(template, [rank]);
  const reader = await CheckpointReader.open(dir, opts.stats);
  try {
    reader.check(template);
    return { path: reader.path, step: reader.meta.step, savedMesh: reader.meta.mesh, extras: reader.meta.extras, tensors: await reader.loadRank(template, rank) };
  } finally {
    await reader.close();
  }
}

/** The validated metadata of the checkpoint in `dir`. */
export async function readMetadata(dir: string): Promise<{ path: string; meta: Metadata }> {
  const reader = await CheckpointReader.open(dir);
  await reader.close();
  return { path: reader.path, meta: reader.meta };
}
