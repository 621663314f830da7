// NCCL glue: unique ids, communicators, collectives, point-to-point, groups and error queries.
// Data types and reduction ops are NCCL's integer enums (runtime/cuda/native-types.ts names them).
// Communicator initialisation blocks until every rank has joined, as NCCL does: with several ranks in
// one process, wrap the ncclCommInitRank calls in ncclGroupStart/ncclGroupEnd (or use ncclCommInitAll).
// Non-blocking communicators (NCCL_COMM_BLOCKING=0 in the environment before the first communicator):
// calls on them may answer ncclInProgress, which is not an error: the call returns 7 and the caller
// polls ncclCommGetAsyncError until it reads 0 (runtime/cuda/dist/communicators.ts does). That is
// what lets a watchdog abort a communicator whose peers never arrive.
#include <string>
#include <vector>

#include "common.h"
#include "driver.h"

namespace shardts {

namespace {

// Returns r when it is ncclSuccess or ncclInProgress; throws a CudaApiError for anything else.
int check(Napi::Env env, NcclApi& api, ncclResult_t r, const std::string& call, ncclComm_t comm = nullptr) {
  if (r == ncclSuccess || r == ncclInProgress) return r;
  const char* s = api.ncclGetErrorString(r);
  std::string detail = s ? s : "";
  if (api.ncclGetLastError) {
    const char* last = api.ncclGetLastError(comm);
    if (last && *last) detail += std::string(detail.empty() ? "" : "; ") + "last error: " + last;
  }
  static const char* names[] = {"ncclSuccess",        "ncclUnhandledCudaError", "ncclSystemError",
                                "ncclInternalError",  "ncclInvalidArgument",    "ncclInvalidUsage",
                                "ncclRemoteError",    "ncclInProgress",         "ncclTimeout"};
  std::string name = (r >= 0 && r < 9) ? names[r] : "ncclUnknownResult";
  throwApiError(env, "nccl", call, r, name, detail);
  return r;
}

ncclComm_t comm(Napi::Env env, const Napi::Value& v) { return handle<ncclComm>(env, v, "comm"); }
const void* dptr(Napi::Env env, const Napi::Value& v, const char* what) {
  return reinterpret_cast<const void*>(static_cast<uintptr_t>(u64(env, v, what)));
}

Napi::Value Version(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclApi& api = nccl(env);
  int v = 0;
  check(env, api, api.ncclGetVersion(&v), "ncclGetVersion");
  return Napi::Number::New(env, v);
}

Napi::Value GetUniqueId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclApi& api = nccl(env);
  ncclUniqueId id;
  check(env, api, api.ncclGetUniqueId(&id), "ncclGetUniqueId");
  Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<uint8_t*>(id.internal), sizeof(id.internal));
  return b;
}

// ncclCommInitRank(nranks, id: 128 bytes, rank) on the current device.
Napi::Value CommInitRank(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ctx(env);
  NcclApi& api = nccl(env);
  int nranks = i32(env, info[0], "nranks");
  HostSpan idb = hostSpan(env, info[1], "uniqueId");
  int rank = i32(env, info[2], "rank");
  if (idb.bytes != sizeof(ncclUniqueId)) throwRangeError(env, "ncclCommInitRank: the unique id must be 128 bytes");
  ncclUniqueId id;
  std::copy(idb.data, idb.data + sizeof(id.internal), reinterpret_cast<uint8_t*>(id.internal));
  ncclComm_t c = nullptr;
  check(env, api, api.ncclCommInitRank(&c, nranks, id, rank),
        "ncclCommInitRank(nranks " + std::to_string(nranks) + ", rank " + std::to_string(rank) + ")");
  return bigPtr(env, c);
}

// ncclCommSplit(comm, color, key) -> the new communicator (null for a negative colour, NCCL_SPLIT_NOCOLOR).
// Collective over the parent: every rank of it calls it, in the same order. The new communicator
// inherits the parent's config (non-blocking parents give non-blocking children, still initialising
// when this returns: poll ncclCommGetAsyncError on it).
Napi::Value CommSplit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ctx(env);
  NcclApi& api = nccl(env);
  if (!api.ncclCommSplit) throwApiError(env, "nccl", "ncclCommSplit", 5, "ncclInvalidUsage", "this NCCL has no ncclCommSplit (it arrived in NCCL 2.18); install NCCL 2.18 or newer");
  ncclComm_t parent = comm(env, info[0]);
  int color = i32(env, info[1], "color"), key = i32(env, info[2], "key");
  ncclComm_t c = nullptr;
  check(env, api, api.ncclCommSplit(parent, color, key, &c, nullptr),
        "ncclCommSplit(color " + std::to_string(color) + ", key " + std::to_string(key) + ")", parent);
  if (!c) return env.Null();
  return bigPtr(env, c);
}

// ncclCommInitAll(devices: number[]) -> comms (one process driving several GPUs).
Napi::Value CommInitAll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ctx(env);
  NcclApi& api = nccl(env);
  if (!info[0].IsArray()) throwTypeError(env, "ncclCommInitAll(devices): devices must be an array of ordinals");
  Napi::Array a = info[0].As<Napi::Array>();
  std::vector<int> devs;
  for (uint32_t i = 0; i < a.Length(); i++) devs.push_back(i32(env, a.Get(i), "device"));
  std::vector<ncclComm_t> comms(devs.size(), nullptr);
  check(env, api, api.ncclCommInitAll(comms.data(), static_cast<int>(devs.size()), devs.data()), "ncclCommInitAll");
  Napi::Array out = Napi::Array::New(env, comms.size());
  for (size_t i = 0; i < comms.size(); i++) out.Set(static_cast<uint32_t>(i), bigPtr(env, comms[i]));
  return out;
}

#define COMM_CALL(NAME, CALL, EXPR)                                   \
  Napi::Value NAME(const Napi::CallbackInfo& info) {                  \
    Napi::Env env = info.Env();                                       \
    NcclApi& api = nccl(env);                                         \
    ncclComm_t c = comm(env, info[0]);                                \
    return Napi::Number::New(env, check(env, api, EXPR, CALL));       \
  }

COMM_CALL(CommDestroy, "ncclCommDestroy", api.ncclCommDestroy(c))
COMM_CALL(CommAbort, "ncclCommAbort", api.ncclCommAbort(c))

Napi::Value CommGetAsyncError(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclApi& api = nccl(env);
  ncclComm_t c = comm(env, info[0]);
  ncclResult_t async = ncclSuccess;
  check(env, api, api.ncclCommGetAsyncError(c, &async), "ncclCommGetAsyncError", c);
  return Napi::Number::New(env, async);
}

Napi::Value CommInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclApi& api = nccl(env);
  ncclComm_t c = comm(env, info[0]);
  int count = 0, rank = 0, dev = 0;
  check(env, api, api.ncclCommCount(c, &count), "ncclCommCount", c);
  check(env, api, api.ncclCommUserRank(c, &rank), "ncclCommUserRank", c);
  check(env, api, api.ncclCommCuDevice(c, &dev), "ncclCommCuDevice", c);
  Napi::Object o = Napi::Object::New(env);
  o.Set("count", count);
  o.Set("rank", rank);
  o.Set("device", dev);
  return o;
}

// ncclAllReduce(send, recv, count, dtype, op, comm, stream)
Napi::Value AllReduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclApi& api = nccl(env);
  ncclComm_t c = comm(env, info[5]);
  int rc = check(env, api,
        api.ncclAllReduce(dptr(env, info[0], "send"), const_cast<void*>(dptr(env, info[1], "recv")), u64(env, info[2], "count"),
                          i32(env, info[3], "dtype"), i32(env, info[4], "op"), c, handleOr<CUstream>(info, 6, "stream")),
        "ncclAllReduce", c);
  return Napi::Number::New(env, rc);
}

// ncclAllGather(send, recv, sendCount, dtype, comm, stream)
Napi::Value AllGather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclApi& api = nccl(env);
  ncclComm_t c = comm(env, info[4]);
  int rc = check(env, api,
        api.ncclAllGather(dptr(env, info[0], "send"), const_cast<void*>(dptr(env, info[1], "recv")),
                          u64(env, info[2], "sendCount"), i32(env, info[3], "dtype"), c, handleOr<CUstream>(info, 5, "stream")),
        "ncclAllGather", c);
  return Napi::Number::New(env, rc);
}

// ncclReduceScatter(send, recv, recvCount, dtype, op, comm, stream)
Napi::Value ReduceScatter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclApi& api = nccl(env);
  ncclComm_t c = comm(env, info[5]);
  int rc = check(env, api,
        api.ncclReduceScatter(dptr(env, info[0], "send"), const_cast<void*>(dptr(env, info[1], "recv")),
                              u64(env, info[2], "recvCount"), i32(env, info[3], "dtype"), i32(env, info[4], "op"), c,
                              handleOr<CUstream>(info, 6, "stream")),
        "ncclReduceScatter", c);
  return Napi::Number::New(env, rc);
}

// ncclBroadcast(send, recv, count, dtype, root, comm, stream)
Napi::Value Broadcast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclApi& api = nccl(env);
  ncclComm_t c = comm(env, info[5]);
  int rc = check(env, api,
        api.ncclBroadcast(dptr(env, info[0], "send"), const_cast<void*>(dptr(env, info[1], "recv")), u64(env, info[2], "count"),
                          i32(env, info[3], "dtype"), i32(env, info[4], "root"), c, handleOr<CUstream>(info, 6, "stream")),
        "ncclBroadcast", c);
  return Napi::Number::New(env, rc);
}

// ncclSend(buf, count, dtype, peer, comm, stream) / ncclRecv(buf, count, dtype, peer, comm, stream)
template <bool IsSend>
Napi::Value SendRecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclApi& api = nccl(env);
  ncclComm_t c = comm(env, info[4]);
  const void* buf = dptr(env, info[0], "buffer");
  size_t count = u64(env, info[1], "count");
  int dtype = i32(env, info[2], "dtype"), peer = i32(env, info[3], "peer");
  CUstream s = handleOr<CUstream>(info, 5, "stream");
  int rc = IsSend ? check(env, api, api.ncclSend(buf, count, dtype, peer, c, s), "ncclSend(peer " + std::to_string(peer) + ")", c)
                  : check(env, api, api.ncclRecv(const_cast<void*>(buf), count, dtype, peer, c, s), "ncclRecv(peer " + std::to_string(peer) + ")", c);
  return Napi::Number::New(env, rc);
}

Napi::Value GroupStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclApi& api = nccl(env);
  check(env, api, api.ncclGroupStart(), "ncclGroupStart");
  return env.Undefined();
}

Napi::Value GroupEnd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclApi& api = nccl(env);
  return Napi::Number::New(env, check(env, api, api.ncclGroupEnd(), "ncclGroupEnd"));
}

}  // namespace

void registerNccl(Napi::Env env, Napi::Object exports) {
  def(env, exports, "ncclVersion", Version);
  def(env, exports, "ncclGetUniqueId", GetUniqueId);
  def(env, exports, "ncclCommInitRank", CommInitRank);
  def(env, exports, "ncclCommInitAll", CommInitAll);
  def(env, exports, "ncclCommSplit", CommSplit);
  def(env, exports, "ncclCommDestroy", CommDestroy);
  def(env, exports, "ncclCommAbort", CommAbort);
  def(env, exports, "ncclCommGetAsyncError", CommGetAsyncError);
  def(env, exports, "ncclCommInfo", CommInfo);
  def(env, exports, "ncclAllReduce", AllReduce);
  def(env, exports, "ncclAllGather", AllGather);
  def(env, exports, "ncclReduceScatter", ReduceScatter);
  def(env, exports, "ncclBroadcast", Broadcast);
  def(env, exports, "ncclSend", SendRecv<true>);
  def(env, exports, "ncclRecv", SendRecv<false>);
  def(env, exports, "ncclGroupStart", GroupStart);
  def(env, exports, "ncclGroupEnd", GroupEnd);
}

}  // namespace shardts
