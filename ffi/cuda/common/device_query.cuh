// common/device_query.cuh: what the kernel choice and the launchers need to know about the current device,
// cached per device (host code).
#pragma once

#include <cuda_runtime.h>

namespace magi_ffa {

struct DeviceFacts {
  int device;       // CUDA device index
  bool sm90;        // compute capability 9.0 (the Hopper kernels need sm_90a)
  int sms;          // streaming multiprocessors
  int smem_optin;   // dynamic shared memory a block may opt in to, bytes
};

// Facts of the calling thread's current device, queried once per device (devices past 63 every call).
cudaError_t current_device_facts(DeviceFacts* facts);

}  // namespace magi_ffa
