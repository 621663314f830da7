// Hand-written CUDA kernels for what the fusion pass does not generate: layout moves (strided copy:
// permute, expand, concat, split), routing (gather, scatter-add, top-k, sort-by-key) and fills.
// Each function returns the source of one kernel specialised for an element type; shapes and
// strides travel as a `Geo` argument so one compiled kernel serves every shape.
import type { DType } from "../../../compiler/ir/types.ts";

export const MAX_DIMS = 8;

type Kernel = { name: string; source: string };
/**
 * Each kernel is built once per specialisation (its arguments: element types, word size) and the same object returned after: the executor looks
 * compiled functions up by name and source on every launch (CudaExecutor.fn), and an unchanged
 * source string compares by identity instead of by its characters.
 */
export function memo<A extends (string | number)[]>(make: (...a: A) => Kernel): (...a: A) => Kernel {
  const made = new Map<string, Kernel>();
  return (...a: A) => {
    const key = a.join("|");
    let k = made.get(key);
    if (!k) made.set(key, (k = make(...a)));
    return k;
  };
}

/** The C type a dtype is stored as on the device. */
export function ctype(t: DType): string {
  switch (t) {
    case "f32": return "float";
    case "bf16": return "__nv_bfloat16";
    case "i32": return "int";
    // FP8 codes move as bytes (copies only; kernels that compute on them are fp8-sources.ts's)
    default: return "unsigned char";
  }
}
export const elemBytes = (t: DType): number => (t === "bf16" ? 2 : t === "f32" || t === "i32" ? 4 : 1);

export const PRELUDE = `#include <cuda_bf16.h>
struct Geo { int nd; long long n; int shape[${MAX_DIMS}]; long long istride[${MAX_DIMS}]; long long ostride[${MAX_DIMS}]; };
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(int x) { return (float)x; }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ int from_f<int>(float x) { return (int)x; }
`;

/** out[ooff(i)] = in[ioff(i)] over the multi-index i of shape (strides in elements; 0 = broadcast). */
export const stridedCopy = memo((t: DType): Kernel => {
  const T = ctype(t), name = `shardts_copy_${t}`;
  return {
    name,
    source: `${PRELUDE}
extern "C" __global__ void ${name}(${T}* __restrict__ out, const ${T}* __restrict__ in, Geo g) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < g.n; i += (long long)gridDim.x * blockDim.x) {
    long long r = i, io = 0, oo = 0;
    for (int d = g.nd - 1; d >= 0; d--) {
      long long c = r % g.shape[d];
      r /= g.shape[d];
      io += c * g.istride[d];
      oo += c * g.ostride[d];
    }
    out[oo] = in[io];
  }
}`,
  };
});

/** out[b, j, r] = x[b, idx[b, j] - off, r] when that row is held here (0 <= . < rows), else 0; idx -1 is padding. */
export const gather = memo((t: DType): Kernel => {
  const T = ctype(t), name = `shardts_gather_${t}`;
  return {
    name,
    source: `${PRELUDE}
extern "C" __global__ void ${name}(${T}* __restrict__ out, const ${T}* __restrict__ x, const int* __restrict__ idx,
                                   long long B, long long J, long long R, long long rows, long long off, long long global, int* __restrict__ bad) {
  long long n = B * J * R;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    long long r = i % R, bj = i / R, b = bj / J;
    int g = idx[bj];
    ${T} v = from_f<${T}>(0.f);
    if (g != -1) {
      if (g < 0 || g >= global) atomicExch(bad, g);
      long long l = (long long)g - off;
      if (l >= 0 && l < rows) v = x[(b * rows + l) * R + r];
    }
    out[i] = v;
  }
}`,
  };
});

/**
 * acc[b, idx[b, j], r] += src[b, j, r] in float (index -1 skipped, any other outside [0, size) flagged in
 * `bad`); the caller casts acc to the dtype. A warp per source row (b, j): the row's index and b read once,
 * its lanes along r. With `vec` (R % 4 == 0, src 4 elements and acc 16 bytes aligned) each lane adds 4
 * consecutive values with one 4-wide atomic (sm_90's atom.add.v4.f32), else one value at a time. (Until
 * the ninth session a thread an element, with two 64-bit divisions each: 0.24 ms a call on the MoE step.)
 */
export const scatterAdd = memo((t: DType): Kernel => {
  const T = ctype(t), name = `shardts_scatter_add_${t}`;
  return {
    name,
    source: `${PRELUDE}
struct alignas(4 * sizeof(${T})) sa_pack4 { ${T} v[4]; };
__device__ __forceinline__ void sa_add4(float* p, float a, float b, float c, float d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(p), make_float4(a, b, c, d));
#else
  atomicAdd(p, a); atomicAdd(p + 1, b); atomicAdd(p + 2, c); atomicAdd(p + 3, d);
#endif
}
extern "C" __global__ void ${name}(float* __restrict__ acc, const ${T}* __restrict__ src, const int* __restrict__ idx,
                                   long long B, long long J, long long R, long long size, int* __restrict__ bad, int vec) {
  const int lane = threadIdx.x & 31;
  const long long rows = B * J, warps = ((long long)gridDim.x * blockDim.x) >> 5;
  for (long long bj = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5; bj < rows; bj += warps) {
    const int g = idx[bj];
    if (g == -1) continue;
    if (g < 0 || g >= size) { if (lane == 0) atomicExch(bad, g); continue; }
    float* a = acc + (bj / J * size + g) * R;
    const ${T}* s = src + bj * R;
    if (vec) {
      for (long long r = 4 * lane; r < R; r += 128) {
        const sa_pack4 v = *reinterpret_cast<const sa_pack4*>(s + r);
        sa_add4(a + r, to_f(v.v[0]), to_f(v.v[1]), to_f(v.v[2]), to_f(v.v[3]));
      }
    } else {
      for (long long r = lane; r < R; r += 32) atomicAdd(a + r, to_f(s[r]));
    }
  }
}`,
  };
});

/** Per row of n: the k largest (NaN first, ties to the lower index), values and i32 indices. One thread a row. */
export const topk = memo((t: DType): Kernel => {
  const T = ctype(t), name = `shardts_topk_${t}`;
  return {
    name,
    source: `${PRELUDE}
__device__ __forceinline__ bool better(float a, int ia, float b, int ib) {
  bool na = a != a, nb = b != b;
  if (na || nb) return na && (!nb || ia < ib);
  return a > b || (a == b && ia < ib);
}
extern "C" __global__ void ${name}(${T}* __restrict__ vals, int* __restrict__ inds, const ${T}* __restrict__ x, long long rows, int n, int k) {
  for (long long row = blockIdx.x * (long long)blockDim.x + threadIdx.x; row < rows; row += (long long)gridDim.x * blockDim.x) {
    const ${T}* xr = x + row * n;
    // selection: the j-th pick is the best element strictly worse than the (j-1)-th
    float pv = 0.f; int pi = -1;
    for (int j = 0; j < k; j++) {
      float bv = 0.f; int bi = -1;
      for (int e = 0; e < n; e++) {
        float v = to_f(xr[e]);
        if (pi >= 0 && !better(pv, pi, v, e)) continue;
        if (bi < 0 || better(v, e, bv, bi)) { bv = v; bi = e; }
      }
      vals[row * k + j] = xr[bi];
      inds[row * k + j] = bi;
      pv = bv; pi = bi;
    }
  }
}`,
  };
});

/** Stable counting sort of each batch row's keys into groups: perm (rows padded with -1) and counts. One thread a row. */
export const sortByKey = memo((): Kernel => {
  const name = "shardts_sort_by_key";
  return {
    name,
    source: `${PRELUDE}
extern "C" __global__ void ${name}(int* __restrict__ perm, int* __restrict__ counts, int* __restrict__ start, const int* __restrict__ keys, long long B, int n, int G) {
  for (long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x; b < B; b += (long long)gridDim.x * blockDim.x) {
    const int* k = keys + b * n;
    int* c = counts + b * G; int* s = start + b * G; int* p = perm + b * n;
    for (int g = 0; g < G; g++) c[g] = 0;
    for (int j = 0; j < n; j++) { int key = k[j]; if (key >= 0 && key < G) c[key]++; }
    int acc = 0;
    for (int g = 0; g < G; g++) { s[g] = acc; acc += c[g]; }
    for (int j = 0; j < n; j++) p[j] = -1;
    for (int j = 0; j < n; j++) { int key = k[j]; if (key >= 0 && key < G) p[s[key]++] = j; }
  }
}`,
  };
});

/** Fills with a value, or with the global index along one dim (iota): v = value + off + (i / stride) % len. */
export const fill = memo((t: DType): Kernel => {
  const T = ctype(t), name = `shardts_fill_${t}`;
  return {
    name,
    source: `${PRELUDE}
extern "C" __global__ void ${name}(${T}* __restrict__ out, long long n, float value, int iota, long long stride, long long len, long long off) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    out[i] = from_f<${T}>(iota ? (float)(off + (i / stride) % len) : value);
}`,
  };
});

/** Casts f32 accumulators to the output dtype. */
export const castFromF32 = memo((t: DType): Kernel => {
  const T = ctype(t), name = `shardts_cast_f32_${t}`;
  return {
    name,
    source: `${PRELUDE}
extern "C" __global__ void ${name}(${T}* __restrict__ out, const float* __restrict__ in, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) out[i] = from_f<${T}>(in[i]);
}`,
  };
});

/**
 * f32 -> bf16 four values a thread (a 16-byte load, an 8-byte store; n4 = n / 4, both pointers aligned):
 * the same round-to-nearest-even as castFromF32, at a bandwidth the element-a-thread kernel does not reach.
 */
export const castF32ToBf16x4 = memo((): Kernel => {
  const name = "shardts_cast_f32_bf16_x4";
  return {
    name,
    source: `${PRELUDE}
__device__ __forceinline__ unsigned shardts_bf16_bits(float x) {
  __nv_bfloat16 h = __float2bfloat16_rn(x);
  return *reinterpret_cast<unsigned short*>(&h);
}
extern "C" __global__ void ${name}(uint2* __restrict__ out, const float4* __restrict__ in, long long n4) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4; i += (long long)gridDim.x * blockDim.x) {
    const float4 v = in[i];
    uint2 o;
    o.x = shardts_bf16_bits(v.x) | (shardts_bf16_bits(v.y) << 16);
    o.y = shardts_bf16_bits(v.z) | (shardts_bf16_bits(v.w) << 16);
    out[i] = o;
  }
}`,
  };
});

/** Every kernel source this file defines, for the codegen tier's nvcc check. */
export function allSources(): { name: string; source: string }[] {
  const ts: DType[] = ["f32", "bf16", "i32"];
  return [...ts.flatMap((t) => [stridedCopy(t), gather(t), scatterAdd(t), topk(t), fill(t)]), sortByKey(), castFromF32("bf16"), castFromF32("f32"), castF32ToBf16x4()];
}
