// Elementwise ("map") kernels: the fused expression as one inline function, called by a
// grid-stride loop over the iteration space. With `vec` set, each thread takes `V` consecutive
// elements of the innermost axis: operands walking it contiguously are read as one 16-byte pack,
// broadcast ones once, strided ones element by element; the elements left over (a flat space not
// divisible by V) run in the scalar loop, which also serves vec=0.
import type { KernelSpec } from "../types.ts";
import { literal, opExpr, storageType, valueType } from "./ops.ts";
import { decompose, idxType, offset, paramDecl, tensorName, type LaunchRule, Src } from "./common.ts";
import { DEFAULT_TUNING, type EmitTuning } from "./tuning.ts";

/** The expression DAG as a function of the operands' values, writing the results. */
export function emitBody(src: Src, spec: KernelSpec, name: string, tune: EmitTuning = DEFAULT_TUNING): void {
  const args = spec.operands.map((o, t) => `const ${valueType(o.dtype)} x${t}`);
  const outs = spec.results.map((r, j) => `${valueType(r.dtype)}& r${j}`);
  const ref = (i: number): string => {
    const n = spec.nodes[i]!;
    return n.k === "load" ? `x${n.operand}` : n.k === "const" ? literal(n.dtype, n.value) : `v${i}`;
  };
  src.open(`static __device__ __forceinline__ void ${name}_f(${[...args, ...outs].join(", ")})`);
  spec.nodes.forEach((n, i) => {
    if (n.k !== "op") return;
    const e = opExpr(n.op, n.dtype, n.args.map((a) => ({ e: ref(a), dtype: spec.nodes[a]!.dtype })), tune.fast);
    src.line(`const ${valueType(n.dtype)} v${i} = ${e};  // ${n.op === n.of ? n.op : `${n.of}: ${n.op}`}${n.dtype === "f32" || n.dtype === "i32" ? "" : ` (${n.dtype})`}`);
  });
  spec.results.forEach((r, j) => src.line(`r${j} = ${ref(r.node)};`));
  src.close();
}

export function emitMap(src: Src, spec: KernelSpec, name: string, rule: LaunchRule, tune: EmitTuning = DEFAULT_TUNING): void {
  const I = idxType(rule), A = spec.axes, V = rule.vec, B = rule.block;
  const nIn = spec.operands.length;
  const size = (a: number) => `n${a}`;
  const last = A - 1;
  emitBody(src, spec, name, tune);
  src.line("");
  src.line(`extern "C" __global__ void __launch_bounds__(${B}) ${name}(`);
  src.line(...rule.params.map((p, i) => `    ${paramDecl(spec, rule, p)}${i === rule.params.length - 1 ? ") {" : ","}`));
  src.enter();
  src.line(`const ${I} total = ${A ? Array.from({ length: A }, (_, a) => size(a)).join(" * ") : "1"};`);
  src.line(`const ${I} step = (${I})gridDim.x * ${B};`, `const ${I} first = (${I})blockIdx.x * ${B} + threadIdx.x;`);
  const results = spec.results.map((_, j) => `r${j}`);
  const declResults = () => spec.results.forEach((r, j) => src.line(`${valueType(r.dtype)} r${j};`));
  if (V > 1) {
    src.line(`${I} done = 0;`);
    src.open("if (vec)");
    src.line(`done = total / ${V} * ${V};`);
    src.open(`for (${I} i = first * ${V}; i < done; i += step * ${V})`);
    decompose(src, I, "i", A, size);
    const args: string[] = [];
    spec.operands.forEach((o, t) => {
      const st = storageType(o.dtype), u = o.axes[last];
      if (u === "unit") {
        src.line(`const sh_pack<${st}, ${V}> p${t} = *reinterpret_cast<const sh_pack<${st}, ${V}>*>(in${t} + (${offset(spec, t, A)}));`);
        args.push(`sh_get(p${t}.v[e])`);
      } else if (u === "none") {
        src.line(`const ${valueType(o.dtype)} x${t} = sh_get(in${t}[${offset(spec, t, A)}]);  // the same for the whole vector`);
        args.push(`x${t}`);
      } else {
        src.line(`const ${I} o${t} = ${offset(spec, t, A)};`);
        args.push(`sh_get(in${t}[o${t} + (${I})e * in${t}_s${last}])`);
      }
    });
    spec.results.forEach((r, j) => {
      const t = nIn + j;
      if (r.axes[last] === "unit") src.line(`sh_pack<${storageType(r.dtype)}, ${V}> q${j};`);
      else src.line(`const ${I} o${t} = ${offset(spec, t, A)};`);
    });
    src.line("#pragma unroll");
    src.open(`for (int e = 0; e < ${V}; ++e)`);
    declResults();
    src.line(`${name}_f(${[...args, ...results].join(", ")});`);
    spec.results.forEach((r, j) =>
      src.line(r.axes[last] === "unit" ? `sh_put(q${j}.v[e], r${j});` : `sh_put(out${j}[o${nIn + j} + (${I})e * out${j}_s${last}], r${j});`),
    );
    src.close();
    spec.results.forEach((r, j) => {
      if (r.axes[last] !== "unit") return;
      const st = storageType(r.dtype);
      src.line(`*reinterpret_cast<sh_pack<${st}, ${V}>*>(out${j} + (${offset(spec, nIn + j, A)})) = q${j};`);
    });
    src.close();
    src.close();
  } else src.line(`const ${I} done = 0;  // no tensor walks the innermost axis contiguously: no vector path`);
  src.open(`for (${I} i = done + first; i < total; i += step)`);
  decompose(src, I, "i", A, size);
  declResults();
  src.line(`${name}_f(${[...spec.operands.map((_, t) => `sh_get(${tensorName(spec, t)}[${offset(spec, t, A)}])`), ...results].join(", ")});`);
  spec.results.forEach((_, j) => src.line(`sh_put(out${j}[${offset(spec, nIn + j, A)}], r${j});`));
  src.close();
  src.close();
}
