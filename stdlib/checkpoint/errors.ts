// The one error type a checkpoint raises for anything wrong with what is on disk (or with a save):
// it names the file and, where one is involved, the tensor.
import { ShardtsError } from "../../compiler/errors.ts";

export class CheckpointError extends ShardtsError {
  constructor(message: string, readonly file: string, readonly tensor?: string) {
    super(`checkpoint file ${file}${tensor !== undefined ? `, tensor '${tensor}'` : ""}: ${message}`);
  }
}

/** Turns any failure of `fn` (an fs call, a decode) into a CheckpointError naming `file`. */
export async function guard<T>(file: string, what: string, fn: () => Promise<T>, tensor?: string): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof CheckpointError) throw e;
    throw new CheckpointError(`${what}: ${(e as Error)?.message ?? String(e)}`, file, tensor);
  }
}
