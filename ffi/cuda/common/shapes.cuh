// common/shapes.cuh: the head dims and dtypes the kernels are compiled for, declared once. Every kernel
// family (sm80 and sm90, forward and backward) is instantiated for each of them through with_shape; the C
// ABI exports the lists (magi_ffa_supported_head_dims / _dtypes) and the TypeScript binding reads them at
// load, so no other place repeats them.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "magi_ffa.h"

namespace magi_ffa {

template <int... kDims>
struct HeadDimList {
  static constexpr int32_t kValues[] = {kDims...};
  static constexpr int kCount = sizeof...(kDims);
};
using SupportedHeadDims = HeadDimList<64, 128>;  // ascending

constexpr int32_t kSupportedDtypes[] = {MAGI_FFA_DTYPE_FLOAT16, MAGI_FFA_DTYPE_BFLOAT16};
constexpr int kSupportedDtypeCount = 2;

// One compiled (element type, head dim) pair.
template <typename T, int D>
struct Shape {
  using Elem = T;
  static constexpr int kHeadDim = D;
};

constexpr bool head_dim_supported(int head_dim) {
  for (int i = 0; i < SupportedHeadDims::kCount; ++i) {
    if (SupportedHeadDims::kValues[i] == head_dim) return true;
  }
  return false;
}

constexpr bool dtype_supported(int dtype) {
  return dtype == MAGI_FFA_DTYPE_FLOAT16 || dtype == MAGI_FFA_DTYPE_BFLOAT16;
}

namespace detail {
template <typename T, typename F, int... kDims>
cudaError_t with_head_dim(int head_dim, F& body, HeadDimList<kDims...>) {
  cudaError_t result = cudaErrorInvalidValue;
  (void)((head_dim == kDims ? (result = body(Shape<T, kDims>{}), true) : false) || ...);
  return result;
}
}  // namespace detail

// Runs body(Shape<T, D>{}) for the run-time (head_dim, dtype): the one place that turns them into template
// arguments. cudaErrorInvalidValue for a pair that is not compiled (callers check support first).
template <typename F>
cudaError_t with_shape(int head_dim, int dtype, F&& body) {
  if (dtype == MAGI_FFA_DTYPE_BFLOAT16) {
    return detail::with_head_dim<__nv_bfloat16>(head_dim, body, SupportedHeadDims{});
  }
  if (dtype == MAGI_FFA_DTYPE_FLOAT16) return detail::with_head_dim<__half>(head_dim, body, SupportedHeadDims{});
  return cudaErrorInvalidValue;
}

}  // namespace magi_ffa
