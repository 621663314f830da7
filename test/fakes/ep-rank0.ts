// Rank 0 of an ep=2 job on the fake native layer (test/fakes/native-addon.ts): a CudaExecutor with a
// RankLocal whose peer-window all-gathers read back two records (one node, devices 0 and 1, the
// default SM budget, no refusal), so the MoE ops take the NVLink path when SHARDTS_MOE_TRANSPORT=nvlink.
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { RankLocal } from "../../runtime/cuda/nccl/collectives.ts";
import { Communicators } from "../../runtime/cuda/nccl/communicators.ts";
import { nodeId, RECORD_FIELDS } from "../../runtime/cuda/ipc.ts";
import { MOE_SMS_DEFAULT } from "../../runtime/cuda/moe-nvlink.ts";
import { fakeAddon, type FakeAddon } from "./native-addon.ts";

/** The peer-window exchanges' all-gathers read back two records: one node, devices 0 and 1, one SM budget, no refusal. */
export function windowRecords(dst: ArrayBuffer | ArrayBufferView): void {
  const { bytes, node, device, blocks } = RECORD_FIELDS;
  if (!(dst instanceof Uint8Array) || dst.byteLength !== 2 * bytes) return;
  const v = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
  for (let q = 0; q < 2; q++) {
    dst.set(nodeId(), q * bytes + node);
    v.setInt32(q * bytes + device, q, true);
    v.setInt32(q * bytes + blocks, MOE_SMS_DEFAULT, true);
  }
}

/** Rank 0 of 2; `spy` sees every native call. */
export function epRank0(spy?: (method: string, args: unknown[]) => void): { ex: CudaExecutor; rl: RankLocal; f: FakeAddon } {
  const f = fakeAddon({ read: windowRecords, spy });
  const ex = new CudaExecutor(f.addon, 0);
  const rl = new RankLocal({ rank: 0, localRank: 0, worldSize: 2, comms: new Communicators(f.addon, 0, 2, new Uint8Array(128), 10_000), timeoutMs: 60_000 });
  (ex.rankLocal = rl).exec = ex;
  return { ex, rl, f };
}
