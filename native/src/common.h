// Argument conversion and error helpers shared by every part of the addon.
// Conventions: device pointers and opaque handles (streams, events, modules, functions, graphs,
// NVRTC programs, NCCL communicators) cross into JS as BigInt; sizes and counts as Numbers (BigInt is
// accepted too). Every failing library call throws a JS Error whose message names the call, the code
// and the library's own error string, with `library`, `call`, `code` and `codeName` properties.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace shardts {

using Fn = Napi::Value (*)(const Napi::CallbackInfo&);

// Registers `name` on `exports`, converting stray C++ exceptions into JS errors.
void def(Napi::Env env, Napi::Object exports, const char* name, Fn fn);

// Throws a JS Error for a failed library call.
[[noreturn]] void throwApiError(Napi::Env env, const char* library, const std::string& call, long long code,
                                const std::string& codeName, const std::string& detail);
[[noreturn]] void throwTypeError(Napi::Env env, const std::string& message);
[[noreturn]] void throwRangeError(Napi::Env env, const std::string& message);

// Arguments.
const Napi::Value arg(const Napi::CallbackInfo& info, size_t i);
bool has(const Napi::CallbackInfo& info, size_t i);  // present and not undefined/null
uint64_t u64(Napi::Env env, const Napi::Value& v, const char* what);
uint64_t u64Or(const Napi::CallbackInfo& info, size_t i, uint64_t dflt, const char* what);
int64_t i64(Napi::Env env, const Napi::Value& v, const char* what);
int i32(Napi::Env env, const Napi::Value& v, const char* what);
int i32Or(const Napi::CallbackInfo& info, size_t i, int dflt, const char* what);
double f64(Napi::Env env, const Napi::Value& v, const char* what);
std::string str(Napi::Env env, const Napi::Value& v, const char* what);

template <typename T>
T* handle(Napi::Env env, const Napi::Value& v, const char* what) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(u64(env, v, what)));
}
template <typename T>
T handleOr(const Napi::CallbackInfo& info, size_t i, const char* what) {  // T is a pointer type
  return reinterpret_cast<T>(static_cast<uintptr_t>(u64Or(info, i, 0, what)));
}

// A host byte range: a TypedArray, DataView, Buffer or ArrayBuffer.
struct HostSpan {
  uint8_t* data;
  size_t bytes;
};
HostSpan hostSpan(Napi::Env env, const Napi::Value& v, const char* what);

Napi::BigInt big(Napi::Env env, uint64_t x);
template <typename T>
Napi::BigInt bigPtr(Napi::Env env, T* p) {
  return big(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)));
}

// Each part registers its functions.
void registerLoader(Napi::Env env, Napi::Object exports);
void registerDriver(Napi::Env env, Napi::Object exports);
void registerLaunch(Napi::Env env, Napi::Object exports);
void registerNvrtc(Napi::Env env, Napi::Object exports);
void registerCublasLt(Napi::Env env, Napi::Object exports);
void registerCublasLtMatmul(Napi::Env env, Napi::Object exports);  // called by registerCublasLt
void registerCublas(Napi::Env env, Napi::Object exports);
void registerTensorMap(Napi::Env env, Napi::Object exports);
void registerNccl(Napi::Env env, Napi::Object exports);
void registerIpc(Napi::Env env, Napi::Object exports);

}  // namespace shardts
