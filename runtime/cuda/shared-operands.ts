// Operands one op of a plan makes that a later op of the same plan can take instead of making them
// again: the routed experts' weight gradients of a SwiGLU's gate and up projections read the same rows
// and counts, so the rows' transposed (bf16) or quantized-and-transposed (FP8) form is made once per
// step. An entry is kept under a key only when a later instruction of the plan has that key
// (laterSharers), and is taken back only if it was made from the very tensors the taker holds (a run
// that stopped before its last user leaves a stale one, which is freed).
import type { Plan } from "../../compiler/plan.ts";
import type { DeviceTensor } from "./memory.ts";
import type { CudaExecutor } from "./executor.ts";

type Instr = Plan["instrs"][number];

/** A kept entry: the tensors it was made from, and the ones it made (the executor's to release). */
export interface SharedEntry {
  from: readonly DeviceTensor[];
  made: readonly DeviceTensor[];
}

const sharers = new WeakMap<Plan, Map<string, Set<Instr>>>();

/**
 * The plan's instructions of `op` that a later one of `op` follows with the same key (`keyOf`, from the
 * instruction alone: inputs and attrs), found once per plan and op, not per step.
 */
export function laterSharers(plan: Plan, op: string, keyOf: (ins: Extract<Instr, { kind: "op" }>) => string): Set<Instr> {
  let byOp = sharers.get(plan);
  if (!byOp) sharers.set(plan, (byOp = new Map()));
  let set = byOp.get(op);
  if (!set) {
    const seen = new Set<string>();
    set = new Set();
    for (let i = plan.instrs.length - 1; i >= 0; i--) {
      const o = plan.instrs[i]!;
      if (o.kind !== "op" || o.op !== op) continue;
      const key = keyOf(o);
      if (seen.has(key)) set.add(o);
      seen.add(key);
    }
    byOp.set(op, set);
  }
  return set;
}

const kept = new WeakMap<CudaExecutor, Map<string, SharedEntry>>();
const sameFrom = (a: readonly DeviceTensor[], b: readonly DeviceTensor[]) => a.length === b.length && a.every((t, i) => t === b[i]);

/** Keeps `entry` under `key` for a later taker (freeing what an older entry under the key made). */
export function keepShared(ex: CudaExecutor, key: string, entry: SharedEntry): void {
  let m = kept.get(ex);
  if (!m) kept.set(ex, (m = new Map()));
  const old = m.get(key);
  if (old && old !== entry) for (const t of old.made) ex.release(t);
  m.set(key, entry);
}

/** The entry kept under `key` if it was made from these very tensors (removed from the store), else undefined (a stale one freed). */
export function takeShared<E extends SharedEntry>(ex: CudaExecutor, key: string, from: readonly DeviceTensor[]): E | undefined {
  const m = kept.get(ex), e = m?.get(key);
  if (!e) return undefined;
  m!.delete(key);
  if (sameFrom(e.from, from)) return e as E;
  for (const t of e.made) ex.release(t);
  return undefined;
}

// A weight's FP8 codes in both layouts from one quantize: e4m3 wgmma reads B K-major only, so a weight
// [.., N, K] that one GEMM takes as B [N][K] and another as B [K][N] (a Linear's or an expert's Fprop
// against its Dgrad) needs its codes both ways every step. The 128x128 quantize then writes the
// transposed codes too (fp8.ts transposedCodesWanted), kept here under the codes' plan slot (one entry
// per weight at most: the next step's replaces it), and the consumer takes them, if made from the very
// codes it holds, instead of transposing those.
const codesKey = (slot: number) => `codesT:${slot}`;

/** Keeps `qT` (`q`, plan slot `slot`, with its last two dims swapped) for the consumer of `q` that wants that order. */
export function keepCodesT(ex: CudaExecutor, slot: number, q: DeviceTensor, qT: DeviceTensor): void {
  keepShared(ex, codesKey(slot), { from: [q], made: [qT] });
}

/**
 * Codes `q` (plan slot `slot`, dims `from`) in dims order `to`: where `to` swaps `from`'s last two dims and q's quantize
 * kept its transposed codes, those (the caller's to release); else a reorder (the caller releases it if
 * it is not q).
 */
export function codesIn(ex: CudaExecutor, slot: number | undefined, q: DeviceTensor, from: readonly string[], to: readonly string[]): DeviceTensor {
  const n = from.length;
  const swapped = n >= 2 && to.length === n && from.every((d, i) => d === to[i < n - 2 ? i : i === n - 2 ? n - 1 : n - 2]);
  const kept = swapped && slot !== undefined ? takeShared(ex, codesKey(slot), [q]) : undefined;
  return kept ? kept.made[0]! : ex.reorder(q, [...from], [...to]);
}
