#include "loader.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <cstdlib>
#include <functional>
#include <mutex>

#include "common.h"

namespace shardts {

namespace {

struct Sym {
  void** slot;
  const char* names[3];  // tried in order: the versioned name first
  bool required;
};

#define REQ(api, field, ...) Sym{reinterpret_cast<void**>(&(api).field), {__VA_ARGS__}, true}
#define OPT(api, field, ...) Sym{reinterpret_cast<void**>(&(api).field), {__VA_ARGS__}, false}

DriverApi g_cu{};
NvrtcApi g_nvrtc{};
CublasLtApi g_lt{};
NcclApi g_nccl{};
CublasApi g_blas{};

std::vector<Sym> driverSyms() {
  DriverApi& a = g_cu;
  return {
      REQ(a, cuInit, "cuInit"), REQ(a, cuDriverGetVersion, "cuDriverGetVersion"),
      REQ(a, cuGetErrorName, "cuGetErrorName"), REQ(a, cuGetErrorString, "cuGetErrorString"),
      REQ(a, cuDeviceGetCount, "cuDeviceGetCount"), REQ(a, cuDeviceGet, "cuDeviceGet"),
      REQ(a, cuDeviceGetName, "cuDeviceGetName"), REQ(a, cuDeviceGetAttribute, "cuDeviceGetAttribute"),
      REQ(a, cuDeviceTotalMem, "cuDeviceTotalMem_v2"), REQ(a, cuDeviceGetPCIBusId, "cuDeviceGetPCIBusId"),
      OPT(a, cuDeviceGetUuid, "cuDeviceGetUuid_v2", "cuDeviceGetUuid"),
      REQ(a, cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"), REQ(a, cuCtxSetCurrent, "cuCtxSetCurrent"),
      REQ(a, cuCtxSynchronize, "cuCtxSynchronize"), REQ(a, cuMemGetInfo, "cuMemGetInfo_v2"),
      REQ(a, cuMemAlloc, "cuMemAlloc_v2"), REQ(a, cuMemFree, "cuMemFree_v2"),
      REQ(a, cuMemHostAlloc, "cuMemHostAlloc"), REQ(a, cuMemFreeHost, "cuMemFreeHost"),
      REQ(a, cuMemcpyHtoD, "cuMemcpyHtoD_v2"), REQ(a, cuMemcpyDtoH, "cuMemcpyDtoH_v2"),
      REQ(a, cuMemcpyDtoD, "cuMemcpyDtoD_v2"), REQ(a, cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2"),
      REQ(a, cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2"), REQ(a, cuMemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2"),
      REQ(a, cuMemsetD8, "cuMemsetD8_v2"), REQ(a, cuMemsetD16, "cuMemsetD16_v2"),
      REQ(a, cuMemsetD32, "cuMemsetD32_v2"), REQ(a, cuMemsetD8Async, "cuMemsetD8Async"),
      REQ(a, cuMemsetD16Async, "cuMemsetD16Async"), REQ(a, cuMemsetD32Async, "cuMemsetD32Async"),
      REQ(a, cuModuleLoadDataEx, "cuModuleLoadDataEx"), REQ(a, cuModuleUnload, "cuModuleUnload"),
      REQ(a, cuModuleGetFunction, "cuModuleGetFunction"), REQ(a, cuFuncSetAttribute, "cuFuncSetAttribute"),
      REQ(a, cuFuncGetAttribute, "cuFuncGetAttribute"), OPT(a, cuFuncGetParamInfo, "cuFuncGetParamInfo"),
      REQ(a, cuLaunchKernel, "cuLaunchKernel"), REQ(a, cuStreamCreate, "cuStreamCreate"),
      REQ(a, cuStreamDestroy, "cuStreamDestroy_v2"), REQ(a, cuStreamSynchronize, "cuStreamSynchronize"),
      REQ(a, cuStreamQuery, "cuStreamQuery"), REQ(a, cuStreamWaitEvent, "cuStreamWaitEvent"),
      REQ(a, cuEventCreate, "cuEventCreate"), REQ(a, cuEventDestroy, "cuEventDestroy_v2"),
      REQ(a, cuEventRecord, "cuEventRecord"), REQ(a, cuEventSynchronize, "cuEventSynchronize"),
      REQ(a, cuEventQuery, "cuEventQuery"),
      REQ(a, cuEventElapsedTime, "cuEventElapsedTime_v2", "cuEventElapsedTime"),
      REQ(a, cuStreamBeginCapture, "cuStreamBeginCapture_v2"), REQ(a, cuStreamEndCapture, "cuStreamEndCapture"),
      REQ(a, cuStreamIsCapturing, "cuStreamIsCapturing"),
      REQ(a, cuGraphInstantiateWithFlags, "cuGraphInstantiateWithFlags"), REQ(a, cuGraphUpload, "cuGraphUpload"),
      REQ(a, cuGraphLaunch, "cuGraphLaunch"), REQ(a, cuGraphExecDestroy, "cuGraphExecDestroy"),
      REQ(a, cuGraphDestroy, "cuGraphDestroy"), REQ(a, cuGraphGetNodes, "cuGraphGetNodes"),
      OPT(a, cuTensorMapEncodeTiled, "cuTensorMapEncodeTiled"),
      OPT(a, cuIpcGetMemHandle, "cuIpcGetMemHandle"), OPT(a, cuIpcOpenMemHandle, "cuIpcOpenMemHandle_v2", "cuIpcOpenMemHandle"),
      OPT(a, cuIpcCloseMemHandle, "cuIpcCloseMemHandle"), OPT(a, cuDeviceCanAccessPeer, "cuDeviceCanAccessPeer"),
  };
}

std::vector<Sym> nvrtcSyms() {
  NvrtcApi& a = g_nvrtc;
  return {
      REQ(a, nvrtcGetErrorString, "nvrtcGetErrorString"), REQ(a, nvrtcVersion, "nvrtcVersion"),
      REQ(a, nvrtcGetNumSupportedArchs, "nvrtcGetNumSupportedArchs"),
      REQ(a, nvrtcGetSupportedArchs, "nvrtcGetSupportedArchs"), REQ(a, nvrtcCreateProgram, "nvrtcCreateProgram"),
      REQ(a, nvrtcDestroyProgram, "nvrtcDestroyProgram"), REQ(a, nvrtcCompileProgram, "nvrtcCompileProgram"),
      REQ(a, nvrtcGetPTXSize, "nvrtcGetPTXSize"), REQ(a, nvrtcGetPTX, "nvrtcGetPTX"),
      REQ(a, nvrtcGetCUBINSize, "nvrtcGetCUBINSize"), REQ(a, nvrtcGetCUBIN, "nvrtcGetCUBIN"),
      REQ(a, nvrtcGetProgramLogSize, "nvrtcGetProgramLogSize"), REQ(a, nvrtcGetProgramLog, "nvrtcGetProgramLog"),
      REQ(a, nvrtcAddNameExpression, "nvrtcAddNameExpression"), REQ(a, nvrtcGetLoweredName, "nvrtcGetLoweredName"),
  };
}

std::vector<Sym> cublasLtSyms() {
  CublasLtApi& a = g_lt;
  return {
      REQ(a, cublasLtGetVersion, "cublasLtGetVersion"), OPT(a, cublasLtGetStatusName, "cublasLtGetStatusName"),
      OPT(a, cublasLtGetStatusString, "cublasLtGetStatusString"), REQ(a, cublasLtCreate, "cublasLtCreate"),
      REQ(a, cublasLtDestroy, "cublasLtDestroy"), REQ(a, cublasLtMatmulDescCreate, "cublasLtMatmulDescCreate"),
      REQ(a, cublasLtMatmulDescDestroy, "cublasLtMatmulDescDestroy"),
      REQ(a, cublasLtMatmulDescSetAttribute, "cublasLtMatmulDescSetAttribute"),
      REQ(a, cublasLtMatrixLayoutCreate, "cublasLtMatrixLayoutCreate"),
      REQ(a, cublasLtMatrixLayoutDestroy, "cublasLtMatrixLayoutDestroy"),
      REQ(a, cublasLtMatrixLayoutSetAttribute, "cublasLtMatrixLayoutSetAttribute"),
      REQ(a, cublasLtMatmulPreferenceCreate, "cublasLtMatmulPreferenceCreate"),
      REQ(a, cublasLtMatmulPreferenceDestroy, "cublasLtMatmulPreferenceDestroy"),
      REQ(a, cublasLtMatmulPreferenceSetAttribute, "cublasLtMatmulPreferenceSetAttribute"),
      REQ(a, cublasLtMatmulAlgoGetHeuristic, "cublasLtMatmulAlgoGetHeuristic"),
      REQ(a, cublasLtMatmul, "cublasLtMatmul"),
  };
}

std::vector<Sym> ncclSyms() {
  NcclApi& a = g_nccl;
  return {
      REQ(a, ncclGetVersion, "ncclGetVersion"), REQ(a, ncclGetErrorString, "ncclGetErrorString"),
      OPT(a, ncclGetLastError, "ncclGetLastError"), REQ(a, ncclGetUniqueId, "ncclGetUniqueId"),
      REQ(a, ncclCommInitRank, "ncclCommInitRank"), REQ(a, ncclCommInitAll, "ncclCommInitAll"),
      REQ(a, ncclCommDestroy, "ncclCommDestroy"), REQ(a, ncclCommAbort, "ncclCommAbort"),
      REQ(a, ncclCommGetAsyncError, "ncclCommGetAsyncError"), REQ(a, ncclCommCount, "ncclCommCount"),
      REQ(a, ncclCommUserRank, "ncclCommUserRank"), REQ(a, ncclCommCuDevice, "ncclCommCuDevice"),
      REQ(a, ncclAllReduce, "ncclAllReduce"), REQ(a, ncclAllGather, "ncclAllGather"),
      REQ(a, ncclReduceScatter, "ncclReduceScatter"), REQ(a, ncclBroadcast, "ncclBroadcast"),
      REQ(a, ncclSend, "ncclSend"), REQ(a, ncclRecv, "ncclRecv"), REQ(a, ncclGroupStart, "ncclGroupStart"),
      REQ(a, ncclGroupEnd, "ncclGroupEnd"), OPT(a, ncclCommSplit, "ncclCommSplit"),
  };
}

// Every symbol is required: a libcublas without the grouped GEMM (before 12.5) is refused as too old,
// and the segment contractions keep their per-group cuBLASLt loop.
std::vector<Sym> cublasSyms() {
  CublasApi& a = g_blas;
  return {
      REQ(a, cublasGetProperty, "cublasGetProperty"), REQ(a, cublasGetStatusName, "cublasGetStatusName"),
      REQ(a, cublasGetStatusString, "cublasGetStatusString"), REQ(a, cublasCreate, "cublasCreate_v2"),
      REQ(a, cublasSetStream, "cublasSetStream_v2"), REQ(a, cublasGemmGroupedBatchedEx, "cublasGemmGroupedBatchedEx"),
  };
}

// Version checks run once the symbols resolve: "" when acceptable, else why not; `version` is filled.
std::string checkDriver(std::string& version) {
  int v = 0;
  if (g_cu.cuDriverGetVersion(&v) != CUDA_SUCCESS) return "cuDriverGetVersion failed";
  version = std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  if (v < 12000) return "the driver supports CUDA " + version + "; shardts needs a driver for CUDA 12.0 or newer";
  return "";
}
std::string checkNvrtc(std::string& version) {
  int major = 0, minor = 0;
  if (g_nvrtc.nvrtcVersion(&major, &minor) != NVRTC_SUCCESS) return "nvrtcVersion failed";
  version = std::to_string(major) + "." + std::to_string(minor);
  if (major < 12) return "NVRTC " + version + " is too old; shardts needs NVRTC 12 or newer";
  return "";
}
std::string checkCublasLt(std::string& version) {
  size_t v = g_lt.cublasLtGetVersion();
  version = std::to_string(v / 10000) + "." + std::to_string((v % 10000) / 100) + "." + std::to_string(v % 100);
  if (v < 120000) return "cuBLASLt " + version + " is too old; shardts needs cuBLASLt 12 or newer";
  return "";
}
std::string checkNccl(std::string& version) {
  int v = 0;
  if (g_nccl.ncclGetVersion(&v) != ncclSuccess) return "ncclGetVersion failed";
  version = std::to_string(v / 10000) + "." + std::to_string((v % 10000) / 100) + "." + std::to_string(v % 100);
  if (v < 21200) return "NCCL " + version + " is too old; shardts needs NCCL 2.12 or newer";
  return "";
}

std::string checkCublas(std::string& version) {
  int major = 0, minor = 0, patch = 0;
  if (g_blas.cublasGetProperty(SHARDTS_MAJOR_VERSION, &major) || g_blas.cublasGetProperty(SHARDTS_MINOR_VERSION, &minor) ||
      g_blas.cublasGetProperty(SHARDTS_PATCH_LEVEL, &patch))
    return "cublasGetProperty failed";
  version = std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
  return "";
}

struct Spec {
  const char* label;   // what it is, for messages
  const char* envVar;  // the explicit override
  std::vector<const char*> sonames;
  std::vector<const char*> extraDirs;  // searched after the loader path
  std::function<std::vector<Sym>()> syms;
  std::function<std::string(std::string&)> check;
  const char* hint;  // what to do about it
};

const Spec& spec(LibId id) {
  static const Spec specs[] = {
      {"the CUDA driver library", "SHARDTS_LIBCUDA", {"libcuda.so.1"}, {"/usr/local/nvidia/lib64", "/usr/lib/wsl/lib"},
       driverSyms, checkDriver, "Install the NVIDIA driver (it provides libcuda.so.1)"},
      {"NVRTC", "SHARDTS_NVRTC", {"libnvrtc.so.13", "libnvrtc.so.12"}, {}, nvrtcSyms, checkNvrtc,
       "Install the CUDA toolkit's NVRTC (12 or 13)"},
      {"cuBLASLt", "SHARDTS_CUBLASLT", {"libcublasLt.so.13", "libcublasLt.so.12"}, {}, cublasLtSyms, checkCublasLt,
       "Install the CUDA toolkit's cuBLAS (12 or 13)"},
      {"NCCL", "SHARDTS_NCCL", {"libnccl.so.2"}, {}, ncclSyms, checkNccl, "Install NCCL 2"},
      {"cuBLAS", "SHARDTS_CUBLAS", {"libcublas.so.13", "libcublas.so.12"}, {}, cublasSyms, checkCublas,
       "Install the CUDA toolkit's cuBLAS (12.5 or newer, for cublasGemmGroupedBatchedEx)"},
  };
  return specs[static_cast<int>(id)];
}

struct State {
  bool ok = false;
  void* handle = nullptr;
  LibStatus status;
};
State g_state[5];
std::mutex g_mutex;

bool fileExists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

std::vector<std::string> candidates(const Spec& s, bool& fromEnv) {
  std::vector<std::string> out;
  const char* over = std::getenv(s.envVar);
  fromEnv = over && *over;
  if (fromEnv) return {over};
  std::vector<std::string> dirs;
  for (const char* var : {"CUDA_HOME", "CUDA_PATH"}) {
    const char* v = std::getenv(var);
    if (v && *v) dirs.push_back(std::string(v) + "/lib64");
  }
  dirs.push_back("/usr/local/cuda/lib64");
  dirs.push_back("/usr/local/cuda/targets/x86_64-linux/lib");
  auto add = [&](const std::string& c) {
    for (const auto& x : out)
      if (x == c) return;
    out.push_back(c);
  };
  for (const auto& d : dirs)
    for (const char* so : s.sonames) add(d + "/" + so);
  for (const char* so : s.sonames) add(so);
  for (const char* d : s.extraDirs)
    for (const char* so : s.sonames) add(std::string(d) + "/" + so);
  return out;
}

// Resolves every symbol of `s` in `h`; "" on success, else the first required symbol missing.
std::string resolve(const Spec& s, void* h) {
  for (Sym& sym : s.syms()) {
    *sym.slot = nullptr;
    for (const char* name : sym.names) {
      if (!name) break;
      if ((*sym.slot = dlsym(h, name))) break;
    }
    if (!*sym.slot && sym.required) return sym.names[0];
  }
  return "";
}

void load(LibId id) {
  State& st = g_state[static_cast<int>(id)];
  if (st.ok) return;
  const Spec& s = spec(id);
  st.status = LibStatus{};
  bool fromEnv = false;
  for (const std::string& c : candidates(s, fromEnv)) {
    std::string label = fromEnv ? c + " (from " + s.envVar + ")" : (c.find('/') == std::string::npos ? c + " (loader path)" : c);
    if (c.find('/') != std::string::npos && !fileExists(c)) {
      st.status.tried.push_back(label + ": no such file");
      continue;
    }
    dlerror();
    void* h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      st.status.tried.push_back(label + ": " + (e ? e : "dlopen failed"));
      continue;
    }
    std::string missing = resolve(s, h);
    if (!missing.empty()) {
      st.status.tried.push_back(label + ": too old (it has no " + missing + ")");
      dlclose(h);
      continue;
    }
    std::string version;
    std::string why = s.check(version);
    if (!why.empty()) {
      st.status.tried.push_back(label + ": " + why);
      dlclose(h);
      continue;
    }
    Dl_info info{};
    void* anySym = dlsym(h, s.syms().front().names[0]);
    st.status.path = (anySym && dladdr(anySym, &info) && info.dli_fname) ? info.dli_fname : c;
    st.status.version = version;
    st.status.ok = true;
    st.handle = h;
    st.ok = true;
    return;
  }
  std::string msg = std::string("shardts: cannot load ") + s.label + " (" + s.sonames.front() +
                    "), so the CUDA backend cannot use it. Tried:";
  for (const auto& t : st.status.tried) msg += "\n  " + t;
  msg += std::string("\n") + s.hint + ", or set " + s.envVar + " to the full path of " + s.sonames.front();
  if (!fromEnv) msg += " (CUDA_HOME and CUDA_PATH are searched too)";
  msg += ".";
  st.status.message = msg;
}

[[noreturn]] void throwUnavailable(Napi::Env env, LibId id, const LibStatus& status) {
  Napi::Error err = Napi::Error::New(env, status.message);
  err.Set("code", Napi::String::New(env, "ERR_SHARDTS_LIBRARY_UNAVAILABLE"));
  static const char* names[] = {"cuda", "nvrtc", "cublasLt", "nccl", "cublas"};
  err.Set("library", Napi::String::New(env, names[static_cast<int>(id)]));
  Napi::Array tried = Napi::Array::New(env, status.tried.size());
  for (size_t i = 0; i < status.tried.size(); i++) tried.Set(static_cast<uint32_t>(i), status.tried[i]);
  err.Set("tried", tried);
  throw err;
}

template <typename Api>
Api& require(Napi::Env env, LibId id, Api& api) {
  State& st = g_state[static_cast<int>(id)];
  if (st.ok) return api;
  LibStatus status;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    load(id);
    if (st.ok) return api;
    status = st.status;
  }
  throwUnavailable(env, id, status);
}

Napi::Value Probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = str(env, info[0], "library");
  LibId id;
  if (name == "cuda") id = LibId::Cuda;
  else if (name == "nvrtc") id = LibId::Nvrtc;
  else if (name == "cublasLt") id = LibId::CublasLt;
  else if (name == "nccl") id = LibId::Nccl;
  else if (name == "cublas") id = LibId::Cublas;
  else throwTypeError(env, "probe(library): library must be 'cuda', 'nvrtc', 'cublasLt', 'nccl' or 'cublas', got '" + name + "'");
  LibStatus s = probeLib(id);
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", s.ok);
  o.Set("library", name);
  if (s.ok) {
    o.Set("path", s.path);
    o.Set("version", s.version);
  } else {
    o.Set("reason", s.message);
  }
  Napi::Array tried = Napi::Array::New(env, s.tried.size());
  for (size_t i = 0; i < s.tried.size(); i++) tried.Set(static_cast<uint32_t>(i), s.tried[i]);
  o.Set("tried", tried);
  return o;
}

}  // namespace

LibStatus probeLib(LibId id) {
  std::lock_guard<std::mutex> lock(g_mutex);
  load(id);
  return g_state[static_cast<int>(id)].status;
}

DriverApi& cu(Napi::Env env) { return require(env, LibId::Cuda, g_cu); }
NvrtcApi& nvrtc(Napi::Env env) { return require(env, LibId::Nvrtc, g_nvrtc); }
CublasLtApi& cublasLt(Napi::Env env) { return require(env, LibId::CublasLt, g_lt); }
NcclApi& nccl(Napi::Env env) { return require(env, LibId::Nccl, g_nccl); }
CublasApi& cublas(Napi::Env env) { return require(env, LibId::Cublas, g_blas); }
DriverApi* cuIfLoaded() { return g_state[static_cast<int>(LibId::Cuda)].ok ? &g_cu : nullptr; }

void registerLoader(Napi::Env env, Napi::Object exports) { def(env, exports, "probe", Probe); }

}  // namespace shardts
