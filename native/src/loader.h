// Run-time loading of the CUDA libraries with dlopen. Nothing is loaded when the addon is required;
// each library is searched for the first time one of its functions is called (or probe() asks), and
// a failed search is retried on the next call, so setting an override variable later still works.
//
// Search order for each library (the first candidate that loads and has every required symbol wins):
//   1. its override variable (SHARDTS_LIBCUDA, SHARDTS_NVRTC, SHARDTS_CUBLASLT, SHARDTS_NCCL,
//      SHARDTS_CUBLAS): a full path; when set, it is the only candidate, so a wrong override is an
//      error, never silently ignored;
//   2. $CUDA_HOME/lib64, $CUDA_PATH/lib64, /usr/local/cuda/lib64, /usr/local/cuda/targets/x86_64-linux/lib;
//   3. the plain soname through the dynamic loader's path (LD_LIBRARY_PATH, ld.so.cache);
//   4. for libcuda only: /usr/local/nvidia/lib64 and /usr/lib/wsl/lib (container and WSL driver mounts).
// For libraries with several sonames (libnvrtc.so.13 then .12, ...), every soname is tried in a folder
// before the next folder.
#pragma once

#include <napi.h>

#include <string>
#include <vector>

#include "cuda_types.h"

namespace shardts {

enum class LibId { Cuda = 0, Nvrtc = 1, CublasLt = 2, Nccl = 3, Cublas = 4 };

struct LibStatus {
  bool ok = false;
  std::string path;                // the file that was loaded
  std::vector<std::string> tried;  // "candidate: why it was refused" for each candidate tried
  std::string message;             // the full error message when !ok
  std::string version;             // a version string when ok
};

// Tries to load (or returns the loaded state of) a library; never throws.
LibStatus probeLib(LibId id);

// The loaded function tables; they throw a JS Error (code ERR_SHARDTS_LIBRARY_UNAVAILABLE, with
// `library` and `tried`) when the library cannot be loaded.
DriverApi& cu(Napi::Env env);
NvrtcApi& nvrtc(Napi::Env env);
CublasLtApi& cublasLt(Napi::Env env);
NcclApi& nccl(Napi::Env env);
// libcublas, for its grouped GEMM only; callers probe it first and fall back to cuBLASLt without it.
CublasApi& cublas(Napi::Env env);

// The driver table if libcuda is already loaded, else null (for finalizers, which must not throw).
DriverApi* cuIfLoaded();

}  // namespace shardts
