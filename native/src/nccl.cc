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

// One comm step in one call (runtime/cuda/nccl/collectives.ts packs it, lower.ts `packIssue`):
//   ncclIssue(comm, computeStream, commStream, startEvent, doneEvent, ops, ptrs, counts, dtype, first) -> number
// records startEvent on the compute stream and makes the comm stream wait on it (first 0 only), then
// issues calls first.. in order and records doneEvent on the comm stream: what RankLocal.step did in
// 4+ native calls. ops: Int32Array, 4 per call: [op (NcclIssueOp), buffer a, buffer b, reduce op or
// peer]; counts: Float64Array, 3 per call: [count, element offset in a, element offset in b]; ptrs:
// BigUint64Array, the buffers' base pointers; dtype: ncclDataType_t (sets the element size). Returns
// the number of calls when all were issued (doneEvent recorded), else the index of the call that
// answered ncclInProgress (a non-blocking communicator: nothing after it was issued; poll, then call
// again with first = that index + 1). A failing call throws the error its own entry point throws,
// under the same call name; all arguments are checked before anything is issued.
enum IssueOp : int32_t { kAllGather, kReduceScatter, kAllReduce, kSend, kRecv, kGroupStart, kGroupEnd };

size_t ncclTypeBytes(int dtype) {
  static const size_t bytes[] = {1, 1, 4, 4, 8, 8, 2, 4, 8, 2, 1, 1};  // i8 u8 i32 u32 i64 u64 f16 f32 f64 bf16 f8e4m3 f8e5m2
  return dtype >= 0 && dtype < 12 ? bytes[dtype] : 0;
}

Napi::Value Issue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* sig = "ncclIssue(comm, computeStream, commStream, startEvent, doneEvent, ops, ptrs, counts, dtype, first)";
  if (info.Length() != 10) throwTypeError(env, std::string(sig) + ": takes 10 arguments, got " + std::to_string(info.Length()));
  ncclComm_t c = comm(env, info[0]);
  CUstream compute = handleOr<CUstream>(info, 1, "computeStream"), cs = handleOr<CUstream>(info, 2, "commStream");
  CUevent start = handle<CUevent_st>(env, info[3], "startEvent"), done = handle<CUevent_st>(env, info[4], "doneEvent");
  auto typed = [&](size_t i, napi_typedarray_type want, const char* name, const char* type) {
    if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != want)
      throwTypeError(env, std::string(sig) + ": " + name + " must be " + type);
    Napi::TypedArray t = info[i].As<Napi::TypedArray>();
    return std::make_pair(static_cast<const uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset(), t.ElementLength());
  };
  auto [opsData, opsLen] = typed(5, napi_int32_array, "ops", "an Int32Array (4 entries per call)");
  auto [ptrsData, nbufs] = typed(6, napi_biguint64_array, "ptrs", "a BigUint64Array (the buffers' base pointers)");
  auto [countsData, countsLen] = typed(7, napi_float64_array, "counts", "a Float64Array (3 entries per call)");
  const int32_t* ops = reinterpret_cast<const int32_t*>(opsData);
  const uint64_t* ptrs = reinterpret_cast<const uint64_t*>(ptrsData);
  const double* counts = reinterpret_cast<const double*>(countsData);
  int dtype = i32(env, info[8], "dtype");
  size_t eb = ncclTypeBytes(dtype), n = opsLen / 4;
  if (!eb) throwRangeError(env, std::string(sig) + ": unknown ncclDataType_t " + std::to_string(dtype));
  if (opsLen != 4 * n || countsLen != 3 * n)
    throwRangeError(env, std::string(sig) + ": ops must hold 4N entries and counts 3N for N calls, got " + std::to_string(opsLen) +
                             " and " + std::to_string(countsLen));
  double firstD = f64(env, info[9], "first");
  if (!(firstD >= 0 && firstD <= static_cast<double>(n) && firstD == static_cast<double>(static_cast<size_t>(firstD))))
    throwRangeError(env, std::string(sig) + ": first must be an integer in [0, " + std::to_string(n) + "]");
  size_t first = static_cast<size_t>(firstD);
  const double maxElems = 9007199254740992.0;  // 2^53: exact in a double
  for (size_t i = 0; i < n; i++) {
    const int32_t* o = ops + 4 * i;
    std::string at = std::string(sig) + ": call " + std::to_string(i);
    if (o[0] < kAllGather || o[0] > kGroupEnd) throwRangeError(env, at + ": unknown op " + std::to_string(o[0]));
    if (o[0] >= kGroupStart) continue;
    bool two = o[0] <= kAllReduce;
    if (o[1] < 0 || static_cast<size_t>(o[1]) >= nbufs || (two && (o[2] < 0 || static_cast<size_t>(o[2]) >= nbufs)))
      throwRangeError(env, at + ": a buffer index outside ptrs (" + std::to_string(nbufs) + " buffers)");
    if (!ptrs[o[1]] || (two && !ptrs[o[2]])) throwRangeError(env, at + ": a null buffer pointer");
    for (int j = 0; j < (two ? 3 : 2); j++) {
      double v = counts[3 * i + j];
      if (!(v >= 0 && v < maxElems && v == static_cast<double>(static_cast<uint64_t>(v))))
        throwRangeError(env, at + ": counts and offsets must be non-negative integers below 2^53");
    }
  }
  DriverApi& cu = ctx(env);
  NcclApi& api = nccl(env);
  if (first == 0) {
    cuCheck(env, cu.cuEventRecord(start, compute), "cuEventRecord");
    cuCheck(env, cu.cuStreamWaitEvent(cs, start, 0), "cuStreamWaitEvent");
  }
  auto at = [&](size_t i, int j) {  // call i's pointer in buffer ops[4i + j], at its offset counts[3i + j]
    return reinterpret_cast<void*>(static_cast<uintptr_t>(ptrs[ops[4 * i + j]] + static_cast<uint64_t>(counts[3 * i + j]) * eb));
  };
  for (size_t i = first; i < n; i++) {
    const int32_t* o = ops + 4 * i;
    size_t count = static_cast<size_t>(counts[3 * i]);
    int rc = ncclSuccess;
    switch (o[0]) {
      case kAllGather:
        rc = check(env, api, api.ncclAllGather(at(i, 1), at(i, 2), count, dtype, c, cs), "ncclAllGather", c);
        break;
      case kReduceScatter:
        rc = check(env, api, api.ncclReduceScatter(at(i, 1), at(i, 2), count, dtype, o[3], c, cs), "ncclReduceScatter", c);
        break;
      case kAllReduce:
        rc = check(env, api, api.ncclAllReduce(at(i, 1), at(i, 2), count, dtype, o[3], c, cs), "ncclAllReduce", c);
        break;
      case kSend:
        rc = check(env, api, api.ncclSend(at(i, 1), count, dtype, o[3], c, cs), "ncclSend(peer " + std::to_string(o[3]) + ")", c);
        break;
      case kRecv:
        rc = check(env, api, api.ncclRecv(at(i, 1), count, dtype, o[3], c, cs), "ncclRecv(peer " + std::to_string(o[3]) + ")", c);
        break;
      case kGroupStart:
        rc = check(env, api, api.ncclGroupStart(), "ncclGroupStart");
        break;
      default:
        rc = check(env, api, api.ncclGroupEnd(), "ncclGroupEnd");
        break;
    }
    if (rc == ncclInProgress) return Napi::Number::New(env, static_cast<double>(i));
  }
  cuCheck(env, cu.cuEventRecord(done, cs), "cuEventRecord");
  return Napi::Number::New(env, static_cast<double>(n));
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
  def(env, exports, "ncclIssue", Issue);
}

}  // namespace shardts
