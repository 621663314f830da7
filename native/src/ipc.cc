// CUDA IPC glue for the intranode MoE transport (runtime/cuda/ipc.ts): a process exports a handle
// to one of its cuMemAlloc allocations, peers on the same node open it as a pointer into their own
// address space, and kernels then store straight into the peer GPU's memory over NVLink. Handles
// cross into JS as 64-byte Buffers. The four entry points are optional in the driver table, so an
// old driver still loads the addon and only these calls fail, naming what is missing.
#include <cstring>
#include <string>

#include "common.h"
#include "driver.h"

namespace shardts {

namespace {

constexpr size_t kHandleBytes = sizeof(CUipcMemHandle);
static_assert(kHandleBytes == 64, "CUipcMemHandle is 64 bytes in every CUDA release");

void needSym(Napi::Env env, const void* fn, const char* call) {
  if (!fn)
    throwApiError(env, "cuda", call, 500, "CUDA_ERROR_NOT_FOUND",
                  std::string("this driver's libcuda has no ") + call +
                      " (CUDA IPC needs a Linux driver); use SHARDTS_MOE_TRANSPORT=nccl");
}

// Checked before any driver call, so a wrong argument is reported on a machine without a GPU too.
CUipcMemHandle handleArg(Napi::Env env, const Napi::Value& v, const char* call) {
  if (!v.IsBuffer() && !v.IsTypedArray()) throwTypeError(env, std::string(call) + ": the handle must be a 64-byte Buffer (from ipcGetMemHandle)");
  HostSpan s = hostSpan(env, v, "handle");
  if (s.bytes != kHandleBytes)
    throwRangeError(env, std::string(call) + ": the handle has " + std::to_string(s.bytes) + " bytes; an IPC handle has 64 (pass ipcGetMemHandle's Buffer unchanged)");
  CUipcMemHandle h;
  std::memcpy(h.reserved, s.data, kHandleBytes);
  return h;
}

CUdeviceptr ptrArg(Napi::Env env, const Napi::Value& v, const char* call) {
  CUdeviceptr p = u64(env, v, "ptr");
  if (!p) throwRangeError(env, std::string(call) + ": the pointer is null");
  return p;
}

// ipcGetMemHandle(ptr) -> Buffer(64): ptr must be the start of a cuMemAlloc allocation (an offset into
// one would export the whole allocation, and the peer's pointer would not point where this one does).
Napi::Value IpcGetMemHandle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUdeviceptr p = ptrArg(env, arg(info, 0), "ipcGetMemHandle");
  DriverApi& api = ctx(env);
  needSym(env, reinterpret_cast<const void*>(api.cuIpcGetMemHandle), "cuIpcGetMemHandle");
  CUipcMemHandle h;
  cuCheck(env, api.cuIpcGetMemHandle(&h, p), "cuIpcGetMemHandle");
  return Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<const uint8_t*>(h.reserved), kHandleBytes);
}

// ipcOpenMemHandle(handle) -> ptr: maps a peer process's allocation, enabling peer access lazily (the
// flag the driver requires). A process cannot open its own handle: the caller uses its own pointer.
Napi::Value IpcOpenMemHandle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUipcMemHandle h = handleArg(env, arg(info, 0), "ipcOpenMemHandle");
  DriverApi& api = ctx(env);
  needSym(env, reinterpret_cast<const void*>(api.cuIpcOpenMemHandle), "cuIpcOpenMemHandle_v2");
  CUdeviceptr p = 0;
  cuCheck(env, api.cuIpcOpenMemHandle(&p, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS), "cuIpcOpenMemHandle_v2");
  return big(env, p);
}

Napi::Value IpcCloseMemHandle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUdeviceptr p = ptrArg(env, arg(info, 0), "ipcCloseMemHandle");
  DriverApi& api = ctx(env);
  needSym(env, reinterpret_cast<const void*>(api.cuIpcCloseMemHandle), "cuIpcCloseMemHandle");
  cuCheck(env, api.cuIpcCloseMemHandle(p), "cuIpcCloseMemHandle");
  return env.Undefined();
}

// deviceCanAccessPeer(ordinal, peerOrdinal) -> boolean
Napi::Value DeviceCanAccessPeer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int a = i32(env, arg(info, 0), "ordinal"), b = i32(env, arg(info, 1), "peerOrdinal");
  if (a < 0 || b < 0) throwRangeError(env, "deviceCanAccessPeer: device ordinals must be >= 0, got " + std::to_string(a) + " and " + std::to_string(b));
  DriverApi& api = ctx(env);
  needSym(env, reinterpret_cast<const void*>(api.cuDeviceCanAccessPeer), "cuDeviceCanAccessPeer");
  int count = 0;
  cuCheck(env, api.cuDeviceGetCount(&count), "cuDeviceGetCount");
  if (a >= count || b >= count)
    throwRangeError(env, "deviceCanAccessPeer: ordinals " + std::to_string(a) + " and " + std::to_string(b) + " but this process sees " +
                             std::to_string(count) + " devices (CUDA_VISIBLE_DEVICES hides the peer?)");
  CUdevice da = 0, db = 0;
  cuCheck(env, api.cuDeviceGet(&da, a), "cuDeviceGet");
  cuCheck(env, api.cuDeviceGet(&db, b), "cuDeviceGet");
  int can = 0;
  cuCheck(env, api.cuDeviceCanAccessPeer(&can, da, db), "cuDeviceCanAccessPeer");
  return Napi::Boolean::New(env, can != 0);
}

}  // namespace

void registerIpc(Napi::Env env, Napi::Object exports) {
  def(env, exports, "ipcGetMemHandle", IpcGetMemHandle);
  def(env, exports, "ipcOpenMemHandle", IpcOpenMemHandle);
  def(env, exports, "ipcCloseMemHandle", IpcCloseMemHandle);
  def(env, exports, "deviceCanAccessPeer", DeviceCanAccessPeer);
}

}  // namespace shardts
