// The f32/bf16/f16 cuBLASLt matmul in column-major BLAS terms, prepared once and run by handle:
//
//   D[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C[m,n]     (for each of `batch` strided batches)
//
// cublasLtMatmulPrepare(options) reads the problem (types, transposes, shapes, leading dims, strides,
// alpha, beta, workspace size) once and returns a small integer; cublasLtMatmulRun(handle, a, b, c, d,
// workspace, stream) takes positional pointers only. The split exists for host time: reading ~25
// properties of an options object and building a plan key and a description on every call cost
// several µs, thousands of times a step. A run still picks the plan cuBLASLt was told the pointers'
// alignment for: it compares the pointers' lowest set bits with the prepared plan's and, where they
// differ, finds or builds the plan for the new alignment (kept with the handle), so every pointer
// runs the plan a per-call lookup would have chosen.
#include <cstring>
#include <memory>
#include <vector>

#include "cublaslt.h"

namespace shardts {

namespace {

int dtypeOf(Napi::Env env, const std::string& s, const char* what) {
  if (s == "f32") return CUDA_R_32F;
  if (s == "bf16") return CUDA_R_16BF;
  if (s == "f16") return CUDA_R_16F;
  throwTypeError(env, std::string("cublasLtMatmulPrepare: ") + what + " must be 'f32', 'bf16' or 'f16', got '" + s + "'");
}
size_t eltBytes(int t) { return t == CUDA_R_32F ? 4 : 2; }

// Everything a plan depends on except the operands' alignment.
struct Problem {
  int dev = 0, ab = 0, cd = 0, compute = 0, batch = 1;
  bool ta = false, tb = false;
  uint64_t m = 0, n = 0, k = 0, wsBytes = 0;
  int64_t lda = 0, ldb = 0, ldc = 0, ldd = 0, sA = 0, sB = 0, sC = 0, sD = 0;
};

struct Variant {
  uint32_t al[4];
  LtPlan* plan;
};

struct Prepared {
  Problem pr;
  float alpha = 1, beta = 0;
  cublasLtHandle_t h = nullptr;
  uint64_t strideBits[4] = {};  // OR'd into a pointer before its lowest set bit is taken (ltAlignment)
  std::string what;             // the problem in words, for error messages
  std::vector<Variant> variants;
};

std::vector<std::unique_ptr<Prepared>> g_prepared;  // handle = index + 1; under ltMutex
std::map<std::string, uint32_t> g_handles;          // plan key + alpha/beta -> handle

std::string planKey(const Problem& p, const uint32_t al[4]) {
  std::string s;
  for (int64_t v : {int64_t(p.dev), int64_t(p.ab), int64_t(p.cd), int64_t(p.compute), int64_t(p.ta), int64_t(p.tb), int64_t(p.m),
                    int64_t(p.n), int64_t(p.k), p.lda, p.ldb, p.ldc, p.ldd, int64_t(p.batch), p.sA, p.sB, p.sC, p.sD,
                    int64_t(al[0]), int64_t(al[1]), int64_t(al[2]), int64_t(al[3]), int64_t(p.wsBytes)})
    s += std::to_string(v) + ",";
  return s;
}

// The cached plan for the problem at this alignment, built on first use; call with ltMutex held.
LtPlan* planFor(Napi::Env env, CublasLtApi& api, const Prepared& pp, const uint32_t al[4]) {
  const Problem& pr = pp.pr;
  std::string key = planKey(pr, al);
  auto it = ltPlans().find(key);
  if (it != ltPlans().end()) return &it->second;
  const std::string& what = pp.what;
  LtPlan p;
  auto layout = [&](cublasLtMatrixLayout_t* l, int type, uint64_t rows, uint64_t cols, int64_t ld, int64_t stride, const char* name) {
    ltCheck(env, api, api.cublasLtMatrixLayoutCreate(l, type, rows, cols, ld), std::string("cublasLtMatrixLayoutCreate(") + name + ") " + what);
    if (pr.batch > 1) {
      int32_t bc = pr.batch;
      ltCheck(env, api, api.cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof(bc)),
              "cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)");
      ltCheck(env, api, api.cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)),
              "cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)");
    }
  };
  ltCheck(env, api, api.cublasLtMatmulDescCreate(&p.desc, pr.compute, CUDA_R_32F), "cublasLtMatmulDescCreate");
  int32_t opA = pr.ta ? CUBLAS_OP_T : CUBLAS_OP_N, opB = pr.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  ltCheck(env, api, api.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA)), "cublasLtMatmulDescSetAttribute(TRANSA)");
  ltCheck(env, api, api.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(opB)), "cublasLtMatmulDescSetAttribute(TRANSB)");
  layout(&p.a, pr.ab, pr.ta ? pr.k : pr.m, pr.ta ? pr.m : pr.k, pr.lda, pr.sA, "A");
  layout(&p.b, pr.ab, pr.tb ? pr.n : pr.k, pr.tb ? pr.k : pr.n, pr.ldb, pr.sB, "B");
  layout(&p.c, pr.cd, pr.m, pr.n, pr.ldc, pr.sC, "C");
  layout(&p.d, pr.cd, pr.m, pr.n, pr.ldd, pr.sD, "D");
  ltPickAlgo(env, api, pp.h, p, pr.wsBytes, al, what,
             "no algorithm fits this problem, its alignment (" + std::to_string(al[0]) + "/" + std::to_string(al[1]) + "/" +
                 std::to_string(al[2]) + "/" + std::to_string(al[3]) + " B) and " + std::to_string(pr.wsBytes) + " bytes of workspace");
  return &ltPlans().emplace(key, p).first->second;
}

void alignments(const Prepared& p, const uint64_t ptr[4], uint32_t al[4]) {
  for (int i = 0; i < 4; i++) {
    uint64_t x = ptr[i] | p.strideBits[i];
    al[i] = static_cast<uint32_t>(x & (~x + 1));
  }
}

uint64_t fieldOr(Napi::Env env, Napi::Object o, const char* key, uint64_t dflt) {
  Napi::Value v = o.Get(key);
  return (v.IsUndefined() || v.IsNull()) ? dflt : u64(env, v, key);
}
double numOr(Napi::Env env, Napi::Object o, const char* key, double dflt) {
  Napi::Value v = o.Get(key);
  return (v.IsUndefined() || v.IsNull()) ? dflt : f64(env, v, key);
}

// cublasLtMatmulPrepare(options): see MatmulPrepareOptions in runtime/cuda/native-types.ts. The
// pointers a, b, c, d are read for their alignment only.
Napi::Value Prepare(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throwTypeError(env, "cublasLtMatmulPrepare(options): options must be an object");
  Napi::Object o = info[0].As<Napi::Object>();
  auto pp = std::make_unique<Prepared>();
  Problem& pr = pp->pr;
  std::string dtypeS = str(env, o.Get("dtype"), "dtype");
  Napi::Value outV = o.Get("outDtype");
  std::string outS = (outV.IsUndefined() || outV.IsNull()) ? dtypeS : str(env, outV, "outDtype");
  pr.ab = dtypeOf(env, dtypeS, "dtype");
  pr.cd = dtypeOf(env, outS, "outDtype");
  Napi::Value ctV = o.Get("computeType");
  std::string ctS = (ctV.IsUndefined() || ctV.IsNull()) ? "f32" : str(env, ctV, "computeType");
  if (ctS != "f32" && ctS != "tf32") throwTypeError(env, "cublasLtMatmulPrepare: computeType must be 'f32' or 'tf32', got '" + ctS + "'");
  pr.compute = ctS == "tf32" ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  pr.ta = o.Get("transA").ToBoolean();
  pr.tb = o.Get("transB").ToBoolean();
  pr.m = u64(env, o.Get("m"), "m"), pr.n = u64(env, o.Get("n"), "n"), pr.k = u64(env, o.Get("k"), "k");
  uint64_t ptr[4] = {u64(env, o.Get("a"), "a"), u64(env, o.Get("b"), "b"), 0, u64(env, o.Get("d"), "d")};
  ptr[2] = fieldOr(env, o, "c", ptr[3]);
  pr.lda = u64(env, o.Get("lda"), "lda"), pr.ldb = u64(env, o.Get("ldb"), "ldb"), pr.ldd = u64(env, o.Get("ldd"), "ldd");
  pr.ldc = fieldOr(env, o, "ldc", pr.ldd);
  pr.batch = static_cast<int>(fieldOr(env, o, "batch", 1));
  pr.sA = fieldOr(env, o, "strideA", 0), pr.sB = fieldOr(env, o, "strideB", 0), pr.sD = fieldOr(env, o, "strideD", 0);
  pr.sC = fieldOr(env, o, "strideC", pr.sD);
  pp->alpha = static_cast<float>(numOr(env, o, "alpha", 1.0)), pp->beta = static_cast<float>(numOr(env, o, "beta", 0.0));
  pr.wsBytes = fieldOr(env, o, "workspaceBytes", 0);
  if (pr.m == 0 || pr.n == 0 || pr.k == 0 || pr.batch < 1)
    throwRangeError(env, "cublasLtMatmulPrepare: m, n, k and batch must be positive (got m=" + std::to_string(pr.m) + " n=" +
                             std::to_string(pr.n) + " k=" + std::to_string(pr.k) + " batch=" + std::to_string(pr.batch) +
                             "); skip empty products before preparing");
  const int64_t strides[4] = {pr.sA, pr.sB, pr.sC, pr.sD};
  for (int i = 0; i < 4; i++) {
    size_t eb = eltBytes(i < 2 ? pr.ab : pr.cd);
    pp->strideBits[i] = 256 | (pr.batch > 1 ? static_cast<uint64_t>(strides[i] * static_cast<int64_t>(eb)) : 0);
  }
  pp->what = "(" + dtypeS + "->" + outS + ", m=" + std::to_string(pr.m) + " n=" + std::to_string(pr.n) + " k=" + std::to_string(pr.k) +
             ", trans " + (pr.ta ? "T" : "N") + (pr.tb ? "T" : "N") + ", batch " + std::to_string(pr.batch) + ")";

  ctx(env);
  CublasLtApi& api = cublasLt(env);
  pr.dev = currentDevice();
  uint32_t al[4];
  alignments(*pp, ptr, al);
  uint32_t ab[2];
  std::memcpy(&ab[0], &pp->alpha, 4), std::memcpy(&ab[1], &pp->beta, 4);
  std::string key = planKey(pr, al) + std::to_string(ab[0]) + "," + std::to_string(ab[1]);
  std::lock_guard<std::mutex> lock(ltMutex());
  auto found = g_handles.find(key);
  if (found != g_handles.end()) return Napi::Number::New(env, found->second);
  pp->h = ltHandle(env, api, pr.dev);
  LtPlan* plan = planFor(env, api, *pp, al);
  pp->variants.push_back({{al[0], al[1], al[2], al[3]}, plan});
  g_prepared.push_back(std::move(pp));
  uint32_t id = static_cast<uint32_t>(g_prepared.size());
  g_handles.emplace(key, id);
  return Napi::Number::New(env, id);
}

// cublasLtMatmulRun(handle, a, b, c, d, workspace, stream): c 0 means d (no separate C).
Napi::Value Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 7)
    throwTypeError(env, "cublasLtMatmulRun(handle, a, b, c, d, workspace, stream) takes 7 arguments, got " + std::to_string(info.Length()));
  if (!info[0].IsNumber()) throwTypeError(env, "cublasLtMatmulRun: handle must be the number cublasLtMatmulPrepare returned");
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  uint64_t ptr[4] = {u64(env, info[1], "a"), u64(env, info[2], "b"), u64(env, info[3], "c"), u64(env, info[4], "d")};
  if (!ptr[2]) ptr[2] = ptr[3];
  uint64_t ws = u64(env, info[5], "workspace");
  CUstream stream = reinterpret_cast<CUstream>(static_cast<uintptr_t>(u64(env, info[6], "stream")));
  std::lock_guard<std::mutex> lock(ltMutex());
  if (id == 0 || id > g_prepared.size())
    throwRangeError(env, "cublasLtMatmulRun: unknown handle " + std::to_string(id) + "; get one from cublasLtMatmulPrepare in this process");
  Prepared& p = *g_prepared[id - 1];
  if (currentDevice() != p.pr.dev)
    throwRangeError(env, "cublasLtMatmulRun: handle " + std::to_string(id) + " was prepared on device " + std::to_string(p.pr.dev) +
                             ", the current device is " + std::to_string(currentDevice()) + "; prepare once per device");
  if (p.pr.wsBytes && !ws)
    throwRangeError(env, "cublasLtMatmulRun " + p.what + ": prepared with " + std::to_string(p.pr.wsBytes) + " bytes of workspace, got a null workspace");
  uint32_t al[4];
  alignments(p, ptr, al);
  LtPlan* plan = nullptr;
  for (const Variant& v : p.variants)
    if (v.al[0] == al[0] && v.al[1] == al[1] && v.al[2] == al[2] && v.al[3] == al[3]) {
      plan = v.plan;
      break;
    }
  CublasLtApi& api = cublasLt(env);
  if (!plan) {
    plan = planFor(env, api, p, al);
    p.variants.push_back({{al[0], al[1], al[2], al[3]}, plan});
  }
  cublasStatus_t s = api.cublasLtMatmul(p.h, plan->desc, &p.alpha, reinterpret_cast<const void*>(ptr[0]), plan->a,
                                        reinterpret_cast<const void*>(ptr[1]), plan->b, &p.beta, reinterpret_cast<const void*>(ptr[2]),
                                        plan->c, reinterpret_cast<void*>(ptr[3]), plan->d, &plan->algo, reinterpret_cast<void*>(ws),
                                        p.pr.wsBytes, stream);
  if (s != 0) ltCheck(env, api, s, "cublasLtMatmul " + p.what);
  return env.Undefined();
}

}  // namespace

void registerCublasLtMatmul(Napi::Env env, Napi::Object exports) {
  def(env, exports, "cublasLtMatmulPrepare", Prepare);
  def(env, exports, "cublasLtMatmulRun", Run);
}

}  // namespace shardts
