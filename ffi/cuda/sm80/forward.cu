// sm80/forward.cu: the FFA forward kernel (FA2-style: mma.sync m16n8k16, ldmatrix, cp.async double buffer).
//
// One CTA per (query tile, query head). The CTA walks every slice that touches its rows and every key tile
// those rows can see, keeping one online softmax per row over the union of all of them: rows shared by
// several slices are merged exactly, with no atomics, so the forward is deterministic. Rows that see no
// key end with out = 0 and lse = -inf (tiles without any slice are launched too, so every row is written).
// Key rows past the last key the tile's rows can see are zero-filled instead of loaded: tokens no slice
// covers (padding) may hold anything, even NaN, and 0 * NaN would leak into P.V.
#include "common/device.cuh"
#include "common/params.cuh"
#include "common/shapes.cuh"
#include "common/launch.cuh"
#include "common/walkers.cuh"
#include "magi_ffa.h"
#include "sm80/forward.cuh"

namespace magi_ffa {
namespace {

template <typename T, int D>
struct FwdTraits {
  static constexpr int kBlockM = kFwdBlockM;
  static constexpr int kBlockN = kFwdBlockN;
  static constexpr int kWarps = kFwdWarps;
  static constexpr int kThreads = kWarps * 32;
  static_assert(kBlockM == 16 * kWarps, "one warp per 16 query rows");
  static constexpr int kTileQ = kBlockM * D;  // elements
  static constexpr int kTileKV = kBlockN * D;
  static constexpr size_t kSmemBytes = static_cast<size_t>(kTileQ + 4 * kTileKV) * sizeof(T);
};

template <typename T, int D>
__global__ void __launch_bounds__(FwdTraits<T, D>::kThreads, 1) ffa_forward_kernel(const FwdParams p) {
  using Tr = FwdTraits<T, D>;
  constexpr int BM = Tr::kBlockM;
  constexpr int BN = Tr::kBlockN;
  constexpr int THREADS = Tr::kThreads;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + Tr::kTileQ;      // [2][BN][D]
  T* sV = sK + 2 * Tr::kTileKV;  // [2][BN][D]

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;

  const int work = blockIdx.x;
  const int h = work % p.hq;
  const int tile = p.plan.fwd.order[work / p.hq];
  const int m0 = tile * BM;
  const int hk = h / p.group;
  const int total_q = p.plan.total_q;
  const int64_t q_stride = static_cast<int64_t>(p.hq) * D;
  const int64_t kv_stride = static_cast<int64_t>(p.hkv) * D;
  const T* q = static_cast<const T*>(p.q) + static_cast<int64_t>(h) * D;
  const T* k = static_cast<const T*>(p.k) + static_cast<int64_t>(hk) * D;
  const T* v = static_cast<const T*>(p.v) + static_cast<int64_t>(hk) * D;

  QueryTileWalker<BM, BN> it;
  it.slices = p.plan.slices;
  it.list = p.plan.fwd.slices;
  it.pos = p.plan.fwd.offsets[tile];
  it.end = p.plan.fwd.offsets[tile + 1];
  it.m0 = m0;
  bool valid = it.next_slice();

  load_tile_async<BM, D, THREADS>(sQ, q, q_stride, m0, total_q, tid);
  cp_async_commit();
  if (valid) {
    load_tile_async<BN, D, THREADS>(sK, k, kv_stride, it.n0, it.k_hi, tid);
    load_tile_async<BN, D, THREADS>(sV, v, kv_stride, it.n0, it.k_hi, tid);
    cp_async_commit();
  }
  cp_async_wait<0>();
  __syncthreads();

  uint32_t q_frags[D / 16][4];
  load_a_frags<D>(q_frags, sQ, warp * 16, lane);

  float o_acc[D / 8][4];
  zero_acc(o_acc);
  float row_max[2] = {-INFINITY, -INFINITY};  // running max of the log2-domain scores
  float row_sum[2] = {0.f, 0.f};              // this thread's partial sum of exp2(score - max)
  const int warp_row0 = m0 + warp * 16;
  const int row_of[2] = {warp_row0 + g, warp_row0 + g + 8};
  const bool softcap_on = p.softcap > 0.f;
  const float cap_in = softcap_on ? p.scale / p.softcap : 0.f;  // raw score -> tanh argument
  const float cap_out = p.softcap * kLog2e;                      // tanh -> log2-domain score

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
      zero_acc(s_acc);
      gemm_abt_rega<D, BN, T>(s_acc, q_frags, sKs, 0, lane);

      // Scores to the log2 domain (softcap first, as the scaled logits are capped before masking).
#pragma unroll
      for (int nb = 0; nb < BN / 8; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float x = s_acc[nb][e];
          s_acc[nb][e] = softcap_on ? tanhf(x * cap_in) * cap_out : x * p.scale_log2;
        }
      }
      if (tile_needs_mask(slice, warp_row0, 16, n0, BN)) {
#pragma unroll
        for (int nb = 0; nb < BN / 8; ++nb) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = row_of[e >> 1];
            const int j = n0 + nb * 8 + 2 * t + (e & 1);
            if (!cell_visible(slice, i, j)) s_acc[nb][e] = -INFINITY;
          }
        }
      }

      // Online softmax update, per row (r = 0: row g, r = 1: row g + 8).
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float tile_max = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < BN / 8; ++nb) {
          tile_max = fmaxf(tile_max, fmaxf(s_acc[nb][2 * r], s_acc[nb][2 * r + 1]));
        }
        tile_max = quad_max(tile_max);
        const float new_max = fmaxf(row_max[r], tile_max);
        // A row that has seen nothing yet keeps max -inf; subtracting 0 then keeps every exp2 at 0.
        const float base = new_max == -INFINITY ? 0.f : new_max;
        const float rescale = fast_exp2(row_max[r] - base);
        row_max[r] = new_max;
        float sum = 0.f;
#pragma unroll
        for (int nb = 0; nb < BN / 8; ++nb) {
          const float p0 = fast_exp2(s_acc[nb][2 * r] - base);
          const float p1 = fast_exp2(s_acc[nb][2 * r + 1] - base);
          s_acc[nb][2 * r] = p0;
          s_acc[nb][2 * r + 1] = p1;
          sum += p0 + p1;
        }
        row_sum[r] = row_sum[r] * rescale + sum;
#pragma unroll
        for (int db = 0; db < D / 8; ++db) {
          o_acc[db][2 * r] *= rescale;
          o_acc[db][2 * r + 1] *= rescale;
        }
      }

      uint32_t p_frags[BN / 16][4];
      acc_to_a_frags<BN, T>(p_frags, s_acc);
      gemm_pb<BN, D, T>(o_acc, p_frags, sVs, 0, lane);
    }
    __syncthreads();  // the next iteration's prefetch overwrites this stage

    valid = has_next;
    stage ^= 1;
  }

  // Epilogue: normalize, stage through this warp's rows of sQ (only this warp read them), 16-byte stores.
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(row_sum[r]);
    const bool seen = sum > 0.f;
    inv[r] = seen ? 1.f / sum : 0.f;
    const float lse = seen ? (row_max[r] + __log2f(sum)) * kLn2 : -INFINITY;
    if (t == 0 && row_of[r] < total_q) p.lse[static_cast<int64_t>(row_of[r]) * p.hq + h] = lse;
  }
  __syncwarp();  // this warp's ldmatrix reads of its sQ rows are done before they are overwritten
  store_acc_to_smem<D, T>(sQ, warp * 16, o_acc, inv[0], inv[1], lane);
  __syncthreads();
  store_tile<BM, D, THREADS>(static_cast<T*>(p.out) + static_cast<int64_t>(h) * D, q_stride, m0, total_q,
                             sQ, tid);
}

template <typename T, int D>
cudaError_t launch_forward_typed(const FwdParams& params, cudaStream_t stream) {
  using Tr = FwdTraits<T, D>;
  const int64_t blocks = static_cast<int64_t>(params.plan.fwd.num_tiles) * params.hq;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  cudaError_t err = ensure_dynamic_smem<ffa_forward_kernel<T, D>>(Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  ffa_forward_kernel<T, D><<<static_cast<unsigned>(blocks), Tr::kThreads, Tr::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_forward_sm80(const FwdParams& params, int head_dim, int dtype, cudaStream_t stream) {
  return with_shape(head_dim, dtype, [&](auto shape) {
    using S = decltype(shape);
    return launch_forward_typed<typename S::Elem, S::kHeadDim>(params, stream);
  });
}

}  // namespace magi_ffa
