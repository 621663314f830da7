// Durable file-system steps: files written and fsync'd, directories fsync'd after entries change,
// renames as the only commit points, and the checkpoint directory's housekeeping (`latest`, stale
// temporaries, retention). Every failure is a CheckpointError naming the path.
import { open, readdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { CheckpointError, guard } from "./errors.ts";

export const LATEST = "latest";
export const TMP_PREFIX = ".tmp-";
/** `step-<n>`, or `step-<n>.<k>` when a checkpoint of the same step was already there. */
export const STEP_RE = /^step-(0|[1-9][0-9]{0,15})(?:\.([1-9][0-9]{0,5}))?$/;

export const nonce = () => randomBytes(6).toString("hex");

/** Writes `parts` to a new file at `path`, fsyncs it (when `sync`) and closes it. */
export async function writeFileDurable(path: string, parts: readonly Uint8Array[], sync: boolean): Promise<number> {
  return guard(path, "cannot write", async () => {
    const fh = await open(path, "wx");
    let total = 0;
    try {
      for (const p of parts) {
        let at = 0;
        while (at < p.byteLength) {
          const r = await fh.write(p, at, p.byteLength - at);
          at += r.bytesWritten;
        }
        total += p.byteLength;
      }
      if (sync) await fh.sync();
    } finally {
      await fh.close();
    }
    return total;
  });
}

/** fsync of a directory, so that entries created, renamed or removed in it are on disk. */
export async function syncDir(path: string, sync: boolean): Promise<void> {
  if (!sync) return;
  await guard(path, "cannot fsync the directory", async () => {
    const fh = await open(path, "r");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  });
}

/** Replaces `dir/name` atomically with `data`: written to a temporary beside it, fsync'd, renamed. */
export async function replaceFile(dir: string, name: string, data: Uint8Array, sync: boolean): Promise<void> {
  const tmp = join(dir, `${name}.tmp`);
  await guard(tmp, "cannot remove a stale temporary", () => rm(tmp, { force: true }));
  await writeFileDurable(tmp, [data], sync);
  await guard(join(dir, name), "cannot rename into place", () => rename(tmp, join(dir, name)));
  await syncDir(dir, sync);
}

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

export interface StepDir {
  name: string;
  step: number;
  rev: number;
}

export const parseStepName = (name: string): StepDir | undefined => {
  const m = STEP_RE.exec(name);
  return m ? { name, step: Number(m[1]), rev: m[2] ? Number(m[2]) : 0 } : undefined;
};

/** The committed checkpoints in `dir`, oldest first (by step, then revision). */
export async function listSteps(dir: string): Promise<StepDir[]> {
  const names = await guard(dir, "cannot list", () => readdir(dir));
  return names.flatMap((n) => parseStepName(n) ?? []).sort((a, b) => a.step - b.step || a.rev - b.rev);
}

/** A name for a new checkpoint of `step` that is not taken. */
export async function freeStepName(dir: string, step: number): Promise<string> {
  const taken = new Set((await listSteps(dir)).filter((s) => s.step === step).map((s) => s.rev));
  let rev = 0;
  while (taken.has(rev)) rev++;
  return rev === 0 ? `step-${step}` : `step-${step}.${rev}`;
}

/** Removes temporaries a killed save left behind (`.tmp-*` directories, `latest.tmp`). */
export async function removeStale(dir: string): Promise<void> {
  const names = await guard(dir, "cannot list", () => readdir(dir));
  for (const n of names)
    if (n.startsWith(TMP_PREFIX) || n === `${LATEST}.tmp`) await guard(join(dir, n), "cannot remove a stale temporary", () => rm(join(dir, n), { recursive: true, force: true }));
}

/** Deletes all but the newest `keep` checkpoints (never `protect`): each is first renamed aside, atomically. */
export async function retain(dir: string, keep: number, protect: string, sync: boolean): Promise<string[]> {
  const steps = (await listSteps(dir)).filter((s) => s.name !== protect);
  const drop = steps.slice(0, Math.max(0, steps.length - (keep - 1)));
  for (const s of drop) {
    const aside = join(dir, `${TMP_PREFIX}del-${s.name}-${nonce()}`);
    await guard(join(dir, s.name), "cannot move an old checkpoint aside", () => rename(join(dir, s.name), aside));
    await syncDir(dir, sync);
    await guard(aside, "cannot delete an old checkpoint", () => rm(aside, { recursive: true, force: true }));
  }
  return drop.map((s) => s.name);
}

/** Reads `dir/latest`: the name of the newest complete checkpoint, checked to be a plain step name. */
export async function readLatest(dir: string): Promise<string | undefined> {
  const path = join(dir, LATEST);
  if (!(await exists(path))) return undefined;
  const text = await guard(path, "cannot read", async () => {
    const fh = await open(path, "r");
    try {
      const { size } = await fh.stat();
      if (size > 256) throw new CheckpointError(`${size} bytes is too long for a checkpoint name`, path);
      const buf = new Uint8Array(size);
      await fh.read(buf, 0, size, 0);
      return Buffer.from(buf).toString("utf8");
    } finally {
      await fh.close();
    }
  });
  const name = text.endsWith("\n") ? text.slice(0, -1) : text;
  if (!parseStepName(name)) throw new CheckpointError(`does not name a checkpoint directory (step-<n>): ${JSON.stringify(text.slice(0, 64))}`, path);
  return name;
}
