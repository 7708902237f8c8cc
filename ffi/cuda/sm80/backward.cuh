// sm80/backward.cuh: host interface of the mma.sync (sm_80+) backward: its two paths (deterministic and
// fused fast mode) and what the plan (magi_ffa.cu), the kernel choice (dispatch.cu) and the self-test's CPU
// replay share about the fused path: its key-tile sizes and how it picks one, its head splits and its
// shared memory. Kernels: backward_dkdv.cu (dK / dV, with the fused dQ), backward_dq.cu (deterministic dQ).
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>

#include "common/params.cuh"

namespace magi_ffa {

// The fast (fused dK/dV/dQ) backward: one CTA per (key tile, kv head), 16 keys per warp, query stages of
// kDkvBlockM rows. The wide tile halves the fp32 dQ atomics and the Q / dO tile loads per FLOP; the narrow
// one is the plan's deterministic dK/dV tile (kDkvBlockN), kept for comparison and for small problems.
constexpr int kFusedBlockNWide = 128;

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

// Key-tile size of the fast backward for a plan whose wide tiles walk `wide_mean_stages` stages per head;
// `forced` (MAGI_FFA_BWD_BLOCK_N: 64 or 128, 0 = unset) wins.
inline int fused_block_n(double wide_mean_stages, int group, int forced) {
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

// Shared memory of the fused kernel (16-bit elements): K, V tiles, two Q / dO stages, the dS^T tile, lse and
// Delta of two stages. dispatch.cu checks it against the device's per-block limit before choosing fast mode.
constexpr size_t fused_smem_bytes(int head_dim, int block_n) {
  return static_cast<size_t>(2 * block_n * head_dim + 4 * kDkvBlockM * head_dim + block_n * kDkvBlockM) * 2 +
         4 * kDkvBlockM * sizeof(float);
}

// Fast-mode workspaces of the fused kernel (all NULL / 1 in deterministic mode).
struct FusedWork {
  float* dq_accum;  // [total_q, hq, D] fp32, zeroed by the delta kernel
  float* dk_accum;  // [total_k, hkv, D] fp32, zeroed, only when head_splits > 1 (unscaled dK)
  float* dv_accum;  // likewise for dV
  int head_splits;  // CTAs per (key tile, kv head), each with group / head_splits query heads
  int block_n;      // keys per tile (host side only: picks the kernel)
};

// The deterministic (atomic-free, bitwise reproducible) backward: Delta, the dK / dV kernel on the plan's
// kDkvBlockN tiles, the dQ kernel.
cudaError_t launch_backward_sm80_deterministic(const BwdParams& params, int head_dim, int dtype,
                                               cudaStream_t stream);

// The fused fast-mode backward on `tiles` of `block_n` keys (kFusedBlockNWide: the plan's wide list, or
// kDkvBlockN: params.plan.dkv), splitting GQA groups over CTAs as fused_head_splits says for `sms` SMs. It
// allocates its fp32 workspaces on the stream, adds dQ (and split dK / dV) with atomics and converts them.
cudaError_t launch_backward_sm80_fused(const BwdParams& params, const TileLists& tiles, int block_n, int sms,
                                       int head_dim, int dtype, cudaStream_t stream);

// The two kernels' launchers (backward_dkdv.cu, backward_dq.cu). fw == nullptr: the deterministic dK / dV
// kernel on params.plan.dkv; else the fused kernel on `key_tiles` of fw->block_n keys.
cudaError_t launch_dkdv_sm80(const BwdParams& params, const TileLists& key_tiles, const FusedWork* fw, int head_dim,
                             int dtype, cudaStream_t stream);
cudaError_t launch_dq_sm80(const BwdParams& params, int head_dim, int dtype, cudaStream_t stream);

}  // namespace magi_ffa
