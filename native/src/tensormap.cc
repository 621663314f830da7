// TMA descriptors: cuTensorMapEncodeTiled (driver API, sm_90+) returning the 128-byte CUtensorMap as
// a Uint8Array, which a kernel takes by value as a `const __grid_constant__` parameter (packArgs'
// ["bytes", map, 64]). See TensorMapOptions in runtime/cuda/native-types.ts for the fields.
#include <cstring>
#include <string>
#include <vector>

#include "common.h"
#include "driver.h"

namespace shardts {

namespace {

int dtypeOf(Napi::Env env, const std::string& s) {
  if (s == "u8") return CU_TENSOR_MAP_DATA_TYPE_UINT8;
  if (s == "u16") return CU_TENSOR_MAP_DATA_TYPE_UINT16;
  if (s == "u32") return CU_TENSOR_MAP_DATA_TYPE_UINT32;
  if (s == "i32") return CU_TENSOR_MAP_DATA_TYPE_INT32;
  if (s == "f16") return CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  if (s == "f32") return CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
  if (s == "bf16") return CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  throwTypeError(env, "tensorMapEncodeTiled: dtype must be 'u8', 'u16', 'u32', 'i32', 'f16', 'f32' or 'bf16', got '" + s + "'");
}
size_t dtypeBytes(int t) {
  switch (t) {
    case CU_TENSOR_MAP_DATA_TYPE_UINT8: return 1;
    case CU_TENSOR_MAP_DATA_TYPE_UINT16: case CU_TENSOR_MAP_DATA_TYPE_FLOAT16: case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16: return 2;
    default: return 4;
  }
}
int choice(Napi::Env env, Napi::Object o, const char* key, const std::vector<std::string>& names, int dflt) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return dflt;
  std::string s = str(env, v, key), all;
  for (size_t i = 0; i < names.size(); i++) {
    if (names[i] == s) return static_cast<int>(i);
    all += (i ? ", '" : "'") + names[i] + "'";
  }
  throwTypeError(env, std::string("tensorMapEncodeTiled: ") + key + " must be one of " + all + ", got '" + s + "'");
}
std::vector<uint64_t> list(Napi::Env env, Napi::Object o, const char* key, size_t n, bool required) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() && !required) return {};
  if (!v.IsArray()) throwTypeError(env, std::string("tensorMapEncodeTiled: ") + key + " must be an array");
  Napi::Array a = v.As<Napi::Array>();
  if (n && a.Length() != n)
    throwRangeError(env, std::string("tensorMapEncodeTiled: ") + key + " has " + std::to_string(a.Length()) + " entries, expected " + std::to_string(n));
  std::vector<uint64_t> out;
  for (uint32_t i = 0; i < a.Length(); i++) out.push_back(u64(env, a.Get(i), key));
  return out;
}
std::string join(const std::vector<uint64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); i++) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

Napi::Value EncodeTiled(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throwTypeError(env, "tensorMapEncodeTiled(options): options must be an object");
  Napi::Object o = info[0].As<Napi::Object>();
  DriverApi& api = ctx(env);
  if (!api.cuTensorMapEncodeTiled)
    throwApiError(env, "cuda", "cuTensorMapEncodeTiled", 500, "CUDA_ERROR_NOT_FOUND",
                  "this driver's libcuda has no cuTensorMapEncodeTiled (it needs a CUDA 12.0+ driver)");
  int dtype = dtypeOf(env, str(env, o.Get("dtype"), "dtype"));
  std::vector<uint64_t> dims = list(env, o, "dims", 0, true);
  size_t rank = dims.size();
  if (rank < 1 || rank > 5) throwRangeError(env, "tensorMapEncodeTiled: dims must have 1 to 5 entries (innermost first)");
  std::vector<uint64_t> strides = list(env, o, "strides", rank - 1, rank > 1);
  std::vector<uint64_t> box64 = list(env, o, "box", rank, true);
  std::vector<uint64_t> es64 = list(env, o, "elementStrides", rank, false);
  std::vector<uint32_t> box(box64.begin(), box64.end()), es(rank, 1);
  for (size_t i = 0; i < es64.size(); i++) es[i] = static_cast<uint32_t>(es64[i]);
  int swizzle = choice(env, o, "swizzle", {"none", "32B", "64B", "128B"}, CU_TENSOR_MAP_SWIZZLE_NONE);
  int l2 = choice(env, o, "l2Promotion", {"none", "64B", "128B", "256B"}, CU_TENSOR_MAP_L2_PROMOTION_NONE);
  int oob = choice(env, o, "oobFill", {"zero", "nan"}, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  uint64_t address = u64(env, o.Get("address"), "address");

  CUtensorMap map;
  std::memset(&map, 0, sizeof(map));
  CUresult r = api.cuTensorMapEncodeTiled(&map, dtype, static_cast<uint32_t>(rank), reinterpret_cast<void*>(address), dims.data(),
                                          strides.data(), box.data(), es.data(), CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, l2, oob);
  if (r != CUDA_SUCCESS) {
    // the driver says only "invalid value": name the usual causes with the arguments given
    std::string call = "cuTensorMapEncodeTiled(dims " + join(dims) + ", strides " + join(strides) + " B, box " + join(box64) +
                       ", " + std::to_string(dtypeBytes(dtype)) + "-byte elements). Requirements: address 16-byte aligned, " +
                       "strides multiples of 16, box entries <= 256, box[0] x element size <= the swizzle width";
    cuCheck(env, r, call.c_str());
  }
  Napi::Uint8Array out = Napi::Uint8Array::New(env, sizeof(map));
  std::memcpy(out.Data(), &map, sizeof(map));
  return out;
}

}  // namespace

void registerTensorMap(Napi::Env env, Napi::Object exports) { def(env, exports, "tensorMapEncodeTiled", EncodeTiled); }

}  // namespace shardts
