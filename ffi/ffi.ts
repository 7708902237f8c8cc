/**
 * The `Deno.dlopen` symbol table of the magi-attn CUDA library (`ffi/cuda/magi_ffa.h`, ABI version 2).
 *
 * Conventions of the table: `int32_t` → `"i32"`, `size_t` → `"usize"` (passed as a `bigint`), device
 * pointers, streams and plans (`void*`) → `"pointer"`, host memory the call reads or writes (`void*`,
 * `int32_t*`, `char*` on the host) → `"buffer"` (a typed array).
 *
 * Only calls that can wait on the GPU are `nonblocking` (they return a `Promise` and run on a worker
 * thread): the stream synchronization and the device-to-host copy. Kernel launches only enqueue work on a
 * stream, so they are plain calls: a nonblocking FFI call costs tens of microseconds of thread hand-off
 * (measured 70 µs against 0.8 µs for a plain call), and the per-thread `magi_ffa_last_error()` text of a
 * failure is only readable on the thread that made the call.
 * @module
 */

/**
 * The parameters every kernel entry (`magi_ffa_forward`, `magi_ffa_backward`) takes after its tensor
 * pointers: `const void* plan, int32_t hq, int32_t hkv, int32_t head_dim, int32_t dtype, float softmax_scale,
 * float softcap, int32_t deterministic, void* stream`.
 */
const KERNEL_TAIL = [
  "pointer", // const void* plan
  "i32", // int32_t hq
  "i32", // int32_t hkv
  "i32", // int32_t head_dim
  "i32", // int32_t dtype (MAGI_FFA_DTYPE_*)
  "f32", // float softmax_scale
  "f32", // float softcap
  "i32", // int32_t deterministic
  "pointer", // void* stream
] as const;

/**
 * The signature of the `magi_ffa_supported_*` lists: `(int32_t* items, int32_t capacity, int32_t* count)`,
 * `items` an Int32Array of `capacity` (may be NULL when capacity is 0), `count` an Int32Array of 1 that
 * receives how many there are.
 */
const SUPPORTED_LIST = { parameters: ["buffer", "i32", "buffer"], result: "i32" } as const;

/** Every symbol of `magi_ffa.h`, typed for `Deno.dlopen`. */
export const symbols = {
  /** `int32_t magi_ffa_abi_version(void)` */
  magi_ffa_abi_version: { parameters: [], result: "i32" },
  /** `const char* magi_ffa_last_error(void)`: valid until the next library call on the thread. */
  magi_ffa_last_error: { parameters: [], result: "pointer" },

  /**
   * `int32_t magi_ffa_supported_head_dims(int32_t* head_dims, int32_t capacity, int32_t* count)`: the head
   * dims the kernels are compiled for, ascending; needs no GPU.
   */
  magi_ffa_supported_head_dims: SUPPORTED_LIST,
  /**
   * `int32_t magi_ffa_supported_dtypes(int32_t* dtypes, int32_t capacity, int32_t* count)`: the
   * `MAGI_FFA_DTYPE_*` codes the kernels are compiled for, ascending; needs no GPU.
   */
  magi_ffa_supported_dtypes: SUPPORTED_LIST,

  /** `int32_t magi_ffa_device_count(int32_t* count)` */
  magi_ffa_device_count: {
    parameters: [
      "buffer", // int32_t* count (Int32Array of 1)
    ],
    result: "i32",
  },
  /** `int32_t magi_ffa_device_name(int32_t device, char* name, size_t name_capacity)` */
  magi_ffa_device_name: {
    parameters: [
      "i32", // int32_t device
      "buffer", // char* name (Uint8Array, NUL-terminated on success)
      "usize", // size_t name_capacity
    ],
    result: "i32",
  },
  /** `int32_t magi_ffa_device_capability(int32_t device, int32_t* major, int32_t* minor)` */
  magi_ffa_device_capability: {
    parameters: [
      "i32", // int32_t device
      "buffer", // int32_t* major (Int32Array of 1)
      "buffer", // int32_t* minor (Int32Array of 1)
    ],
    result: "i32",
  },
  /** `int32_t magi_ffa_set_device(int32_t device)`: sets the device of the calling thread only. */
  magi_ffa_set_device: {
    parameters: [
      "i32", // int32_t device
    ],
    result: "i32",
  },
  /** `int32_t magi_ffa_mem_info(size_t* free_bytes, size_t* total_bytes)` */
  magi_ffa_mem_info: {
    parameters: [
      "buffer", // size_t* free_bytes (BigUint64Array of 1)
      "buffer", // size_t* total_bytes (BigUint64Array of 1)
    ],
    result: "i32",
  },

  /** `int32_t magi_ffa_malloc(void** pointer, size_t bytes)` */
  magi_ffa_malloc: {
    parameters: [
      "buffer", // void** pointer (BigUint64Array of 1, receives the device address)
      "usize", // size_t bytes
    ],
    result: "i32",
  },
  /** `int32_t magi_ffa_free(void* pointer)` */
  magi_ffa_free: {
    parameters: [
      "pointer", // void* pointer (device)
    ],
    result: "i32",
  },
  /** `int32_t magi_ffa_memset(void* pointer, int32_t byte_value, size_t bytes, void* stream)` */
  magi_ffa_memset: {
    parameters: [
      "pointer", // void* pointer (device)
      "i32", // int32_t byte_value
      "usize", // size_t bytes
      "pointer", // void* stream (NULL = legacy default stream)
    ],
    result: "i32",
  },
  /** `int32_t magi_ffa_memcpy_h2d(void* device_dst, const void* host_src, size_t bytes, void* stream)` */
  magi_ffa_memcpy_h2d: {
    parameters: [
      "pointer", // void* device_dst
      "buffer", // const void* host_src
      "usize", // size_t bytes
      "pointer", // void* stream
    ],
    result: "i32",
  },
  /**
   * `int32_t magi_ffa_memcpy_d2h(void* host_dst, const void* device_src, size_t bytes, void* stream)`;
   * nonblocking: a copy into pageable memory waits for the stream's earlier work.
   */
  magi_ffa_memcpy_d2h: {
    parameters: [
      "buffer", // void* host_dst (kept alive by the caller until the promise settles)
      "pointer", // const void* device_src
      "usize", // size_t bytes
      "pointer", // void* stream
    ],
    result: "i32",
    nonblocking: true,
  },
  /** `int32_t magi_ffa_memcpy_d2d(void* device_dst, const void* device_src, size_t bytes, void* stream)` */
  magi_ffa_memcpy_d2d: {
    parameters: [
      "pointer", // void* device_dst
      "pointer", // const void* device_src
      "usize", // size_t bytes
      "pointer", // void* stream
    ],
    result: "i32",
  },

  /** `int32_t magi_ffa_stream_create(void** stream)` */
  magi_ffa_stream_create: {
    parameters: [
      "buffer", // void** stream (BigUint64Array of 1)
    ],
    result: "i32",
  },
  /** `int32_t magi_ffa_stream_destroy(void* stream)` */
  magi_ffa_stream_destroy: {
    parameters: [
      "pointer", // void* stream
    ],
    result: "i32",
  },
  /** `int32_t magi_ffa_stream_synchronize(void* stream)`; nonblocking: waits for the GPU. */
  magi_ffa_stream_synchronize: {
    parameters: [
      "pointer", // void* stream
    ],
    result: "i32",
    nonblocking: true,
  },

  /**
   * `int32_t magi_ffa_plan_create(void** plan, const int32_t* q_ranges, const int32_t* k_ranges,
   * const int32_t* attn_type_map, int32_t num_slices, int32_t total_q, int32_t total_k)`
   */
  magi_ffa_plan_create: {
    parameters: [
      "buffer", // void** plan (BigUint64Array of 1)
      "buffer", // const int32_t* q_ranges (Int32Array of 2 * num_slices)
      "buffer", // const int32_t* k_ranges (Int32Array of 2 * num_slices)
      "buffer", // const int32_t* attn_type_map (Int32Array of num_slices)
      "i32", // int32_t num_slices
      "i32", // int32_t total_q
      "i32", // int32_t total_k
    ],
    result: "i32",
  },
  /** `int32_t magi_ffa_plan_destroy(void* plan)` */
  magi_ffa_plan_destroy: {
    parameters: [
      "pointer", // void* plan
    ],
    result: "i32",
  },

  /**
   * `int32_t magi_ffa_forward(const void* q, const void* k, const void* v, void* out, float* lse,
   * const void* plan, int32_t hq, int32_t hkv, int32_t head_dim, int32_t dtype, float softmax_scale,
   * float softcap, int32_t deterministic, void* stream)`; enqueues the kernel and returns.
   */
  magi_ffa_forward: {
    parameters: [
      "pointer", // const void* q
      "pointer", // const void* k
      "pointer", // const void* v
      "pointer", // void* out
      "pointer", // float* lse (device)
      ...KERNEL_TAIL,
    ],
    result: "i32",
  },
  /**
   * `int32_t magi_ffa_backward(const void* dout, const void* q, const void* k, const void* v,
   * const void* out, const float* lse, void* dq, void* dk, void* dv, const void* plan, int32_t hq,
   * int32_t hkv, int32_t head_dim, int32_t dtype, float softmax_scale, float softcap, int32_t deterministic,
   * void* stream)`; enqueues the kernels and returns.
   */
  magi_ffa_backward: {
    parameters: [
      "pointer", // const void* dout
      "pointer", // const void* q
      "pointer", // const void* k
      "pointer", // const void* v
      "pointer", // const void* out
      "pointer", // const float* lse (device)
      "pointer", // void* dq
      "pointer", // void* dk
      "pointer", // void* dv
      ...KERNEL_TAIL,
    ],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The ABI version this binding was written for (`MAGI_FFA_ABI_VERSION` in `magi_ffa.h`). */
export const MAGI_FFA_ABI_VERSION = 2;

/** `MAGI_FFA_DTYPE_*` codes of the kernels' `dtype` argument. */
export const MAGI_FFA_DTYPE: Readonly<{ float16: 0; bfloat16: 1 }> = Object.freeze(
  { float16: 0, bfloat16: 1 } as const,
);

/** `MAGI_FFA_E_*` library failure codes (CUDA failures are `cudaError_t` values below 10000). */
export const MAGI_FFA_ERROR: Readonly<{ INVALID_ARGUMENT: 10001; UNSUPPORTED: 10002 }> = Object.freeze(
  { INVALID_ARGUMENT: 10001, UNSUPPORTED: 10002 } as const,
);

/** The opened library, typed by {@linkcode symbols}. */
export type MagiFfaLibrary = Deno.DynamicLibrary<typeof symbols>;

/** Opens the library at `path` with the full symbol table. Throws what `Deno.dlopen` throws. */
export function openMagiFfa(path: string): MagiFfaLibrary {
  return Deno.dlopen(path, symbols);
}

/** A handle that holds only `magi_ffa_abi_version`; see {@linkcode openAbiProbe}. */
export type MagiFfaAbiProbe = Deno.DynamicLibrary<
  { magi_ffa_abi_version: typeof symbols.magi_ffa_abi_version }
>;

/**
 * Opens the library at `path` with only `magi_ffa_abi_version`, so that a library of another ABI (which
 * may lack or change other symbols) is told apart from a broken file. Throws what `Deno.dlopen` throws.
 */
export function openAbiProbe(path: string): MagiFfaAbiProbe {
  return Deno.dlopen(path, { magi_ffa_abi_version: symbols.magi_ffa_abi_version });
}
