// cuBLASLt glue shared by both entry points (cublaslt.h), the version, and the block-scaled FP8 GEMM
// (the one entry point for it: MatmulFp8BlockScaled below). The f32/bf16/f16 matmul, prepared once
// and run by handle, is in cublaslt_matmul.cc.
#include "cublaslt.h"

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

uint64_t field(Napi::Env env, Napi::Object o, const char* key) { return u64(env, o.Get(key), key); }
uint64_t fieldOr(Napi::Env env, Napi::Object o, const char* key, uint64_t dflt) {
  Napi::Value v = o.Get(key);
  return (v.IsUndefined() || v.IsNull()) ? dflt : u64(env, v, key);
}

Napi::Value Version(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(cublasLt(info.Env()).cublasLtGetVersion()));
}

}  // namespace

std::mutex& ltMutex() {
  static std::mutex m;
  return m;
}

cublasLtHandle_t ltHandle(Napi::Env env, CublasLtApi& api, int dev) {
  static std::map<int, cublasLtHandle_t> handles;
  cublasLtHandle_t& h = handles[dev];
  if (!h) ltCheck(env, api, api.cublasLtCreate(&h), "cublasLtCreate");
  return h;
}

std::map<std::string, LtPlan>& ltPlans() {
  static std::map<std::string, LtPlan> plans;
  return plans;
}

void ltCheck(Napi::Env env, CublasLtApi& api, cublasStatus_t s, const std::string& call) {
  if (s == 0) return;
  const char* name = api.cublasLtGetStatusName ? api.cublasLtGetStatusName(s) : nullptr;
  const char* desc = api.cublasLtGetStatusString ? api.cublasLtGetStatusString(s) : nullptr;
  throwApiError(env, "cublasLt", call, s, name ? name : statusName(s), desc ? desc : "");
}

void ltPickAlgo(Napi::Env env, CublasLtApi& api, cublasLtHandle_t h, LtPlan& p, uint64_t wsBytes, const uint32_t al[4],
                const std::string& what, const std::string& none) {
  cublasLtMatmulPreference_t pref = nullptr;
  ltCheck(env, api, api.cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  ltCheck(env, api, api.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsBytes, sizeof(wsBytes)),
          "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)");
  for (int i = 0; i < 4; i++)
    ltCheck(env, api, api.cublasLtMatmulPreferenceSetAttribute(pref, PREF_MIN_ALIGNMENT_A + i, &al[i], sizeof(al[i])),
            "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT)");
  // Room for more than one result, in case a future cuBLASLt grows the struct.
  cublasLtMatmulHeuristicResult_t results[4] = {};
  int found = 0;
  cublasStatus_t s = api.cublasLtMatmulAlgoGetHeuristic(h, p.desc, p.a, p.b, p.c, p.d, pref, 1, results, &found);
  api.cublasLtMatmulPreferenceDestroy(pref);
  ltCheck(env, api, s, "cublasLtMatmulAlgoGetHeuristic " + what);
  if (found < 1) throwApiError(env, "cublasLt", "cublasLtMatmulAlgoGetHeuristic " + what, 15, "CUBLAS_STATUS_NOT_SUPPORTED", none);
  p.algo = results[0].algo;
  p.workspace = results[0].workspaceSize;
}

namespace {

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
  uint32_t al[4] = {ltAlignment(pb, 0, 1), ltAlignment(pa, 0, 1), ltAlignment(pd, 0, 1), ltAlignment(pd, 0, 1)};
  int dev = currentDevice();
  std::string key = "fp8bs|" + std::to_string(dev) + "|" + std::to_string(M) + "," + std::to_string(N) + "," + std::to_string(K) + "|" +
                    std::to_string(al[0]) + "," + std::to_string(al[1]) + "," + std::to_string(al[2]) + "|" + std::to_string(wsBytes);
  std::string what = "(e4m3 block-scaled 1x128/128x128 -> bf16, M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) + ")";

  std::lock_guard<std::mutex> lock(ltMutex());
  cublasLtHandle_t h = ltHandle(env, api, dev);
  auto it = ltPlans().find(key);
  if (it == ltPlans().end()) {
    LtPlan p;
    ltCheck(env, api, api.cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate " + what);
    auto set = [&](int attr, const void* v, size_t n, const char* name) {
      ltCheck(env, api, api.cublasLtMatmulDescSetAttribute(p.desc, attr, v, n), std::string("cublasLtMatmulDescSetAttribute(") + name + ") " + what);
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
    ltCheck(env, api, api.cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, K, N, K), "cublasLtMatrixLayoutCreate(A) " + what);
    ltCheck(env, api, api.cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8F_E4M3, K, M, K), "cublasLtMatrixLayoutCreate(B) " + what);
    ltCheck(env, api, api.cublasLtMatrixLayoutCreate(&p.c, CUDA_R_16BF, N, M, N), "cublasLtMatrixLayoutCreate(C) " + what);
    ltCheck(env, api, api.cublasLtMatrixLayoutCreate(&p.d, CUDA_R_16BF, N, M, N), "cublasLtMatrixLayoutCreate(D) " + what);
    ltPickAlgo(env, api, h, p, wsBytes, al, what, "no block-scaled FP8 algorithm for this problem on this GPU (cuBLASLt supports it on Hopper and newer)");
    it = ltPlans().emplace(key, p).first;
  }
  LtPlan& p = it->second;
  // the scale pointers are per call: set on the cached descriptor under the lock
  ltCheck(env, api, api.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &psb, sizeof(psb)), "cublasLtMatmulDescSetAttribute(A_SCALE_POINTER)");
  ltCheck(env, api, api.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &psa, sizeof(psa)), "cublasLtMatmulDescSetAttribute(B_SCALE_POINTER)");
  float alpha = 1.0f, beta = 0.0f;
  ltCheck(env, api,
        api.cublasLtMatmul(h, p.desc, &alpha, reinterpret_cast<const void*>(pb), p.a, reinterpret_cast<const void*>(pa), p.b, &beta,
                           reinterpret_cast<const void*>(pd), p.c, reinterpret_cast<void*>(pd), p.d, &p.algo, reinterpret_cast<void*>(ws),
                           wsBytes, stream),
        "cublasLtMatmul " + what);
  return env.Undefined();
}

}  // namespace

void registerCublasLt(Napi::Env env, Napi::Object exports) {
  def(env, exports, "cublasLtVersion", Version);
  registerCublasLtMatmul(env, exports);
  def(env, exports, "cublasLtMatmulFp8BlockScaled", MatmulFp8BlockScaled);
}

}  // namespace shardts
