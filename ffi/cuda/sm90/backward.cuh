// ffa_sm90_bwd.cuh: host interface of the Hopper fast-mode backward main loop (ffa_bwd_sm90.cu).
#pragma once

#include <cuda_runtime.h>

#include "common/params.cuh"

namespace magi_ffa {

constexpr int kBackwardKernelSm80 = 0;
constexpr int kBackwardKernelSm90 = 1;

// Picks the fast-mode backward's main loop: kBackwardKernelSm90 on an sm_90 device for head_dim 64 / 128 in
// bf16 / fp16, else kBackwardKernelSm80 (the mma.sync fused kernel). The environment variable
// MAGI_FFA_BWD_KERNEL (read once) forces "sm80" or "sm90" (then an impossible choice is an error). Returns
// -1 with *why_not set (static text) for a forced impossible choice or a malformed value.
int select_backward_kernel(int head_dim, int dtype, const char** why_not);

// Launches the sm90 dK / dV / dQ main loop over `tiles` (key tiles of 128 keys). dq_accum is the fp32
// accumulator [total_q, hq, head_dim], already zeroed, to which dS K is added (unscaled); params.delta must
// already hold rowsum(dO * O). Writes dk (scaled) and dv.
cudaError_t launch_backward_sm90(const BwdParams& params, const TileLists& tiles, float* dq_accum, int head_dim,
                                 int dtype, cudaStream_t stream);

}  // namespace magi_ffa
