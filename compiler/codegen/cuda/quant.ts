// Map kernels with a quantize epilogue (spec.quant): the fused expression is evaluated tile by tile,
// one 128-column tile of the innermost axis per aligned group of G = 128/(VEC·P) lanes, each lane VEC·P
// consecutive columns; the tile's amax is taken by shuffles among the group's lanes, then every lane
// writes its VEC e4m3 bytes and lane 0 the tile's f32 scale. Other results (a value also read
// outside the kernel) are written as a map kernel writes them. The vector path (vec = 1: ncol a
// multiple of VEC, 16-byte aligned pointers) moves each lane's columns as one pack where a tensor
// walks the axis contiguously; the scalar path reads and writes element by element (any width: the
// last tile of a row may be short). Warps stride over the tiles together, so every lane reaches the
// shuffles; a group past the last tile has no column to read or write. A trip takes U = rule.unroll
// tiles a group (tuning.quantUnroll): every tile's operand loads are issued first, then tile by tile
// the expression, amax and stores, so that U loads a lane are in flight at once instead of one. A lane
// takes P = rule.packs packs of VEC columns of its tile (tuning.quantPacks; G = 128 / (VEC · P)).
import type { KernelSpec } from "../types.ts";
import { byteSize, storageType, valueType } from "./ops.ts";
import { decompose, idxType, offset, paramDecl, tensorCount, tensorSpec, type LaunchRule, Src } from "./common.ts";
import { emitBody } from "./map.ts";
import { DEFAULT_TUNING, type EmitTuning } from "./tuning.ts";

/** Columns per lane: 16 bytes of the widest tensor walking the innermost axis contiguously (the scales aside). */
export function quantVec(spec: KernelSpec): number {
  const L = spec.axes - 1, s = spec.operands.length + spec.quant!.scales;
  let widest = 1;
  for (let t = 0; t < tensorCount(spec); t++) if (t !== s && tensorSpec(spec, t).axes[L] === "unit") widest = Math.max(widest, byteSize(tensorSpec(spec, t).dtype));
  return Math.max(4, 16 / widest);
}

export function emitQuant(src: Src, spec: KernelSpec, name: string, rule: LaunchRule, tune: EmitTuning = DEFAULT_TUNING): void {
  const quant = spec.quant!;
  const I = idxType(rule), A = spec.axes, L = A - 1, V = rule.vec, P = rule.packs ?? 1, U = rule.unroll ?? 1, G = 128 / (V * P), B = rule.block, nIn = spec.operands.length;
  const xType = valueType(spec.nodes[quant.node]!.dtype);
  // the body computes every result but the scales; the quantized value comes out as computed
  const bodyResults = spec.results.flatMap((r, j) => (j === quant.scales ? [] : [{ j, r: j === quant.q ? { ...r, dtype: spec.nodes[quant.node]!.dtype } : r }]));
  emitBody(src, { ...spec, results: bodyResults.map((b) => b.r) }, name, tune);
  src.line("");
  src.line(`extern "C" __global__ void __launch_bounds__(${B}) ${name}(`);
  src.line(...rule.params.map((p, i) => `    ${paramDecl(spec, rule, p)}${i === rule.params.length - 1 ? ") {" : ","}`));
  src.enter();
  src.line(`constexpr int VEC = ${V}, P = ${P}, W = VEC * P, G = ${G}, U = ${U};  // columns a pack, packs a lane, columns a lane, lanes a 128-column tile, tiles a lane group takes per trip`);
  const size = (a: number) => (a === L ? "ncol" : `n${a}`);
  src.line(`const ${I} ncol = n${L};`, `const ${I} kt = (ncol + 127) / 128;`);
  src.line(`const ${I} tiles = ${[...Array.from({ length: L }, (_, a) => `n${a}`), "kt"].join(" * ")};`);
  src.line("const bool V = vec && ncol % VEC == 0;");
  src.line(`const int g = (threadIdx.x & 31) / G, lane = threadIdx.x & (G - 1);`);
  src.line(`const ${I} step = (${I})gridDim.x * ${B / G} * U;`);
  src.open(`for (${I} first = ((${I})blockIdx.x * ${B / 32} + (threadIdx.x >> 5)) * ${32 / G} * U; first < tiles; first += step)`);
  /** Tile u of the trip: its row, this lane's first column and column count, and the indices i0.. of that column. */
  const tileHead = () => {
    src.line(`const ${I} t = first + (${I})u * ${32 / G} + g;`, "const bool live = t < tiles;");
    src.line(`const ${I} row = live ? t / kt : 0;`, `const ${I} col0 = (live ? t % kt : 0) * 128 + lane * W;`);
    src.line(`const int n = !live || col0 >= ncol ? 0 : (int)(ncol - col0 < W ? ncol - col0 : W);  // this lane's columns`);
    decompose(src, I, "row", L, size);
    src.line(`const ${I} i${L} = col0;`);
  };
  // phase 1: every tile's operands: packs (vector path, contiguous), once (broadcast along the axis), or element by element
  spec.operands.forEach((o, t) => {
    if (o.axes[L] === "none") src.line(`${valueType(o.dtype)} x${t}[U];`);
    else src.line(`sh_pack<${storageType(o.dtype)}, VEC> p${t}[U][P] = {};`);
  });
  src.line("#pragma unroll");
  src.open("for (int u = 0; u < U; ++u)");
  tileHead();
  const args: string[] = [];
  spec.operands.forEach((o, t) => {
    const st = storageType(o.dtype), u = o.axes[L];
    if (u === "none") {
      src.line(`if (n > 0) x${t}[u] = sh_get(in${t}[${offset(spec, t, A)}]);`);
      args.push(`x${t}[u]`);
      return;
    }
    const at = (e: string) => (u === "unit" ? `${offset(spec, t, A)} + ${e}` : `${offset(spec, t, A)} + (${I})(${e}) * in${t}_s${L}`);
    src.line("#pragma unroll");
    src.open("for (int k = 0; k < P; ++k)");
    src.line("if (n <= k * VEC) break;");
    src.line(
      u === "unit"
        ? `if (V) p${t}[u][k] = *reinterpret_cast<const sh_pack<${st}, VEC>*>(in${t} + (${at("k * VEC")}));`
        : `if (V) _Pragma("unroll") for (int e = 0; e < VEC; ++e) p${t}[u][k].v[e] = in${t}[${at("k * VEC + e")}];`,
    );
    src.line(`else _Pragma("unroll") for (int e = 0; e < VEC; ++e) if (k * VEC + e < n) p${t}[u][k].v[e] = in${t}[${at("k * VEC + e")}];`);
    src.close();
    args.push(`sh_get(p${t}[u][k / VEC].v[k % VEC])`);
  });
  src.close();
  // phase 2: tile by tile, the expression, the amax, the bytes
  src.line("#pragma unroll");
  src.open("for (int u = 0; u < U; ++u)");
  tileHead();
  src.line(`${xType} x[W];`, "float amax = 0.0f;");
  spec.results.forEach((r, j) => {
    if (j !== quant.scales && j !== quant.q && r.axes[L] === "unit") src.line(`sh_pack<${storageType(r.dtype)}, VEC> q${j}[P];`);
  });
  src.open("if (n > 0)");
  src.line("#pragma unroll");
  src.open("for (int k = 0; k < W; ++k)");
  bodyResults.forEach(({ j, r }) => src.line(`${valueType(r.dtype)} r${j};`));
  src.line(`${name}_f(${[...args, ...bodyResults.map(({ j }) => `r${j}`)].join(", ")});`);
  src.line(`x[k] = r${quant.q};`, `if (k < n) amax = fmaxf(amax, fabsf(x[k]));  // NaN ignored`);
  for (const { j, r } of bodyResults) {
    if (j === quant.q) continue;
    if (r.axes[L] === "unit") src.line(`sh_put(q${j}[k / VEC].v[k % VEC], r${j});`);
    else src.line(`if (k < n) sh_put(out${j}[${offset(spec, nIn + j, A)} + (${I})k * out${j}_s${L}], r${j});`);
  }
  src.close();
  src.close();
  src.line(`amax = sh_group_amax<G>(amax);`);
  src.line("float inv, scale;", "sh_inv_scale(amax, inv, scale);");
  src.line("if (n == 0) continue;");
  // the bytes, and the other results' packs
  const qo = offset(spec, nIn + quant.q, A), qs = spec.results[quant.q]!.axes[L] === "unit";
  src.line(`sh_pack<__nv_fp8_e4m3, VEC> b[P];`);
  src.line("#pragma unroll", "for (int k = 0; k < W; ++k) sh_put(b[k / VEC].v[k % VEC], __fmul_rn(x[k], inv));");
  const store = (j: number, pack: string, unit: boolean, off: string) => {
    const st = storageType(spec.results[j]!.dtype);
    src.line("#pragma unroll");
    src.open("for (int k = 0; k < P; ++k)");
    src.line("if (n <= k * VEC) break;");
    if (unit) {
      src.line(`if (V) *reinterpret_cast<sh_pack<${st}, VEC>*>(out${j} + (${off}) + k * VEC) = ${pack}[k];`);
      src.line(`else _Pragma("unroll") for (int e = 0; e < VEC; ++e) if (k * VEC + e < n) out${j}[${off} + k * VEC + e] = ${pack}[k].v[e];`);
    } else src.line(`_Pragma("unroll") for (int e = 0; e < VEC; ++e) if (k * VEC + e < n) out${j}[${off} + (${I})(k * VEC + e) * out${j}_s${L}] = ${pack}[k].v[e];`);
    src.close();
  };
  store(quant.q, "b", qs, qo);
  spec.results.forEach((r, j) => {
    if (j !== quant.scales && j !== quant.q && r.axes[L] === "unit") store(j, `q${j}`, true, offset(spec, nIn + j, A));
  });
  // the scale: at the tile's index along the (tiled) innermost axis
  const so = offset(spec, nIn + quant.scales, L), sl = spec.results[quant.scales]!.axes[L];
  const tileTerm = sl === "unit" ? "col0 / 128" : sl === "stride" ? `col0 / 128 * out${quant.scales}_s${L}` : "0";
  src.line(`if (lane == 0) out${quant.scales}[${so === "0" ? "" : `${so} + `}${tileTerm}] = scale;`);
  src.close();
  src.close();
  src.close();
}
