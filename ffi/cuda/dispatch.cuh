// dispatch.cuh: which kernel runs a forward or a backward, chosen in one table (dispatch.cu) from the pass
// (forward, fast or deterministic backward), the kernel forced by the environment (MAGI_FFA_FWD_KERNEL /
// MAGI_FFA_BWD_KERNEL), the device (sm_90 or not) and the problem (no keys, no queries, whether the fused
// backward's tiles fit the device), and launched from here. Head dim and dtype are not columns: the C ABI
// rejects pairs outside common/shapes.cuh first, and every kernel is compiled for all of those.
#pragma once

#include <cuda_runtime.h>

#include "common/device_query.cuh"
#include "common/params.cuh"

namespace magi_ffa {

enum class Kernel {
  kRefuse,                     // none: the forced choice is impossible here (Choice::reason says why)
  kForwardSm80,                // sm80/forward.cu: mma.sync, any sm_80+ GPU
  kForwardSm90,                // sm90/forward.cu: wgmma + TMA, warp-specialized, persistent
  kBackwardSm80Deterministic,  // sm80/backward_dkdv.cu + backward_dq.cu: atomic-free, bitwise reproducible
  kBackwardSm80Fused,          // sm80/backward_dkdv.cu fused: dQ added by fp32 atomics (block_n 64 or 128)
  kBackwardSm90,               // sm90/backward.cu: wgmma + TMA main loop, dQ added by TMA reduce-adds
};

struct Choice {
  Kernel kernel = Kernel::kRefuse;
  const char* reason = "";  // why this kernel; for kRefuse, the error text (static storage)
  int block_n = 0;          // kBackwardSm80Fused: keys per tile (kDkvBlockN or kFusedBlockNWide)
  DeviceFacts device{};     // the current device, as the choice saw it
};

// The forward's kernel for these parameters on the current device. A failed device query is returned as
// is; an impossible forced choice gives Kernel::kRefuse.
cudaError_t choose_forward(const FwdParams& params, int head_dim, int dtype, Choice* choice);

// The backward's kernel: deterministic or fast mode; wide_mean_stages is the plan's fused_mean_stages of its
// kFusedBlockNWide key tiles (it picks the fused kernel's tile size).
cudaError_t choose_backward(const BwdParams& params, double wide_mean_stages, int head_dim, int dtype,
                            bool deterministic, Choice* choice);

// Launches a chosen (not refused) forward.
cudaError_t launch_forward_choice(const Choice& choice, const FwdParams& params, int head_dim, int dtype,
                                  cudaStream_t stream);

// Launches a chosen (not refused) backward: every kernel of its path, with the fp32 workspaces it needs
// (allocated and freed on the stream). wide_keys: the plan's key tiles of kFusedBlockNWide keys.
cudaError_t launch_backward_choice(const Choice& choice, const BwdParams& params, const TileLists& wide_keys,
                                   int head_dim, int dtype, cudaStream_t stream);

}  // namespace magi_ffa
