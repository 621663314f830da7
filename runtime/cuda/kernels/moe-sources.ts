// Hand-written kernels of MoE dispatch and combine (compiler/ops/dispatch.ts): the fused permute
// (per-expert counts, the stable sort of every (token, k) slot by expert and its inverse, in one
// block per batch entry), the row gather into send order (a byte copy, vectorised, of any dtype:
// FP8 codes and their scales too; with the gate weights for redispatch) and the un-permute +
// weighted combine. Each gives the CPU reference's results bit for bit: the combine adds a token's
// rows in row order in double precision, as the reference does, and rounds once.
import type { DType } from "../../../compiler/ir/types.ts";
import { ctype, memo, PRELUDE } from "./sources.ts";

/** Most experts a permute block sorts by (its shared memory holds a count per expert and warp). */
export const MOE_MAX_GROUPS = 1024;
/** The permute kernel's block: 8 warps. */
export const MOE_ROUTE_BLOCK = 256;

/**
 * counts[b, g] = slots of batch entry b routed to g; perm[b, j] = the slot of row j (rows grouped by
 * g in slot order; -1 past the last: ids outside [0, G) are dropped).
 * One block per batch entry: a shared histogram, a scan, then chunks of 256 slots placed stably
 * (within a warp by __match_any_sync ranks, across warps by per-warp counts).
 */
export const moeRoute = memo((): { name: string; source: string } => {
  const name = "shardts_moe_route";
  return {
    name,
    source: `${PRELUDE}
extern "C" __global__ void __launch_bounds__(${MOE_ROUTE_BLOCK}) ${name}(int* __restrict__ counts, int* __restrict__ perm, const int* __restrict__ keys, long long B, int n, int G) {
  __shared__ int base[${MOE_MAX_GROUPS}];
  __shared__ int wc[${MOE_ROUTE_BLOCK / 32}][${MOE_MAX_GROUPS}];
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  for (int i = tid; i < ${(MOE_ROUTE_BLOCK / 32) * MOE_MAX_GROUPS}; i += ${MOE_ROUTE_BLOCK}) wc[i / ${MOE_MAX_GROUPS}][i % ${MOE_MAX_GROUPS}] = 0;
  for (long long b = blockIdx.x; b < B; b += gridDim.x) {
    const int* k = keys + b * n;
    int* p = perm + b * n;
    for (int g = tid; g < G; g += ${MOE_ROUTE_BLOCK}) base[g] = 0;
    __syncthreads();
    for (int s = tid; s < n; s += ${MOE_ROUTE_BLOCK}) { const int e = k[s]; if (e >= 0 && e < G) atomicAdd(&base[e], 1); p[s] = -1; }
    __syncthreads();
    if (tid == 0) { int acc = 0; for (int g = 0; g < G; g++) { const int c = base[g]; counts[b * G + g] = c; base[g] = acc; acc += c; } }
    __syncthreads();
    for (int c0 = 0; c0 < n; c0 += ${MOE_ROUTE_BLOCK}) {
      const int s = c0 + tid;
      const int e = s < n ? k[s] : -1;
      const bool valid = e >= 0 && e < G;
      const unsigned peers = __match_any_sync(0xffffffffu, valid ? e : -1);
      const int lead = __ffs(peers) - 1, mine = __popc(peers), below = __popc(peers & ((1u << lane) - 1u));
      if (valid && lane == lead) wc[w][e] = mine;
      __syncthreads();
      if (valid) {
        int off = base[e] + below;
        for (int v = 0; v < w; v++) off += wc[v][e];
        p[off] = s;
      }
      __syncthreads();
      if (valid && lane == lead) { atomicAdd(&base[e], mine); wc[w][e] = 0; }
      __syncthreads();
    }
  }
}`,
  };
});

/** pos[b, perm[b, j]] = j: the row of each slot (pos starts as -1 everywhere: dropped slots stay -1). */
export const moeInvert = memo((): { name: string; source: string } => {
  const name = "shardts_moe_invert";
  return {
    name,
    source: `${PRELUDE}
extern "C" __global__ void ${name}(int* __restrict__ pos, const int* __restrict__ perm, long long rows, int n) {
  for (long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x; r < rows; r += (long long)gridDim.x * blockDim.x) {
    const int s = perm[r];
    if (s >= 0) pos[(r / n) * n + s] = (int)(r % n);
  }
}`,
  };
});

/**
 * The word moeGatherRows moves: the widest of 16, 4 and 1 bytes that divides the row's bytes and
 * both pointers. Rows whose bytes are no multiple of 4 (an FP8 row of d = 6 or 130) move bytewise.
 */
export function gatherWord(rowBytes: number, ptrs: bigint[]): 16 | 4 | 1 {
  return ([16, 4, 1] as const).find((v) => rowBytes % v === 0 && ptrs.every((p) => p % BigInt(v) === 0n))!;
}

/**
 * out row r (of B*n) = src row (b*srcRows + perm[r] / per): dispatch's row gather (per = K: a
 * token's row for each of its slots; per = 1: one source row per slot). Rows whose perm is -1 are
 * zeros. A warp per row, moving \`V\`-byte words (rowBytes a multiple of V, pointers aligned to V).
 */
export const moeGatherRows = memo((V: 16 | 4 | 1): { name: string; source: string } => {
  const W = `moe_word${V}`, name = `shardts_moe_gather_rows_v${V}`;
  return {
    name,
    source: `${PRELUDE}
typedef ${V === 16 ? "uint4" : V === 4 ? "unsigned int" : "unsigned char"} ${W};
extern "C" __global__ void ${name}(${W}* __restrict__ out, const ${W}* __restrict__ src, const int* __restrict__ perm, long long rows, int n, int per, long long srcRows, long long words) {
  const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
  for (long long r = blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int s = perm[r];
    ${W}* o = out + r * words;
    if (s < 0) { for (long long i = threadIdx.x & 31; i < words; i += 32) o[i] = ${W}{}; continue; }
    const ${W}* x = src + ((r / n) * srcRows + s / per) * words;
    for (long long i = threadIdx.x & 31; i < words; i += 32) o[i] = x[i];
  }
}`,
  };
});

/** Redispatch: out[r, d] = src[row of perm[r], d] * w[b, perm[r]] rounded to the dtype (as mul()). */
export const moeGatherWeighted = memo((t: DType): { name: string; source: string } => {
  const T = ctype(t), name = `shardts_moe_gather_weighted_${t}`;
  return {
    name,
    source: `${PRELUDE}
extern "C" __global__ void ${name}(${T}* __restrict__ out, const ${T}* __restrict__ src, const int* __restrict__ perm, const ${T}* __restrict__ w, long long rows, int n, int per, long long srcRows, int D) {
  const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
  for (long long r = blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int s = perm[r];
    ${T}* o = out + r * D;
    if (s < 0) { for (int d = threadIdx.x & 31; d < D; d += 32) o[d] = from_f<${T}>(0.0f); continue; }
    const long long b = r / n;
    const ${T}* x = src + (b * srcRows + s / per) * D;
    const float wv = to_f(w[b * n + s]);
    for (int d = threadIdx.x & 31; d < D; d += 32) o[d] = from_f<${T}>(to_f(x[d]) * wv);
  }
}`,
  };
});

/**
 * Combine: y[b, t, d] = sum over t's slots k (in row order) of rows[b, pos[b, t*K+k], d], each
 * times w[b, t, k] rounded to the dtype when weighted; keepK writes y[b, t, k, d] unsummed. A warp
 * per token; sums in double, rounded once (the CPU reference's order and rounding). \`vec\` elements
 * per lane move as one access (16 bytes where D and the pointers allow: see combineVec), and every
 * row's access is issued before the sum reads any (a warp per token otherwise waited on each row in
 * turn: the combine ran at about a tenth of the copy bandwidth).
 */
export const moeCombine = (t: DType, vec = 1): { name: string; source: string } => combineOf(`${t}/${vec}`);
const combineOf = memo((key: string): { name: string; source: string } => {
  const [t, v] = key.split("/") as [DType, string], vec = Number(v);
  const T = ctype(t), name = `shardts_moe_combine_${t}_v${vec}`;
  return {
    name,
    source: `${PRELUDE}
typedef struct alignas(${vec} * sizeof(${T})) { ${T} v[${vec}]; } moe_pack_${t}_${vec};
extern "C" __global__ void ${name}(${T}* __restrict__ y, const ${T}* __restrict__ rows, const int* __restrict__ pos, const ${T}* __restrict__ w, long long tokens, int S, int K, int D, int keepK) {
  const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
  const int n = S * K, lane = threadIdx.x & 31;
  for (long long tok = blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5); tok < tokens; tok += warps) {
    const long long b = tok / S, slot0 = tok * K;
    // the token's rows in row order
    int at[16], kk[16], m = 0;
    for (int k = 0; k < K && k < 16; k++) {
      const int j = pos[slot0 + k];
      if (j < 0) continue;
      int i = m++;
      for (; i > 0 && at[i - 1] > j; i--) { at[i] = at[i - 1]; kk[i] = kk[i - 1]; }
      at[i] = j; kk[i] = k;
    }
    for (int d = lane * ${vec}; d < D; d += 32 * ${vec}) {
      double acc[${vec}];
#pragma unroll
      for (int e = 0; e < ${vec}; e++) acc[e] = 0.0;
      // up to 8 rows' accesses in flight at once, then their sums in row order
      for (int i0 = 0; i0 < m; i0 += 8) {
        moe_pack_${t}_${vec} p[8];
#pragma unroll
        for (int i = 0; i < 8; i++) if (i0 + i < m) p[i] = *reinterpret_cast<const moe_pack_${t}_${vec}*>(rows + (b * n + at[i0 + i]) * D + d);
#pragma unroll
        for (int i = 0; i < 8; i++) {
          if (i0 + i >= m) break;
          const float wi = w ? to_f(w[slot0 + kk[i0 + i]]) : 1.0f;
          moe_pack_${t}_${vec} o;
#pragma unroll
          for (int e = 0; e < ${vec}; e++) {
            float v = to_f(p[i].v[e]);
            if (w) v = to_f(from_f<${T}>(v * wi));
            o.v[e] = from_f<${T}>(v);
            acc[e] += (double)v;
          }
          if (keepK) *reinterpret_cast<moe_pack_${t}_${vec}*>(y + (slot0 + kk[i0 + i]) * D + d) = o;
        }
      }
      if (!keepK) {
        moe_pack_${t}_${vec} o;
#pragma unroll
        for (int e = 0; e < ${vec}; e++) o.v[e] = from_f<${T}>((float)acc[e]);
        *reinterpret_cast<moe_pack_${t}_${vec}*>(y + tok * D + d) = o;
      }
    }
    if (keepK) for (int k = 0; k < K; k++) if (pos[slot0 + k] < 0) for (int d = lane; d < D; d += 32) y[(slot0 + k) * D + d] = from_f<${T}>(0.0f);
  }
}`,
  };
});

/** The combine's elements per access: 16 bytes' worth where the row length and every pointer allow, else 1. */
export function combineVec(t: DType, D: number, ptrs: bigint[]): number {
  const v = 16 / (t === "f32" ? 4 : 2);
  return D % v === 0 && ptrs.every((p) => p % 16n === 0n) ? v : 1;
}

export function moeSources(): { name: string; source: string }[] {
  const ts: DType[] = ["f32", "bf16"];
  return [moeRoute(), moeInvert(), moeGatherRows(16), moeGatherRows(4), moeGatherRows(1), ...ts.flatMap((t) => [moeGatherWeighted(t), moeCombine(t), moeCombine(t, 16 / (t === "f32" ? 4 : 2))])];
}
