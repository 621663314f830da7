#include "common.h"

#include <cmath>
#include <exception>
#include <unordered_map>

namespace shardts {

namespace {
// Per-export trampolines: node-addon-api passes a `void* data` to each function, which carries the
// real implementation so that one wrapper can catch std::exception for all of them.
Napi::Value trampoline(const Napi::CallbackInfo& info) {
  Fn fn = reinterpret_cast<Fn>(info.Data());
  try {
    return fn(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), std::string("shardts native: ") + e.what());
  }
}
}  // namespace

void def(Napi::Env env, Napi::Object exports, const char* name, Fn fn) {
  exports.Set(name, Napi::Function::New(env, trampoline, name, reinterpret_cast<void*>(fn)));
}

void throwApiError(Napi::Env env, const char* library, const std::string& call, long long code,
                   const std::string& codeName, const std::string& detail) {
  std::string msg = call + " failed: " + codeName + " (" + std::to_string(code) + ")";
  if (!detail.empty()) msg += ": " + detail;
  Napi::Error err = Napi::Error::New(env, msg);
  err.Set("library", Napi::String::New(env, library));
  err.Set("call", Napi::String::New(env, call));
  err.Set("code", Napi::Number::New(env, static_cast<double>(code)));
  err.Set("codeName", Napi::String::New(env, codeName));
  throw err;
}

void throwTypeError(Napi::Env env, const std::string& message) { throw Napi::TypeError::New(env, message); }
void throwRangeError(Napi::Env env, const std::string& message) { throw Napi::RangeError::New(env, message); }

const Napi::Value arg(const Napi::CallbackInfo& info, size_t i) { return info[i]; }

bool has(const Napi::CallbackInfo& info, size_t i) {
  return i < info.Length() && !info[i].IsUndefined() && !info[i].IsNull();
}

uint64_t u64(Napi::Env env, const Napi::Value& v, const char* what) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t x = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throwRangeError(env, std::string(what) + " must be a non-negative 64-bit integer");
    return x;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || d != std::floor(d) || d > 9007199254740991.0)
      throwRangeError(env, std::string(what) + " must be a non-negative integer, got " + std::to_string(d));
    return static_cast<uint64_t>(d);
  }
  throwTypeError(env, std::string(what) + " must be a bigint or a number");
}

uint64_t u64Or(const Napi::CallbackInfo& info, size_t i, uint64_t dflt, const char* what) {
  return has(info, i) ? u64(info.Env(), info[i], what) : dflt;
}

int64_t i64(Napi::Env env, const Napi::Value& v, const char* what) {
  if (v.IsBigInt()) {
    bool lossless = false;
    int64_t x = v.As<Napi::BigInt>().Int64Value(&lossless);
    if (!lossless) throwRangeError(env, std::string(what) + " must fit in 64 bits");
    return x;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d != std::floor(d) || std::fabs(d) > 9007199254740991.0)
      throwRangeError(env, std::string(what) + " must be an integer");
    return static_cast<int64_t>(d);
  }
  throwTypeError(env, std::string(what) + " must be a number or a bigint");
}

int i32(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throwTypeError(env, std::string(what) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != std::floor(d) || d < -2147483648.0 || d > 2147483647.0)
    throwRangeError(env, std::string(what) + " must be a 32-bit integer");
  return static_cast<int>(d);
}

int i32Or(const Napi::CallbackInfo& info, size_t i, int dflt, const char* what) {
  return has(info, i) ? i32(info.Env(), info[i], what) : dflt;
}

double f64(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throwTypeError(env, std::string(what) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

std::string str(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsString()) throwTypeError(env, std::string(what) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

HostSpan hostSpan(Napi::Env env, const Napi::Value& v, const char* what) {
  if (v.IsTypedArray()) {
    Napi::TypedArray ta = v.As<Napi::TypedArray>();
    Napi::ArrayBuffer ab = ta.ArrayBuffer();
    return {static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset(), ta.ByteLength()};
  }
  if (v.IsDataView()) {
    Napi::DataView dv = v.As<Napi::DataView>();
    return {static_cast<uint8_t*>(dv.ArrayBuffer().Data()) + dv.ByteOffset(), dv.ByteLength()};
  }
  if (v.IsArrayBuffer()) {
    Napi::ArrayBuffer ab = v.As<Napi::ArrayBuffer>();
    return {static_cast<uint8_t*>(ab.Data()), ab.ByteLength()};
  }
  throwTypeError(env, std::string(what) + " must be a TypedArray, DataView, Buffer or ArrayBuffer");
}

Napi::BigInt big(Napi::Env env, uint64_t x) { return Napi::BigInt::New(env, x); }

}  // namespace shardts
