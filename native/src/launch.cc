// CUDA driver glue: modules, kernels and launches, streams, events, graph capture and replay.
//
// Kernel arguments travel as one packed byte buffer laid out like the kernel's parameter block (each
// argument at its natural alignment, as runtime/cuda/kernel-args.ts packs them) and are handed to
// cuLaunchKernel through CU_LAUNCH_PARAM_BUFFER_POINTER. Where the driver can say how large the
// parameter block is (cuFuncGetParamInfo, CUDA 12.4+), a buffer of the wrong size is refused before
// the launch instead of corrupting the kernel's arguments.
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common.h"
#include "driver.h"

namespace shardts {

namespace {

Napi::Value ModuleLoadData(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DriverApi& api = ctx(env);
  std::vector<uint8_t> image;
  if (info[0].IsString()) {
    std::string s = info[0].As<Napi::String>().Utf8Value();
    image.assign(s.begin(), s.end());
  } else {
    HostSpan span = hostSpan(env, info[0], "image");
    image.assign(span.data, span.data + span.bytes);
  }
  if (image.empty()) throwRangeError(env, "moduleLoadData: the image is empty");
  bool elf = image.size() >= 4 && image[0] == 0x7f && image[1] == 'E' && image[2] == 'L' && image[3] == 'F';
  bool fatbin = image.size() >= 4 && image[0] == 0x50 && image[1] == 0xed && image[2] == 0x55 && image[3] == 0xba;
  if (!elf && !fatbin && image.back() != 0) image.push_back(0);  // PTX text must be NUL-terminated
  std::vector<char> errLog(16384, 0), infoLog(16384, 0);
  int opts[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, CU_JIT_INFO_LOG_BUFFER,
                CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES};
  void* vals[] = {errLog.data(), reinterpret_cast<void*>(static_cast<uintptr_t>(errLog.size() - 1)), infoLog.data(),
                  reinterpret_cast<void*>(static_cast<uintptr_t>(infoLog.size() - 1))};
  CUmodule mod = nullptr;
  CUresult r = api.cuModuleLoadDataEx(&mod, image.data(), 4, opts, vals);
  if (r != CUDA_SUCCESS) {
    std::string call = std::string("cuModuleLoadDataEx(") + (elf ? "cubin" : fatbin ? "fatbin" : "PTX") + ", " +
                       std::to_string(image.size()) + " bytes)";
    std::string log(errLog.data());
    if (!log.empty()) call += " [JIT log: " + log + "]";
    cuCheck(env, r, call.c_str());
  }
  return bigPtr(env, mod);
}

Napi::Value ModuleUnload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cuCheck(env, ctx(env).cuModuleUnload(handle<CUmod_st>(env, info[0], "module")), "cuModuleUnload");
  return env.Undefined();
}

Napi::Value ModuleGetFunction(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DriverApi& api = ctx(env);
  CUmodule mod = handle<CUmod_st>(env, info[0], "module");
  std::string name = str(env, info[1], "name");
  CUfunction fn = nullptr;
  cuCheck(env, api.cuModuleGetFunction(&fn, mod, name.c_str()), ("cuModuleGetFunction('" + name + "')").c_str());
  return bigPtr(env, fn);
}

Napi::Value FuncSetMaxDynamicSharedMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int bytes = i32(env, info[1], "bytes");
  cuCheck(env,
          ctx(env).cuFuncSetAttribute(handle<CUfunc_st>(env, info[0], "fn"), CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                      bytes),
          ("cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES, " + std::to_string(bytes) + ")").c_str());
  return env.Undefined();
}

Napi::Value FuncGetAttributes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DriverApi& api = ctx(env);
  CUfunction fn = handle<CUfunc_st>(env, info[0], "fn");
  static const std::pair<const char*, int> attrs[] = {
      {"maxThreadsPerBlock", CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK},
      {"sharedSizeBytes", CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES},
      {"constSizeBytes", CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES},
      {"localSizeBytes", CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES},
      {"numRegs", CU_FUNC_ATTRIBUTE_NUM_REGS},
      {"ptxVersion", CU_FUNC_ATTRIBUTE_PTX_VERSION},
      {"binaryVersion", CU_FUNC_ATTRIBUTE_BINARY_VERSION},
      {"maxDynamicSharedSizeBytes", CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES},
  };
  Napi::Object o = Napi::Object::New(env);
  for (const auto& a : attrs) {
    int v = 0;
    cuCheck(env, api.cuFuncGetAttribute(&v, a.second, fn), (std::string("cuFuncGetAttribute(") + a.first + ")").c_str());
    o.Set(a.first, v);
  }
  return o;
}

// The size of a kernel's parameter block, or -1 when the driver cannot say.
std::mutex g_paramMutex;
std::unordered_map<CUfunction, long long> g_paramBytes;

long long paramBytes(DriverApi& api, CUfunction fn) {
  if (!api.cuFuncGetParamInfo) return -1;
  {
    std::lock_guard<std::mutex> lock(g_paramMutex);
    auto it = g_paramBytes.find(fn);
    if (it != g_paramBytes.end()) return it->second;
  }
  long long end = 0;
  for (size_t i = 0;; i++) {
    size_t off = 0, size = 0;
    CUresult r = api.cuFuncGetParamInfo(fn, i, &off, &size);
    if (r == CUDA_ERROR_INVALID_VALUE) break;  // past the last parameter
    if (r != CUDA_SUCCESS) {
      end = -1;
      break;
    }
    end = static_cast<long long>(off + size);
  }
  std::lock_guard<std::mutex> lock(g_paramMutex);
  g_paramBytes[fn] = end;
  return end;
}

// funcGetParamLayout(fn) -> [{offset, size}] per parameter, as the device lays them out (an
// over-aligned parameter such as a 64-byte-aligned CUtensorMap may start past offset 0), or null
// when the driver cannot say (before CUDA 12.4).
Napi::Value FuncGetParamLayout(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DriverApi& api = ctx(env);
  CUfunction fn = handle<CUfunc_st>(env, info[0], "fn");
  if (!api.cuFuncGetParamInfo) return env.Null();
  Napi::Array out = Napi::Array::New(env);
  for (size_t i = 0;; i++) {
    size_t off = 0, size = 0;
    CUresult r = api.cuFuncGetParamInfo(fn, i, &off, &size);
    if (r == CUDA_ERROR_INVALID_VALUE) break;  // past the last parameter
    cuCheck(env, r, "cuFuncGetParamInfo");
    Napi::Object o = Napi::Object::New(env);
    o.Set("offset", static_cast<double>(off));
    o.Set("size", static_cast<double>(size));
    out.Set(static_cast<uint32_t>(i), o);
  }
  return out;
}

void dims(Napi::Env env, const Napi::Value& v, const char* what, unsigned out[3]) {
  out[0] = out[1] = out[2] = 1;
  if (v.IsNumber()) {
    out[0] = static_cast<unsigned>(u64(env, v, what));
    return;
  }
  if (!v.IsArray()) throwTypeError(env, std::string(what) + " must be a number or an array of up to 3 numbers");
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() < 1 || a.Length() > 3) throwTypeError(env, std::string(what) + " must have 1 to 3 dimensions");
  for (uint32_t i = 0; i < a.Length(); i++) out[i] = static_cast<unsigned>(u64(env, a.Get(i), what));
}

// launchKernel(fn, grid, block, sharedMemBytes, stream, params)
Napi::Value LaunchKernel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUfunction fn = handle<CUfunc_st>(env, info[0], "fn");
  unsigned g[3], b[3];
  dims(env, info[1], "grid", g);
  dims(env, info[2], "block", b);
  unsigned shared = static_cast<unsigned>(u64Or(info, 3, 0, "sharedMemBytes"));
  CUstream stream = handleOr<CUstream>(info, 4, "stream");
  HostSpan params{nullptr, 0};
  if (has(info, 5)) params = hostSpan(env, info[5], "params");
  DriverApi& api = ctx(env);
  long long expected = paramBytes(api, fn);
  if (expected >= 0 && (static_cast<long long>(params.bytes) < expected ||
                        static_cast<long long>(params.bytes) > ((expected + 7) & ~7LL)))
    throwRangeError(env, "launchKernel: the kernel's parameters take " + std::to_string(expected) +
                             " bytes but the packed argument buffer has " + std::to_string(params.bytes));
  size_t size = params.bytes;
  void* extra[] = {SHARDTS_CU_LAUNCH_PARAM_BUFFER_POINTER, params.data, SHARDTS_CU_LAUNCH_PARAM_BUFFER_SIZE, &size,
                   SHARDTS_CU_LAUNCH_PARAM_END};
  CUresult r = api.cuLaunchKernel(fn, g[0], g[1], g[2], b[0], b[1], b[2], shared, stream, nullptr, size ? extra : nullptr);
  if (r != CUDA_SUCCESS) {
    std::string call = "cuLaunchKernel(grid [" + std::to_string(g[0]) + "," + std::to_string(g[1]) + "," +
                       std::to_string(g[2]) + "], block [" + std::to_string(b[0]) + "," + std::to_string(b[1]) + "," +
                       std::to_string(b[2]) + "], " + std::to_string(shared) + " B shared)";
    cuCheck(env, r, call.c_str());
  }
  return env.Undefined();
}

Napi::Value StreamCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUstream s = nullptr;
  cuCheck(env, ctx(env).cuStreamCreate(&s, static_cast<unsigned>(u64Or(info, 0, 0, "flags"))), "cuStreamCreate");
  return bigPtr(env, s);
}

#define SIMPLE(NAME, CALL, EXPR)                                   \
  Napi::Value NAME(const Napi::CallbackInfo& info) {               \
    Napi::Env env = info.Env();                                    \
    DriverApi& api = ctx(env);                                     \
    cuCheck(env, EXPR, CALL);                                      \
    return env.Undefined();                                        \
  }

SIMPLE(StreamDestroy, "cuStreamDestroy_v2", api.cuStreamDestroy(handle<CUstream_st>(env, info[0], "stream")))
SIMPLE(StreamSynchronize, "cuStreamSynchronize", api.cuStreamSynchronize(handleOr<CUstream>(info, 0, "stream")))
SIMPLE(StreamWaitEvent, "cuStreamWaitEvent",
       api.cuStreamWaitEvent(handleOr<CUstream>(info, 0, "stream"), handle<CUevent_st>(env, info[1], "event"), 0))
SIMPLE(EventDestroy, "cuEventDestroy_v2", api.cuEventDestroy(handle<CUevent_st>(env, info[0], "event")))
SIMPLE(EventRecord, "cuEventRecord",
       api.cuEventRecord(handle<CUevent_st>(env, info[0], "event"), handleOr<CUstream>(info, 1, "stream")))
SIMPLE(EventSynchronize, "cuEventSynchronize", api.cuEventSynchronize(handle<CUevent_st>(env, info[0], "event")))
SIMPLE(StreamBeginCapture, "cuStreamBeginCapture_v2",
       api.cuStreamBeginCapture(handle<CUstream_st>(env, info[0], "stream"), i32Or(info, 1, 0, "mode")))
SIMPLE(GraphUpload, "cuGraphUpload",
       api.cuGraphUpload(handle<CUgraphExec_st>(env, info[0], "graphExec"), handleOr<CUstream>(info, 1, "stream")))
SIMPLE(GraphLaunch, "cuGraphLaunch",
       api.cuGraphLaunch(handle<CUgraphExec_st>(env, info[0], "graphExec"), handleOr<CUstream>(info, 1, "stream")))
SIMPLE(GraphExecDestroy, "cuGraphExecDestroy", api.cuGraphExecDestroy(handle<CUgraphExec_st>(env, info[0], "graphExec")))
SIMPLE(GraphDestroy, "cuGraphDestroy", api.cuGraphDestroy(handle<CUgraph_st>(env, info[0], "graph")))

// Queries: true when the work is done, false while it is not (CUDA_ERROR_NOT_READY); else an error.
Napi::Value StreamQuery(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUresult r = ctx(env).cuStreamQuery(handleOr<CUstream>(info, 0, "stream"));
  if (r == CUDA_ERROR_NOT_READY) return Napi::Boolean::New(env, false);
  cuCheck(env, r, "cuStreamQuery");
  return Napi::Boolean::New(env, true);
}

Napi::Value EventQuery(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUresult r = ctx(env).cuEventQuery(handle<CUevent_st>(env, info[0], "event"));
  if (r == CUDA_ERROR_NOT_READY) return Napi::Boolean::New(env, false);
  cuCheck(env, r, "cuEventQuery");
  return Napi::Boolean::New(env, true);
}

Napi::Value EventCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUevent e = nullptr;
  cuCheck(env, ctx(env).cuEventCreate(&e, static_cast<unsigned>(u64Or(info, 0, 0, "flags"))), "cuEventCreate");
  return bigPtr(env, e);
}

Napi::Value EventElapsedTime(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  float ms = 0;
  cuCheck(env,
          ctx(env).cuEventElapsedTime(&ms, handle<CUevent_st>(env, info[0], "start"), handle<CUevent_st>(env, info[1], "end")),
          "cuEventElapsedTime");
  return Napi::Number::New(env, ms);
}

Napi::Value StreamEndCapture(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUgraph g = nullptr;
  cuCheck(env, ctx(env).cuStreamEndCapture(handle<CUstream_st>(env, info[0], "stream"), &g), "cuStreamEndCapture");
  return bigPtr(env, g);
}

Napi::Value StreamIsCapturing(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int status = 0;
  cuCheck(env, ctx(env).cuStreamIsCapturing(handleOr<CUstream>(info, 0, "stream"), &status), "cuStreamIsCapturing");
  return Napi::Number::New(env, status);
}

Napi::Value GraphInstantiate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUgraphExec exec = nullptr;
  cuCheck(env,
          ctx(env).cuGraphInstantiateWithFlags(&exec, handle<CUgraph_st>(env, info[0], "graph"), u64Or(info, 1, 0, "flags")),
          "cuGraphInstantiateWithFlags");
  return bigPtr(env, exec);
}

Napi::Value GraphNodeCount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t n = 0;
  cuCheck(env, ctx(env).cuGraphGetNodes(handle<CUgraph_st>(env, info[0], "graph"), nullptr, &n), "cuGraphGetNodes");
  return Napi::Number::New(env, static_cast<double>(n));
}

}  // namespace

void registerLaunch(Napi::Env env, Napi::Object exports) {
  def(env, exports, "moduleLoadData", ModuleLoadData);
  def(env, exports, "moduleUnload", ModuleUnload);
  def(env, exports, "moduleGetFunction", ModuleGetFunction);
  def(env, exports, "funcSetMaxDynamicSharedMemory", FuncSetMaxDynamicSharedMemory);
  def(env, exports, "funcGetAttributes", FuncGetAttributes);
  def(env, exports, "funcGetParamLayout", FuncGetParamLayout);
  def(env, exports, "launchKernel", LaunchKernel);
  def(env, exports, "streamCreate", StreamCreate);
  def(env, exports, "streamDestroy", StreamDestroy);
  def(env, exports, "streamSynchronize", StreamSynchronize);
  def(env, exports, "streamQuery", StreamQuery);
  def(env, exports, "streamWaitEvent", StreamWaitEvent);
  def(env, exports, "eventCreate", EventCreate);
  def(env, exports, "eventDestroy", EventDestroy);
  def(env, exports, "eventRecord", EventRecord);
  def(env, exports, "eventSynchronize", EventSynchronize);
  def(env, exports, "eventQuery", EventQuery);
  def(env, exports, "eventElapsedTime", EventElapsedTime);
  def(env, exports, "streamBeginCapture", StreamBeginCapture);
  def(env, exports, "streamEndCapture", StreamEndCapture);
  def(env, exports, "streamIsCapturing", StreamIsCapturing);
  def(env, exports, "graphInstantiate", GraphInstantiate);
  def(env, exports, "graphUpload", GraphUpload);
  def(env, exports, "graphLaunch", GraphLaunch);
  def(env, exports, "graphExecDestroy", GraphExecDestroy);
  def(env, exports, "graphDestroy", GraphDestroy);
  def(env, exports, "graphNodeCount", GraphNodeCount);
}

}  // namespace shardts
