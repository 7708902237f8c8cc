// common/launch.cuh: host helpers for launching the kernels.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

namespace magi_ffa {

// Raises a kernel's dynamic shared-memory limit to `bytes`, once per kernel and device (the attribute
// is per device context; devices past 63 are simply set on every launch).
// The kernel is a template argument so that each instantiation gets its own flag word.
template <auto kKernel>
cudaError_t ensure_dynamic_smem(size_t bytes) {
  static std::atomic<uint64_t> done_devices{0};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (done_devices.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  err = cudaFuncSetAttribute(reinterpret_cast<const void*>(kKernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(bytes));
  if (err != cudaSuccess) return err;
  done_devices.fetch_or(bit, std::memory_order_acq_rel);
  return cudaSuccess;
}

}  // namespace magi_ffa
