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

// How many CTAs share one (key tile, kv head) of the fast backward, each taking group / splits query heads
// of the GQA group: a power of two dividing the group, doubled while the grid (tiles x hkv x splits) is under
// twice the SM count (MQA / GQA on short sequences would otherwise leave most SMs idle). With splits > 1 the
// CTAs add dK / dV into fp32 workspaces with atomics (fast mode only: the sums' order then varies).
inline int fused_head_splits(int num_tiles, int hkv, int group, int num_sms) {
  int splits = 1;
  const long long unsplit = static_cast<long long>(num_tiles) * hkv;
  while (unsplit * splits < 2LL * num_sms && group % (2 * splits) == 0) splits *= 2;
  return splits;
}

// The backward with its mode: deterministic = false is the fused fast path (fp32 atomics into a dQ workspace
// it allocates on the stream), walking `wide_keys` (tiles of kFusedBlockNWide keys) or the plan's kDkvBlockN
// tiles; true is the atomic-free, bitwise-reproducible path.
cudaError_t launch_backward_mode(const BwdParams& params, const TileLists& wide_keys, int head_dim, int dtype,
                                 bool deterministic, cudaStream_t stream);

}  // namespace magi_ffa
