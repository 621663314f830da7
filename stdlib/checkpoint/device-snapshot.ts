// A rank's save copied straight from GPU memory: each piece the rank writes goes device -> page-locked
// host memory on a copy stream of its own (no encoding: the device's bytes are the file's bytes —
// f32 and i32 little-endian, bf16 as its 16-bit patterns, FP8 as one code byte), then RankSaver
// writes them in the background. The pinned buffers are kept and reused: take the next snapshot only
// after the previous save is done (RankSaver.flush() or the handle's `done`).
import type { NativeAddon, Stream } from "../../runtime/cuda/native-types.ts";
import type { DeviceTensor } from "../../runtime/cuda/memory.ts";
import { elemBytes } from "../../runtime/cuda/kernels/sources.ts";
import { numel } from "../../compiler/ir/types.ts";
import { CheckpointError } from "./errors.ts";
import { isWriter, regionOf } from "./geometry.ts";
import { rankFile } from "./metadata.ts";
import type { EncodedPiece, RankSnapshot, SaveInfo } from "./save.ts";

export class PinnedSnapshot {
  private pinned: ArrayBuffer | undefined;
  private stream: Stream | undefined;
  /** Milliseconds and bytes of the last copy (for reports). */
  lastCopy = { ms: 0, bytes: 0 };

  constructor(private readonly addon: NativeAddon) {}

  /** Copies `rank`'s pieces of the tensors in `info` (those it writes) from `device` into pinned host memory. */
  take(info: SaveInfo, rank: number, device: Record<string, DeviceTensor>): RankSnapshot {
    const file = rankFile(rank);
    const todo: { name: string; d: DeviceTensor; piece: Omit<EncodedPiece, "bytes">; bytes: number }[] = [];
    for (const [name, type] of Object.entries(info.types)) {
      if (!isWriter(type, info.mesh, rank)) continue;
      const region = regionOf(type, info.mesh, rank);
      if (numel(region.shape) === 0) continue;
      const d = device[name];
      if (!d) throw new CheckpointError(`rank ${rank}'s device piece is missing`, file, name);
      if (d.dtype !== type.dtype || d.shape.join() !== region.shape.join()) throw new CheckpointError(`rank ${rank}'s device piece is ${d.dtype}[${d.shape}]; the type says ${type.dtype}[${region.shape}]`, file, name);
      todo.push({ name, d, piece: { name, type, region }, bytes: numel(region.shape) * elemBytes(type.dtype) });
    }
    const total = todo.reduce((a, t) => a + t.bytes, 0);
    if (!this.pinned || this.pinned.byteLength < total) {
      if (this.pinned) this.addon.hostFree(this.pinned);
      this.pinned = this.addon.hostAlloc(Math.max(total, 1));
    }
    const s = (this.stream ??= this.addon.streamCreate(1));
    const t0 = performance.now();
    const pieces: EncodedPiece[] = [];
    let at = 0;
    for (const t of todo) {
      const bytes = new Uint8Array(this.pinned, at, t.bytes);
      this.addon.memcpyDtoHAsync(bytes, t.d.ptr, t.bytes, s);
      pieces.push({ ...t.piece, bytes });
      at += t.bytes;
    }
    this.addon.streamSynchronize(s);
    this.lastCopy = { ms: performance.now() - t0, bytes: total };
    return { rank, step: info.step, pieces };
  }

  /** Frees the pinned memory and the copy stream. */
  dispose(): void {
    if (this.pinned) this.addon.hostFree(this.pinned);
    if (this.stream) this.addon.streamDestroy(this.stream);
    this.pinned = this.stream = undefined;
  }
}
