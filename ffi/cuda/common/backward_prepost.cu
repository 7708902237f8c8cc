// common/backward_prepost.cu: the Delta / dQ-zeroing kernel before the backward's main kernels and the fp32
// accumulator conversion after them (see backward_prepost.cuh).
#include "common/backward_prepost.cuh"
#include "common/device.cuh"
#include "common/shapes.cuh"
#include "magi_ffa.h"

namespace magi_ffa {
namespace {

// ---------------------------------------------------------------------------------------------------
// Delta = rowsum(dO * O), one group of D/8 lanes per (row, head), 16-byte loads. In fast mode it also
// zeroes the (row, head)'s D floats of the dQ accumulator (saves a memset launch).
template <typename T, int D>
__global__ void __launch_bounds__(256) ffa_bwd_delta_kernel(const T* __restrict__ dout, const T* __restrict__ out,
                                                            float* __restrict__ delta, float* __restrict__ dq_accum,
                                                            int64_t num_items) {
  constexpr int kLanesPerItem = D / 8;
  constexpr int kItemsPerBlock = 256 / kLanesPerItem;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kItemsPerBlock + threadIdx.x / kLanesPerItem;
  const int sub = threadIdx.x % kLanesPerItem;
  float acc = 0.f;
  if (item < num_items) {
    const uint4 a = *reinterpret_cast<const uint4*>(dout + item * D + sub * 8);
    const uint4 b = *reinterpret_cast<const uint4*>(out + item * D + sub * 8);
    const uint32_t av[4] = {a.x, a.y, a.z, a.w};
    const uint32_t bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 fa = Elem<T>::unpack(av[i]);
      const float2 fb = Elem<T>::unpack(bv[i]);
      acc = fmaf(fa.x, fb.x, acc);
      acc = fmaf(fa.y, fb.y, acc);
    }
    if (dq_accum != nullptr) {
      float4* zero_at = reinterpret_cast<float4*>(dq_accum + item * D + sub * 8);
      zero_at[0] = make_float4(0.f, 0.f, 0.f, 0.f);
      zero_at[1] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
#pragma unroll
  for (int offset = kLanesPerItem / 2; offset > 0; offset >>= 1) {
    acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  }
  if (sub == 0 && item < num_items) delta[item] = acc;
}

// ---------------------------------------------------------------------------------------------------
// Fast mode: out = accum * scale in the output dtype (dq; dk / dv when heads were split), 8 elements per
// thread (D is a multiple of 8).
template <typename T>
__global__ void __launch_bounds__(256) ffa_bwd_convert_kernel(const float* __restrict__ accum, T* __restrict__ out,
                                                              float scale, int64_t num_groups) {
  const int64_t group = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
  if (group >= num_groups) return;
  const float4 a = reinterpret_cast<const float4*>(accum)[2 * group];
  const float4 b = reinterpret_cast<const float4*>(accum)[2 * group + 1];
  uint4 packed;
  packed.x = Elem<T>::pack(a.x * scale, a.y * scale);
  packed.y = Elem<T>::pack(a.z * scale, a.w * scale);
  packed.z = Elem<T>::pack(b.x * scale, b.y * scale);
  packed.w = Elem<T>::pack(b.z * scale, b.w * scale);
  reinterpret_cast<uint4*>(out)[group] = packed;
}

template <typename T>
cudaError_t launch_convert(const float* accum, void* out, float scale, int64_t elements, cudaStream_t stream) {
  const int64_t groups = elements / 8;
  if (groups <= 0) return cudaSuccess;
  const int64_t blocks = (groups + 255) / 256;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  ffa_bwd_convert_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(accum, static_cast<T*>(out), scale,
                                                                               groups);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_backward_delta(const BwdParams& params, float* dq_accum, int head_dim, int dtype,
                                  cudaStream_t stream) {
  const int64_t items = static_cast<int64_t>(params.plan.total_q) * params.hq;
  if (items == 0) return cudaSuccess;
  return with_shape(head_dim, dtype, [&](auto shape) {
    using T = typename decltype(shape)::Elem;
    constexpr int D = decltype(shape)::kHeadDim;
    constexpr int kItemsPerBlock = 256 / (D / 8);
    const int64_t blocks = (items + kItemsPerBlock - 1) / kItemsPerBlock;
    if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
    ffa_bwd_delta_kernel<T, D><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        static_cast<const T*>(params.dout), static_cast<const T*>(params.out), params.delta, dq_accum, items);
    return cudaGetLastError();
  });
}

cudaError_t launch_accum_convert(const float* accum, void* out, float scale, int64_t elements, int dtype,
                                 cudaStream_t stream) {
  if (dtype == MAGI_FFA_DTYPE_BFLOAT16) return launch_convert<__nv_bfloat16>(accum, out, scale, elements, stream);
  if (dtype == MAGI_FFA_DTYPE_FLOAT16) return launch_convert<__half>(accum, out, scale, elements, stream);
  return cudaErrorInvalidValue;
}

}  // namespace magi_ffa
