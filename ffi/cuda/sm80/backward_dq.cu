// sm80/backward_dq.cu: the deterministic mode's mma.sync dQ kernel (sm80/backward.cu has the overview).
//
// One CTA per (query tile of kDqBlockM rows, query head), warp w owning rows [16 w, 16 w + 16); it walks
// slices and key tiles like the forward (QueryTileWalker), recomputes S = Q K^T, P and dP = dO V^T, and
// accumulates dQ += dS K in registers, written once (scaled). Rows that see nothing are written as 0.
#include "common/device.cuh"
#include "common/launch.cuh"
#include "common/params.cuh"
#include "common/shapes.cuh"
#include "common/walkers.cuh"
#include "magi_ffa.h"
#include "sm80/backward.cuh"
#include "sm80/backward_pointwise.cuh"

namespace magi_ffa {
namespace {

// The dQ kernel.
template <typename T, int D>
struct DqTraits {
  static constexpr int kBlockM = kDqBlockM;
  static constexpr int kBlockN = kDqBlockN;
  static constexpr int kWarps = kDqWarps;
  static constexpr int kThreads = kWarps * 32;
  static_assert(kBlockM == 16 * kWarps, "one warp per 16 query rows");
  static constexpr int kTileQ = kBlockM * D;
  static constexpr int kTileKV = kBlockN * D;
  static constexpr size_t kSmemBytes = static_cast<size_t>(2 * kTileQ + 4 * kTileKV) * sizeof(T);
};

template <typename T, int D>
__global__ void __launch_bounds__(DqTraits<T, D>::kThreads, 1) ffa_bwd_dq_kernel(const BwdParams p) {
  using Tr = DqTraits<T, D>;
  constexpr int BM = Tr::kBlockM;
  constexpr int BN = Tr::kBlockN;
  constexpr int THREADS = Tr::kThreads;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + Tr::kTileQ;
  T* sK = sdO + Tr::kTileQ;      // [2][BN][D]
  T* sV = sK + 2 * Tr::kTileKV;  // [2][BN][D]

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;

  const int work = blockIdx.x;
  const int h = work % p.hq;
  const int tile = p.plan.dq.order[work / p.hq];
  const int m0 = tile * BM;
  const int hk = h / p.group;
  const int total_q = p.plan.total_q;
  const int64_t q_stride = static_cast<int64_t>(p.hq) * D;
  const int64_t kv_stride = static_cast<int64_t>(p.hkv) * D;
  const T* k = static_cast<const T*>(p.k) + static_cast<int64_t>(hk) * D;
  const T* v = static_cast<const T*>(p.v) + static_cast<int64_t>(hk) * D;

  QueryTileWalker<BM, BN> it;
  it.slices = p.plan.slices;
  it.list = p.plan.dq.slices;
  it.pos = p.plan.dq.offsets[tile];
  it.end = p.plan.dq.offsets[tile + 1];
  it.m0 = m0;
  bool valid = it.next_slice();

  load_tile_async<BM, D, THREADS>(sQ, static_cast<const T*>(p.q) + static_cast<int64_t>(h) * D, q_stride, m0,
                                  total_q, tid);
  load_tile_async<BM, D, THREADS>(sdO, static_cast<const T*>(p.dout) + static_cast<int64_t>(h) * D, q_stride,
                                  m0, total_q, tid);
  cp_async_commit();
  if (valid) {
    load_tile_async<BN, D, THREADS>(sK, k, kv_stride, it.n0, it.k_hi, tid);
    load_tile_async<BN, D, THREADS>(sV, v, kv_stride, it.n0, it.k_hi, tid);
    cp_async_commit();
  }

  const int warp_row0 = m0 + warp * 16;
  const int row_of[2] = {warp_row0 + g, warp_row0 + g + 8};
  float lse2_of[2];
  float delta_of[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool ok = row_of[r] < total_q;
    const int64_t idx = static_cast<int64_t>(row_of[r]) * p.hq + h;
    lse2_of[r] = ok ? lse_to_log2(p.lse[idx]) : INFINITY;
    delta_of[r] = ok ? p.delta[idx] : 0.f;
  }

  float dq_acc[D / 8][4];
  zero_acc(dq_acc);
  const BwdPointwise pointwise = make_pointwise(p);

  int stage = 0;
  while (valid) {
    // Only what the compute needs of the current step is kept; the walker moves on to the next one.
    const Slice slice = it.slice;
    const int n0 = it.n0;
    const bool has_next = it.advance();
    if (has_next) {
      load_tile_async<BN, D, THREADS>(sK + (stage ^ 1) * Tr::kTileKV, k, kv_stride, it.n0, it.k_hi, tid);
      load_tile_async<BN, D, THREADS>(sV + (stage ^ 1) * Tr::kTileKV, v, kv_stride, it.n0, it.k_hi, tid);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    const T* sKs = sK + stage * Tr::kTileKV;
    const T* sVs = sV + stage * Tr::kTileKV;
    if (warp_rows_see_keys(slice, warp_row0, n0, BN)) {
      float s_acc[BN / 8][4];
      float dp_acc[BN / 8][4];
      zero_acc(s_acc);
      zero_acc(dp_acc);
      gemm_abt_smema<D, BN, T>(s_acc, sQ, warp * 16, sKs, 0, lane);
      gemm_abt_smema<D, BN, T>(dp_acc, sdO, warp * 16, sVs, 0, lane);

      const bool masked = tile_needs_mask(slice, warp_row0, 16, n0, BN);
#pragma unroll
      for (int nb = 0; nb < BN / 8; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1;
          const int j = n0 + nb * 8 + 2 * t + (e & 1);
          const bool visible = !masked || cell_visible(slice, row_of[r], j);
          float prob, ds;
          pointwise(s_acc[nb][e], dp_acc[nb][e], lse2_of[r], delta_of[r], visible, &prob, &ds);
          dp_acc[nb][e] = ds;
        }
      }
      uint32_t ds_frags[BN / 16][4];
      acc_to_a_frags<BN, T>(ds_frags, dp_acc);
      gemm_pb<BN, D, T>(dq_acc, ds_frags, sKs, 0, lane);
    }
    __syncthreads();

    valid = has_next;
    stage ^= 1;
  }
  cp_async_wait<0>();  // the Q / dO group when the walk was empty
  __syncthreads();

  store_acc_to_smem<D, T>(sQ, warp * 16, dq_acc, p.scale, p.scale, lane);
  __syncthreads();
  store_tile<BM, D, THREADS>(static_cast<T*>(p.dq) + static_cast<int64_t>(h) * D, q_stride, m0, total_q, sQ, tid);
}

}  // namespace

cudaError_t launch_dq_sm80(const BwdParams& params, int head_dim, int dtype, cudaStream_t stream) {
  return with_shape(head_dim, dtype, [&](auto shape) {
    using T = typename decltype(shape)::Elem;
    constexpr int D = decltype(shape)::kHeadDim;
    using Tr = DqTraits<T, D>;
    const int64_t blocks = static_cast<int64_t>(params.plan.dq.num_tiles) * params.hq;
    if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
    if (blocks == 0) return cudaSuccess;
    cudaError_t err = ensure_dynamic_smem<ffa_bwd_dq_kernel<T, D>>(Tr::kSmemBytes);
    if (err != cudaSuccess) return err;
    ffa_bwd_dq_kernel<T, D><<<static_cast<unsigned>(blocks), Tr::kThreads, Tr::kSmemBytes, stream>>>(params);
    return cudaGetLastError();
  });
}

}  // namespace magi_ffa
