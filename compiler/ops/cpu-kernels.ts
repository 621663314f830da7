// Elementwise loops for the CPU reference, generated once per op from its expression so that V8
// sees monomorphic, inlinable code (a shared loop calling per-op closures was most of the CPU time).
// Operands are `a`, `b`, `c`; strides are per output dim (0 where an operand is broadcast).
import type { LocalData } from "../ir/local.ts";
import { erf } from "../numeric/special.ts";

export type Kernel = (out: LocalData, ins: LocalData[], shape: readonly number[], strides: readonly (readonly number[])[]) => void;

const cache = new Map<string, Kernel>();
const VARS = ["a", "b", "c"];
const HELPERS = { erf, SQRT_2PI: Math.sqrt(2 * Math.PI) };

export function elementwiseKernel(name: string, expr: string, arity: number): Kernel {
  const key = `${name}/${arity}`;
  let k = cache.get(key);
  if (k) return k;
  const v = VARS.slice(0, arity);
  const src = `
return function kernel_${name.replace(/\W/g, "_")}(O, I, shape, S) {
  const total = O.length;
  if (total === 0) return;
  ${v.map((x, i) => `const I${i} = I[${i}], S${i} = S[${i}];`).join(" ")}
  const nd = shape.length;
  // contiguous: every operand laid out like the output
  let flat = true;
  for (let d = 0, acc = 1; d < nd; d++) {
    const dd = nd - 1 - d;
    ${v.map((_, i) => `if (S${i}[dd] !== acc) flat = false;`).join(" ")}
    acc *= shape[dd];
  }
  if (flat) {
    for (let i = 0; i < total; i++) { ${v.map((x, i) => `const ${x} = I${i}[i];`).join(" ")} O[i] = ${expr}; }
    return;
  }
  if (nd === 0) { ${v.map((x, i) => `const ${x} = I${i}[0];`).join(" ")} O[0] = ${expr}; return; }
  const inner = shape[nd - 1];
  ${v.map((_, i) => `const t${i} = S${i}[nd - 1]; let o${i} = 0;`).join(" ")}
  const idx = new Int32Array(nd);
  for (let o = 0; o < total; o += inner) {
    ${v.map((_, i) => `let p${i} = o${i};`).join(" ")}
    for (let j = 0; j < inner; j++) {
      ${v.map((x, i) => `const ${x} = I${i}[p${i}]; p${i} += t${i};`).join(" ")}
      O[o + j] = ${expr};
    }
    for (let d = nd - 2; d >= 0; d--) {
      idx[d]++;
      ${v.map((_, i) => `o${i} += S${i}[d];`).join(" ")}
      if (idx[d] < shape[d]) break;
      ${v.map((_, i) => `o${i} -= S${i}[d] * shape[d];`).join(" ")}
      idx[d] = 0;
    }
  }
};`;
  k = new Function(...Object.keys(HELPERS), src)(...Object.values(HELPERS)) as Kernel;
  cache.set(key, k);
  return k;
}
