// The shardts native addon's entry point. Requiring it loads no CUDA library: see loader.h.
#include "common.h"

namespace shardts {

namespace {
Napi::Value AddonInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("napiVersion", NAPI_VERSION);
  o.Set("built", __DATE__ " " __TIME__);
#if defined(__clang__)
  o.Set("compiler", "clang " __clang_version__);
#elif defined(__GNUC__)
  o.Set("compiler", "gcc " __VERSION__);
#else
  o.Set("compiler", "unknown");
#endif
  return o;
}
}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  def(env, exports, "addonInfo", AddonInfo);
  registerLoader(env, exports);
  registerDriver(env, exports);
  registerLaunch(env, exports);
  registerNvrtc(env, exports);
  registerCublasLt(env, exports);
  registerCublas(env, exports);
  registerTensorMap(env, exports);
  registerNccl(env, exports);
  registerIpc(env, exports);
  return exports;
}

}  // namespace shardts

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return shardts::Init(env, exports); }

NODE_API_MODULE(shardts_native, InitAddon)
