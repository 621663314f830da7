// shardts checkpoints: sharded safetensors files, one metadata.json, atomic commits, background
// saves, loading onto any mesh and layout.
//
// On disk, for `save(dir, state)` at step n:
//   dir/latest                  "step-<n>\n": the newest complete checkpoint (replaced atomically)
//   dir/step-<n>/metadata.json  {"sha256": <hex of the body>, "metadata": {format, version, step, mesh,
//                               chunk_bytes, files: [{file, rank, bytes, header_bytes}], tensors: {name:
//                               {dtype, dims, shape, placements, pieces: [{file, key, rank, offset,
//                               shape, byte_range, sha256: [per chunk]}]}}, extras}}
//   dir/step-<n>/rank-<r>.safetensors   rank r's pieces (those it writes: replicas once), keyed by
//                               tensor name, dtypes F32 / BF16 / F8_E4M3 / F8_E5M2 / I32
// A save is written into dir/.tmp-<n>-<nonce>/, fsync'd, renamed to step-<n> (step-<n>.<k> if that
// exists), then `latest` is replaced; retention then removes the oldest beyond `keep`. One process per
// rank (shardts launch): RankSaver / connectRankSaver (rank-local.ts) and loadRank.
export { CheckpointError } from "./errors.ts";
export { save, saveAsync, flush, AsyncSaver, beginSave, saveRank, commit, describe, snapshotRank, writeRank, buildMetadata, DEFAULT_CHUNK_BYTES } from "./save.ts";
export { RankSaver, connectRankSaver, type RankGroup } from "./rank-local.ts";
export { rankPieces, encodeRank } from "./save.ts";
export type { RankPieces, EncodedPiece } from "./save.ts";
export type { CheckpointState, TensorState, SaveInfo, SaveOptions, SaveResult, SaveHandle, RankManifest, RankSnapshot } from "./save.ts";
export { load, loadRank, readMetadata, resolveCheckpoint, CheckpointReader, newReadStats } from "./load.ts";
export type { LoadTemplate, LoadOptions, Loaded, ReadStats } from "./load.ts";
export { encodeMetadata, parseMetadata, METADATA_FILE, FORMAT, VERSION, type Metadata, type TensorMeta, type PieceMeta, type FileMeta, type Json } from "./metadata.ts";
export { assemble, savedRegions, regionOf } from "./geometry.ts";
export { LATEST, listSteps } from "./fsio.ts";
export { MAX_HEADER_BYTES } from "./safetensors.ts";
