// common/backward_prepost.cuh: the backward's preprocess and postprocess launches, shared by every backward
// path (sm80 deterministic and fused, sm90 fast): Delta = rowsum(dO * O) (zeroing an fp32 dQ accumulator
// on the way), and the conversion of an fp32 accumulator to the output dtype.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "common/params.cuh"

namespace magi_ffa {

// params.delta[row, head] = sum_d dout * out over the total_q x hq rows; when dq_accum is not NULL it also
// zeroes dq_accum [total_q, hq, head_dim] (saves a memset launch).
cudaError_t launch_backward_delta(const BwdParams& params, float* dq_accum, int head_dim, int dtype,
                                  cudaStream_t stream);

// out[i] = accum[i] * scale in dtype, for `elements` values (a multiple of 8).
cudaError_t launch_accum_convert(const float* accum, void* out, float scale, int64_t elements, int dtype,
                                 cudaStream_t stream);

}  // namespace magi_ffa
