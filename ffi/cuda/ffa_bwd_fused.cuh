// ffa_bwd_fused.cuh: what the host API (magi_ffa.cu), the backward kernels (ffa_bwd.cu) and the self-test's
// CPU replay share about the fast backward: its key-tile size, the plan lists it walks, and its launcher.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "ffa_internal.cuh"

namespace magi_ffa {

// The fast (fused dK/dV/dQ) backward: one CTA per (key tile, kv head), 16 keys per warp, query stages of
// kDkvBlockM rows. The wide tile halves the fp32 dQ atomics and the Q / dO tile loads per FLOP; the narrow
// one is the plan's deterministic dK/dV tile (kDkvBlockN), kept for comparison and for small problems.
constexpr int kFusedBlockNWide = 128;

// Key-tile size of the fast backward: 128, or 64 when the environment says MAGI_FFA_BWD_BLOCK_N=64
// (read once; for A/B timing on the device).
inline int fused_block_n() {
  static const int value = [] {
    const char* text = std::getenv("MAGI_FFA_BWD_BLOCK_N");
    return text != nullptr && std::strcmp(text, "64") == 0 ? kDkvBlockN : kFusedBlockNWide;
  }();
  return value;
}

// The backward with its mode: deterministic = false is the fused fast path (fp32 atomics into a dQ workspace
// it allocates on the stream), walking `wide_keys` (tiles of kFusedBlockNWide keys) or the plan's kDkvBlockN
// tiles; true is the atomic-free, bitwise-reproducible path.
cudaError_t launch_backward_mode(const BwdParams& params, const TileLists& wide_keys, int head_dim, int dtype,
                                 bool deterministic, cudaStream_t stream);

}  // namespace magi_ffa
