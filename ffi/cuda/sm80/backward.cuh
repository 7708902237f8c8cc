// ffa_bwd_fused.cuh: what the host API (magi_ffa.cu), the backward kernels (ffa_bwd.cu) and the self-test's
// CPU replay share about the fast backward: its key-tile size, the plan lists it walks, and its launcher.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "common/params.cuh"

namespace magi_ffa {

// The fast (fused dK/dV/dQ) backward: one CTA per (key tile, kv head), 16 keys per warp, query stages of
// kDkvBlockM rows. The wide tile halves the fp32 dQ atomics and the Q / dO tile loads per FLOP; the narrow
// one is the plan's deterministic dK/dV tile (kDkvBlockN), kept for comparison and for small problems.
constexpr int kFusedBlockNWide = 128;

// Key-tile size forced by the environment: MAGI_FFA_BWD_BLOCK_N=64 or 128 (read once; for A/B timing on the
// device), else 0 (chosen per problem by fused_block_n).
inline int fused_block_n_forced() {
  static const int value = [] {
    const char* text = std::getenv("MAGI_FFA_BWD_BLOCK_N");
    if (text != nullptr && std::strcmp(text, "64") == 0) return kDkvBlockN;
    if (text != nullptr && std::strcmp(text, "128") == 0) return kFusedBlockNWide;
    return 0;
  }();
  return value;
}

// Mean query stages (kDkvBlockM rows) per head that a tile of `lists` walks: per tile, the rows each listed
// slice shows to the tile's keys, rounded up to whole stages; tiles with no slice count too (they still
// launch). A plan-time number (host code).
inline double fused_mean_stages(const Slice* slices, const int32_t* offsets, const int32_t* list, int num_tiles,
                                int block_n) {
  if (num_tiles <= 0) return 0.0;
  double stages = 0;
  for (int tile = 0; tile < num_tiles; ++tile) {
    for (int pos = offsets[tile]; pos < offsets[tile + 1]; ++pos) {
      const Slice& s = slices[list[pos]];
      const int c0 = imax(tile * block_n, s.ks);
      const int c1 = imin(tile * block_n + block_n, s.ke);
      if (c0 >= c1) continue;
      int lo, hi;
      visible_rows_of_keys(s, c0, c1, &lo, &hi);
      if (lo < hi) stages += (hi - lo + kDkvBlockM - 1) / kDkvBlockM;
    }
  }
  return stages / num_tiles;
}

// Below this many query stages per wide-tile CTA (stages per head x heads of the GQA group), the 128-key
// CTA (one per SM at D = 128) spends too much of its life loading K / V and storing dK / dV with nothing to
// overlap them; the 64-key tiles (two CTAs per SM) win there. A guess from one H200 reading (64 causal
// documents of 256 tokens: 3 stages per wide tile, 65 TFLOP/s against 68 for the unfused v0).
constexpr double kFusedWideMinStages = 8.0;

// Key-tile size of the fast backward for a plan whose wide tiles walk `wide_mean_stages` stages per head.
inline int fused_block_n(double wide_mean_stages, int group) {
  const int forced = fused_block_n_forced();
  if (forced != 0) return forced;
  return wide_mean_stages * group >= kFusedWideMinStages ? kFusedBlockNWide : kDkvBlockN;
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
// it allocates on the stream), walking `wide_keys` (tiles of kFusedBlockNWide keys, with fused_mean_stages
// `wide_mean_stages`) or the plan's kDkvBlockN tiles, as fused_block_n says; true is the atomic-free,
// bitwise-reproducible path. sm90_main_loop (fast mode, head_dim 64 / 128, an sm_90 device: see
// select_backward_kernel) runs the Hopper main loop of ffa_bwd_sm90.cu on the wide tiles instead of the
// mma.sync fused kernel.
cudaError_t launch_backward_mode(const BwdParams& params, const TileLists& wide_keys, double wide_mean_stages,
                                 int head_dim, int dtype, bool deterministic, bool sm90_main_loop,
                                 cudaStream_t stream);

}  // namespace magi_ffa
