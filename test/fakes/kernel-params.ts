// A kernel's parameter layout as the driver reads it, from its C signature in the source: 8-byte pointers
// and long longs, 4-byte ints and floats, each at its natural alignment. For tests that check a launch's
// parameter bytes against its kernel, or read one parameter out of them.
export interface ParamLayout {
  /** Each parameter's byte offset, by name. */
  offsets: Map<string, number>;
  /** The bytes the parameters take. */
  bytes: number;
}

export function paramLayout(source: string, name: string): ParamLayout {
  const sig = source.slice(source.indexOf(`${name}(`) + name.length + 1);
  const params = sig.slice(0, sig.indexOf(") {")).split(",").map((p) => p.trim());
  const offsets = new Map<string, number>();
  let at = 0;
  for (const p of params) {
    const size = p.includes("*") || /long long/.test(p) ? 8 : /\b(int|float)\b/.test(p) ? 4 : -1;
    if (size < 0) throw new Error(`unknown parameter type: ${p}`);
    at = Math.ceil(at / size) * size;
    offsets.set(p.split(/[\s*]+/).pop()!, at);
    at += size;
  }
  return { offsets, bytes: at };
}
