// NCCL communicators of a job: the world communicator from the rendezvous's unique id, and one per
// mesh axis split from it (ranks that differ only in that axis's coordinate share a colour; the key
// is the coordinate, so a rank's index in its axis group is its rank in the axis communicator).
// Made once per mesh and reused. Communicators are blocking (NCCL's default; NCCL_COMM_BLOCKING=0
// makes them non-blocking, and every call that answers ncclInProgress is then polled to completion
// here, parent and child of a split alike). A first run on two H200s with non-blocking ones failed:
// "Attempt to use communicator before the previous operation returned ncclSuccess". The watchdog
// aborts a hung communicator from its own thread either way.
import type { MeshSpec } from "../../../compiler/ir/types.ts";
import { coordsOf, rankOf, worldSize } from "../../../compiler/ir/placement.ts";
import { UsageError } from "../../../compiler/errors.ts";
import type { NativeAddon, NcclComm } from "../native-types.ts";
import { CollectiveTimeoutError } from "./watchdog.ts";

const IN_PROGRESS = 7;

/** The colour and key of `rank` when splitting the world communicator for mesh axis `axis`. */
export function splitColorKey(mesh: MeshSpec, rank: number, axis: number): { color: number; key: number } {
  const c = coordsOf(mesh, rank);
  return { color: rankOf(mesh, c.map((x, a) => (a === axis ? 0 : x))), key: c[axis]! };
}

/** Polls a non-blocking communicator until its last call completed; throws its error, or on the deadline. */
export function waitComm(addon: NativeAddon, comm: NcclComm, what: string, deadlineMs: number, check?: () => void): void {
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  for (let spins = 0; ; spins++) {
    const r = addon.ncclCommGetAsyncError(comm);
    if (r === 0) return;
    if (r !== IN_PROGRESS) throw new CollectiveTimeoutError(`${what}: NCCL reported error ${r} (see NCCL_DEBUG=WARN output above)`);
    check?.();
    if (Date.now() > deadlineMs) {
      addon.ncclCommAbort(comm);
      throw new CollectiveTimeoutError(`${what} did not complete in time; the communicator was aborted`);
    }
    if (spins > 64) Atomics.wait(sleeper, 0, 0, 1);
  }
}

export class Communicators {
  private readonly byMesh = new Map<string, NcclComm[]>();
  readonly world: NcclComm;

  constructor(private readonly addon: NativeAddon, readonly rank: number, readonly size: number, uniqueId: Uint8Array, private readonly timeoutMs: number) {
    this.world = addon.ncclCommInitRank(size, uniqueId, rank);
    waitComm(addon, this.world, `ncclCommInitRank(world ${size}, rank ${rank})`, Date.now() + timeoutMs);
  }

  /** The communicators of each mesh axis (created on first use; every rank must ask in the same order). */
  axes(mesh: MeshSpec): NcclComm[] {
    const key = mesh.sizes.join("x");
    let comms = this.byMesh.get(key);
    if (comms) return comms;
    if (worldSize(mesh) !== this.size)
      throw new UsageError(`the mesh (${mesh.axes.map((a, i) => `${a}=${mesh.sizes[i]}`).join(", ")}) has ${worldSize(mesh)} ranks but the job has WORLD_SIZE=${this.size}; launch one process per mesh rank (--nproc-per-node ${worldSize(mesh)})`);
    comms = mesh.axes.map((name, a) => {
      const { color, key: k } = splitColorKey(mesh, this.rank, a);
      const c = this.addon.ncclCommSplit(this.world, color, k);
      if (c === null) throw new UsageError(`ncclCommSplit gave no communicator for mesh axis '${name}'`);
      waitComm(this.addon, c, `ncclCommSplit(mesh axis '${name}', colour ${color}, key ${k})`, Date.now() + this.timeoutMs);
      waitComm(this.addon, this.world, `ncclCommSplit(mesh axis '${name}') on the world communicator`, Date.now() + this.timeoutMs);
      return c;
    });
    this.byMesh.set(key, comms);
    return comms;
  }

  all(): NcclComm[] {
    return [this.world, ...[...this.byMesh.values()].flat()];
  }

  /** Frees every communicator (after a clean finish); the first failure is thrown once all were tried. */
  destroy(): void {
    let first: unknown;
    for (const c of this.all().reverse()) {
      try {
        this.addon.ncclCommDestroy(c);
      } catch (e) {
        first ??= e;
      }
    }
    this.byMesh.clear();
    if (first) throw first;
  }

  /** After a failure: aborts every communicator (peers may be gone), ignoring what NCCL says. */
  abort(): void {
    for (const c of this.all().reverse()) {
      try {
        this.addon.ncclCommAbort(c);
      } catch {
        // the job is failing already; the original error is what the user needs
      }
    }
    this.byMesh.clear();
  }
}
