// sm80/forward.cuh: host interface of the mma.sync forward (sm80/forward.cu), which runs on every sm_80+ GPU.
#pragma once

#include <cuda_runtime.h>

#include "common/params.cuh"

namespace magi_ffa {

// Launches the forward for a head dim / dtype of common/shapes.cuh (cudaErrorInvalidValue otherwise).
cudaError_t launch_forward_sm80(const FwdParams& params, int head_dim, int dtype, cudaStream_t stream);

}  // namespace magi_ffa
