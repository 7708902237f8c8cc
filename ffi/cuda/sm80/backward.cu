// sm80/backward.cu: the mma.sync backward (FA2-style, like the forward): its two paths, as launches of the
// kernels in backward_dkdv.cu and backward_dq.cu and of the shared pre / postprocess (common/backward_prepost.cu).
//
// Two modes.
// Deterministic (deterministic = 1): three launches, no atomics, bitwise reproducible:
//   1. delta:  Delta[i, h] = sum_d dO[i, h, d] * O[i, h, d] (fp32).
//   2. dK/dV:  one CTA per (key tile, kv head). It walks every slice touching its keys, every query head of
//              the GQA group and every query tile that can see the keys; recomputes S^T = K Q^T and
//              P^T = exp(S^T - lse), accumulates dV += P^T dO and dK += dS^T Q in fp32 registers, and writes
//              dK, dV once. Keys that no slice shows are written as 0.
//   3. dQ:     one CTA per (query tile, query head), walking slices and key tiles like the forward;
//              dQ += dS K in registers, written once. Rows that see nothing are written as 0.
// Fast (deterministic = 0, the default): the dQ kernel's recomputation of S, P and dP (3 of 7 GEMMs) goes
// away. The delta launch also zeroes an fp32 dQ accumulator [total_q, hq, D]; the dK/dV kernel stages dS^T
// of each query step in shared memory and adds dS K to the accumulator with fp32 atomics (5 GEMMs per
// tile pair); a last launch writes dq = accumulator * scale in the output dtype (rows that no slice covers
// stay 0). Key tiles of 128 keys (8 warps; the plan's second key-tile list) or 64 (the dK/dV list), chosen
// per plan by fused_block_n (sm80/backward.cuh). When the grid is small the query heads of a GQA group are
// split over CTAs, which then add dK / dV into fp32 workspaces too (converted the same way). Atomic order
// varies between runs, so dq (and split dk / dv) may differ in the last bits; out, lse and unsplit dk / dv
// do not.
// On sm_90 devices the fast mode's main loop is the Hopper kernel of sm90/backward.cu instead (wgmma, TMA,
// dQ added by TMA reduce-adds), with the same delta and conversion launches; dispatch.cu chooses.
// With softcap c > 0 the logit is s = c * tanh(scale * x / c), so ds/dx = scale * (1 - (s / c)^2).
#include <cuda_runtime.h>

#include "common/backward_prepost.cuh"
#include "common/params.cuh"
#include "sm80/backward.cuh"

namespace magi_ffa {
namespace {

// Delta (zeroing dQ), the fused dK / dV / dQ kernel, then dq (and split dk / dv) from the fp32 workspaces.
cudaError_t run_fused(const BwdParams& params, const TileLists& tiles, const FusedWork& fw, int head_dim, int dtype,
                      cudaStream_t stream) {
  cudaError_t err = launch_backward_delta(params, fw.dq_accum, head_dim, dtype, stream);
  if (err != cudaSuccess) return err;
  err = launch_dkdv_sm80(params, tiles, &fw, head_dim, dtype, stream);
  if (err != cudaSuccess) return err;
  const int64_t q_elements = static_cast<int64_t>(params.plan.total_q) * params.hq * head_dim;
  err = launch_accum_convert(fw.dq_accum, params.dq, params.scale, q_elements, dtype, stream);
  if (err != cudaSuccess || fw.head_splits == 1) return err;
  const int64_t kv_elements = static_cast<int64_t>(params.plan.total_k) * params.hkv * head_dim;
  err = launch_accum_convert(fw.dk_accum, params.dk, params.scale, kv_elements, dtype, stream);
  if (err != cudaSuccess) return err;
  return launch_accum_convert(fw.dv_accum, params.dv, 1.f, kv_elements, dtype, stream);
}

}  // namespace

cudaError_t launch_backward_sm80_deterministic(const BwdParams& params, int head_dim, int dtype,
                                               cudaStream_t stream) {
  cudaError_t err = launch_backward_delta(params, nullptr, head_dim, dtype, stream);
  if (err != cudaSuccess) return err;
  err = launch_dkdv_sm80(params, params.plan.dkv, nullptr, head_dim, dtype, stream);
  if (err != cudaSuccess) return err;
  return launch_dq_sm80(params, head_dim, dtype, stream);
}

cudaError_t launch_backward_sm80_fused(const BwdParams& params, const TileLists& tiles, int block_n, int sms,
                                       int head_dim, int dtype, cudaStream_t stream) {
  FusedWork fw;
  fw.block_n = block_n;
  fw.head_splits = fused_head_splits(tiles.num_tiles, params.hkv, params.group, sms);
  // One workspace: dQ [total_q, hq, D] fp32, then dK and dV [total_k, hkv, D] fp32 when heads are split.
  const size_t q_elements = static_cast<size_t>(params.plan.total_q) * static_cast<size_t>(params.hq) *
                            static_cast<size_t>(head_dim);
  const size_t kv_elements = fw.head_splits > 1 ? static_cast<size_t>(params.plan.total_k) *
                                                      static_cast<size_t>(params.hkv) * static_cast<size_t>(head_dim)
                                                : 0;
  float* workspace = nullptr;
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&workspace),
                                    (q_elements + 2 * kv_elements) * sizeof(float), stream);
  if (err != cudaSuccess) return err;
  fw.dq_accum = workspace;
  fw.dk_accum = kv_elements > 0 ? workspace + q_elements : nullptr;
  fw.dv_accum = kv_elements > 0 ? workspace + q_elements + kv_elements : nullptr;
  if (kv_elements > 0) err = cudaMemsetAsync(fw.dk_accum, 0, 2 * kv_elements * sizeof(float), stream);
  if (err == cudaSuccess) err = run_fused(params, tiles, fw, head_dim, dtype, stream);
  const cudaError_t free_err = cudaFreeAsync(workspace, stream);
  return err != cudaSuccess ? err : free_err;
}

}  // namespace magi_ffa
