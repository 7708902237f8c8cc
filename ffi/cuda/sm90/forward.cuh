// sm90/forward.cuh: host interface of the Hopper forward (sm90/forward.cu): wgmma + TMA, warp-specialized.
#pragma once

#include <cuda_runtime.h>

#include "common/params.cuh"

namespace magi_ffa {

// Launches the sm90 forward (same contract as launch_forward) on an sm_90 device, for a plan with keys
// (total_k > 0) and a head dim / dtype of common/shapes.cuh: dispatch.cu checks all three. Returns
// cudaErrorInvalidValue otherwise, or when the driver cannot encode a tensor map. Reads
// MAGI_FFA_SM90_PINGPONG and MAGI_FFA_SM90_CTAS (common/env.cuh).
cudaError_t launch_forward_sm90(const FwdParams& params, int head_dim, int dtype, cudaStream_t stream);

}  // namespace magi_ffa
