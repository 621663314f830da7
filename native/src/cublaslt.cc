// cuBLASLt glue: one matmul entry point for f32, bf16 and f16 operands in column-major BLAS terms, and
// the block-scaled FP8 GEMM (the one entry point for it: MatmulFp8BlockScaled below).
//
//   D[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C[m,n]     (for each of `batch` strided batches)
//
// op(X) is X or its transpose. Leading dimensions and batch strides are in elements. For each distinct
// problem (shapes, types, transposes, leading dims, strides, pointer alignment, workspace size, device)
// the descriptors and the heuristic's first algorithm are built once and kept.
#include <map>
#include <mutex>
#include <string>

#include "common.h"
#include "driver.h"

namespace shardts {

namespace {

enum : int {
  PREF_MIN_ALIGNMENT_A = 5,
  PREF_MIN_ALIGNMENT_B = 6,
  PREF_MIN_ALIGNMENT_C = 7,
  PREF_MIN_ALIGNMENT_D = 8,
};

const char* statusName(cublasStatus_t s) {
  switch (s) {
    case 0: return "CUBLAS_STATUS_SUCCESS";
    case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case 3: return "CUBLAS_STATUS_ALLOC_FAILED";
    case 7: return "CUBLAS_STATUS_INVALID_VALUE";
    case 8: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case 11: return "CUBLAS_STATUS_MAPPING_ERROR";
    case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case 14: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case 16: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

void check(Napi::Env env, CublasLtApi& api, cublasStatus_t s, const std::string& call) {
  if (s == 0) return;
  const char* name = api.cublasLtGetStatusName ? api.cublasLtGetStatusName(s) : nullptr;
  const char* desc = api.cublasLtGetStatusString ? api.cublasLtGetStatusString(s) : nullptr;
  throwApiError(env, "cublasLt", call, s, name ? name : statusName(s), desc ? desc : "");
}

int dtypeOf(Napi::Env env, const std::string& s, const char* what) {
  if (s == "f32") return CUDA_R_32F;
  if (s == "bf16") return CUDA_R_16BF;
  if (s == "f16") return CUDA_R_16F;
  throwTypeError(env, std::string("matmul: ") + what + " must be 'f32', 'bf16' or 'f16', got '" + s + "'");
}
size_t eltBytes(int t) { return t == CUDA_R_32F ? 4 : 2; }

uint32_t alignment(uint64_t ptr, int64_t strideBytes, int batch) {
  uint64_t x = ptr | 256;
  if (batch > 1) x |= static_cast<uint64_t>(strideBytes) | 256;
  return static_cast<uint32_t>(x & (~x + 1));  // lowest set bit, at most 256
}

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

// The preference (workspace, operand alignments) and cuBLASLt's best algorithm for the plan's
// descriptor and layouts, stored in the plan; `none` says why when there is none.
void pickAlgo(Napi::Env env, CublasLtApi& api, cublasLtHandle_t h, Plan& p, uint64_t wsBytes, const uint32_t al[4],
              const std::string& what, const std::string& none) {
  cublasLtMatmulPreference_t pref = nullptr;
  check(env, api, api.cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  check(env, api, api.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsBytes, sizeof(wsBytes)),
        "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)");
  for (int i = 0; i < 4; i++)
    check(env, api, api.cublasLtMatmulPreferenceSetAttribute(pref, PREF_MIN_ALIGNMENT_A + i, &al[i], sizeof(al[i])),
          "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT)");
  // Room for more than one result, in case a future cuBLASLt grows the struct.
  cublasLtMatmulHeuristicResult_t results[4] = {};
  int found = 0;
  cublasStatus_t s = api.cublasLtMatmulAlgoGetHeuristic(h, p.desc, p.a, p.b, p.c, p.d, pref, 1, results, &found);
  api.cublasLtMatmulPreferenceDestroy(pref);
  check(env, api, s, "cublasLtMatmulAlgoGetHeuristic " + what);
  if (found < 1) throwApiError(env, "cublasLt", "cublasLtMatmulAlgoGetHeuristic " + what, 15, "CUBLAS_STATUS_NOT_SUPPORTED", none);
  p.algo = results[0].algo;
  p.workspace = results[0].workspaceSize;
}

std::mutex g_mutex;
std::map<int, cublasLtHandle_t> g_handles;
std::map<std::string, Plan> g_plans;

Napi::Value Version(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(cublasLt(info.Env()).cublasLtGetVersion()));
}

uint64_t field(Napi::Env env, Napi::Object o, const char* key, const char* what = nullptr) {
  return u64(env, o.Get(key), what ? what : key);
}
uint64_t fieldOr(Napi::Env env, Napi::Object o, const char* key, uint64_t dflt) {
  Napi::Value v = o.Get(key);
  return (v.IsUndefined() || v.IsNull()) ? dflt : u64(env, v, key);
}
double numOr(Napi::Env env, Napi::Object o, const char* key, double dflt) {
  Napi::Value v = o.Get(key);
  return (v.IsUndefined() || v.IsNull()) ? dflt : f64(env, v, key);
}

// cublasLtMatmul(options): see runtime/cuda/native-types.ts (MatmulOptions) for the fields.
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throwTypeError(env, "cublasLtMatmul(options): options must be an object");
  Napi::Object o = info[0].As<Napi::Object>();
  ctx(env);
  CublasLtApi& api = cublasLt(env);

  std::string dtypeS = str(env, o.Get("dtype"), "dtype");
  Napi::Value outV = o.Get("outDtype");
  std::string outS = outV.IsUndefined() ? dtypeS : str(env, outV, "outDtype");
  int ab = dtypeOf(env, dtypeS, "dtype"), cd = dtypeOf(env, outS, "outDtype");
  Napi::Value ctV = o.Get("computeType");
  std::string ctS = ctV.IsUndefined() ? "f32" : str(env, ctV, "computeType");
  if (ctS != "f32" && ctS != "tf32") throwTypeError(env, "matmul: computeType must be 'f32' or 'tf32'");
  int compute = ctS == "tf32" ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  bool ta = o.Get("transA").ToBoolean(), tb = o.Get("transB").ToBoolean();
  uint64_t m = field(env, o, "m"), n = field(env, o, "n"), k = field(env, o, "k");
  uint64_t pa = field(env, o, "a"), pb = field(env, o, "b"), pd = field(env, o, "d");
  uint64_t pc = fieldOr(env, o, "c", pd);
  int64_t lda = field(env, o, "lda"), ldb = field(env, o, "ldb"), ldd = field(env, o, "ldd");
  int64_t ldc = fieldOr(env, o, "ldc", ldd);
  int batch = static_cast<int>(fieldOr(env, o, "batch", 1));
  int64_t sA = fieldOr(env, o, "strideA", 0), sB = fieldOr(env, o, "strideB", 0), sD = fieldOr(env, o, "strideD", 0);
  int64_t sC = fieldOr(env, o, "strideC", sD);
  float alpha = static_cast<float>(numOr(env, o, "alpha", 1.0)), beta = static_cast<float>(numOr(env, o, "beta", 0.0));
  uint64_t ws = fieldOr(env, o, "workspace", 0), wsBytes = fieldOr(env, o, "workspaceBytes", 0);
  if (!ws) wsBytes = 0;
  CUstream stream = reinterpret_cast<CUstream>(static_cast<uintptr_t>(fieldOr(env, o, "stream", 0)));
  if (m == 0 || n == 0 || k == 0 || batch < 1) throwRangeError(env, "matmul: m, n, k and batch must be positive");

  uint32_t al[4] = {alignment(pa, sA * eltBytes(ab), batch), alignment(pb, sB * eltBytes(ab), batch),
                    alignment(pc, sC * eltBytes(cd), batch), alignment(pd, sD * eltBytes(cd), batch)};
  int dev = currentDevice();
  std::string key = std::to_string(dev) + "|" + std::to_string(ab) + "|" + std::to_string(cd) + "|" + std::to_string(compute) +
                    "|" + std::to_string(ta) + std::to_string(tb) + "|" + std::to_string(m) + "," + std::to_string(n) + "," +
                    std::to_string(k) + "|" + std::to_string(lda) + "," + std::to_string(ldb) + "," + std::to_string(ldc) + "," +
                    std::to_string(ldd) + "|" + std::to_string(batch) + ":" + std::to_string(sA) + "," + std::to_string(sB) +
                    "," + std::to_string(sC) + "," + std::to_string(sD) + "|" + std::to_string(al[0]) + "," +
                    std::to_string(al[1]) + "," + std::to_string(al[2]) + "," + std::to_string(al[3]) + "|" +
                    std::to_string(wsBytes);
  std::string what = "(" + dtypeS + "->" + outS + ", m=" + std::to_string(m) + " n=" + std::to_string(n) +
                     " k=" + std::to_string(k) + ", trans " + (ta ? "T" : "N") + (tb ? "T" : "N") +
                     ", batch " + std::to_string(batch) + ")";

  std::lock_guard<std::mutex> lock(g_mutex);
  cublasLtHandle_t& h = g_handles[dev];
  if (!h) check(env, api, api.cublasLtCreate(&h), "cublasLtCreate");
  auto it = g_plans.find(key);
  if (it == g_plans.end()) {
    Plan p;
    auto layout = [&](cublasLtMatrixLayout_t* l, int type, uint64_t rows, uint64_t cols, int64_t ld, int64_t stride,
                      const char* name) {
      check(env, api, api.cublasLtMatrixLayoutCreate(l, type, rows, cols, ld), std::string("cublasLtMatrixLayoutCreate(") + name + ") " + what);
      if (batch > 1) {
        int32_t bc = batch;
        check(env, api, api.cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof(bc)),
              "cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)");
        check(env, api,
              api.cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)),
              "cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)");
      }
    };
    check(env, api, api.cublasLtMatmulDescCreate(&p.desc, compute, CUDA_R_32F), "cublasLtMatmulDescCreate");
    int32_t opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    check(env, api, api.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA)),
          "cublasLtMatmulDescSetAttribute(TRANSA)");
    check(env, api, api.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(opB)),
          "cublasLtMatmulDescSetAttribute(TRANSB)");
    layout(&p.a, ab, ta ? k : m, ta ? m : k, lda, sA, "A");
    layout(&p.b, ab, tb ? n : k, tb ? k : n, ldb, sB, "B");
    layout(&p.c, cd, m, n, ldc, sC, "C");
    layout(&p.d, cd, m, n, ldd, sD, "D");
    pickAlgo(env, api, h, p, wsBytes, al, what,
             "no algorithm fits this problem, its alignment (" + std::to_string(al[0]) + "/" + std::to_string(al[1]) + "/" +
                 std::to_string(al[2]) + "/" + std::to_string(al[3]) + " B) and " + std::to_string(wsBytes) + " bytes of workspace");
    it = g_plans.emplace(key, p).first;
  }
  Plan& p = it->second;
  check(env, api,
        api.cublasLtMatmul(h, p.desc, &alpha, reinterpret_cast<const void*>(pa), p.a, reinterpret_cast<const void*>(pb), p.b,
                           &beta, reinterpret_cast<const void*>(pc), p.c, reinterpret_cast<void*>(pd), p.d, &p.algo,
                           reinterpret_cast<void*>(ws), wsBytes, stream),
        "cublasLtMatmul " + what);
  return env.Undefined();
}

// cublasLtMatmulFp8BlockScaled(options): the DeepSeek-V3 block-scaled FP8 GEMM on row-major operands,
// D[M,N] (bf16) = (A[M,K] e4m3 · sa 1×128) (B[N,K] e4m3 · sb 128×128)ᵀ. See Fp8BlockScaledMatmulOptions in
// runtime/cuda/native-types.ts. In cuBLASLt's column-major terms this is Dᵀ (N×M) = op(B')·A' with
// B' = our B stored K×N (transposed, "TN" as FP8 on Hopper requires) scaled BLK128x128_32F, and A'
// = our A stored K×M scaled VEC128_32F; cuBLASLt reads sa as [ceil(K/128)][M] (M contiguous) and sb
// as [ceil(N/128)][ceil(K/128)] (K blocks contiguous), the layouts of compiler/numeric/fp8-gemm.ts.
Napi::Value MatmulFp8BlockScaled(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throwTypeError(env, "cublasLtMatmulFp8BlockScaled(options): options must be an object");
  Napi::Object o = info[0].As<Napi::Object>();
  ctx(env);
  CublasLtApi& api = cublasLt(env);
  uint64_t M = field(env, o, "M"), N = field(env, o, "N"), K = field(env, o, "K");
  uint64_t pa = field(env, o, "a"), pb = field(env, o, "b"), psa = field(env, o, "sa"), psb = field(env, o, "sb"), pd = field(env, o, "d");
  uint64_t ws = fieldOr(env, o, "workspace", 0), wsBytes = fieldOr(env, o, "workspaceBytes", 0);
  if (!ws) wsBytes = 0;
  CUstream stream = reinterpret_cast<CUstream>(static_cast<uintptr_t>(fieldOr(env, o, "stream", 0)));
  if (M == 0 || N == 0 || K == 0) throwRangeError(env, "matmulFp8BlockScaled: M, N and K must be positive");
  if (K % 16 != 0 || N % 16 != 0)
    throwRangeError(env, "matmulFp8BlockScaled: cuBLASLt's FP8 path needs K and N to be multiples of 16 (got N=" + std::to_string(N) +
                             ", K=" + std::to_string(K) + "); pad the operands");
  uint32_t al[4] = {alignment(pb, 0, 1), alignment(pa, 0, 1), alignment(pd, 0, 1), alignment(pd, 0, 1)};
  int dev = currentDevice();
  std::string key = "fp8bs|" + std::to_string(dev) + "|" + std::to_string(M) + "," + std::to_string(N) + "," + std::to_string(K) + "|" +
                    std::to_string(al[0]) + "," + std::to_string(al[1]) + "," + std::to_string(al[2]) + "|" + std::to_string(wsBytes);
  std::string what = "(e4m3 block-scaled 1x128/128x128 -> bf16, M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) + ")";

  std::lock_guard<std::mutex> lock(g_mutex);
  cublasLtHandle_t& h = g_handles[dev];
  if (!h) check(env, api, api.cublasLtCreate(&h), "cublasLtCreate");
  auto it = g_plans.find(key);
  if (it == g_plans.end()) {
    Plan p;
    check(env, api, api.cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate " + what);
    auto set = [&](int attr, const void* v, size_t n, const char* name) {
      check(env, api, api.cublasLtMatmulDescSetAttribute(p.desc, attr, v, n), std::string("cublasLtMatmulDescSetAttribute(") + name + ") " + what);
    };
    int32_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
    set(CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof(opT), "TRANSA");
    set(CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof(opN), "TRANSB");
    int32_t modeA = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F, modeB = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    set(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &modeA, sizeof(modeA), "A_SCALE_MODE = BLK128x128_32F (needs cuBLASLt 12.9+)");
    set(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &modeB, sizeof(modeB), "B_SCALE_MODE = VEC128_32F (needs cuBLASLt 12.9+)");
    // the scale pointers before the heuristic: cuBLASLt checks block-scaled descriptors for them there
    set(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &psb, sizeof(psb), "A_SCALE_POINTER");
    set(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &psa, sizeof(psa), "B_SCALE_POINTER");
    check(env, api, api.cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, K, N, K), "cublasLtMatrixLayoutCreate(A) " + what);
    check(env, api, api.cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8F_E4M3, K, M, K), "cublasLtMatrixLayoutCreate(B) " + what);
    check(env, api, api.cublasLtMatrixLayoutCreate(&p.c, CUDA_R_16BF, N, M, N), "cublasLtMatrixLayoutCreate(C) " + what);
    check(env, api, api.cublasLtMatrixLayoutCreate(&p.d, CUDA_R_16BF, N, M, N), "cublasLtMatrixLayoutCreate(D) " + what);
    pickAlgo(env, api, h, p, wsBytes, al, what, "no block-scaled FP8 algorithm for this problem on this GPU (cuBLASLt supports it on Hopper and newer)");
    it = g_plans.emplace(key, p).first;
  }
  Plan& p = it->second;
  // the scale pointers are per call: set on the cached descriptor under the lock
  check(env, api, api.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &psb, sizeof(psb)), "cublasLtMatmulDescSetAttribute(A_SCALE_POINTER)");
  check(env, api, api.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &psa, sizeof(psa)), "cublasLtMatmulDescSetAttribute(B_SCALE_POINTER)");
  float alpha = 1.0f, beta = 0.0f;
  check(env, api,
        api.cublasLtMatmul(h, p.desc, &alpha, reinterpret_cast<const void*>(pb), p.a, reinterpret_cast<const void*>(pa), p.b, &beta,
                           reinterpret_cast<const void*>(pd), p.c, reinterpret_cast<void*>(pd), p.d, &p.algo, reinterpret_cast<void*>(ws),
                           wsBytes, stream),
        "cublasLtMatmul " + what);
  return env.Undefined();
}

}  // namespace

void registerCublasLt(Napi::Env env, Napi::Object exports) {
  def(env, exports, "cublasLtVersion", Version);
  def(env, exports, "cublasLtMatmul", Matmul);
  def(env, exports, "cublasLtMatmulFp8BlockScaled", MatmulFp8BlockScaled);
}

}  // namespace shardts
