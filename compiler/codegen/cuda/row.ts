// Row kernels. Rows up to 1024 columns go to a warp, or to an aligned group of fewer lanes when a
// row needs fewer (32/T rows per warp, so short rows keep every lane busy); longer rows get a
// block. The expression DAG runs in passes over the row: pass p ends with the reductions that need
// only values available before it (softmax: max, then sum of exp, then the output pass), each
// combined across the row's T threads with shuffles (and shared memory between warps). Values that
// do not vary along the row (reduction results, per-row operands) are computed once per row.
// Rows short enough keep the column values a later pass needs in registers (`chunks` per thread,
// fixed at compile time from the longest row of any rank); longer rows are reread each pass.
import type { ExprNode, KernelSpec } from "../types.ts";
import { literal, opExpr, roundTo, storageType, valueType } from "./ops.ts";
import { decompose, idxType, offset, paramDecl, vecWidth, type LaunchRule, type Param, Src } from "./common.ts";

/** Most float registers per thread spent on cached column values. */
const CACHE_BUDGET = 64;

interface Pass {
  reduces: number[];
  /** Column nodes computed in this pass, topological. */
  need: number[];
  /** Results written in this pass (row-level results, in the last pass). */
  results: number[];
}

interface RowPlan {
  T: number;
  V: number;
  chunks: number;
  /** Per non-column node: the pass after which it is available (0: at the row's start). */
  ready: number[];
  passes: Pass[];
  cached: Set<number>;
}

const pow2ceil = (x: number) => 2 ** Math.ceil(Math.log2(Math.max(1, x)));

function planRows(spec: KernelSpec): RowPlan {
  const { nodes } = spec, L = spec.axes - 1;
  const ready = nodes.map(() => 0), dep = nodes.map(() => 0);
  const avail = (a: number) => (nodes[a]!.col ? dep[a]! : ready[a]!);
  nodes.forEach((n, i) => {
    if (n.k === "op") (n.col ? dep : ready)[i] = Math.max(0, ...n.args.map(avail));
    else if (n.k === "reduce") ready[i] = 1 + avail(n.arg);
    else if (n.k === "pick") ready[i] = Math.max(ready[n.index]!, avail(n.arg));
  });
  const K = Math.max(0, ...nodes.map((n, i) => (n.k === "reduce" ? ready[i]! : 0)));
  const passes: { reduces: number[]; targets: number[]; results: number[] }[] = [];
  for (let p = 1; p <= K; p++) {
    const reduces = nodes.flatMap((n, i) => (n.k === "reduce" && ready[i] === p ? [i] : []));
    passes.push({ reduces, targets: reduces.map((i) => (nodes[i] as Extract<ExprNode, { k: "reduce" }>).arg), results: [] });
  }
  const rowResults = spec.results.flatMap((r, j) => (r.axes[L] !== "none" ? [j] : []));
  if (rowResults.length) passes.push({ reduces: [], targets: rowResults.map((j) => spec.results[j]!.node), results: rowResults });

  const V = vecWidth(spec, L), maxRow = spec.bounds.row;
  // a warp's lanes split into groups of T, each with about two vectors of a row or more
  const T = maxRow <= 1024 ? Math.min(32, pow2ceil(Math.ceil(maxRow / (V * 2)))) : Math.min(1024, Math.max(128, pow2ceil(Math.ceil(maxRow / (V * 4)))));
  const chunks = Math.max(1, Math.ceil(maxRow / (T * V)));
  // which column values each pass computes; with caching, a value an earlier pass computed is read back
  const assign = (cache: boolean) => {
    const computed = new Set<number>(), cached = new Set<number>();
    const out = passes.map((p) => {
      const need = new Set<number>();
      const visit = (v: number): void => {
        if (!nodes[v]!.col || need.has(v)) return;
        if (cache && computed.has(v)) return void cached.add(v);
        need.add(v);
        const n = nodes[v]!;
        if (n.k === "op") n.args.forEach(visit);
      };
      p.targets.forEach(visit);
      need.forEach((v) => computed.add(v));
      return { reduces: p.reduces, need: [...need].sort((a, b) => a - b), results: p.results };
    });
    return { passes: out, cached };
  };
  const withCache = assign(true);
  if (chunks * V * Math.max(1, withCache.cached.size) <= CACHE_BUDGET) return { T, V, chunks, ready, ...withCache };
  return { T, V, chunks: 0, ready, ...assign(false) };
}

export function rowRule(spec: KernelSpec, index: LaunchRule["index"], params: Param[]): LaunchRule {
  const p = planRows(spec);
  return { kind: "row", block: p.T <= 32 ? 256 : p.T, vec: p.V, rowThreads: p.T, chunks: p.chunks, index, params };
}

export function emitRow(src: Src, spec: KernelSpec, name: string, rule: LaunchRule): void {
  const plan = planRows(spec);
  const { T, V, chunks, ready, passes, cached } = plan;
  const I = idxType(rule), L = spec.axes - 1, nIn = spec.operands.length, nodes = spec.nodes;
  const warp = T <= 32, perWarp = 32 / T;
  const vt = (i: number) => valueType(nodes[i]!.dtype);
  const tensors = [...spec.operands, ...spec.results];
  const args = rule.params.map((p) => p.name).join(", ");

  src.line("template <bool V>", `static __device__ __forceinline__ void ${name}_rows(`);
  src.line(...rule.params.map((p, i) => `    ${paramDecl(spec, rule, p)}${i === rule.params.length - 1 ? ") {" : ","}`));
  src.enter();
  src.line(`constexpr int T = ${T}, VEC = ${V};  // threads per row, columns per vector`);
  if (!warp) src.line("__shared__ float red[32];");
  src.line(`const int tid = threadIdx.x${warp ? ` & ${T - 1}` : ""};  // the thread's place in its row`);
  src.line(`const ${I} rows = ${L ? Array.from({ length: L }, (_, a) => `n${a}`).join(" * ") : "1"};`);
  if (warp) {
    // the loop runs while any row of the warp is live, so every lane reaches the shuffles; a group
    // past the last row works on the warp's first row with nothing to read or write (n = 0)
    const step = (rule.block / 32) * perWarp;
    src.open(`for (${I} first = ((${I})blockIdx.x * ${rule.block / 32} + (threadIdx.x >> 5)) * ${perWarp}; first < rows; first += (${I})gridDim.x * ${step})`);
    if (perWarp > 1) {
      src.line(`const ${I} mine = first + ((threadIdx.x & 31) >> ${Math.log2(T)});`);
      src.line("const bool live = mine < rows;");
      if (L) src.line(`const ${I} row = live ? mine : first;`);
      src.line("const int n = live ? ncol : 0;");
    } else {
      if (L) src.line(`const ${I} row = first;`);
      src.line("const int n = ncol;");
    }
  } else {
    src.open(`for (${I} row = blockIdx.x; row < rows; row += gridDim.x)`);
    src.line("const int n = ncol;");
  }
  const live = warp && perWarp > 1 ? " && live" : "";
  decompose(src, I, "row", L, (a) => `n${a}`);
  tensors.forEach((ts, t) => {
    const off = offset(spec, t, L), st = storageType(ts.dtype);
    if (ts.axes[L] === "none") src.line(`const ${I} o${t} = ${off};`);
    else if (t < nIn) src.line(`const ${st}* __restrict__ p${t} = in${t} + (${off});`);
    else src.line(`${st}* __restrict__ q${t - nIn} = out${t - nIn} + (${off});`);
  });
  for (const c of cached) {
    const n = nodes[c]!;
    src.line(`${vt(c)} c${c}[${chunks * V}];  // ${n.k === "load" ? `in${n.operand}` : n.of}: kept for a later pass`);
  }

  const ref = (i: number, colName: (i: number) => string): string => {
    const n = nodes[i]!;
    if (n.col) return colName(i);
    return n.k === "const" ? literal(n.dtype, n.value) : `v${i}`;
  };
  const comment = (n: ExprNode) => (n.k === "op" ? (n.op === n.of ? n.op : `${n.of}: ${n.op}`) : n.of);

  // values that do not vary along the row, once their pass is done
  const perRow = (p: number) => {
    nodes.forEach((n, i) => {
      if (n.col || ready[i] !== p || n.k === "const" || n.k === "reduce") return;
      if (n.k === "load") src.line(`const ${vt(i)} v${i} = sh_get(in${n.operand}[o${n.operand}]);`);
      else if (n.k === "op") src.line(`const ${vt(i)} v${i} = ${opExpr(n.op, n.dtype, n.args.map((a) => ({ e: ref(a, (x) => `v${x}`), dtype: nodes[a]!.dtype })))};  // ${comment(n)}`);
      else emitPick(i, n);
    });
    spec.results.forEach((r, j) => {
      if (r.axes[L] === "none" && ready[r.node] === p) src.line(`if (tid == 0${live}) sh_put(out${j}[o${nIn + j}], ${ref(r.node, String)});`);
    });
  };
  // a gather along the row: the picked column's value, evaluated at that one column
  const emitPick = (i: number, n: Extract<ExprNode, { k: "pick" }>) => {
    const fail = n.dtype === "i32" ? "0" : "sh_nan()";
    src.line(`${vt(i)} v${i};  // ${n.of}: the value at column ${ref(n.index, String)} (-1: padding, 0)`);
    src.open("");
    src.line(`const int col = (int)${ref(n.index, String)};`);
    src.line(`if (col == -1) v${i} = 0;`, `else if (col < 0 || col >= n) v${i} = ${fail};`);
    src.open("else");
    const seen = new Set<number>();
    const visit = (a: number): void => {
      const m = nodes[a]!;
      if (!m.col || seen.has(a)) return;
      seen.add(a);
      if (m.k === "op") m.args.forEach(visit);
    };
    visit(n.arg);
    for (const a of [...seen].sort((x, y) => x - y)) {
      const m = nodes[a]!;
      if (m.k === "load") {
        const t = m.operand;
        src.line(`const ${vt(a)} w${a} = sh_get(p${t}[${spec.operands[t]!.axes[L] === "unit" ? "col" : `(${I})col * in${t}_s${L}`}]);`);
      } else if (m.k === "op") src.line(`const ${vt(a)} w${a} = ${opExpr(m.op, m.dtype, m.args.map((x) => ({ e: ref(x, (y) => `w${y}`), dtype: nodes[x]!.dtype })))};`);
    }
    src.line(`v${i} = ${ref(n.arg, (y) => `w${y}`)};`);
    src.close();
    src.close();
  };

  perRow(0);
  passes.forEach((pass, pi) => {
    const p = pi + 1, need = new Set(pass.need);
    const what = pass.reduces.length ? pass.reduces.map((r) => `${(nodes[r] as Extract<ExprNode, { k: "reduce" }>).fn} (${nodes[r]!.of})`).join(", ") : "write the results";
    src.line(`// pass ${p}: ${what}`);
    for (const r of pass.reduces) src.line(`float a${r} = ${(nodes[r] as Extract<ExprNode, { k: "reduce" }>).fn === "sum" ? "0.0f" : "-sh_inf()"};`);
    if (chunks) {
      src.line("#pragma unroll");
      src.open(`for (int c = 0; c < ${chunks}; ++c)`);
      src.line("const int col0 = V ? (c * T + tid) * VEC : c * VEC * T + tid;");
    } else src.open("for (int col0 = V ? tid * VEC : tid; col0 < n; col0 += T * VEC)");
    for (const i of pass.need) {
      const n = nodes[i]!;
      if (n.k !== "load") continue;
      const t = n.operand;
      src.line(`${vt(i)} l${i}[VEC];`);
      src.line(spec.operands[t]!.axes[L] === "unit" ? `sh_ld_row<V, VEC, T>(p${t}, col0, n, l${i});` : `sh_ld_row_strided<V, VEC, T>(p${t}, in${t}_s${L}, col0, n, l${i});`);
    }
    for (const j of pass.results) src.line(`${valueType(spec.results[j]!.dtype)} s${j}[VEC];`);
    const colRef = (x: number) => (need.has(x) ? `v${x}` : `c${x}[c * VEC + e]`);
    src.line("#pragma unroll");
    src.open("for (int e = 0; e < VEC; ++e)");
    if (pass.reduces.length) src.line("const bool ok = (V ? col0 + e : col0 + e * T) < n;");
    for (const i of pass.need) {
      const n = nodes[i]!;
      if (n.k === "load") src.line(`const ${vt(i)} v${i} = l${i}[e];`);
      else if (n.k === "op") src.line(`const ${vt(i)} v${i} = ${opExpr(n.op, n.dtype, n.args.map((a) => ({ e: ref(a, colRef), dtype: nodes[a]!.dtype })))};  // ${comment(n)}`);
      if (cached.has(i)) src.line(`c${i}[c * VEC + e] = v${i};`);
    }
    for (const r of pass.reduces) {
      const n = nodes[r] as Extract<ExprNode, { k: "reduce" }>;
      const x = ref(n.arg, colRef);
      src.line(n.fn === "sum" ? `if (ok) a${r} += ${x};` : `if (ok) a${r} = sh_max2(a${r}, ${x});`);
    }
    for (const j of pass.results) src.line(`s${j}[e] = ${ref(spec.results[j]!.node, colRef)};`);
    src.close();
    for (const j of pass.results)
      src.line(spec.results[j]!.axes[L] === "unit" ? `sh_st_row<V, VEC, T>(q${j}, col0, n, s${j});` : `sh_st_row_strided<V, VEC, T>(q${j}, out${j}_s${L}, col0, n, s${j});`);
    src.close();
    for (const r of pass.reduces) {
      const n = nodes[r] as Extract<ExprNode, { k: "reduce" }>;
      const all = warp ? `sh_group_${n.fn}<T>(a${r})` : `sh_block_${n.fn}<T>(a${r}, red)`;
      src.line(`const float v${r} = ${roundTo(n.dtype, all)};`);
    }
    if (pass.reduces.length) perRow(p);
  });
  src.close();
  src.close();
  src.line("");
  src.line(`extern "C" __global__ void __launch_bounds__(${rule.block}) ${name}(`);
  src.line(...rule.params.map((p, i) => `    ${paramDecl(spec, rule, p)}${i === rule.params.length - 1 ? ") {" : ","}`));
  src.enter();
  if (V > 1) src.line(`if (vec) ${name}_rows<true>(${args});`, `else ${name}_rows<false>(${args});`);
  else src.line(`${name}_rows<false>(${args});  // no tensor walks the row contiguously: no vector path`);
  src.close();
}
