// CUDA driver glue: initialisation, devices and their properties, contexts, device memory, copies,
// memsets and pinned host memory.
#include "driver.h"

#include <mutex>
#include <unordered_map>
#include <vector>

#include "common.h"

namespace shardts {

namespace {

std::once_flag g_initOnce;
CUresult g_initResult = CUDA_SUCCESS;
std::mutex g_ctxMutex;
std::vector<CUcontext> g_primary;  // retained primary contexts by ordinal (null until first use)
thread_local int tl_device = -1;

DriverApi& initDriver(Napi::Env env) {
  DriverApi& api = cu(env);
  std::call_once(g_initOnce, [&] { g_initResult = api.cuInit(0); });
  cuCheck(env, g_initResult, "cuInit");
  return api;
}

CUdevice deviceHandle(Napi::Env env, DriverApi& api, int ordinal) {
  int count = 0;
  cuCheck(env, api.cuDeviceGetCount(&count), "cuDeviceGetCount");
  if (ordinal < 0 || ordinal >= count)
    throwRangeError(env, "device ordinal " + std::to_string(ordinal) + " is out of range: there are " +
                             std::to_string(count) + " CUDA devices");
  CUdevice dev = 0;
  cuCheck(env, api.cuDeviceGet(&dev, ordinal), "cuDeviceGet");
  return dev;
}

void makeCurrent(Napi::Env env, int ordinal) {
  DriverApi& api = initDriver(env);
  CUdevice dev = deviceHandle(env, api, ordinal);
  CUcontext c = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_ctxMutex);
    if (g_primary.size() <= static_cast<size_t>(ordinal)) g_primary.resize(ordinal + 1, nullptr);
    if (!g_primary[ordinal]) cuCheck(env, api.cuDevicePrimaryCtxRetain(&g_primary[ordinal], dev), "cuDevicePrimaryCtxRetain");
    c = g_primary[ordinal];
  }
  cuCheck(env, api.cuCtxSetCurrent(c), "cuCtxSetCurrent");
  tl_device = ordinal;
}

int attr(Napi::Env env, DriverApi& api, int a, CUdevice dev) {
  int v = 0;
  cuCheck(env, api.cuDeviceGetAttribute(&v, a, dev), "cuDeviceGetAttribute");
  return v;
}

Napi::Value softAttr(Napi::Env env, DriverApi& api, int a, CUdevice dev) {  // null where the driver has none
  int v = 0;
  if (api.cuDeviceGetAttribute(&v, a, dev) != CUDA_SUCCESS) return env.Null();
  return Napi::Number::New(env, v);
}

Napi::Value DriverVersion(const Napi::CallbackInfo& info) {
  int v = 0;
  cuCheck(info.Env(), cu(info.Env()).cuDriverGetVersion(&v), "cuDriverGetVersion");
  return Napi::Number::New(info.Env(), v);
}

Napi::Value Init(const Napi::CallbackInfo& info) {
  initDriver(info.Env());
  return info.Env().Undefined();
}

Napi::Value DeviceCount(const Napi::CallbackInfo& info) {
  DriverApi& api = initDriver(info.Env());
  int count = 0;
  cuCheck(info.Env(), api.cuDeviceGetCount(&count), "cuDeviceGetCount");
  return Napi::Number::New(info.Env(), count);
}

Napi::Value DeviceProperties(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DriverApi& api = initDriver(env);
  int ordinal = i32Or(info, 0, 0, "ordinal");
  CUdevice dev = deviceHandle(env, api, ordinal);
  char name[256] = {0};
  cuCheck(env, api.cuDeviceGetName(name, sizeof(name) - 1, dev), "cuDeviceGetName");
  size_t total = 0;
  cuCheck(env, api.cuDeviceTotalMem(&total, dev), "cuDeviceTotalMem_v2");
  char bus[64] = {0};
  cuCheck(env, api.cuDeviceGetPCIBusId(bus, sizeof(bus) - 1, dev), "cuDeviceGetPCIBusId");
  int driver = 0;
  cuCheck(env, api.cuDriverGetVersion(&driver), "cuDriverGetVersion");
  int major = attr(env, api, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
  int minor = attr(env, api, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);

  Napi::Object o = Napi::Object::New(env);
  o.Set("ordinal", ordinal);
  o.Set("name", std::string(name));
  Napi::Array cc = Napi::Array::New(env, 2);
  cc.Set(0u, major);
  cc.Set(1u, minor);
  o.Set("computeCapability", cc);
  o.Set("arch", "sm_" + std::to_string(major) + std::to_string(minor));
  o.Set("smCount", attr(env, api, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
  o.Set("totalMemory", static_cast<double>(total));
  o.Set("l2CacheBytes", attr(env, api, CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, dev));
  o.Set("persistingL2CacheMaxBytes", softAttr(env, api, CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE, dev));
  o.Set("sharedMemPerBlock", attr(env, api, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, dev));
  o.Set("sharedMemPerBlockOptin", attr(env, api, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev));
  o.Set("sharedMemPerSM", attr(env, api, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR, dev));
  o.Set("totalConstantMemory", attr(env, api, CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY, dev));
  o.Set("registersPerBlock", attr(env, api, CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK, dev));
  o.Set("maxThreadsPerBlock", attr(env, api, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, dev));
  o.Set("maxThreadsPerSM", attr(env, api, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, dev));
  o.Set("maxBlocksPerSM", softAttr(env, api, CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR, dev));
  o.Set("warpSize", attr(env, api, CU_DEVICE_ATTRIBUTE_WARP_SIZE, dev));
  o.Set("clockRateKHz", softAttr(env, api, CU_DEVICE_ATTRIBUTE_CLOCK_RATE, dev));
  o.Set("memoryClockRateKHz", softAttr(env, api, CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, dev));
  o.Set("memoryBusWidthBits", softAttr(env, api, CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, dev));
  o.Set("asyncEngineCount", softAttr(env, api, CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT, dev));
  o.Set("eccEnabled", attr(env, api, CU_DEVICE_ATTRIBUTE_ECC_ENABLED, dev) != 0);
  o.Set("integrated", attr(env, api, CU_DEVICE_ATTRIBUTE_INTEGRATED, dev) != 0);
  o.Set("cooperativeLaunch", attr(env, api, CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH, dev) != 0);
  o.Set("pciBusId", std::string(bus));
  if (api.cuDeviceGetUuid) {
    unsigned char u[16] = {0};
    if (api.cuDeviceGetUuid(u, dev) == CUDA_SUCCESS) {
      static const char* hex = "0123456789abcdef";
      std::string s = "GPU-";
      for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
        s += hex[u[i] >> 4];
        s += hex[u[i] & 15];
      }
      o.Set("uuid", s);
    }
  }
  o.Set("driverVersion", driver);
  return o;
}

Napi::Value SetDevice(const Napi::CallbackInfo& info) {
  makeCurrent(info.Env(), i32(info.Env(), info[0], "ordinal"));
  return info.Env().Undefined();
}

Napi::Value GetDevice(const Napi::CallbackInfo& info) {
  ctx(info.Env());
  return Napi::Number::New(info.Env(), tl_device);
}

Napi::Value CtxSynchronize(const Napi::CallbackInfo& info) {
  cuCheck(info.Env(), ctx(info.Env()).cuCtxSynchronize(), "cuCtxSynchronize");
  return info.Env().Undefined();
}

Napi::Value MemGetInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t freeB = 0, totalB = 0;
  cuCheck(env, ctx(env).cuMemGetInfo(&freeB, &totalB), "cuMemGetInfo_v2");
  Napi::Object o = Napi::Object::New(env);
  o.Set("free", static_cast<double>(freeB));
  o.Set("total", static_cast<double>(totalB));
  return o;
}

Napi::Value MemAlloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t bytes = u64(env, info[0], "bytes");
  DriverApi& api = ctx(env);
  CUdeviceptr p = 0;
  cuCheck(env, api.cuMemAlloc(&p, bytes), ("cuMemAlloc_v2(" + std::to_string(bytes) + " bytes)").c_str());
  return big(env, p);
}

Napi::Value MemFree(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUdeviceptr p = u64(env, info[0], "ptr");
  cuCheck(env, ctx(env).cuMemFree(p), "cuMemFree_v2");
  return env.Undefined();
}

size_t copyBytes(const Napi::CallbackInfo& info, size_t idx, const HostSpan& span, const char* call) {
  if (!has(info, idx)) return span.bytes;
  uint64_t n = u64(info.Env(), info[idx], "bytes");
  if (n > span.bytes)
    throwRangeError(info.Env(), std::string(call) + ": " + std::to_string(n) + " bytes requested but the host buffer has " +
                                    std::to_string(span.bytes));
  return n;
}

// memcpyHtoD(dst, src, bytes?)   memcpyHtoDAsync(dst, src, bytes | undefined, stream)
template <bool Async>
Napi::Value MemcpyHtoD(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUdeviceptr dst = u64(env, info[0], "dst");
  HostSpan src = hostSpan(env, info[1], "src");
  size_t n = copyBytes(info, 2, src, Async ? "memcpyHtoDAsync" : "memcpyHtoD");
  DriverApi& api = ctx(env);
  if (Async) cuCheck(env, api.cuMemcpyHtoDAsync(dst, src.data, n, handleOr<CUstream>(info, 3, "stream")), "cuMemcpyHtoDAsync_v2");
  else cuCheck(env, api.cuMemcpyHtoD(dst, src.data, n), "cuMemcpyHtoD_v2");
  return env.Undefined();
}

// memcpyDtoH(dst, src, bytes?)   memcpyDtoHAsync(dst, src, bytes | undefined, stream)
template <bool Async>
Napi::Value MemcpyDtoH(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  HostSpan dst = hostSpan(env, info[0], "dst");
  CUdeviceptr src = u64(env, info[1], "src");
  size_t n = copyBytes(info, 2, dst, Async ? "memcpyDtoHAsync" : "memcpyDtoH");
  DriverApi& api = ctx(env);
  if (Async) cuCheck(env, api.cuMemcpyDtoHAsync(dst.data, src, n, handleOr<CUstream>(info, 3, "stream")), "cuMemcpyDtoHAsync_v2");
  else cuCheck(env, api.cuMemcpyDtoH(dst.data, src, n), "cuMemcpyDtoH_v2");
  return env.Undefined();
}

// memcpyDtoD(dst, src, bytes)   memcpyDtoDAsync(dst, src, bytes, stream)
template <bool Async>
Napi::Value MemcpyDtoD(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUdeviceptr dst = u64(env, info[0], "dst"), src = u64(env, info[1], "src");
  size_t n = u64(env, info[2], "bytes");
  DriverApi& api = ctx(env);
  if (Async) cuCheck(env, api.cuMemcpyDtoDAsync(dst, src, n, handleOr<CUstream>(info, 3, "stream")), "cuMemcpyDtoDAsync_v2");
  else cuCheck(env, api.cuMemcpyDtoD(dst, src, n), "cuMemcpyDtoD_v2");
  return env.Undefined();
}

// memsetD8|D16|D32(ptr, value, count, stream?): with a stream (0n included) it is the async variant.
template <int Width>
Napi::Value Memset(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUdeviceptr p = u64(env, info[0], "ptr");
  uint64_t value = u64(env, info[1], "value");
  size_t count = u64(env, info[2], "count");
  if (Width < 4 && value >= (1ull << (8 * Width)))
    throwRangeError(env, "memsetD" + std::to_string(8 * Width) + ": value does not fit in " + std::to_string(Width) + " bytes");
  if (Width == 4 && value > 0xffffffffull) throwRangeError(env, "memsetD32: value does not fit in 4 bytes");
  bool async = has(info, 3);
  CUstream s = handleOr<CUstream>(info, 3, "stream");
  DriverApi& api = ctx(env);
  CUresult r;
  const char* call;
  if (Width == 1) {
    r = async ? api.cuMemsetD8Async(p, static_cast<unsigned char>(value), count, s)
              : api.cuMemsetD8(p, static_cast<unsigned char>(value), count);
    call = async ? "cuMemsetD8Async" : "cuMemsetD8_v2";
  } else if (Width == 2) {
    r = async ? api.cuMemsetD16Async(p, static_cast<unsigned short>(value), count, s)
              : api.cuMemsetD16(p, static_cast<unsigned short>(value), count);
    call = async ? "cuMemsetD16Async" : "cuMemsetD16_v2";
  } else {
    r = async ? api.cuMemsetD32Async(p, static_cast<unsigned int>(value), count, s)
              : api.cuMemsetD32(p, static_cast<unsigned int>(value), count);
    call = async ? "cuMemsetD32Async" : "cuMemsetD32_v2";
  }
  cuCheck(env, r, call);
  return env.Undefined();
}

// Pinned host memory, handed to JS as an external ArrayBuffer. It is freed by hostFree (which also
// detaches the ArrayBuffer, so no view can touch freed memory) or, failing that, when JS collects it.
struct Pinned {
  bool freed = false;
};
std::mutex g_pinnedMutex;
std::unordered_map<void*, Pinned*> g_pinned;

Napi::Value HostAlloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t bytes = u64(env, info[0], "bytes");
  unsigned flags = static_cast<unsigned>(u64Or(info, 1, 0, "flags"));
  if (bytes == 0) throwRangeError(env, "hostAlloc: bytes must be positive");
  DriverApi& api = ctx(env);
  void* p = nullptr;
  cuCheck(env, api.cuMemHostAlloc(&p, bytes, flags), ("cuMemHostAlloc(" + std::to_string(bytes) + " bytes)").c_str());
  Pinned* rec = new Pinned();
  {
    std::lock_guard<std::mutex> lock(g_pinnedMutex);
    g_pinned[p] = rec;
  }
  return Napi::ArrayBuffer::New(
      env, p, bytes,
      [](Napi::Env, void* data, Pinned* hint) {
        {
          std::lock_guard<std::mutex> lock(g_pinnedMutex);
          auto it = g_pinned.find(data);
          if (it != g_pinned.end() && it->second == hint) g_pinned.erase(it);
        }
        if (!hint->freed) {
          DriverApi* api = cuIfLoaded();
          if (api) api->cuMemFreeHost(data);
        }
        delete hint;
      },
      rec);
}

Napi::Value HostFree(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) throwTypeError(env, "hostFree: expected the ArrayBuffer returned by hostAlloc");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  void* p = ab.Data();
  Pinned* rec = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_pinnedMutex);
    auto it = g_pinned.find(p);
    if (it == g_pinned.end() || !p)
      throwTypeError(env, "hostFree: this ArrayBuffer was not returned by hostAlloc, or was already freed");
    rec = it->second;
    g_pinned.erase(it);
  }
  rec->freed = true;
  CUresult r = ctx(env).cuMemFreeHost(p);
  ab.Detach();
  cuCheck(env, r, "cuMemFreeHost");
  return env.Undefined();
}

}  // namespace

void cuCheck(Napi::Env env, CUresult r, const char* call) {
  if (r == CUDA_SUCCESS) return;
  DriverApi& api = cu(env);
  const char* name = nullptr;
  const char* desc = nullptr;
  if (api.cuGetErrorName(r, &name) != CUDA_SUCCESS) name = nullptr;
  if (api.cuGetErrorString(r, &desc) != CUDA_SUCCESS) desc = nullptr;
  throwApiError(env, "cuda", call, r, name ? name : "CUDA_ERROR_UNKNOWN_CODE", desc ? desc : "");
}

DriverApi& ctx(Napi::Env env) {
  if (tl_device < 0) makeCurrent(env, 0);
  return cu(env);
}

int currentDevice() { return tl_device; }

void registerDriver(Napi::Env env, Napi::Object exports) {
  def(env, exports, "driverVersion", DriverVersion);
  def(env, exports, "init", Init);
  def(env, exports, "deviceCount", DeviceCount);
  def(env, exports, "deviceProperties", DeviceProperties);
  def(env, exports, "setDevice", SetDevice);
  def(env, exports, "getDevice", GetDevice);
  def(env, exports, "ctxSynchronize", CtxSynchronize);
  def(env, exports, "memGetInfo", MemGetInfo);
  def(env, exports, "memAlloc", MemAlloc);
  def(env, exports, "memFree", MemFree);
  def(env, exports, "memcpyHtoD", MemcpyHtoD<false>);
  def(env, exports, "memcpyHtoDAsync", MemcpyHtoD<true>);
  def(env, exports, "memcpyDtoH", MemcpyDtoH<false>);
  def(env, exports, "memcpyDtoHAsync", MemcpyDtoH<true>);
  def(env, exports, "memcpyDtoD", MemcpyDtoD<false>);
  def(env, exports, "memcpyDtoDAsync", MemcpyDtoD<true>);
  def(env, exports, "memsetD8", Memset<1>);
  def(env, exports, "memsetD16", Memset<2>);
  def(env, exports, "memsetD32", Memset<4>);
  def(env, exports, "hostAlloc", HostAlloc);
  def(env, exports, "hostFree", HostFree);
}

}  // namespace shardts
