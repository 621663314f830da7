// What the two cuBLASLt files share: a plan (descriptors plus the heuristic's algorithm), the plan
// cache and per-device handles under one mutex, and status checks. cublaslt.cc holds the FP8
// block-scaled GEMM; cublaslt_matmul.cc the prepared f32/bf16/f16 matmul.
#pragma once

#include <map>
#include <mutex>
#include <string>

#include "common.h"
#include "driver.h"

namespace shardts {

struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

// Guards the handles, the plans and whatever points into them (cuBLASLt handles are per device;
// the FP8 GEMM sets its scale pointers on a cached descriptor).
std::mutex& ltMutex();
// The device's cuBLASLt handle, made on first use; call with ltMutex held.
cublasLtHandle_t ltHandle(Napi::Env env, CublasLtApi& api, int dev);
// Plans by key; std::map, so a plan's address stays valid while others are added.
std::map<std::string, LtPlan>& ltPlans();

void ltCheck(Napi::Env env, CublasLtApi& api, cublasStatus_t s, const std::string& call);

// The lowest set bit of a pointer (and of the batch stride in bytes when batched), at most 256:
// the operand alignment cuBLASLt is told a plan's pointers will have.
inline uint32_t ltAlignment(uint64_t ptr, int64_t strideBytes, int batch) {
  uint64_t x = ptr | 256;
  if (batch > 1) x |= static_cast<uint64_t>(strideBytes) | 256;
  return static_cast<uint32_t>(x & (~x + 1));
}

// Sets the preference (workspace, alignments al[A,B,C,D]) and stores cuBLASLt's best algorithm for
// the plan's descriptor and layouts in it; `none` says why when there is none.
void ltPickAlgo(Napi::Env env, CublasLtApi& api, cublasLtHandle_t h, LtPlan& p, uint64_t wsBytes, const uint32_t al[4],
                const std::string& what, const std::string& none);

}  // namespace shardts
