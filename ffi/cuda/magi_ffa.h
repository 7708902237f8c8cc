// magi_ffa.h: the C ABI of the magi-attn flex flash attention (FFA) library. This header is the
// contract between ffi/cuda/ (magi_ffa.cu) and ffi/ffi.ts; change MAGI_FFA_ABI_VERSION with any change to it.
//
// Conventions
// - Every function returns a status: 0 = success, anything else = failure (a cudaError_t value, or one
//   of the MAGI_FFA_E_* codes below). The failure's text is in magi_ffa_last_error() (per thread).
// - Tensors are contiguous "thd": q [total_q, hq, head_dim], k and v [total_k, hkv, head_dim], out like
//   q, lse float32 [total_q, hq]. q, k, v, out, dout, dq, dk, dv share one dtype (MAGI_FFA_DTYPE_*).
// - Streams are cudaStream_t passed as void*; NULL means the legacy default stream.
// - A plan is a flex key uploaded to the device together with its tile schedules. It is immutable and
//   may be used by any number of calls on any stream; destroy it only when no call using it is pending.
#ifndef MAGI_FFA_H
#define MAGI_FFA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// 2: magi_ffa_supported_head_dims and magi_ffa_supported_dtypes.
#define MAGI_FFA_ABI_VERSION 2

#define MAGI_FFA_DTYPE_FLOAT16 0
#define MAGI_FFA_DTYPE_BFLOAT16 1

#define MAGI_FFA_ATTN_FULL 0
#define MAGI_FFA_ATTN_CAUSAL 1
#define MAGI_FFA_ATTN_INVCAUSAL 2
#define MAGI_FFA_ATTN_BICAUSAL 3

// Library-level failures (CUDA failures return their cudaError_t, all below 10000).
#define MAGI_FFA_E_INVALID_ARGUMENT 10001
#define MAGI_FFA_E_UNSUPPORTED 10002

// ABI version of the built library (MAGI_FFA_ABI_VERSION at build time).
int32_t magi_ffa_abi_version(void);

// Text of the last failure on the calling thread ("" if none). Valid until the next call on the thread.
const char* magi_ffa_last_error(void);

// What the kernels are compiled for, so that bindings need not repeat it. Each writes the supported values,
// ascending, into out[0 .. min(count, capacity)) and their number into *count; out may be NULL when capacity
// is 0 (to ask for the count first). Needs no GPU.
//   head_dims: head dims (the last dimension of q, k, v) the forward and backward accept.
//   dtypes:    MAGI_FFA_DTYPE_* codes of the 16-bit element types q, k, v, out and the gradients may have.
int32_t magi_ffa_supported_head_dims(int32_t* head_dims, int32_t capacity, int32_t* count);
int32_t magi_ffa_supported_dtypes(int32_t* dtypes, int32_t capacity, int32_t* count);

// Device queries. A machine without a driver or GPU yields a nonzero status (cudaErrorInsufficientDriver
// = 35 or cudaErrorNoDevice = 100), never a crash.
int32_t magi_ffa_device_count(int32_t* count);
int32_t magi_ffa_device_name(int32_t device, char* name, size_t name_capacity);
int32_t magi_ffa_device_capability(int32_t device, int32_t* major, int32_t* minor);
int32_t magi_ffa_set_device(int32_t device);
int32_t magi_ffa_mem_info(size_t* free_bytes, size_t* total_bytes);

// Device memory. Allocation and free are stream-ordered on the legacy default stream (cudaMallocAsync /
// cudaFreeAsync), so a free waits for work already queued instead of for the whole device. Copies on a
// stream are asynchronous with respect to the host only for pinned memory; the binding synchronizes the
// stream before it reads a device-to-host result.
int32_t magi_ffa_malloc(void** pointer, size_t bytes);
int32_t magi_ffa_free(void* pointer);
int32_t magi_ffa_memset(void* pointer, int32_t byte_value, size_t bytes, void* stream);
int32_t magi_ffa_memcpy_h2d(void* device_dst, const void* host_src, size_t bytes, void* stream);
int32_t magi_ffa_memcpy_d2h(void* host_dst, const void* device_src, size_t bytes, void* stream);
int32_t magi_ffa_memcpy_d2d(void* device_dst, const void* device_src, size_t bytes, void* stream);

// Streams.
int32_t magi_ffa_stream_create(void** stream);
int32_t magi_ffa_stream_destroy(void* stream);
int32_t magi_ffa_stream_synchronize(void* stream);

// Plans. The ranges are host arrays of 2 * num_slices int32 (start, end pairs) and num_slices types;
// they are validated (bounds, start <= end, types) and copied, so the caller may free them afterwards.
int32_t magi_ffa_plan_create(void** plan, const int32_t* q_ranges, const int32_t* k_ranges,
                             const int32_t* attn_type_map, int32_t num_slices, int32_t total_q,
                             int32_t total_k);
int32_t magi_ffa_plan_destroy(void* plan);

// Environment: the MAGI_FFA_* variables (kernel choice and test knobs, README.md lists them) are read at the
// first forward / backward call of the process; an invalid value makes both fail with
// MAGI_FFA_E_INVALID_ARGUMENT naming the variable. A forced kernel that cannot run here fails with
// MAGI_FFA_E_UNSUPPORTED.

// Forward: out and lse for every query row; rows no slice makes visible get out = 0, lse = -inf.
// softmax_scale > 0; softcap = 0 disables capping. Deterministic mode gives bitwise-identical results
// across runs (the forward is deterministic in every mode; the flag is accepted for symmetry).
int32_t magi_ffa_forward(const void* q, const void* k, const void* v, void* out, float* lse,
                         const void* plan, int32_t hq, int32_t hkv, int32_t head_dim, int32_t dtype,
                         float softmax_scale, float softcap, int32_t deterministic, void* stream);

// Backward: dq, dk, dv (same dtype as q) from dout, q, k, v, out and the forward's lse. deterministic = 0
// (fast mode): one fused kernel per key tile keeps dK/dV in registers and adds dQ with fp32 atomics, so dq
// (and dk/dv when a GQA group is split across CTAs) may differ in the last bits between runs.
// deterministic = 1: an atomic-free path (separate dK/dV and dQ kernels), bitwise reproducible.
int32_t magi_ffa_backward(const void* dout, const void* q, const void* k, const void* v,
                          const void* out, const float* lse, void* dq, void* dk, void* dv,
                          const void* plan, int32_t hq, int32_t hkv, int32_t head_dim, int32_t dtype,
                          float softmax_scale, float softcap, int32_t deterministic, void* stream);

#ifdef __cplusplus
}
#endif

#endif  // MAGI_FFA_H
