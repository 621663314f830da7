// Saving: each rank encodes and writes only the pieces it is the writer of (replicas are written
// once, by the rank at coordinate 0 of every axis that does not shard the tensor) into
// `rank-<r>.safetensors` inside `dir/.tmp-<step>-<nonce>/`; rank 0 then commits: metadata.json,
// fsync, rename to `dir/step-<n>/`, then `latest` replaced atomically, then old checkpoints retired.
// The steps are separate calls so that one process per rank can run them (beginSave on rank 0,
// saveRank everywhere, commit on rank 0); `save` runs them all for the in-process simulation, and
// `AsyncSaver` runs them in the background after a synchronous copy.
import { mkdir, open, readdir, rename, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { MeshSpec, TensorType } from "../../compiler/ir/types.ts";
import { numel } from "../../compiler/ir/types.ts";
import type { LocalTensor } from "../../compiler/ir/local.ts";
import { worldSize } from "../../compiler/ir/placement.ts";
import { CheckpointError, guard } from "./errors.ts";
import { SaveQueue } from "./save-queue.ts";
import { encode } from "./dtypes.ts";
import { isWriter, layoutProblem, regionOf, savedRegions, type Region } from "./geometry.ts";
import { buildHeader } from "./safetensors.ts";
import { encodeMetadata, FORMAT, METADATA_FILE, parseMetadata, rankFile, VERSION, type Json, type Metadata, type PieceMeta } from "./metadata.ts";
import { freeStepName, LATEST, nonce, removeStale, replaceFile, retain, syncDir, TMP_PREFIX, writeFileDurable } from "./fsio.ts";

/** A tensor to save: its global type and its pieces, one per rank in rank order. */
export interface TensorState {
  type: TensorType;
  /** `pieces[r]` is rank r's piece; a process saving only its own rank needs only that entry. */
  pieces: readonly (LocalTensor | undefined)[];
}

export interface CheckpointState {
  mesh: MeshSpec;
  step: number;
  tensors: Record<string, TensorState>;
  /** Small JSON state: data-loader position, seeds, configuration. */
  extras?: { [k: string]: Json };
}

/** What commit needs besides the rank files: the state without its pieces. */
export interface SaveInfo {
  mesh: MeshSpec;
  step: number;
  types: Record<string, TensorType>;
  extras: { [k: string]: Json };
}

export interface SaveOptions {
  /** Keep the newest K checkpoints, deleting older ones after a commit (default: keep all). */
  keep?: number;
  /** Checksum granularity in bytes (a multiple of 8; default 1 MiB). Loads read whole chunks. */
  chunkBytes?: number;
  /** fsync files and directories (default true; tests of logic alone may turn it off). */
  fsync?: boolean;
  /** commit: how long to wait for every rank's manifest when called without them (default 10 min). */
  waitMs?: number;
}

export interface RankManifest {
  rank: number;
  step: number;
  file: string;
  bytes: number;
  header_bytes: number;
  pieces: { tensor: string; byte_range: [number, number]; sha256: string[] }[];
}

export interface SaveResult {
  /** The committed directory. */
  path: string;
  name: string;
  step: number;
  /** Bytes written in rank files. */
  bytes: number;
  /** Older checkpoints removed by retention. */
  removed: string[];
}

export const DEFAULT_CHUNK_BYTES = 1 << 20;
const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
const manifestFile = (rank: number) => `rank-${rank}.manifest.json`;

function chunkBytesOf(opts: SaveOptions): number {
  const c = opts.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  if (!Number.isSafeInteger(c) || c < 8 || c % 8 !== 0 || c > 1 << 30) throw new CheckpointError(`chunkBytes ${c} is not a multiple of 8 in [8, 2^30]`, "(save options)");
  return c;
}

/** Checks the state's shape (not its pieces) and returns it without pieces. */
export function describe(state: CheckpointState): SaveInfo {
  const where = "(checkpoint state)";
  const { mesh, step } = state;
  if (!mesh || !Array.isArray(mesh.axes) || !Array.isArray(mesh.sizes) || mesh.axes.length !== mesh.sizes.length || mesh.axes.length < 1 || !mesh.axes.every((a) => IDENT.test(a)) || !mesh.sizes.every((s) => Number.isSafeInteger(s) && s >= 1))
    throw new CheckpointError(`mesh ${JSON.stringify(mesh)} is not {axes, sizes} of one or more named axes`, where);
  if (!Number.isSafeInteger(step) || step < 0) throw new CheckpointError(`step ${step} is not a non-negative integer`, where);
  const types: Record<string, TensorType> = {};
  for (const name of Object.keys(state.tensors).sort()) {
    const t = state.tensors[name]!.type;
    if (name.length === 0 || name.length > 1024 || name === "__metadata__") throw new CheckpointError("tensor name is empty, too long or reserved", where, name);
    const bad = layoutProblem(t, mesh) ?? (t.dims.every((d) => IDENT.test(d.name)) ? undefined : `has a dim name that is not an identifier`);
    if (bad) throw new CheckpointError(`cannot be saved: the tensor ${bad}`, where, name);
    types[name] = { dims: t.dims.map((d) => ({ name: d.name, size: d.size })), dtype: t.dtype, placements: [...t.placements] };
  }
  let extras: { [k: string]: Json };
  try {
    extras = JSON.parse(JSON.stringify(state.extras ?? {}));
  } catch (e) {
    throw new CheckpointError(`extras are not JSON: ${(e as Error).message}`, where);
  }
  return { mesh: { axes: [...mesh.axes], sizes: [...mesh.sizes] }, step, types, extras };
}

export interface EncodedPiece {
  name: string;
  type: TensorType;
  region: Region;
  bytes: Uint8Array;
}

/** One rank's part of a save, copied out of the live pieces (the "device → host" copy). */
export interface RankSnapshot {
  rank: number;
  step: number;
  pieces: EncodedPiece[];
}

/** The live pieces `rank` writes, checked against their types (not copied). */
export interface RankPieces {
  rank: number;
  step: number;
  pieces: { name: string; type: TensorType; region: Region; data: LocalTensor["data"] }[];
}

/** Selects and checks the pieces `rank` writes; the data is the caller's (live) unless `copy`. */
export function rankPieces(state: CheckpointState, rank: number, info: SaveInfo = describe(state), copy = false): RankPieces {
  const file = rankFile(rank);
  if (!Number.isSafeInteger(rank) || rank < 0 || rank >= worldSize(info.mesh)) throw new CheckpointError(`rank ${rank} is not in a mesh of ${worldSize(info.mesh)}`, file);
  const pieces: RankPieces["pieces"] = [];
  for (const [name, type] of Object.entries(info.types)) {
    if (!isWriter(type, info.mesh, rank)) continue;
    const region = regionOf(type, info.mesh, rank);
    if (numel(region.shape) === 0) continue;
    const p = state.tensors[name]!.pieces[rank];
    if (!p) throw new CheckpointError(`rank ${rank}'s piece is missing`, file, name);
    const ok = p.dtype === type.dtype && p.shape.length === region.shape.length && p.shape.every((s, d) => s === region.shape[d]) &&
      p.data.length === numel(region.shape) && (type.dtype === "i32" ? p.data instanceof Int32Array : p.data instanceof Float32Array);
    if (!ok) throw new CheckpointError(`rank ${rank}'s piece is ${p.dtype}[${p.shape}] (${p.data.constructor.name} of ${p.data.length}); the type says ${type.dtype}[${region.shape}]`, file, name);
    pieces.push({ name, type, region, data: copy ? p.data.slice() : p.data });
  }
  return { rank, step: info.step, pieces };
}

/** Encodes selected pieces into their bytes on disk (a copy). */
export function encodeRank(sel: RankPieces): RankSnapshot {
  const file = rankFile(sel.rank);
  return {
    rank: sel.rank, step: sel.step,
    pieces: sel.pieces.map(({ name, type, region, data }) => {
      const bytes = encode(type.dtype, data);
      if (!(bytes instanceof Uint8Array)) throw new CheckpointError(`element ${bytes.bad} (${data[bytes.bad]}) is not exactly representable in ${type.dtype}`, file, name);
      return { name, type, region, bytes };
    }),
  };
}

/** Copies and encodes the pieces `rank` writes. Synchronous: afterwards the live pieces may change. */
export function snapshotRank(state: CheckpointState, rank: number, info: SaveInfo = describe(state)): RankSnapshot {
  return encodeRank(rankPieces(state, rank, info));
}

async function sha256Hex(data: Uint8Array): Promise<string> {
  // WebCrypto digests on the thread pool: hashing does not hold up the caller's thread
  const d = await globalThis.crypto.subtle.digest("SHA-256", data);
  return Buffer.from(d).toString("hex");
}

async function chunkHashes(bytes: Uint8Array, chunk: number): Promise<string[]> {
  const out: Promise<string>[] = [];
  for (let at = 0; at < bytes.length; at += chunk) out.push(sha256Hex(bytes.subarray(at, Math.min(bytes.length, at + chunk))));
  return Promise.all(out);
}

/** Writes one rank's file and manifest into the save's temporary directory. */
export async function writeRank(tmpDir: string, snap: RankSnapshot, opts: SaveOptions = {}): Promise<RankManifest> {
  const sync = opts.fsync ?? true, chunk = chunkBytesOf(opts);
  const file = rankFile(snap.rank), path = join(tmpDir, file);
  const { bytes: header, offsets } = buildHeader(
    snap.pieces.map((p) => ({ key: p.name, dtype: p.type.dtype, shape: p.region.shape, bytes: p.bytes.byteLength })),
    { format: FORMAT, version: String(VERSION), rank: String(snap.rank), step: String(snap.step) },
  );
  const hashes = Promise.all(snap.pieces.map((p) => chunkHashes(p.bytes, chunk)));
  const total = await writeFileDurable(path, [header, ...snap.pieces.map((p) => p.bytes)], sync);
  const sha = await guard(path, "cannot checksum", () => hashes);
  const manifest: RankManifest = {
    rank: snap.rank, step: snap.step, file, bytes: total, header_bytes: header.byteLength - 8,
    pieces: snap.pieces.map((p, i) => ({ tensor: p.name, byte_range: [header.byteLength + offsets[i]![0], header.byteLength + offsets[i]![1]], sha256: sha[i]! })),
  };
  // the manifest appears (by rename) only once the rank file is complete and durable
  const mpath = join(tmpDir, manifestFile(snap.rank));
  await writeFileDurable(`${mpath}.part`, [Buffer.from(JSON.stringify(manifest))], sync);
  await guard(mpath, "cannot rename into place", () => rename(`${mpath}.part`, mpath));
  return manifest;
}

/** rank 0, first: clears temporaries a killed save left, makes this save's temporary directory. */
export async function beginSave(dir: string, step: number): Promise<string> {
  await guard(dir, "cannot create the checkpoint directory", () => mkdir(dir, { recursive: true }));
  await removeStale(dir);
  const tmp = join(dir, `${TMP_PREFIX}${step}-${nonce()}`);
  await guard(tmp, "cannot create the temporary directory", () => mkdir(tmp));
  return tmp;
}

/** Every rank: copies and writes its own pieces into `tmpDir` (from beginSave). */
export async function saveRank(tmpDir: string, rank: number, state: CheckpointState, opts: SaveOptions = {}): Promise<RankManifest> {
  return writeRank(tmpDir, snapshotRank(state, rank), opts);
}

async function readManifests(tmpDir: string, world: number, waitMs: number): Promise<RankManifest[]> {
  const deadline = Date.now() + waitMs;
  const out: RankManifest[] = [];
  for (let r = 0; r < world; r++) {
    const path = join(tmpDir, manifestFile(r));
    for (;;) {
      const names = await guard(tmpDir, "cannot list", () => readdir(tmpDir));
      if (names.includes(manifestFile(r))) break;
      if (Date.now() > deadline) throw new CheckpointError(`rank ${r} did not finish writing its file within ${waitMs} ms`, path);
      await new Promise((res) => setTimeout(res, 50));
    }
    const m = await guard(path, "cannot read the manifest", async () => {
      const fh = await open(path, "r");
      try {
        return JSON.parse((await fh.readFile()).toString("utf8")) as RankManifest;
      } finally {
        await fh.close();
      }
    });
    if (typeof m !== "object" || m === null || m.rank !== r || m.file !== rankFile(r) || !Array.isArray(m.pieces) || !m.pieces.every((p) => typeof p?.tensor === "string" && Array.isArray(p.byte_range) && Array.isArray(p.sha256)))
      throw new CheckpointError(`is not a manifest of rank ${r}'s file`, path);
    out.push(m);
  }
  return out;
}

/** Builds metadata.json's content from every rank's manifest. */
export function buildMetadata(info: SaveInfo, manifests: readonly RankManifest[], chunk: number): Metadata {
  const world = worldSize(info.mesh);
  const byRank = new Map(manifests.map((m) => [m.rank, m]));
  const tensors: Metadata["tensors"] = {};
  for (const [name, type] of Object.entries(info.types)) {
    const pieces: PieceMeta[] = savedRegions(type, info.mesh).map(({ rank, region }) => {
      const m = byRank.get(rank), p = m?.pieces.find((x) => x.tensor === name);
      if (!m || !p) throw new CheckpointError(`rank ${rank}'s manifest has no piece of this tensor`, manifestFile(rank), name);
      return { file: m.file, key: name, rank, offset: region.offset, shape: region.shape, byte_range: p.byte_range, sha256: p.sha256 };
    });
    tensors[name] = { dtype: type.dtype, dims: type.dims.map((d) => d.name), shape: type.dims.map((d) => d.size), placements: type.placements, pieces };
  }
  const files = Array.from({ length: world }, (_, r) => {
    const m = byRank.get(r);
    if (!m) throw new CheckpointError(`rank ${r} wrote no manifest`, manifestFile(r));
    if (m.step !== info.step) throw new CheckpointError(`rank ${r} saved step ${m.step}, not ${info.step}`, manifestFile(r));
    return { file: m.file, rank: r, bytes: m.bytes, header_bytes: m.header_bytes };
  });
  return { format: FORMAT, version: VERSION, step: info.step, mesh: info.mesh, chunk_bytes: chunk, files, tensors, extras: info.extras };
}

/**
 * rank 0, last: once every rank's file is in `tmpDir`, writes metadata.json, makes the checkpoint
 * durable, renames it to `dir/step-<n>` and points `latest` at it; then applies retention.
 */
export async function commit(dir: string, tmpDir: string, state: CheckpointState | SaveInfo, opts: SaveOptions & { manifests?: RankManifest[] } = {}): Promise<SaveResult> {
  const info = "types" in state ? state : describe(state);
  const sync = opts.fsync ?? true, chunk = chunkBytesOf(opts);
  const world = worldSize(info.mesh);
  const manifests = opts.manifests ?? (await readManifests(tmpDir, world, opts.waitMs ?? 600_000));
  const meta = buildMetadata(info, manifests, chunk);
  const encoded = encodeMetadata(meta);
  parseMetadata(join(tmpDir, METADATA_FILE), encoded); // never commit what the loader would refuse
  await writeFileDurable(join(tmpDir, METADATA_FILE), [encoded], sync);
  for (let r = 0; r < world; r++) await guard(join(tmpDir, manifestFile(r)), "cannot remove", () => rm(join(tmpDir, manifestFile(r)), { force: true }));
  await syncDir(tmpDir, sync);
  const name = await freeStepName(dir, info.step);
  const path = join(dir, name);
  await guard(path, "cannot rename the finished checkpoint into place", () => rename(tmpDir, path));
  await syncDir(dir, sync);
  await replaceFile(dir, LATEST, Buffer.from(`${name}\n`), sync);
  const removed = opts.keep !== undefined ? await retain(dir, Math.max(1, opts.keep), name, sync) : [];
  return { path, name, step: info.step, bytes: manifests.reduce((a, m) => a + m.bytes, 0), removed };
}

/** Writes already-copied snapshots of every rank and commits them. */
async function writeAll(dir: string, info: SaveInfo, snaps: RankSnapshot[], opts: SaveOptions): Promise<SaveResult> {
  const tmp = await beginSave(dir, info.step);
  const manifests = await Promise.all(snaps.map((s) => writeRank(tmp, s, opts)));
  return commit(dir, tmp, info, { ...opts, manifests });
}

function snapshotAll(state: CheckpointState): { info: SaveInfo; snaps: RankSnapshot[] } {
  const info = describe(state);
  return { info, snaps: Array.from({ length: worldSize(info.mesh) }, (_, r) => snapshotRank(state, r, info)) };
}

/** Saves every rank's pieces (all held by this process) as checkpoint `state.step` in `dir`. */
export async function save(dir: string, state: CheckpointState, opts: SaveOptions = {}): Promise<SaveResult> {
  chunkBytesOf(opts);
  const { info, snaps } = snapshotAll(state);
  return writeAll(dir, info, snaps, opts);
}

export interface SaveHandle {
  step: number;
  /** Settles when this save is committed (its error is also reported by the next saveAsync/flush). */
  done: Promise<SaveResult>;
}

/**
 * Background saves into one directory. `saveAsync` copies the pieces before it returns (the caller
 * may go on changing them), waits for the previous save, then writes while the caller continues.
 * A background failure is reported once, by the next `saveAsync` or `flush`.
 */
export class AsyncSaver {
  private q: SaveQueue;

  constructor(readonly dir: string, readonly opts: SaveOptions = {}) {
    chunkBytesOf(opts);
    this.q = new SaveQueue(dir);
  }

  saveAsync(state: CheckpointState): Promise<SaveHandle> {
    let snap: ReturnType<typeof snapshotAll>;
    try {
      snap = snapshotAll(state);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.q.enqueue(snap.info.step, () => writeAll(this.dir, snap.info, snap.snaps, this.opts));
  }

  /** Waits for the save under way; throws its error if it failed. Returns the last committed save. */
  flush(): Promise<SaveResult | undefined> {
    return this.q.flush();
  }
}

const savers = new Map<string, AsyncSaver>();

/** `AsyncSaver` per directory, as functions: the options of the first call for a directory stay. */
export function saveAsync(dir: string, state: CheckpointState, opts: SaveOptions = {}): Promise<SaveHandle> {
  const key = resolve(dir);
  let s = savers.get(key);
  if (!s) savers.set(key, (s = new AsyncSaver(dir, opts)));
  return s.saveAsync(state);
}

/** Waits for background saves (of `dir`, or of every directory) and reports their errors. */
export async function flush(dir?: string): Promise<void> {
  const list = dir ? [savers.get(resolve(dir))].filter((s): s is AsyncSaver => !!s) : [...savers.values()];
  for (const s of list) await s.flush();
}
