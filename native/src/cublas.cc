// cuBLAS glue: the grouped GEMM that runs a segment contraction (runtime/cuda/segment-gemm.ts) as one
// native call instead of one cuBLASLt call per (batch entry, expert).
//
// Why cublasGemmGroupedBatchedEx (libcublas 12.5+) and not cuBLASLt: cuBLASLt's grouped batch mode
// (CUBLASLT_BATCH_MODE_GROUPED) is experimental, takes its shapes in device arrays and wants every
// matrix dimension 16-byte aligned, which data-dependent segment lengths are not. The grouped GEMM
// takes f32 -> f32 and bf16 -> bf16 under CUBLAS_COMPUTE_32F (no bf16 -> f32: the caller keeps the
// cuBLASLt loop for that), its shapes in host arrays and its matrix pointers in a device array.
//
//   cublasGroupedGemm(dtype, transA, transB, dims, ptrs, beta, stream)
//
// Column-major BLAS terms, problem i: C_i[m,n] = op(A_i)[m,k] op(B_i)[k,n] + beta C_i. `dims` is an
// Int32Array of 6G entries laid out by field (m[0..G), n[..], k[..], lda[..], ldb[..], ldc[..]) so
// they pass to cuBLAS without copying; `ptrs` a BigUint64Array of 3G (A pointers, B, then C), copied
// to a device buffer kept per (device, stream). Arguments are checked before any library is loaded.
#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "driver.h"

namespace shardts {

namespace {

struct Args {
  int dtype;
  int transA, transB;
  int groups;
  const int32_t* dims;
  const uint64_t* ptrs;
  float beta;
  CUstream stream;
};

// The arguments, checked: a wrong one is a TypeError or RangeError that names it.
Args parse(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* sig = "cublasGroupedGemm(dtype, transA, transB, dims, ptrs, beta, stream)";
  if (info.Length() != 7) throwTypeError(env, std::string(sig) + ": takes 7 arguments, got " + std::to_string(info.Length()));
  Args a{};
  std::string dt = str(env, info[0], "dtype");
  if (dt == "f32") a.dtype = CUDA_R_32F;
  else if (dt == "bf16") a.dtype = CUDA_R_16BF;
  else throwTypeError(env, std::string(sig) + ": dtype must be 'f32' or 'bf16' (the grouped GEMM's C has A's type), got '" + dt + "'");
  a.transA = info[1].ToBoolean() ? CUBLAS_OP_T : CUBLAS_OP_N;
  a.transB = info[2].ToBoolean() ? CUBLAS_OP_T : CUBLAS_OP_N;
  auto typed = [&](size_t i, napi_typedarray_type want, const char* name, const char* type) {
    if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != want)
      throwTypeError(env, std::string(sig) + ": " + name + " must be " + type);
    return info[i].As<Napi::TypedArray>();
  };
  Napi::TypedArray dims = typed(3, napi_int32_array, "dims", "an Int32Array (m, n, k, lda, ldb, ldc: G entries each)");
  Napi::TypedArray ptrs = typed(4, napi_biguint64_array, "ptrs", "a BigUint64Array (A, B, C pointers: G entries each)");
  size_t g = dims.ElementLength() / 6;
  if (g == 0 || dims.ElementLength() != 6 * g || ptrs.ElementLength() != 3 * g)
    throwRangeError(env, std::string(sig) + ": dims must hold 6G entries and ptrs 3G for G >= 1 problems, got " +
                             std::to_string(dims.ElementLength()) + " and " + std::to_string(ptrs.ElementLength()));
  if (g > 0x7fffffff) throwRangeError(env, std::string(sig) + ": too many problems (" + std::to_string(g) + ")");
  a.groups = static_cast<int>(g);
  a.dims = reinterpret_cast<const int32_t*>(static_cast<const uint8_t*>(dims.ArrayBuffer().Data()) + dims.ByteOffset());
  a.ptrs = reinterpret_cast<const uint64_t*>(static_cast<const uint8_t*>(ptrs.ArrayBuffer().Data()) + ptrs.ByteOffset());
  const int32_t *m = a.dims, *n = m + g, *k = n + g, *lda = k + g, *ldb = lda + g, *ldc = ldb + g;
  for (size_t i = 0; i < g; i++) {
    // cuBLAS checks these too, but answers only CUBLAS_STATUS_INVALID_VALUE: say which problem and why
    int rowsA = a.transA == CUBLAS_OP_N ? m[i] : k[i], rowsB = a.transB == CUBLAS_OP_N ? k[i] : n[i];
    std::string at = std::string(sig) + ": problem " + std::to_string(i) + " (m=" + std::to_string(m[i]) + " n=" +
                     std::to_string(n[i]) + " k=" + std::to_string(k[i]) + ")";
    if (m[i] < 1 || n[i] < 1 || k[i] < 1) throwRangeError(env, at + ": m, n and k must be positive (leave empty segments out)");
    if (lda[i] < rowsA || ldb[i] < rowsB || ldc[i] < m[i])
      throwRangeError(env, at + ": a leading dimension is shorter than its column (need lda >= " + std::to_string(rowsA) +
                               ", ldb >= " + std::to_string(rowsB) + ", ldc >= " + std::to_string(m[i]) + "; got " +
                               std::to_string(lda[i]) + ", " + std::to_string(ldb[i]) + ", " + std::to_string(ldc[i]) + ")");
    for (int j = 0; j < 3; j++)
      if (!a.ptrs[j * g + i]) throwRangeError(env, at + ": a null " + "ABC"[j] + " pointer");
  }
  a.beta = static_cast<float>(f64(env, info[5], "beta"));
  a.stream = reinterpret_cast<CUstream>(static_cast<uintptr_t>(u64(env, info[6], "stream")));
  return a;
}

void check(Napi::Env env, CublasApi& api, cublasStatus_t s, const std::string& call) {
  if (s == 0) return;
  throwApiError(env, "cublas", call, s, api.cublasGetStatusName(s), api.cublasGetStatusString(s));
}

struct Scratch {
  CUdeviceptr ptr = 0;
  size_t bytes = 0;
};

std::mutex g_mutex;
std::map<int, cublasHandle_t> g_handles;
// The pointer arrays' device copies. One per (device, stream): the next call's upload is ordered
// after this call's GEMM on the same stream, so the buffer is reused without waiting.
std::map<std::pair<int, CUstream>, Scratch> g_scratch;
// The per-group constants cuBLAS takes as host arrays; grown, never shrunk.
std::vector<int> g_transA, g_transB, g_ones;
std::vector<float> g_alpha, g_beta;

Napi::Value GroupedGemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a = parse(info);
  DriverApi& drv = ctx(env);
  CublasApi& api = cublas(env);
  size_t g = static_cast<size_t>(a.groups), ptrBytes = 3 * g * sizeof(uint64_t);
  int dev = currentDevice();

  std::lock_guard<std::mutex> lock(g_mutex);
  cublasHandle_t& h = g_handles[dev];
  if (!h) check(env, api, api.cublasCreate(&h), "cublasCreate_v2");
  Scratch& s = g_scratch[{dev, a.stream}];
  if (s.bytes < ptrBytes) {
    // the old buffer may still be read by a GEMM in flight on this stream
    if (s.ptr) {
      cuCheck(env, drv.cuStreamSynchronize(a.stream), "cuStreamSynchronize");
      cuCheck(env, drv.cuMemFree(s.ptr), "cuMemFree_v2");
      s = Scratch{};
    }
    size_t want = 4096;
    while (want < ptrBytes) want *= 2;
    cuCheck(env, drv.cuMemAlloc(&s.ptr, want), "cuMemAlloc_v2(grouped GEMM pointer arrays)");
    s.bytes = want;
  }
  // from pageable memory: the copy is staged before the call returns, so `ptrs` may change after it
  cuCheck(env, drv.cuMemcpyHtoDAsync(s.ptr, a.ptrs, ptrBytes, a.stream), "cuMemcpyHtoDAsync(grouped GEMM pointer arrays)");
  if (g_ones.size() < g) {
    g_ones.resize(g, 1);
    g_alpha.resize(g, 1.0f);
    g_transA.resize(g);
    g_transB.resize(g);
    g_beta.resize(g);
  }
  std::fill(g_transA.begin(), g_transA.begin() + g, a.transA);
  std::fill(g_transB.begin(), g_transB.begin() + g, a.transB);
  std::fill(g_beta.begin(), g_beta.begin() + g, a.beta);
  check(env, api, api.cublasSetStream(h, a.stream), "cublasSetStream_v2");
  const int32_t *m = a.dims, *n = m + g, *k = n + g, *lda = k + g, *ldb = lda + g, *ldc = ldb + g;
  const void* const* A = reinterpret_cast<const void* const*>(s.ptr);
  const void* const* B = reinterpret_cast<const void* const*>(s.ptr + g * sizeof(uint64_t));
  void* const* C = reinterpret_cast<void* const*>(s.ptr + 2 * g * sizeof(uint64_t));
  check(env, api,
        api.cublasGemmGroupedBatchedEx(h, g_transA.data(), g_transB.data(), m, n, k, g_alpha.data(), A, a.dtype, lda, B, a.dtype,
                                       ldb, g_beta.data(), C, a.dtype, ldc, a.groups, g_ones.data(), CUBLAS_COMPUTE_32F),
        "cublasGemmGroupedBatchedEx(" + std::string(a.dtype == CUDA_R_32F ? "f32" : "bf16") + ", " + std::to_string(g) +
            " problems)");
  return env.Undefined();
}

}  // namespace

void registerCublas(Napi::Env env, Napi::Object exports) { def(env, exports, "cublasGroupedGemm", GroupedGemm); }

}  // namespace shardts
