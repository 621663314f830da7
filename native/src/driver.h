// Driver helpers shared by the launch, cuBLASLt and NCCL parts.
#pragma once

#include <napi.h>

#include "cuda_types.h"
#include "loader.h"

namespace shardts {

// Throws the JS error for a failed driver call (names the call, the code, cuGetErrorName/String).
void cuCheck(Napi::Env env, CUresult r, const char* call);

// Loads libcuda, runs cuInit once, and makes the current device's primary context current on this
// thread (device 0 unless setDevice chose another). Returns the driver table.
DriverApi& ctx(Napi::Env env);

// The device ordinal current on this thread (after ctx()).
int currentDevice();

}  // namespace shardts
