// magi_ffa.cu: the C ABI of magi_ffa.h: error reporting, device and memory helpers, what the library
// supports, plans (validation, tile schedules from plan.cuh, upload) and the forward / backward entry points
// (argument checks, then dispatch.cu chooses and launches the kernels).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <new>
#include <numeric>
#include <string>
#include <vector>

#include "common/device_query.cuh"
#include "common/env.cuh"
#include "common/params.cuh"
#include "common/shapes.cuh"
#include "dispatch.cuh"
#include "magi_ffa.h"
#include "plan.cuh"
#include "sm80/backward.cuh"

using magi_ffa::build_key_tiles;
using magi_ffa::build_query_tiles;
using magi_ffa::DevicePlan;
using magi_ffa::HostTileLists;
using magi_ffa::Slice;

namespace {

// ---------------------------------------------------------------------------------------------------
// Errors: the last failure's text, per thread.
thread_local std::string g_last_error;

void clear_error() { g_last_error.clear(); }

int32_t fail(int32_t status, const char* format, ...) __attribute__((format(printf, 2, 3)));
int32_t fail(int32_t status, const char* format, ...) {
  char buffer[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buffer, sizeof(buffer), format, args);
  va_end(args);
  g_last_error = buffer;
  return status;
}

// Records a CUDA failure as "<function>: <what> failed: <cudaErrorName> (<description>)"; the status is
// the cudaError_t value. Clears the sticky per-thread "last error" so later calls start clean.
int32_t cuda_fail(const char* function, const char* what, cudaError_t err) {
  (void)cudaGetLastError();
  return fail(static_cast<int32_t>(err), "%s: %s failed: %s (%s)", function, what, cudaGetErrorName(err),
              cudaGetErrorString(err));
}

#define MAGI_CUDA_CHECK(function, call)                                  \
  do {                                                                   \
    const cudaError_t magi_err_ = (call);                                \
    if (magi_err_ != cudaSuccess) return cuda_fail(function, #call, magi_err_); \
  } while (0)

int32_t invalid(const char* function, const char* what) {
  return fail(MAGI_FFA_E_INVALID_ARGUMENT, "%s: %s", function, what);
}

// ---------------------------------------------------------------------------------------------------
// Plans.
constexpr uint64_t kPlanMagic = 0x6d6167692d666661ull;  // "magi-ffa"

struct HostPlan {
  uint64_t magic;
  int32_t device;
  void* device_memory;
  DevicePlan device_plan;
  magi_ffa::TileLists dkv_wide;  // key tiles of kFusedBlockNWide for the fast backward
  double dkv_wide_mean_stages;   // their fused_mean_stages (picks the fast backward's tile size)
};

size_t align_up(size_t value, size_t alignment) { return (value + alignment - 1) / alignment * alignment; }

// Lays the host arrays out in one device buffer: appends `bytes` from `data` to `blob` (16-byte aligned)
// and returns the offset.
size_t append(std::vector<unsigned char>* blob, const void* data, size_t bytes) {
  const size_t offset = align_up(blob->size(), 16);
  blob->resize(offset + bytes);
  if (bytes > 0) std::memcpy(blob->data() + offset, data, bytes);
  return offset;
}

struct ListOffsets {
  size_t offsets, slices, order;
  magi_ffa::HostSchedule schedules[3];  // made only for the lists the persistent kernels walk
  size_t schedule_offsets[3], schedule_entries[3];
};

// Appends a tile list and, with lanes > 0, its schedules for groups of 1, 2 and 4 heads.
ListOffsets append_lists(std::vector<unsigned char>* blob, const HostTileLists& lists, int32_t lanes,
                         int64_t item_overhead) {
  ListOffsets at;
  at.offsets = append(blob, lists.offsets.data(), lists.offsets.size() * sizeof(int32_t));
  at.slices = append(blob, lists.slices.data(), lists.slices.size() * sizeof(int32_t));
  at.order = append(blob, lists.order.data(), lists.order.size() * sizeof(int32_t));
  for (int g = 0; g < 3; ++g) {
    if (lanes > 0) at.schedules[g] = magi_ffa::build_schedule(lists, lanes, magi_ffa::kScheduleGroups[g], item_overhead);
    const magi_ffa::HostSchedule& schedule = at.schedules[g];
    at.schedule_offsets[g] = append(blob, schedule.offsets.data(), schedule.offsets.size() * sizeof(int32_t));
    at.schedule_entries[g] = append(blob, schedule.entries.data(), schedule.entries.size() * sizeof(int32_t));
  }
  return at;
}

magi_ffa::TileLists device_lists(unsigned char* base, const ListOffsets& at, const HostTileLists& lists) {
  magi_ffa::TileLists out;
  out.num_tiles = static_cast<int32_t>(lists.order.size());
  out.offsets = reinterpret_cast<const int32_t*>(base + at.offsets);
  out.slices = reinterpret_cast<const int32_t*>(base + at.slices);
  out.order = reinterpret_cast<const int32_t*>(base + at.order);
  for (int g = 0; g < 3; ++g) {
    magi_ffa::Schedule& schedule = out.schedules.by_group[g];
    schedule.lanes = at.schedules[g].lanes;
    schedule.group = magi_ffa::kScheduleGroups[g];
    schedule.offsets = reinterpret_cast<const int32_t*>(base + at.schedule_offsets[g]);
    schedule.entries = reinterpret_cast<const int32_t*>(base + at.schedule_entries[g]);
  }
  return out;
}

// Checks a plan handle and that the current device is the plan's.
int32_t check_plan(const char* function, const void* plan, const HostPlan** out) {
  if (plan == nullptr) return invalid(function, "plan is NULL; create one with magi_ffa_plan_create");
  const HostPlan* host_plan = static_cast<const HostPlan*>(plan);
  if (host_plan->magic != kPlanMagic) {
    return invalid(function, "plan is not a live magi_ffa plan (destroyed, or not from magi_ffa_plan_create)");
  }
  int device = 0;
  MAGI_CUDA_CHECK(function, cudaGetDevice(&device));
  if (device != host_plan->device) {
    return fail(MAGI_FFA_E_INVALID_ARGUMENT,
                "%s: the plan lives on device %d but the current device is %d; call magi_ffa_set_device(%d) "
                "or create a plan on this device",
                function, host_plan->device, device, host_plan->device);
  }
  *out = host_plan;
  return 0;
}

bool aligned16(const void* pointer) { return (reinterpret_cast<uintptr_t>(pointer) & 15u) == 0; }

// Shared checks of forward and backward: heads, head dim, dtype, scale, softcap.
int32_t check_common(const char* function, int32_t hq, int32_t hkv, int32_t head_dim, int32_t dtype,
                     float softmax_scale, float softcap) {
  if (hq <= 0 || hkv <= 0) {
    return fail(MAGI_FFA_E_INVALID_ARGUMENT, "%s: hq (%d) and hkv (%d) must be positive", function, hq, hkv);
  }
  if (hq % hkv != 0) {
    return fail(MAGI_FFA_E_INVALID_ARGUMENT,
                "%s: hq (%d) must be a multiple of hkv (%d) (each kv head serves hq/hkv query heads)", function,
                hq, hkv);
  }
  if (!magi_ffa::dtype_supported(dtype)) {
    return fail(MAGI_FFA_E_INVALID_ARGUMENT, "%s: dtype %d is not MAGI_FFA_DTYPE_FLOAT16 (0) or BFLOAT16 (1)",
                function, dtype);
  }
  if (!magi_ffa::head_dim_supported(head_dim)) {
    std::string supported;
    for (const int32_t value : magi_ffa::SupportedHeadDims::kValues) {
      supported += (supported.empty() ? "" : ", ") + std::to_string(value);
    }
    return fail(MAGI_FFA_E_UNSUPPORTED, "%s: head_dim %d is not supported by the CUDA kernels (supported: %s)",
                function, head_dim, supported.c_str());
  }
  if (!(softmax_scale > 0.f) || !std::isfinite(softmax_scale)) {
    return fail(MAGI_FFA_E_INVALID_ARGUMENT, "%s: softmax_scale (%g) must be a finite number > 0", function,
                static_cast<double>(softmax_scale));
  }
  if (!(softcap >= 0.f) || !std::isfinite(softcap)) {
    return fail(MAGI_FFA_E_INVALID_ARGUMENT, "%s: softcap (%g) must be a finite number >= 0 (0 disables it)",
                function, static_cast<double>(softcap));
  }
  // The MAGI_FFA_* variables are read at the first forward / backward call; a bad one fails every call.
  if (const char* env_error = magi_ffa::env_config().error) {
    return fail(MAGI_FFA_E_INVALID_ARGUMENT, "%s: %s", function, env_error);
  }
  return 0;
}

// Copies a compile-time list into a caller's array (see magi_ffa_supported_head_dims).
int32_t copy_list(const char* function, const int32_t* values, int32_t count, int32_t* out, int32_t capacity,
                  int32_t* written) {
  clear_error();
  if (written == nullptr) return invalid(function, "count is NULL");
  if (capacity < 0) return fail(MAGI_FFA_E_INVALID_ARGUMENT, "%s: capacity (%d) is negative", function, capacity);
  if (capacity > 0 && out == nullptr) return invalid(function, "the output array is NULL but capacity > 0");
  for (int32_t i = 0; i < count && i < capacity; ++i) out[i] = values[i];
  *written = count;
  return 0;
}

// A tensor argument: NULL is an error when it has elements; it must be 16-byte aligned for vector access.
int32_t check_tensor(const char* function, const char* name, const void* pointer, bool has_elements) {
  if (!has_elements) return 0;
  if (pointer == nullptr) return fail(MAGI_FFA_E_INVALID_ARGUMENT, "%s: %s is NULL", function, name);
  if (!aligned16(pointer)) {
    return fail(MAGI_FFA_E_INVALID_ARGUMENT, "%s: %s (%p) must be 16-byte aligned", function, name, pointer);
  }
  return 0;
}

/** One tensor argument of a kernel entry: its name in errors, its pointer, whether it holds elements. */
struct TensorArg {
  const char* name;
  const void* pointer;
  bool has_elements;
};

/** check_tensor on each of `tensors`, in order; the first failure's status. */
int32_t check_tensors(const char* function, std::initializer_list<TensorArg> tensors) {
  for (const TensorArg& tensor : tensors) {
    const int32_t status = check_tensor(function, tensor.name, tensor.pointer, tensor.has_elements);
    if (status != 0) return status;
  }
  return 0;
}

/** What a kernel entry checks before its tensors: the plan (stored in *out) and the scalar arguments. */
int32_t check_call(const char* function, const void* plan, const HostPlan** out, int32_t hq, int32_t hkv,
                   int32_t head_dim, int32_t dtype, float softmax_scale, float softcap) {
  const int32_t status = check_plan(function, plan, out);
  if (status != 0) return status;
  return check_common(function, hq, hkv, head_dim, dtype, softmax_scale, softcap);
}

}  // namespace

// =====================================================================================================
// The library is built with -fvisibility=hidden; only the C ABI below is exported.
#pragma GCC visibility push(default)
extern "C" {

int32_t magi_ffa_abi_version(void) { return MAGI_FFA_ABI_VERSION; }

const char* magi_ffa_last_error(void) { return g_last_error.c_str(); }

int32_t magi_ffa_supported_head_dims(int32_t* head_dims, int32_t capacity, int32_t* count) {
  return copy_list("magi_ffa_supported_head_dims", magi_ffa::SupportedHeadDims::kValues,
                   magi_ffa::SupportedHeadDims::kCount, head_dims, capacity, count);
}

int32_t magi_ffa_supported_dtypes(int32_t* dtypes, int32_t capacity, int32_t* count) {
  return copy_list("magi_ffa_supported_dtypes", magi_ffa::kSupportedDtypes, magi_ffa::kSupportedDtypeCount, dtypes,
                   capacity, count);
}

int32_t magi_ffa_device_count(int32_t* count) {
  clear_error();
  if (count == nullptr) return invalid("magi_ffa_device_count", "count is NULL");
  *count = 0;
  int n = 0;
  MAGI_CUDA_CHECK("magi_ffa_device_count", cudaGetDeviceCount(&n));
  *count = n;
  return 0;
}

int32_t magi_ffa_device_name(int32_t device, char* name, size_t name_capacity) {
  clear_error();
  if (name == nullptr || name_capacity == 0) {
    return invalid("magi_ffa_device_name", "name is NULL or name_capacity is 0");
  }
  name[0] = '\0';
  cudaDeviceProp props;
  MAGI_CUDA_CHECK("magi_ffa_device_name", cudaGetDeviceProperties(&props, device));
  std::snprintf(name, name_capacity, "%s", props.name);
  return 0;
}

int32_t magi_ffa_device_capability(int32_t device, int32_t* major, int32_t* minor) {
  clear_error();
  if (major == nullptr || minor == nullptr) return invalid("magi_ffa_device_capability", "major or minor is NULL");
  int value_major = 0, value_minor = 0;
  MAGI_CUDA_CHECK("magi_ffa_device_capability",
                  cudaDeviceGetAttribute(&value_major, cudaDevAttrComputeCapabilityMajor, device));
  MAGI_CUDA_CHECK("magi_ffa_device_capability",
                  cudaDeviceGetAttribute(&value_minor, cudaDevAttrComputeCapabilityMinor, device));
  *major = value_major;
  *minor = value_minor;
  return 0;
}

int32_t magi_ffa_set_device(int32_t device) {
  clear_error();
  MAGI_CUDA_CHECK("magi_ffa_set_device", cudaSetDevice(device));
  return 0;
}

int32_t magi_ffa_mem_info(size_t* free_bytes, size_t* total_bytes) {
  clear_error();
  if (free_bytes == nullptr || total_bytes == nullptr) {
    return invalid("magi_ffa_mem_info", "free_bytes or total_bytes is NULL");
  }
  MAGI_CUDA_CHECK("magi_ffa_mem_info", cudaMemGetInfo(free_bytes, total_bytes));
  return 0;
}

int32_t magi_ffa_malloc(void** pointer, size_t bytes) {
  clear_error();
  if (pointer == nullptr) return invalid("magi_ffa_malloc", "pointer is NULL");
  *pointer = nullptr;
  if (bytes == 0) return 0;
  // Stream-ordered allocation on the legacy default stream: about a microsecond from the pool instead of
  // a cudaMalloc per tensor, and ordered after work queued on the library's (blocking) streams.
  MAGI_CUDA_CHECK("magi_ffa_malloc", cudaMallocAsync(pointer, bytes, cudaStreamLegacy));
  return 0;
}

int32_t magi_ffa_free(void* pointer) {
  clear_error();
  if (pointer == nullptr) return 0;
  // cudaFree would wait for the whole device; the stream-ordered free runs after queued work instead.
  MAGI_CUDA_CHECK("magi_ffa_free", cudaFreeAsync(pointer, cudaStreamLegacy));
  return 0;
}

int32_t magi_ffa_memset(void* pointer, int32_t byte_value, size_t bytes, void* stream) {
  clear_error();
  if (bytes == 0) return 0;
  if (pointer == nullptr) return invalid("magi_ffa_memset", "pointer is NULL");
  MAGI_CUDA_CHECK("magi_ffa_memset",
                  cudaMemsetAsync(pointer, byte_value, bytes, static_cast<cudaStream_t>(stream)));
  return 0;
}

static int32_t memcpy_impl(const char* function, void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                           void* stream) {
  clear_error();
  if (bytes == 0) return 0;
  if (dst == nullptr || src == nullptr) return invalid(function, "dst or src is NULL");
  MAGI_CUDA_CHECK(function, cudaMemcpyAsync(dst, src, bytes, kind, static_cast<cudaStream_t>(stream)));
  return 0;
}

int32_t magi_ffa_memcpy_h2d(void* device_dst, const void* host_src, size_t bytes, void* stream) {
  return memcpy_impl("magi_ffa_memcpy_h2d", device_dst, host_src, bytes, cudaMemcpyHostToDevice, stream);
}

int32_t magi_ffa_memcpy_d2h(void* host_dst, const void* device_src, size_t bytes, void* stream) {
  return memcpy_impl("magi_ffa_memcpy_d2h", host_dst, device_src, bytes, cudaMemcpyDeviceToHost, stream);
}

int32_t magi_ffa_memcpy_d2d(void* device_dst, const void* device_src, size_t bytes, void* stream) {
  return memcpy_impl("magi_ffa_memcpy_d2d", device_dst, device_src, bytes, cudaMemcpyDeviceToDevice, stream);
}

int32_t magi_ffa_stream_create(void** stream) {
  clear_error();
  if (stream == nullptr) return invalid("magi_ffa_stream_create", "stream is NULL");
  cudaStream_t created = nullptr;
  // A blocking stream: it orders itself with the legacy default stream (NULL), so copies the binding makes
  // on NULL are complete before kernels on this stream start, and the converse.
  MAGI_CUDA_CHECK("magi_ffa_stream_create", cudaStreamCreateWithFlags(&created, cudaStreamDefault));
  *stream = created;
  return 0;
}

int32_t magi_ffa_stream_destroy(void* stream) {
  clear_error();
  if (stream == nullptr) return 0;
  MAGI_CUDA_CHECK("magi_ffa_stream_destroy", cudaStreamDestroy(static_cast<cudaStream_t>(stream)));
  return 0;
}

int32_t magi_ffa_stream_synchronize(void* stream) {
  clear_error();
  MAGI_CUDA_CHECK("magi_ffa_stream_synchronize", cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  return 0;
}

int32_t magi_ffa_plan_create(void** plan, const int32_t* q_ranges, const int32_t* k_ranges,
                             const int32_t* attn_type_map, int32_t num_slices, int32_t total_q,
                             int32_t total_k) {
  static const char* kFn = "magi_ffa_plan_create";
  clear_error();
  if (plan == nullptr) return invalid(kFn, "plan (the output pointer) is NULL");
  *plan = nullptr;
  if (num_slices < 0) return fail(MAGI_FFA_E_INVALID_ARGUMENT, "%s: num_slices (%d) is negative", kFn, num_slices);
  if (total_q < 0 || total_k < 0) {
    return fail(MAGI_FFA_E_INVALID_ARGUMENT, "%s: total_q (%d) and total_k (%d) must be >= 0", kFn, total_q,
                total_k);
  }
  if (num_slices > 0 && (q_ranges == nullptr || k_ranges == nullptr || attn_type_map == nullptr)) {
    return invalid(kFn, "q_ranges, k_ranges and attn_type_map must not be NULL when num_slices > 0");
  }
  std::vector<Slice> slices(static_cast<size_t>(num_slices));
  for (int32_t n = 0; n < num_slices; ++n) {
    Slice s;
    s.qs = q_ranges[2 * n];
    s.qe = q_ranges[2 * n + 1];
    s.ks = k_ranges[2 * n];
    s.ke = k_ranges[2 * n + 1];
    s.type = attn_type_map[n];
    if (s.qs < 0 || s.qs > s.qe || s.qe > total_q) {
      return fail(MAGI_FFA_E_INVALID_ARGUMENT,
                  "%s: q_ranges[%d] = [%d, %d) must satisfy 0 <= start <= end <= total_q (%d)", kFn, n, s.qs, s.qe,
                  total_q);
    }
    if (s.ks < 0 || s.ks > s.ke || s.ke > total_k) {
      return fail(MAGI_FFA_E_INVALID_ARGUMENT,
                  "%s: k_ranges[%d] = [%d, %d) must satisfy 0 <= start <= end <= total_k (%d)", kFn, n, s.ks, s.ke,
                  total_k);
    }
    if (s.type < MAGI_FFA_ATTN_FULL || s.type > MAGI_FFA_ATTN_BICAUSAL) {
      return fail(MAGI_FFA_E_INVALID_ARGUMENT,
                  "%s: attn_type_map[%d] = %d is not 0 (full), 1 (causal), 2 (inv_causal) or 3 (bi_causal)", kFn,
                  n, s.type);
    }
    slices[static_cast<size_t>(n)] = s;
  }

  int device = 0;
  MAGI_CUDA_CHECK(kFn, cudaGetDevice(&device));

  HostTileLists fwd, dq, dkv, dkv_wide;
  std::vector<unsigned char> blob;
  try {
    fwd = build_query_tiles(slices, total_q, magi_ffa::kFwdBlockM);
    dq = build_query_tiles(slices, total_q, magi_ffa::kDqBlockM);
    dkv = build_key_tiles(slices, total_k, magi_ffa::kDkvBlockN);
    dkv_wide = build_key_tiles(slices, total_k, magi_ffa::kFusedBlockNWide);
  } catch (const std::bad_alloc&) {
    return fail(MAGI_FFA_E_INVALID_ARGUMENT, "%s: out of host memory building the tile lists", kFn);
  }
  // The persistent (sm90) kernels walk the forward's query tiles and the wide key tiles: their schedules
  // are made for one lane per multiprocessor of the plan's device (sm_90 devices only).
  magi_ffa::DeviceFacts facts;
  MAGI_CUDA_CHECK(kFn, magi_ffa::current_device_facts(&facts));
  const int32_t lanes = facts.sm90 ? facts.sms : 0;
  const size_t slices_at = append(&blob, slices.data(), slices.size() * sizeof(Slice));
  ListOffsets fwd_at, dq_at, dkv_at, dkv_wide_at;
  try {
    fwd_at = append_lists(&blob, fwd, lanes, int64_t{magi_ffa::kFwdBlockM} * magi_ffa::kFwdBlockN);
    dq_at = append_lists(&blob, dq, 0, 0);
    dkv_at = append_lists(&blob, dkv, 0, 0);
    dkv_wide_at = append_lists(&blob, dkv_wide, lanes, int64_t{magi_ffa::kFusedBlockNWide} * magi_ffa::kDqBlockM);
  } catch (const std::bad_alloc&) {
    return fail(MAGI_FFA_E_INVALID_ARGUMENT, "%s: out of host memory building the schedules", kFn);
  }

  HostPlan* host_plan = new (std::nothrow) HostPlan();
  if (host_plan == nullptr) return fail(MAGI_FFA_E_INVALID_ARGUMENT, "%s: out of host memory", kFn);
  host_plan->magic = kPlanMagic;
  host_plan->device = device;
  host_plan->device_memory = nullptr;
  const size_t bytes = std::max<size_t>(blob.size(), 16);
  cudaError_t err = cudaMalloc(&host_plan->device_memory, bytes);
  if (err == cudaSuccess && !blob.empty()) {
    err = cudaMemcpy(host_plan->device_memory, blob.data(), blob.size(), cudaMemcpyHostToDevice);
  }
  if (err != cudaSuccess) {
    if (host_plan->device_memory != nullptr) cudaFree(host_plan->device_memory);
    delete host_plan;
    return cuda_fail(kFn, "uploading the plan (cudaMalloc / cudaMemcpy)", err);
  }
  unsigned char* base = static_cast<unsigned char*>(host_plan->device_memory);
  DevicePlan& dp = host_plan->device_plan;
  dp.slices = reinterpret_cast<const Slice*>(base + slices_at);
  dp.num_slices = num_slices;
  dp.total_q = total_q;
  dp.total_k = total_k;
  dp.fwd = device_lists(base, fwd_at, fwd);
  dp.dq = device_lists(base, dq_at, dq);
  dp.dkv = device_lists(base, dkv_at, dkv);
  host_plan->dkv_wide = device_lists(base, dkv_wide_at, dkv_wide);
  host_plan->dkv_wide_mean_stages =
      magi_ffa::fused_mean_stages(slices.data(), dkv_wide.offsets.data(), dkv_wide.slices.data(),
                                  static_cast<int>(dkv_wide.order.size()), magi_ffa::kFusedBlockNWide);
  *plan = host_plan;
  return 0;
}

int32_t magi_ffa_plan_destroy(void* plan) {
  clear_error();
  if (plan == nullptr) return 0;
  HostPlan* host_plan = static_cast<HostPlan*>(plan);
  if (host_plan->magic != kPlanMagic) {
    return invalid("magi_ffa_plan_destroy", "plan is not a live magi_ffa plan (destroyed twice?)");
  }
  host_plan->magic = 0;
  const cudaError_t err = cudaFree(host_plan->device_memory);
  delete host_plan;
  if (err != cudaSuccess) return cuda_fail("magi_ffa_plan_destroy", "cudaFree", err);
  return 0;
}

int32_t magi_ffa_forward(const void* q, const void* k, const void* v, void* out, float* lse, const void* plan,
                         int32_t hq, int32_t hkv, int32_t head_dim, int32_t dtype, float softmax_scale,
                         float softcap, int32_t deterministic, void* stream) {
  static const char* kFn = "magi_ffa_forward";
  (void)deterministic;  // the forward is deterministic in every mode
  clear_error();
  const HostPlan* host_plan = nullptr;
  int32_t status = check_call(kFn, plan, &host_plan, hq, hkv, head_dim, dtype, softmax_scale, softcap);
  if (status != 0) return status;
  const bool has_q = host_plan->device_plan.total_q > 0;
  const bool has_k = host_plan->device_plan.total_k > 0;
  status = check_tensors(kFn, {{"q", q, has_q}, {"k", k, has_k}, {"v", v, has_k}, {"out", out, has_q},
                               {"lse", lse, has_q}});
  if (status != 0) return status;
  if (!has_q) return 0;

  magi_ffa::FwdParams params;
  params.q = q;
  params.k = k;
  params.v = v;
  params.out = out;
  params.lse = lse;
  params.hq = hq;
  params.hkv = hkv;
  params.group = hq / hkv;
  params.scale = softmax_scale;
  params.scale_log2 = softmax_scale * magi_ffa::kLog2eHost;
  params.softcap = softcap;
  params.plan = host_plan->device_plan;
  // The Hopper kernel on sm_90 devices (MAGI_FFA_FWD_KERNEL=sm80 / sm90 forces one): dispatch.cu's table.
  magi_ffa::Choice choice;
  cudaError_t err = magi_ffa::choose_forward(params, head_dim, dtype, &choice);
  if (err != cudaSuccess) return cuda_fail(kFn, "querying the current device", err);
  if (choice.kernel == magi_ffa::Kernel::kRefuse) return fail(MAGI_FFA_E_UNSUPPORTED, "%s: %s", kFn, choice.reason);
  err = magi_ffa::launch_forward_choice(choice, params, head_dim, dtype, static_cast<cudaStream_t>(stream));
  if (err != cudaSuccess) return cuda_fail(kFn, "launching the forward kernel", err);
  return 0;
}

int32_t magi_ffa_backward(const void* dout, const void* q, const void* k, const void* v, const void* out,
                          const float* lse, void* dq, void* dk, void* dv, const void* plan, int32_t hq, int32_t hkv,
                          int32_t head_dim, int32_t dtype, float softmax_scale, float softcap,
                          int32_t deterministic, void* stream) {
  static const char* kFn = "magi_ffa_backward";
  clear_error();
  const HostPlan* host_plan = nullptr;
  int32_t status = check_call(kFn, plan, &host_plan, hq, hkv, head_dim, dtype, softmax_scale, softcap);
  if (status != 0) return status;
  const int32_t total_q = host_plan->device_plan.total_q;
  const bool has_q = total_q > 0;
  const bool has_k = host_plan->device_plan.total_k > 0;
  status = check_tensors(kFn, {{"dout", dout, has_q}, {"q", q, has_q}, {"k", k, has_k}, {"v", v, has_k},
                               {"out", out, has_q}, {"lse", lse, has_q}, {"dq", dq, has_q}, {"dk", dk, has_k},
                               {"dv", dv, has_k}});
  if (status != 0) return status;
  if (!has_q && !has_k) return 0;

  magi_ffa::BwdParams params;
  params.plan = host_plan->device_plan;
  params.group = hq / hkv;
  // Fast mode's main loop: the Hopper kernel where it applies (MAGI_FFA_BWD_KERNEL=sm80 / sm90 forces one);
  // deterministic mode: the atomic-free path. dispatch.cu's table.
  magi_ffa::Choice choice;
  cudaError_t err = magi_ffa::choose_backward(params, host_plan->dkv_wide_mean_stages, head_dim, dtype,
                                              deterministic != 0, &choice);
  if (err != cudaSuccess) return cuda_fail(kFn, "querying the current device", err);
  if (choice.kernel == magi_ffa::Kernel::kRefuse) return fail(MAGI_FFA_E_UNSUPPORTED, "%s: %s", kFn, choice.reason);
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  float* delta = nullptr;
  const size_t delta_bytes = static_cast<size_t>(total_q) * static_cast<size_t>(hq) * sizeof(float);
  if (delta_bytes > 0) {
    MAGI_CUDA_CHECK(kFn, cudaMallocAsync(reinterpret_cast<void**>(&delta), delta_bytes, cuda_stream));
  }
  params.dout = dout;
  params.q = q;
  params.k = k;
  params.v = v;
  params.out = out;
  params.lse = lse;
  params.dq = dq;
  params.dk = dk;
  params.dv = dv;
  params.delta = delta;
  params.hq = hq;
  params.hkv = hkv;
  params.scale = softmax_scale;
  params.scale_log2 = softmax_scale * magi_ffa::kLog2eHost;
  params.softcap = softcap;
  err = magi_ffa::launch_backward_choice(choice, params, host_plan->dkv_wide, head_dim, dtype, cuda_stream);
  if (delta != nullptr) {
    const cudaError_t free_err = cudaFreeAsync(delta, cuda_stream);
    if (err == cudaSuccess && free_err != cudaSuccess) return cuda_fail(kFn, "cudaFreeAsync(delta)", free_err);
  }
  if (err != cudaSuccess) return cuda_fail(kFn, "launching the backward kernels", err);
  return 0;
}

}  // extern "C"
#pragma GCC visibility pop
