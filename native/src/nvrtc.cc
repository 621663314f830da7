// NVRTC glue: programs, compilation, logs, PTX and CUBIN. A compile error in the source is data
// (nvrtcCompileProgram returns { ok: false, log }), every other failure throws.
#include <string>
#include <vector>

#include "common.h"
#include "loader.h"

namespace shardts {

namespace {

void check(Napi::Env env, NvrtcApi& api, nvrtcResult r, const std::string& call) {
  if (r == NVRTC_SUCCESS) return;
  const char* s = api.nvrtcGetErrorString(r);
  std::string name = s ? s : "NVRTC_ERROR_UNKNOWN_CODE";
  throwApiError(env, "nvrtc", call, r, name, "");
}

nvrtcProgram prog(Napi::Env env, const Napi::Value& v) { return handle<_nvrtcProgram>(env, v, "program"); }

std::vector<std::string> strings(Napi::Env env, const Napi::Value& v, const char* what) {
  std::vector<std::string> out;
  if (v.IsUndefined() || v.IsNull()) return out;
  if (!v.IsArray()) throwTypeError(env, std::string(what) + " must be an array of strings");
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) out.push_back(str(env, a.Get(i), what));
  return out;
}

std::vector<const char*> cstrs(const std::vector<std::string>& v) {
  std::vector<const char*> out;
  for (const auto& s : v) out.push_back(s.c_str());
  return out;
}

std::string programLog(NvrtcApi& api, nvrtcProgram p) {
  size_t n = 0;
  if (api.nvrtcGetProgramLogSize(p, &n) != NVRTC_SUCCESS || n == 0) return "";
  std::string log(n, '\0');
  if (api.nvrtcGetProgramLog(p, &log[0]) != NVRTC_SUCCESS) return "";
  while (!log.empty() && (log.back() == '\0' || log.back() == '\n' || log.back() == ' ')) log.pop_back();
  return log;
}

Napi::Value Version(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NvrtcApi& api = nvrtc(env);
  int major = 0, minor = 0;
  check(env, api, api.nvrtcVersion(&major, &minor), "nvrtcVersion");
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, major);
  a.Set(1u, minor);
  return a;
}

Napi::Value SupportedArchs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NvrtcApi& api = nvrtc(env);
  int n = 0;
  check(env, api, api.nvrtcGetNumSupportedArchs(&n), "nvrtcGetNumSupportedArchs");
  std::vector<int> archs(n);
  if (n > 0) check(env, api, api.nvrtcGetSupportedArchs(archs.data()), "nvrtcGetSupportedArchs");
  Napi::Array a = Napi::Array::New(env, n);
  for (int i = 0; i < n; i++) a.Set(static_cast<uint32_t>(i), archs[i]);
  return a;
}

// nvrtcCreateProgram(source, name, headerSources?, headerNames?)
Napi::Value CreateProgram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NvrtcApi& api = nvrtc(env);
  std::string src = str(env, info[0], "source");
  std::string name = has(info, 1) ? str(env, info[1], "name") : "kernel.cu";
  std::vector<std::string> hs = strings(env, info[2], "headerSources");
  std::vector<std::string> hn = strings(env, info[3], "headerNames");
  if (hs.size() != hn.size()) throwRangeError(env, "nvrtcCreateProgram: headerSources and headerNames differ in length");
  std::vector<const char*> hsp = cstrs(hs), hnp = cstrs(hn);
  nvrtcProgram p = nullptr;
  check(env, api,
        api.nvrtcCreateProgram(&p, src.c_str(), name.c_str(), static_cast<int>(hs.size()), hs.empty() ? nullptr : hsp.data(),
                               hn.empty() ? nullptr : hnp.data()),
        "nvrtcCreateProgram('" + name + "')");
  return bigPtr(env, p);
}

Napi::Value DestroyProgram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NvrtcApi& api = nvrtc(env);
  nvrtcProgram p = prog(env, info[0]);
  check(env, api, api.nvrtcDestroyProgram(&p), "nvrtcDestroyProgram");
  return env.Undefined();
}

Napi::Value AddNameExpression(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NvrtcApi& api = nvrtc(env);
  std::string expr = str(env, info[1], "nameExpression");
  check(env, api, api.nvrtcAddNameExpression(prog(env, info[0]), expr.c_str()), "nvrtcAddNameExpression('" + expr + "')");
  return env.Undefined();
}

Napi::Value GetLoweredName(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NvrtcApi& api = nvrtc(env);
  std::string expr = str(env, info[1], "nameExpression");
  const char* lowered = nullptr;
  check(env, api, api.nvrtcGetLoweredName(prog(env, info[0]), expr.c_str(), &lowered), "nvrtcGetLoweredName('" + expr + "')");
  return Napi::String::New(env, lowered ? lowered : "");
}

// nvrtcCompileProgram(program, options[]) -> { ok, log }
Napi::Value CompileProgram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NvrtcApi& api = nvrtc(env);
  nvrtcProgram p = prog(env, info[0]);
  std::vector<std::string> opts = strings(env, info[1], "options");
  std::vector<const char*> optp = cstrs(opts);
  nvrtcResult r = api.nvrtcCompileProgram(p, static_cast<int>(opts.size()), opts.empty() ? nullptr : optp.data());
  std::string log = programLog(api, p);
  if (r != NVRTC_SUCCESS && r != NVRTC_ERROR_COMPILATION) {
    std::string call = "nvrtcCompileProgram";
    if (!log.empty()) call += " [log: " + log + "]";
    check(env, api, r, call);
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", r == NVRTC_SUCCESS);
  o.Set("log", log);
  return o;
}

Napi::Value GetProgramLog(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Napi::String::New(env, programLog(nvrtc(env), prog(env, info[0])));
}

Napi::Value GetPTX(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NvrtcApi& api = nvrtc(env);
  nvrtcProgram p = prog(env, info[0]);
  size_t n = 0;
  check(env, api, api.nvrtcGetPTXSize(p, &n), "nvrtcGetPTXSize");
  std::string ptx(n, '\0');
  if (n) check(env, api, api.nvrtcGetPTX(p, &ptx[0]), "nvrtcGetPTX");
  while (!ptx.empty() && ptx.back() == '\0') ptx.pop_back();
  return Napi::String::New(env, ptx);
}

Napi::Value GetCUBIN(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NvrtcApi& api = nvrtc(env);
  nvrtcProgram p = prog(env, info[0]);
  size_t n = 0;
  check(env, api, api.nvrtcGetCUBINSize(p, &n), "nvrtcGetCUBINSize (a CUBIN exists only when compiled for a real sm_XX arch)");
  if (n == 0)
    throwApiError(env, "nvrtc", "nvrtcGetCUBIN", 0, "NO_CUBIN",
                  "the program has no CUBIN: compile with --gpu-architecture=sm_XX (a real architecture), not compute_XX");
  Napi::Buffer<uint8_t> buf = Napi::Buffer<uint8_t>::New(env, n);
  check(env, api, api.nvrtcGetCUBIN(p, reinterpret_cast<char*>(buf.Data())), "nvrtcGetCUBIN");
  return buf;
}

}  // namespace

void registerNvrtc(Napi::Env env, Napi::Object exports) {
  def(env, exports, "nvrtcVersion", Version);
  def(env, exports, "nvrtcSupportedArchs", SupportedArchs);
  def(env, exports, "nvrtcCreateProgram", CreateProgram);
  def(env, exports, "nvrtcDestroyProgram", DestroyProgram);
  def(env, exports, "nvrtcAddNameExpression", AddNameExpression);
  def(env, exports, "nvrtcGetLoweredName", GetLoweredName);
  def(env, exports, "nvrtcCompileProgram", CompileProgram);
  def(env, exports, "nvrtcGetProgramLog", GetProgramLog);
  def(env, exports, "nvrtcGetPTX", GetPTX);
  def(env, exports, "nvrtcGetCUBIN", GetCUBIN);
}

}  // namespace shardts
