// Typed errors. Each names what went wrong and how to fix it; `site` points at the user's line.

export class ShardtsError extends Error {
  constructor(message: string, readonly site?: string) {
    super(site ? `${message}\n    at ${site}` : message);
    this.name = new.target.name;
  }
}
/** A placement combination an op cannot compute without communication the program didn't ask for. */
export class ShardingError extends ShardtsError {}
/** Dims or sizes that disagree, or a dim an op names that the tensor lacks. */
export class ShapeError extends ShardtsError {}
/** Dtypes that disagree or are not allowed for an op. */
export class DTypeError extends ShardtsError {}
/** A graph, pass or plan that is internally inconsistent (a compiler bug or a malformed input). */
export class CompileError extends ShardtsError {}
/** Bad input to the CLI, a mesh spec or a model file. */
export class UsageError extends ShardtsError {}
