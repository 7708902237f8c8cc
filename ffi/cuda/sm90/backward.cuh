// sm90/backward.cuh: host interface of the Hopper fast-mode backward main loop (sm90/backward.cu).
#pragma once

#include <cuda_runtime.h>

#include "common/params.cuh"

namespace magi_ffa {

// Launches the sm90 dK / dV / dQ main loop over `tiles` (key tiles of 128 keys) on an sm_90 device, for a
// plan with keys and a head dim / dtype of common/shapes.cuh (dispatch.cu checks). dq_accum is the fp32
// accumulator [total_q, hq, head_dim], already zeroed, to which dS K is added (unscaled); params.delta must
// already hold rowsum(dO * O). Writes dk (scaled) and dv.
cudaError_t launch_backward_sm90(const BwdParams& params, const TileLists& tiles, float* dq_accum, int head_dim,
                                 int dtype, cudaStream_t stream);

}  // namespace magi_ffa
