// Row kernels. Rows up to 1024 columns go to a warp, or to an aligned group of fewer lanes when a
// row needs fewer (32/T rows per warp, so short rows keep every lane busy); longer rows get a block
// of 128..1024 threads. The expression DAG runs in passes over the row: pass p ends with the
// reductions that need only values available before it (softmax: max and sum of exp together, then
// the output pass), combined across the row's T threads with shuffles and, in a block, one
// shared-memory step for all of the pass's reductions. Values that do not vary along the row
// (reduction results, per-row operands) are computed once per row.
//
// The vector path (16-byte packs, `vec`) keeps rows in registers where they fit (up to 16K columns
// of bf16 or f32): each thread reads its `chunks` packs of a row tensor at the start of the first
// pass that needs them, all in flight at once, and a value a later pass needs is kept (as read, or
// as stored where its dtype is bf16/FP8: two a register), so later passes read registers, not
// memory. Chunks are compile-time constants: the arrays are never indexed at run time (no local
// memory). Longer rows, and the scalar path (any alignment), stream the row and reread it each pass.
//
// A max followed by a sum of exp(x - max) is one online pass (flash attention's softmax: a running
// max and a sum rescaled to it per 16-byte vector; the pairs merge across the row). A pick (gather
// along the row: cross-entropy's target logit) takes its value from the registers of the pass that
// reads the row: the thread holding the column hands it over with the pass's reductions.
// The grid is one wave (launch.ts: SMs x the blocks of this kernel that fit on an SM at once, from
// its compiled register count), and the blocks stride over every row: no last partial wave.
// A split kernel (codegen/split.ts) takes parts of few, long rows as its rows: the last outer axis
// numbers the parts, and a part's columns start at its index x CHUNK.
import type { DType } from "../../ir/types.ts";
import type { ExprNode, KernelSpec } from "../types.ts";
import { byteSize, literal, opExpr, roundTo, storageType, valueType } from "./ops.ts";
import { decompose, idxType, offset, paramDecl, vecWidth, type LaunchRule, type Param, Src } from "./common.ts";
import { DEFAULT_TUNING, type EmitTuning } from "./tuning.ts";

/** 16-byte packs per thread per row tensor that a block-per-row kernel aims for (4 KiB..64 KiB rows in 128..1024 threads). */
const PACKS = 4;
/**
 * Most registers per thread that hold row data (the packs a pass reads, one per value kept for a later
 * pass) where the kernel is capped at 64 registers, and where a warp-per-row kernel keeps its rows
 * without the cap (more would spill).
 */
const ROW_REGS = 24, WARP_ROW_REGS = 32;

type Reduce = Extract<ExprNode, { k: "reduce" }>;
type Pick = Extract<ExprNode, { k: "pick" }>;
type Load = Extract<ExprNode, { k: "load" }>;

/** A column value (a load) taken at a pick's column in the pass that reads it. */
interface Capture {
  load: number;
  index: number;
}

interface Pass {
  /** Reductions finished at the end of this pass (an online sum comes with its max). */
  reduces: number[];
  /** Column nodes this pass computes (loads: reads from its registers), topological. */
  need: number[];
  /** Results written in this pass (row-level results, in the last pass). */
  results: number[];
  captures: Capture[];
}

interface RowPlan {
  T: number;
  V: number;
  /** 16-byte packs per thread per row tensor held in registers (0: rows are streamed). */
  chunks: number;
  /** Per non-column node: the pass after which it is available (0: at the row's start). */
  ready: number[];
  passes: Pass[];
  /** Column values an earlier pass computed (or read) that a later one needs: kept in registers. */
  cached: Set<number>;
  /** Online sums of exp(x - max): the sum's node -> its max's node. */
  online: Map<number, number>;
  /**
   * keepExp tuning: exp nodes of online sums that a later pass uses again, kept (f32) as the online
   * pass computed them, relative to their vector's running max (also kept), and rescaled there:
   * exp node -> the online sum it feeds.
   */
  keepExp: Map<number, number>;
  /** Per pick and load of its expression: the captured value's name (absent: read from memory). */
  captured: Map<string, string>;
  /** Shared-memory slots one block-wide combine needs (block kernels). */
  slots: number;
  /** Blocks per SM for __launch_bounds__: the register cap, and the blocks per SM that work. */
  minBlocks: number;
}

const pow2ceil = (x: number) => 2 ** Math.ceil(Math.log2(Math.max(1, x)));
const NARROW = new Set<DType>(["bf16", "fp8e4m3", "fp8e5m2"]);
/** How a value kept for a later pass is held: loads as read, bf16/FP8 values (exact in their dtype) as stored; else as computed. */
const keptDtype = (spec: KernelSpec, i: number): DType | undefined => {
  const n = spec.nodes[i]!;
  if (n.k === "load") return spec.operands[n.operand]!.dtype;
  return NARROW.has(n.dtype) ? n.dtype : undefined;
};
const capName = (c: Capture) => `k${c.load}_${c.index}`;
const VEC_NOTE = "columns tid*VEC.. as one 16-byte pack, ncol a multiple of VEC, 16-byte aligned rows";

/** Col nodes that `targets` need, each once, topological. */
export function closure(nodes: ExprNode[], targets: number[]): number[] {
  const need = new Set<number>();
  const visit = (v: number): void => {
    const n = nodes[v]!;
    if (!n.col || need.has(v)) return;
    need.add(v);
    if (n.k === "op") n.args.forEach(visit);
  };
  targets.forEach(visit);
  return [...need].sort((a, b) => a - b);
}

/** The plan of a kernel's vector path; `stream`: of its scalar path, with the same threads, streaming the rows. */
function planRows(spec: KernelSpec, tune: EmitTuning, stream = false): RowPlan {
  const { nodes } = spec;
  // sum(exp(A - max(A))): the sum is taken online with the max, in the max's pass
  const online = new Map<number, number>();
  nodes.forEach((n, i) => {
    if (!tune.online || n.k !== "reduce" || n.fn !== "sum") return;
    const e = nodes[n.arg]!;
    if (e.k !== "op" || e.op !== "exp" || !e.col) return;
    const d = nodes[e.args[0]!]!;
    if (d.k !== "op" || d.op !== "sub" || !d.col) return;
    const m = nodes[d.args[1]!]!;
    if (m.k !== "reduce" || m.fn !== "max" || m.arg !== d.args[0] || !nodes[m.arg]!.col || nodes[m.arg]!.dtype === "i32") return;
    if ([...online.values()].includes(d.args[1]!)) return;
    online.set(i, d.args[1]!);
  });

  const ready = nodes.map(() => 0), dep = nodes.map(() => 0);
  const avail = (a: number) => (nodes[a]!.col ? dep[a]! : ready[a]!);
  nodes.forEach((n, i) => {
    if (n.k === "op") (n.col ? dep : ready)[i] = Math.max(0, ...n.args.map(avail));
    else if (n.k === "reduce") ready[i] = online.has(i) ? ready[online.get(i)!]! : 1 + avail(n.arg);
    else if (n.k === "pick") ready[i] = Math.max(ready[n.index]!, avail(n.arg));
  });
  const K = Math.max(0, ...nodes.map((n, i) => (n.k === "reduce" ? ready[i]! : 0)));
  const shapes: Omit<Pass, "need" | "captures">[] = [], targets: number[][] = [];
  for (let p = 1; p <= K; p++) {
    const reduces = nodes.flatMap((n, i) => (n.k === "reduce" && ready[i] === p ? [i] : []));
    shapes.push({ reduces, results: [] });
    targets.push(reduces.filter((r) => !online.has(r)).map((r) => (nodes[r] as Reduce).arg));
  }
  const L = spec.axes - 1;
  const rowResults = spec.results.flatMap((r, j) => (r.axes[L] !== "none" ? [j] : []));
  if (rowResults.length) {
    shapes.push({ reduces: [], results: rowResults });
    targets.push(rowResults.map((j) => spec.results[j]!.node));
  }
  // which column nodes each pass computes; with caching, one an earlier pass computed is kept in registers
  const expOf = new Map([...online].map(([s]) => [(nodes[s] as Reduce).arg, s]));
  const assign = (cache: boolean) => {
    const computed = new Set<number>(), cached = new Set<number>();
    const need = targets.map((ts, p) => {
      // the online passes before this one computed their sums' exps (kept only with keepExp)
      if (cache && tune.keepExp) for (const [e, s] of expOf) if (ready[s]! <= p) computed.add(e);
      const nd = new Set<number>();
      const visit = (v: number): void => {
        const n = nodes[v]!;
        if (!n.col || nd.has(v)) return;
        if (cache && computed.has(v)) return void cached.add(v);
        nd.add(v);
        if (n.k === "op") n.args.forEach(visit);
      };
      ts.forEach(visit);
      nd.forEach((v) => computed.add(v));
      return [...nd].sort((a, b) => a - b);
    });
    return { need, cached };
  };

  const V = vecWidth(spec, L), maxRow = spec.bounds.row;
  const withCache = assign(true);
  // registers of row data in the fullest pass: what is kept so far and the packs the pass reads
  const regs = (chunks: number, i: number) => Math.ceil((chunks * V * byteSize((expOf.has(i) ? undefined : keptDtype(spec, i)) ?? "f32")) / 4) + (expOf.has(i) ? chunks : 0);
  const rowRegs = (chunks: number) =>
    Math.max(0, ...withCache.need.map((nd, p) => {
      const kept = [...withCache.cached].filter((c) => withCache.need.findIndex((x) => x.includes(c)) <= p).reduce((s, i) => s + regs(chunks, i), 0);
      return kept + nd.filter((i) => nodes[i]!.k === "load" && !withCache.cached.has(i)).reduce((s, i) => s + regs(chunks, i), 0);
    }));

  let T: number, chunks = 0;
  if (maxRow <= 1024) {
    // a warp's lanes split into groups of T, each with about two vectors of a row or more
    T = Math.min(32, pow2ceil(Math.ceil(maxRow / (V * 2))));
    const c = Math.max(1, Math.ceil(maxRow / (T * V)));
    if (rowRegs(c) <= WARP_ROW_REGS) chunks = c;
  } else {
    for (T = Math.min(1024, Math.max(128, pow2ceil(Math.ceil(maxRow / (V * PACKS))))); ; T *= 2) {
      const c = Math.ceil(maxRow / (T * V));
      if (rowRegs(c) <= ROW_REGS) {
        chunks = c;
        break;
      }
      if (T >= 1024) break;
    }
    if (!chunks) T = Math.min(1024, Math.max(128, pow2ceil(Math.ceil(maxRow / (V * 4)))));
  }
  // the cap that keeps OCCUPANCY threads on an SM (or, where rows are streamed or need more
  // registers, half of that: 128 registers a thread)
  const block = T <= 32 ? 256 : T;
  const minBlocks = Math.max(1, Math.floor((chunks && rowRegs(chunks) <= ROW_REGS ? tune.occupancy : tune.occupancy / 2) / block));
  if (stream) chunks = 0;
  const { need, cached } = chunks ? withCache : assign(false);
  const passes: Pass[] = shapes.map((s, p) => ({ ...s, need: need[p]!, captures: [] }));

  // a pick's loads come from the first pass (before the pick is needed, after its column is known) that reads them
  const captured = new Map<string, string>();
  nodes.forEach((n, k) => {
    if (n.k !== "pick" || ready[k]! < 1) return;
    for (const a of closure(nodes, [n.arg])) {
      if (nodes[a]!.k !== "load") continue;
      const q = passes.findIndex((p, pi) => pi + 1 <= Math.min(K, ready[k]!) && ready[n.index]! < pi + 1 && p.need.includes(a));
      if (q < 0) continue;
      const c = { load: a, index: n.index };
      if (!passes[q]!.captures.some((x) => x.load === a && x.index === n.index)) passes[q]!.captures.push(c);
      captured.set(`${k}:${a}`, capName(c));
    }
  });
  const slots = Math.max(1, ...passes.map((p) => p.reduces.length + p.captures.length));
  const keepExp = new Map([...cached].filter((c) => expOf.has(c)).map((c) => [c, expOf.get(c)!] as const));
  return { T, V, chunks, ready, passes, cached, online, keepExp, captured, slots, minBlocks };
}

export function rowRule(spec: KernelSpec, index: LaunchRule["index"], params: Param[], tune: EmitTuning = DEFAULT_TUNING): LaunchRule {
  const p = planRows(spec, tune);
  return { kind: "row", block: p.T <= 32 ? 256 : p.T, vec: p.V, rowThreads: p.T, chunks: p.chunks, index, params };
}

export function emitRow(src: Src, spec: KernelSpec, name: string, rule: LaunchRule, tune: EmitTuning = DEFAULT_TUNING): void {
  const main = planRows(spec, tune);
  const args = rule.params.map((p) => p.name).join(", ");
  // the vector path keeps rows in registers; the scalar one (columns T apart, any alignment) streams them
  if (main.V > 1) {
    rowBody(src, spec, `${name}_vec`, rule, main, true, tune);
    rowBody(src, spec, `${name}_any`, rule, main.chunks ? planRows(spec, tune, true) : main, false, tune);
  } else rowBody(src, spec, `${name}_any`, rule, main, false, tune);
  src.line("");
  src.line(`extern "C" __global__ void __launch_bounds__(${rule.block}, ${main.minBlocks}) ${name}(`);
  src.line(...rule.params.map((p, i) => `    ${paramDecl(spec, rule, p)}${i === rule.params.length - 1 ? ") {" : ","}`));
  src.enter();
  if (main.V > 1) src.line(`if (vec) ${name}_vec(${args});`, `else ${name}_any(${args});`);
  else src.line(`${name}_any(${args});  // no tensor walks the row contiguously: no vector path`);
  src.close();
}

function rowBody(src: Src, spec: KernelSpec, fname: string, rule: LaunchRule, plan: RowPlan, vec: boolean, tune: EmitTuning): void {
  const { T, V, chunks, ready, passes, cached, online, keepExp, captured, slots } = plan;
  const I = idxType(rule), L = spec.axes - 1, nIn = spec.operands.length, nodes = spec.nodes;
  const warp = T <= 32, perWarp = 32 / T, NW = T / 32, split = spec.split;
  const vt = (i: number) => valueType(nodes[i]!.dtype);
  const rawType = (i: number) => storageType(spec.operands[(nodes[i] as Load).operand]!.dtype);
  const tensors = [...spec.operands, ...spec.results];
  const maxOf = new Map([...online].map(([s, m]) => [m, s]));

  src.line(`static __device__ __forceinline__ void ${fname}(`);
  src.line(...rule.params.map((p, i) => `    ${paramDecl(spec, rule, p)}${i === rule.params.length - 1 ? ") {" : ","}`));
  src.enter();
  src.line(`constexpr bool V = ${vec};  // ${vec ? `vector path: ${VEC_NOTE}` : "columns tid, tid + T, ..."}`);
  src.line(`constexpr int T = ${T}, VEC = ${V};  // threads per row, columns per vector${chunks ? `; ${chunks} vector(s) per thread per row tensor` : ""}`);
  if (split) {
    if (warp) throw new Error(`row kernel ${fname}: parts of ${split.chunk} columns take a block each (a bug in split.ts or planRows)`);
    src.line(`constexpr int CHUNK = ${split.chunk};  // columns per part: each row of ncol columns is n${L - 1} parts, each a row here`);
  }
  if (!warp) {
    src.line(`__shared__ float red[${2 * slots * 32}];  // per-warp partials; two halves, used in turn`);
    src.line("int half = 0;");
  }
  src.line(`const int tid = threadIdx.x${warp ? ` & ${T - 1}` : ""};  // the thread's place in its row`);
  src.line(`const ${I} rows = ${L ? Array.from({ length: L }, (_, a) => `n${a}`).join(" * ") : "1"};`);
  src.line("const unsigned nb = gridDim.x;  // one wave (launch.ts); the blocks stride over the rows");
  if (warp) {
    // the loop runs while any row of the warp is live, so every lane reaches the shuffles; a group
    // past the last row works on the warp's first row with nothing to read or write (n = 0)
    const step = (rule.block / 32) * perWarp;
    src.open(`for (${I} first = ((${I})blockIdx.x * ${rule.block / 32} + (threadIdx.x >> 5)) * ${perWarp}; first < rows; first += (${I})nb * ${step})`);
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
    src.open(`for (${I} row = blockIdx.x; row < rows; row += nb)`);
    if (!split) src.line("const int n = ncol;");
  }
  const live = warp && perWarp > 1 ? " && live" : "";
  decompose(src, I, "row", L, (a) => `n${a}`);
  // a split kernel's row is part i(L-1) of a longer row: its columns start at c0
  if (split) src.line(`const ${I} c0 = (${I})i${L - 1} * CHUNK;`, "const int n = ncol - (int)c0 < CHUNK ? ncol - (int)c0 : CHUNK;");
  tensors.forEach((ts, t) => {
    const off = offset(spec, t, L), st = storageType(ts.dtype);
    const start = !split ? "" : ts.axes[L] === "unit" ? " + c0" : ` + c0 * ${t < nIn ? `in${t}` : `out${t - nIn}`}_s${L}`;
    if (ts.axes[L] === "none") src.line(`const ${I} o${t} = ${off};`);
    else if (t < nIn) src.line(`const ${st}* __restrict__ p${t} = in${t} + (${off})${start};`);
    else src.line(`${st}* __restrict__ q${t - nIn} = out${t - nIn} + (${off})${start};`);
  });
  for (const c of [...cached].sort((a, b) => a - b)) {
    const n = nodes[c]!, kd = keptDtype(spec, c);
    if (keepExp.has(c)) src.line(`float c${c}[${chunks * V}], m${c}[${chunks}];  // ${n.of}: exp(x - m) as the online pass computed it, m its vector's running max`);
    else if (n.k === "load") src.line(`sh_pack<${rawType(c)}, VEC> r${c}[${chunks}];  // in${n.operand}: this thread's part of the row, kept for later passes`);
    else if (kd) src.line(`sh_pack<${storageType(kd)}, VEC> r${c}[${chunks}];  // ${n.of}: kept for a later pass (${kd}, as stored)`);
    else src.line(`${vt(c)} c${c}[${chunks * V}];  // ${n.of}: kept for a later pass`);
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
      else if (n.k === "op") src.line(`const ${vt(i)} v${i} = ${opExpr(n.op, n.dtype, n.args.map((a) => ({ e: ref(a, (x) => `v${x}`), dtype: nodes[a]!.dtype })), tune.fast)};  // ${comment(n)}`);
      else emitPick(i, n);
    });
    spec.results.forEach((r, j) => {
      if (r.axes[L] === "none" && ready[r.node] === p) src.line(`if (tid == 0${live}) sh_put(out${j}[o${nIn + j}], ${ref(r.node, String)});`);
    });
  };
  // a gather along the row: the picked column's value, evaluated at that one column
  const emitPick = (i: number, n: Pick) => {
    const fail = n.dtype === "i32" ? "0" : "sh_nan()";
    const col = closure(nodes, [n.arg]);
    const from = col.filter((a) => nodes[a]!.k === "load").map((a) => (captured.has(`${i}:${a}`) ? "registers" : "memory"));
    src.line(`${vt(i)} v${i};  // ${n.of}: the value at column ${ref(n.index, String)} (-1: padding, 0)${from.length ? `; read from ${[...new Set(from)].join(" and ")}` : ""}`);
    src.open("");
    src.line(`const int col = (int)${ref(n.index, String)};`);
    src.line(`if (col == -1) v${i} = 0;`, `else if (col < 0 || col >= n) v${i} = ${fail};`);
    src.open("else");
    for (const a of col) {
      const m = nodes[a]!;
      if (m.k === "load") {
        const t = m.operand, got = captured.get(`${i}:${a}`);
        src.line(`const ${vt(a)} w${a} = ${got ?? `sh_get(p${t}[${spec.operands[t]!.axes[L] === "unit" ? "col" : `(${I})col * in${t}_s${L}`}])`};`);
      } else if (m.k === "op") src.line(`const ${vt(a)} w${a} = ${opExpr(m.op, m.dtype, m.args.map((x) => ({ e: ref(x, (y) => `w${y}`), dtype: nodes[x]!.dtype })), tune.fast)};`);
    }
    src.line(`v${i} = ${ref(n.arg, (y) => `w${y}`)};`);
    src.close();
    src.close();
  };

  // the packs of load i for chunk c (chunk mode) or for this step of the stream
  const raw = (i: number) => (chunks ? `r${i}[c]` : `r${i}`);
  const loadRaw = (i: number, into: string) => {
    const t = (nodes[i] as Load).operand;
    src.line(spec.operands[t]!.axes[L] === "unit" ? `sh_ld_raw<V, VEC, T>(p${t}, col0, n, ${into});` : `sh_ld_raw_strided<V, VEC, T>(p${t}, in${t}_s${L}, col0, n, ${into});`);
  };

  // Softmax's output pass: exp(x - max) as exp2 (its argument is <= 0: sh_exp2), and the division by
  // the row's sum of exp (>= 1 where finite) as a product with its reciprocal. Other ops as the table has them.
  const exps = new Set([...online.keys()].map((r) => (nodes[r] as Reduce).arg));
  // (with the fast tuning, a division by any row sum is a product with its reciprocal too)
  const rowSum = (d: number) => online.has(d) || (tune.fast && nodes[d]!.k === "reduce" && (nodes[d] as Reduce).fn === "sum");
  const divides = new Set(nodes.flatMap((n) => (n.k === "op" && n.op === "div" && n.col && rowSum(n.args[1]!) && nodes[n.args[0]!]!.dtype !== "i32" ? [n.args[1]!] : [])));
  const colOp = (i: number, n: Extract<ExprNode, { k: "op" }>, colRef: (x: number) => string): string => {
    const a = n.args.map((x) => ref(x, colRef));
    if (exps.has(i)) return roundTo(n.dtype, `sh_exp2((${a[0]}) * SH_LOG2E)`);
    if (n.op === "div" && divides.has(n.args[1]!) && nodes[n.args[0]!]!.dtype !== "i32") return roundTo(n.dtype, `${a[0]} * rs${n.args[1]}`);
    return opExpr(n.op, n.dtype, n.args.map((x, k) => ({ e: a[k]!, dtype: nodes[x]!.dtype })), tune.fast);
  };

  perRow(0);
  passes.forEach((pass, pi) => {
    const p = pi + 1, need = new Set(pass.need);
    const what = pass.reduces.length
      ? pass.reduces.filter((r) => !online.has(r)).map((r) => (maxOf.has(r) ? `max and sum of exp (${nodes[r]!.of}), online` : `${(nodes[r] as Reduce).fn} (${nodes[r]!.of})`)).join(", ")
      : "write the results";
    src.line(`// pass ${p}: ${what}${pass.captures.length ? `; picks ${pass.captures.map((c) => `in${(nodes[c.load] as Load).operand}`).join(", ")} at its column` : ""}`);
    for (const r of pass.reduces) {
      const fn = (nodes[r] as Reduce).fn;
      src.line(`float a${r} = ${fn === "sum" ? "0.0f" : "-sh_inf()"};${online.has(r) ? `  // sum of exp(x - a${online.get(r)})` : ""}`);
    }
    const idx = [...new Set(pass.captures.map((c) => c.index))];
    for (const x of idx) src.line(`const int t${x}_${p} = (int)${ref(x, String)};`);
    // a pick's bits: the owning thread's; in a block, put straight into their shared-memory slot
    const capSlot = (c: Capture) => `red[half + ${(pass.reduces.length + pass.captures.indexOf(c)) * 32}]`;
    const bits = (c: Capture, e: string) => (vt(c.load) === "int" ? `(unsigned)${e}` : `__float_as_uint(${e})`);
    const capture = (c: Capture, value: string) => (warp ? `b${c.load}_${c.index} = ${bits(c, value)};` : `${capSlot(c)} = __uint_as_float(${bits(c, value)});`);
    for (const c of pass.captures) src.line(`unsigned b${c.load}_${c.index} = 0u;`);
    const loads = pass.need.filter((i) => nodes[i]!.k === "load");
    // the narrow packs an earlier pass kept that this one reads
    const targets = [...pass.reduces.map((r) => (online.has(r) ? (nodes[online.get(r)!] as Reduce).arg : (nodes[r] as Reduce).arg)), ...pass.results.map((j) => spec.results[j]!.node)];
    const reads = new Set([...targets, ...pass.need.flatMap((i) => { const n = nodes[i]!; return n.k === "op" ? n.args : []; })]);
    const kept = [...reads].filter((x) => cached.has(x) && !need.has(x) && (byteSize(keptDtype(spec, x) ?? "f32") < 4) && (V * byteSize(keptDtype(spec, x)!)) % 4 === 0).sort((a, b) => a - b);
    if (chunks) {
      // the pass's reads, all issued before any is used
      for (const i of loads) if (!cached.has(i)) src.line(`sh_pack<${rawType(i)}, VEC> r${i}[${chunks}];`);
      if (loads.length) {
        src.line("#pragma unroll");
        src.open(`for (int c = 0; c < ${chunks}; ++c)`);
        src.line("const int col0 = V ? (c * T + tid) * VEC : c * VEC * T + tid;");
        for (const i of loads) loadRaw(i, `r${i}[c]`);
        src.close();
      }
      src.line("#pragma unroll");
      src.open(`for (int c = 0; c < ${chunks}; ++c)`);
      src.line("const int col0 = V ? (c * T + tid) * VEC : c * VEC * T + tid;");
      src.line("if (V && col0 >= n) continue;  // (vectors lie wholly inside the row or past it)");
      for (const x of kept) src.line(`if (V) sh_launder(r${x}[c]);`);
      // a kept exp's rescale from its vector's running max to the row's (0 where nothing finite was seen yet)
      for (const x of [...reads].filter((r) => keepExp.has(r) && !need.has(r))) {
        const m = online.get(keepExp.get(x)!)!;
        src.line(`const float f${x} = m${x}[c] == -sh_inf() ? 0.0f : sh_exp2((m${x}[c] - v${m}) * SH_LOG2E);`);
      }
    } else {
      src.open("for (int col0 = V ? tid * VEC : tid; col0 < n; col0 += T * VEC)");
      for (const i of loads) {
        src.line(`sh_pack<${rawType(i)}, VEC> r${i};`);
        loadRaw(i, `r${i}`);
      }
    }
    for (const j of pass.results) src.line(`${valueType(spec.results[j]!.dtype)} s${j}[VEC];`);
    const pairs = pass.reduces.filter((r) => online.has(r));
    for (const s of pairs) src.line(`float x${s}[VEC];  // the values whose max and sum of exp pass ${p} takes`);
    // a column value this pass computes, or one an earlier pass kept
    const colRef = (x: number) => (need.has(x) ? `v${x}` : keepExp.has(x) ? `(c${x}[c * VEC + e] * f${x})` : keptDtype(spec, x) ? `sh_get(${raw(x)}.v[e])` : `c${x}[c * VEC + e]`);
    src.line("#pragma unroll");
    src.open("for (int e = 0; e < VEC; ++e)");
    if (pass.reduces.length || pass.captures.length) src.line("const int col = V ? col0 + e : col0 + e * T;");
    if (pass.reduces.length) src.line("const bool ok = V || col < n;");
    for (const i of pass.need) {
      const n = nodes[i]!;
      if (n.k === "load") src.line(`const ${vt(i)} v${i} = sh_get(${raw(i)}.v[e]);`);
      else if (n.k === "op") src.line(`const ${vt(i)} v${i} = ${colOp(i, n, colRef)};  // ${comment(n)}`);
      if (cached.has(i) && n.k !== "load") src.line(keptDtype(spec, i) ? `sh_put(${raw(i)}.v[e], v${i});` : `c${i}[c * VEC + e] = v${i};`);
    }
    for (const r of pass.reduces) {
      const n = nodes[r] as Reduce;
      if (online.has(r)) src.line(`x${r}[e] = ok ? ${ref((nodes[online.get(r)!] as Reduce).arg, colRef)} : -sh_inf();`);
      else if (!maxOf.has(r)) src.line(n.fn === "sum" ? `if (ok) a${r} += ${ref(n.arg, colRef)};` : `if (ok) a${r} = sh_max2(a${r}, ${ref(n.arg, colRef)});`);
    }
    for (const c of pass.captures) src.line(`if (!V && col == t${c.index}_${p}) ${capture(c, `v${c.load}`)}`);
    for (const j of pass.results) src.line(`s${j}[e] = ${ref(spec.results[j]!.node, colRef)};`);
    src.close();
    // the vector holding a pick's column (at most one thread's, once a row) gives its value
    for (const c of pass.captures) {
      src.open(`if (V && (unsigned)(t${c.index}_${p} - col0) < VEC)`);
      src.line("#pragma unroll", `for (int e = 0; e < VEC; ++e) if (col0 + e == t${c.index}_${p}) ${capture(c, `sh_get(${raw(c.load)}.v[e])`)}`);
      src.close();
    }
    // online: this vector's max, the running sum rescaled to it, and the vector's exp(x - max) added
    for (const s of pairs) {
      const m = online.get(s)!;
      src.open("");
      src.line(`float mv = x${s}[0];`);
      src.line("#pragma unroll", `for (int e = 1; e < VEC; ++e) mv = sh_max_nan(mv, x${s}[e]);`);
      src.line(`const float mx = sh_max_nan(a${m}, mv), base = mx == -sh_inf() ? 0.0f : mx;`);
      src.line(`a${s} = sh_rescale(a${s}, a${m}, mx);`);
      const e = (nodes[s] as Reduce).arg;
      if (keepExp.has(e)) {
        src.line(`m${e}[c] = mx;`);
        src.line("#pragma unroll", `for (int e = 0; e < VEC; ++e) a${s} += (c${e}[c * VEC + e] = sh_exp2((x${s}[e] - base) * SH_LOG2E));`);
      } else src.line("#pragma unroll", `for (int e = 0; e < VEC; ++e) a${s} += sh_exp2((x${s}[e] - base) * SH_LOG2E);`);
      src.line(`a${m} = mx;`);
      src.close();
    }
    for (const j of pass.results)
      src.line(spec.results[j]!.axes[L] === "unit" ? `sh_st_row<V, VEC, T>(q${j}, col0, n, s${j});` : `sh_st_row_strided<V, VEC, T>(q${j}, out${j}_s${L}, col0, n, s${j});`);
    src.close();
    if (pass.reduces.length) {
      combine(pass, warp ? T : 32);
      if (!warp) {
        // one shared-memory step for all of the pass's reductions: lane 0 of each warp puts its partials
        src.open("");
        src.line("const int lane = threadIdx.x & 31;");
        src.open("if (lane == 0)");
        pass.reduces.forEach((r, k) => src.line(`red[half + ${k * 32} + (threadIdx.x >> 5)] = a${r};`));
        src.close();
        src.line("__syncthreads();");
        const at = (k: number) => `red[half + ${k * 32} + (lane & ${NW - 1})]`;
        const slot = new Map(pass.reduces.map((r, k) => [`a${r}`, k]));
        for (const r of pass.reduces) {
          if (online.has(r)) continue;
          if (maxOf.has(r)) src.line(`a${r} = ${at(slot.get(`a${r}`)!)};`, `a${maxOf.get(r)} = ${at(slot.get(`a${maxOf.get(r)}`)!)};`);
          else src.line(`a${r} = ${at(slot.get(`a${r}`)!)};`);
        }
        combine(pass, NW);
        for (const c of pass.captures) src.line(`b${c.load}_${c.index} = __float_as_uint(${capSlot(c)});`);
        src.line(`half ^= ${slots * 32};`);
        src.close();
      }
      for (const r of pass.reduces) {
        const n = nodes[r] as Reduce;
        if (online.has(r)) {
          const m = online.get(r)!;
          src.line(`const float v${r} = ${roundTo(n.dtype, `sh_online_sum(a${m}, a${r}, v${m}, n)`)};  // ${n.of}: sum of exp(x - v${m})`);
        } else src.line(`const float v${r} = ${roundTo(n.dtype, `a${r}`)};  // ${n.fn} (${n.of})`);
        if (divides.has(r)) src.line(`const float rs${r} = 1.0f / v${r};`);
      }
      for (const c of pass.captures)
        src.line(`const ${vt(c.load)} ${capName(c)} = ${vt(c.load) === "int" ? `(int)b${c.load}_${c.index}` : `__uint_as_float(b${c.load}_${c.index})`};  // in${(nodes[c.load] as Load).operand} at column t${c.index}_${p}`);
      perRow(p);
    }
  });
  src.close();
  src.close();

  // every accumulator of the pass combined over aligned groups of G lanes (and, in a warp, the picks' bits)
  function combine(pass: Pass, G: number) {
    for (const r of pass.reduces) {
      if (online.has(r)) continue;
      if (maxOf.has(r)) src.line(`sh_group_online<${G}>(a${r}, a${maxOf.get(r)});`);
      else src.line(`a${r} = sh_group_${(nodes[r] as Reduce).fn}<${G}>(a${r});`);
    }
    if (warp) for (const c of pass.captures) src.line(`b${c.load}_${c.index} = sh_group_or<${G}>(b${c.load}_${c.index});`);
  }
}
