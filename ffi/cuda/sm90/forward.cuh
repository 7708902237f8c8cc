// ffa_sm90_fwd.cuh: host interface of the Hopper forward (ffa_fwd_sm90.cu): wgmma + TMA, warp-specialized.
#pragma once

#include <cuda.h>  // CUtensorMap (types only)
#include <cuda_runtime.h>

#include "common/params.cuh"

namespace magi_ffa {

// Whether the sm90 forward handles this head dim and dtype (MAGI_FFA_DTYPE_*) at all (the device must also
// be sm_90; the caller checks that).
bool sm90_forward_supported(int head_dim, int dtype);

// Shared with the sm90 backward (host code):
// A thd tensor [rows, heads, head_dim] as the 3-D tensor map (head_dim, heads, rows) with boxes of
// (box_cols, 1, box_rows), the 128-byte swizzle and zero fill; 16-bit elements of `dtype`, or fp32 when
// `fp32` (then box_cols must be 32).
bool sm90_encode_thd(CUtensorMap* map, const void* pointer, int rows, int heads, int head_dim, int box_cols,
                     int box_rows, int dtype, bool fp32);
// Persistent grid size: one CTA per SM of the current device, or MAGI_FFA_SM90_CTAS.
cudaError_t sm90_persistent_ctas(int* ctas);
// Whether the current device is compute capability 9.0.
bool sm90_current_device_is_sm90();

// Launches the sm90 forward (same contract as launch_forward). Returns cudaErrorInvalidValue for an
// unsupported head dim / dtype, or the driver's failure to encode a tensor map as cudaErrorInvalidValue.
// Tuning / test knobs, each read once per process: MAGI_FFA_SM90_CTAS=N (persistent CTAs; default one per
// SM), MAGI_FFA_SM90_PINGPONG=0 (no warpgroup turn-taking), MAGI_FFA_SM90_XITEM=1 (the cross-item
// pipelined consumer loop).
cudaError_t launch_forward_sm90(const FwdParams& params, int head_dim, int dtype, cudaStream_t stream);

}  // namespace magi_ffa

namespace magi_ffa {

constexpr int kForwardKernelSm80 = 0;
constexpr int kForwardKernelSm90 = 1;

// Picks the forward kernel: kForwardKernelSm90 on an sm_90 device for head_dim 64 / 128 in bf16 / fp16,
// else kForwardKernelSm80. The environment variable MAGI_FFA_FWD_KERNEL (read once) forces "sm80" or "sm90"
// (then an unsupported device / head dim / dtype is an error). Returns -1 with *why_not set (static text)
// when the forced choice is impossible or the variable's value is not one of those.
int select_forward_kernel(int head_dim, int dtype, const char** why_not);

}  // namespace magi_ffa
