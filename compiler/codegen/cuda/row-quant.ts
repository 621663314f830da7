// Row kernels with a quantize epilogue (spec.quant, kind "row": RMSNorm → quantize): a 256-thread
// block takes a row; its NG aligned groups of G = 128/VEC lanes take the row's 128-column tiles in
// turn (group g tiles g, g + NG, ...), each lane VEC consecutive columns of a tile. Pass 1 walks the
// tiles and accumulates the reductions (one level: their arguments read no other reduction),
// combined by shuffles within each group and then over the groups in shared memory (a fixed order);
// the per-row values follow; pass 2 walks the tiles again (a reread, from L2: a block per row keeps
// about 8 rows an SM in flight, a few MiB in all), computes the results, takes each tile's amax by
// shuffles within its group and writes the e4m3 bytes, lane 0 the tile's scale, and the other
// results. Every group runs the same number of tile steps (a tile past the row has no columns), so
// every lane reaches the shuffles and barriers. vec = 1 (ncol a multiple of VEC, 16-byte aligned
// pointers) moves each lane's columns as one pack where a tensor walks the row contiguously; else
// element by element. With rule.chunks (tuning.quantRowRegs, rows of at most ROW_QUANT_MAX_CHUNKS
// steps) every step's packs of both passes are loaded together before pass 1 and held in registers,
// so pass 2 re-reads nothing (measured slower on an H200, so not the default: bench/NOTES.md).
import type { ExprNode, KernelSpec } from "../types.ts";
import { literal, opExpr, roundTo, storageType, valueType } from "./ops.ts";
import { decompose, idxType, offset, paramDecl, type LaunchRule, Src } from "./common.ts";
import { DEFAULT_TUNING, type EmitTuning } from "./tuning.ts";
import { closure } from "./row.ts";


/** Most chunks of the block's width (block · vec columns) a row may have to be held in registers. */
export const ROW_QUANT_MAX_CHUNKS = 8;

/** Chunks of `block` · `vec` columns that hold the longest row (spec.bounds.row) in registers; 0 when it needs more than ROW_QUANT_MAX_CHUNKS. */
export function rowQuantChunks(spec: KernelSpec, block: number, vec: number): number {
  const c = Math.max(1, Math.ceil(spec.bounds.row / (block * vec)));
  return c <= ROW_QUANT_MAX_CHUNKS ? c : 0;
}

export function emitRowQuant(src: Src, spec: KernelSpec, name: string, rule: LaunchRule, tune: EmitTuning = DEFAULT_TUNING): void {
  const quant = spec.quant!, nodes = spec.nodes;
  const I = idxType(rule), A = spec.axes, L = A - 1, V = rule.vec, G = 128 / V, B = rule.block, nIn = spec.operands.length;
  // non-col values that need a reduction come after pass 1; the others before it
  const late = nodes.map(() => false);
  nodes.forEach((n, i) => (late[i] = n.k === "reduce" || (n.k === "op" && n.args.some((a) => late[a]!))));
  const reduces = nodes.flatMap((n, i) => (n.k === "reduce" ? [i] : []));
  const ref = (i: number): string => (nodes[i]!.k === "const" ? literal(nodes[i]!.dtype, (nodes[i] as { value: number }).value) : `v${i}`);

  src.line(`extern "C" __global__ void __launch_bounds__(${B}) ${name}(`);
  src.line(...rule.params.map((p, i) => `    ${paramDecl(spec, rule, p)}${i === rule.params.length - 1 ? ") {" : ","}`));
  src.enter();
  src.line(`constexpr int VEC = ${V}, G = ${G}, NG = ${B / G};  // columns per lane, lanes per tile, tiles a step`);
  if (reduces.length) src.line(`__shared__ float red[${reduces.length}][NG];  // the groups' partial reductions`);
  src.line(`const ${I} rows = ${L ? Array.from({ length: L }, (_, a) => `n${a}`).join(" * ") : "1"};`);
  src.line("const bool V = vec && ncol % VEC == 0;");
  src.line("const int g = threadIdx.x / G, lane = threadIdx.x & (G - 1);");
  src.open(`for (${I} row = blockIdx.x; row < rows; row += gridDim.x)`);
  src.line("const int n = ncol;");
  decompose(src, I, "row", L, (a) => `n${a}`);
  const perRow = (lateOnes: boolean) =>
    nodes.forEach((nd, i) => {
      if (nd.col || late[i] !== lateOnes || nd.k === "const") return;
      if (nd.k === "load") src.line(`const ${valueType(nd.dtype)} v${i} = sh_get(in${nd.operand}[${offset(spec, nd.operand, L)}]);`);
      else if (nd.k === "op") src.line(`const ${valueType(nd.dtype)} v${i} = ${opExpr(nd.op, nd.dtype, nd.args.map((a) => ({ e: ref(a), dtype: nodes[a]!.dtype })), tune.fast)};  // ${nd.of}: ${nd.op}`);
      else if (nd.k === "reduce") src.line(`const float v${i} = ${roundTo(nd.dtype, `r${i}`)};  // ${nd.fn} (${nd.of})`);
    });
  perRow(false);

  const CH = rule.chunks;
  /** This group's tile of a step at column `base`: t0, this lane's first column and count, and i<L>. */
  const tileHead = (base: string) => {
    src.line(`const int t0 = ${base} + g * 128;  // this group's tile`);
    src.line("const int col0 = t0 + lane * VEC, cnt = col0 >= n ? 0 : (n - col0 < VEC ? n - col0 : VEC);  // this lane's columns");
    src.line(`const ${I} i${L} = col0;`, `(void)i${L};  // (a pass over a held row may store nothing)`);
  };
  /** Load node `i`'s pack for the current tile into `dst`. */
  const load = (i: number, dst: string) => {
    const t = (nodes[i] as Extract<ExprNode, { k: "load" }>).operand, st = storageType(spec.operands[t]!.dtype), u = spec.operands[t]!.axes[L];
    if (u === "unit") src.line(`if (V && cnt) ${dst} = *reinterpret_cast<const sh_pack<${st}, VEC>*>(in${t} + (${offset(spec, t, A)}));`);
    src.line(`${u === "unit" ? "else " : ""}_Pragma("unroll") for (int e = 0; e < VEC; ++e) if (e < cnt) ${dst}.v[e] = in${t}[${offset(spec, t, A)}${u === "unit" ? " + e" : ` + (${I})e * in${t}_s${L}`}];`);
  };
  const packType = (i: number) => `sh_pack<${storageType(spec.operands[(nodes[i] as Extract<ExprNode, { k: "load" }>).operand]!.dtype)}, VEC>`;
  const loadNodes = (targets: number[]) => closure(nodes, targets).filter((i) => nodes[i]!.k === "load");

  /**
   * One walk over the row's tiles: its col nodes per element, then `body`. Without chunks the pass's
   * loads come first in each step (a re-read of the row); with chunks (rule.chunks: the row held in
   * registers) the packs were all loaded by holdRow and the steps are unrolled.
   */
  const walk = (targets: number[], pre: () => void, body: () => void, after: () => void) => {
    const need = closure(nodes, targets);
    if (CH) {
      src.line("#pragma unroll");
      src.open(`for (int c = 0; c < ${CH}; ++c)`);
      tileHead("c * NG * 128");
    } else {
      src.open("for (int base = 0; base < ncol; base += NG * 128)");
      tileHead("base");
      for (const i of need) {
        if (nodes[i]!.k !== "load") continue;
        src.line(`${packType(i)} p${i}{};`);
        load(i, `p${i}`);
      }
    }
    pre();
    src.line("#pragma unroll");
    src.open("for (int e = 0; e < VEC; ++e)");
    for (const i of need) {
      const nd = nodes[i]!;
      if (nd.k === "load") src.line(`const float v${i} = sh_get(p${i}${CH ? "[c]" : ""}.v[e]);`);
      else if (nd.k === "op") src.line(`const ${valueType(nd.dtype)} v${i} = ${opExpr(nd.op, nd.dtype, nd.args.map((a) => ({ e: ref(a), dtype: nodes[a]!.dtype })), tune.fast)};  // ${nd.of}: ${nd.op}`);
    }
    body();
    src.close();
    after();
    src.close();
  };
  /** With chunks: every col load of both passes, all chunks, issued together (held for both passes). */
  const holdRow = (targets: number[]) => {
    if (!CH) return;
    const loads = loadNodes(targets);
    for (const i of loads) src.line(`${packType(i)} p${i}[${CH}] = {};  // this thread's part of the row`);
    src.line("#pragma unroll");
    src.open(`for (int c = 0; c < ${CH}; ++c)`);
    tileHead("c * NG * 128");
    for (const i of loads) load(i, `p${i}[c]`);
    src.close();
  };

  const colResults = spec.results.flatMap((r, j) => (j !== quant.scales && r.axes[L] !== "none" ? [j] : []));
  holdRow([...reduces.map((r) => (nodes[r] as { arg: number }).arg), ...colResults.map((j) => spec.results[j]!.node)]);

  // pass 1: the reductions
  if (reduces.length) {
    for (const r of reduces) src.line(`float a${r} = ${(nodes[r] as { fn: string }).fn === "sum" ? "0.0f" : "-sh_inf()"};`);
    walk(reduces.map((r) => (nodes[r] as { arg: number }).arg), () => undefined, () => {
      for (const r of reduces) {
        const nd = nodes[r] as Extract<ExprNode, { k: "reduce" }>;
        src.line(nd.fn === "sum" ? `if (e < cnt) a${r} += ${ref(nd.arg)};` : `if (e < cnt) a${r} = sh_max2(a${r}, ${ref(nd.arg)});`);
      }
    }, () => undefined);
    // the groups' partials, combined in group order
    reduces.forEach((r, k) => src.line(`a${r} = sh_group_${(nodes[r] as { fn: string }).fn}<G>(a${r});`, `if (lane == 0) red[${k}][g] = a${r};`));
    src.line("__syncthreads();");
    reduces.forEach((r, k) => {
      const fn = (nodes[r] as { fn: string }).fn;
      src.line(`float r${r} = red[${k}][0];`, `for (int w = 1; w < NG; ++w) r${r} = ${fn === "sum" ? `r${r} + red[${k}][w]` : `sh_max2(r${r}, red[${k}][w])`};`);
    });
    src.line("__syncthreads();  // (the next row's partials go to the same slots)");
  }
  perRow(true);
  spec.results.forEach((r, j) => {
    if (r.axes[L] === "none") src.line(`if (threadIdx.x == 0) sh_put(out${j}[${offset(spec, nIn + j, L)}], ${ref(r.node)});`);
  });

  // pass 2: the results, the tile's amax, bytes and scale
  src.line(`${valueType(nodes[quant.node]!.dtype)} x[VEC];`);
  walk(colResults.map((j) => spec.results[j]!.node), () => {
    for (const j of colResults) if (j !== quant.q) src.line(`sh_pack<${storageType(spec.results[j]!.dtype)}, VEC> q${j};`);
  }, () => {
    src.line(`x[e] = ${ref(quant.node)};`);
    for (const j of colResults) if (j !== quant.q) src.line(`sh_put(q${j}.v[e], ${ref(spec.results[j]!.node)});`);
  }, () => {
    src.line("float amax = 0.0f;");
    src.line("#pragma unroll", "for (int e = 0; e < VEC; ++e) if (e < cnt) amax = fmaxf(amax, fabsf(x[e]));  // NaN ignored");
    src.line("amax = sh_group_amax<G>(amax);", "float inv, scale;", "sh_inv_scale(amax, inv, scale);");
    src.line("if (cnt == 0) continue;");
    src.line("sh_pack<__nv_fp8_e4m3, VEC> b;");
    src.line("#pragma unroll", "for (int e = 0; e < VEC; ++e) sh_put(b.v[e], __fmul_rn(x[e], inv));");
    const store = (j: number, pack: string) => {
      const st = storageType(spec.results[j]!.dtype), off = offset(spec, nIn + j, A);
      if (spec.results[j]!.axes[L] === "unit") {
        src.line(`if (V) *reinterpret_cast<sh_pack<${st}, VEC>*>(out${j} + (${off})) = ${pack};`);
        src.line(`else _Pragma("unroll") for (int e = 0; e < VEC; ++e) if (e < cnt) out${j}[${off} + e] = ${pack}.v[e];`);
      } else src.line(`_Pragma("unroll") for (int e = 0; e < VEC; ++e) if (e < cnt) out${j}[${off} + (${I})e * out${j}_s${L}] = ${pack}.v[e];`);
    };
    store(quant.q, "b");
    for (const j of colResults) if (j !== quant.q) store(j, `q${j}`);
    const so = offset(spec, nIn + quant.scales, L), sl = spec.results[quant.scales]!.axes[L];
    const tileTerm = sl === "unit" ? "t0 / 128" : `t0 / 128 * out${quant.scales}_s${L}`;
    src.line(`if (lane == 0) out${quant.scales}[${so === "0" ? "" : `${so} + `}${tileTerm}] = scale;`);
  });
  src.close();
  src.close();
}
