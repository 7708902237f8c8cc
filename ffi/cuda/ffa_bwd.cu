// ffa_bwd.cu: the FFA backward kernels (FA2-style mma.sync, like the forward).
//
// Three launches, no atomics anywhere, so the backward is deterministic by construction (the
// `deterministic` flag costs nothing):
//   1. delta:  Delta[i, h] = sum_d dO[i, h, d] * O[i, h, d] (fp32).
//   2. dK/dV:  one CTA per (key tile, kv head). It walks every slice touching its keys, every query head of
//              the GQA group and every query tile that can see the keys; recomputes S^T = K Q^T and
//              P^T = exp(S^T - lse), accumulates dV += P^T dO and dK += dS^T Q in fp32 registers, and writes
//              dK, dV once. Keys that no slice shows are written as 0.
//   3. dQ:     one CTA per (query tile, query head), walking slices and key tiles like the forward;
//              dQ += dS K in registers, written once. Rows that see nothing are written as 0.
// With softcap c > 0 the logit is s = c * tanh(scale * x / c), so ds/dx = scale * (1 - (s / c)^2).
#include "ffa_common.cuh"
#include "ffa_internal.cuh"
#include "ffa_launch.cuh"
#include "ffa_walkers.cuh"
#include "magi_ffa.h"

namespace magi_ffa {
namespace {

// ---------------------------------------------------------------------------------------------------
// 1. Delta = rowsum(dO * O), one group of D/8 lanes per (row, head), 16-byte loads.
template <typename T, int D>
__global__ void __launch_bounds__(256) ffa_bwd_delta_kernel(const T* __restrict__ dout, const T* __restrict__ out,
                                                            float* __restrict__ delta, int64_t num_items) {
  constexpr int kLanesPerItem = D / 8;
  constexpr int kItemsPerBlock = 256 / kLanesPerItem;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kItemsPerBlock + threadIdx.x / kLanesPerItem;
  const int sub = threadIdx.x % kLanesPerItem;
  float acc = 0.f;
  if (item < num_items) {
    const uint4 a = *reinterpret_cast<const uint4*>(dout + item * D + sub * 8);
    const uint4 b = *reinterpret_cast<const uint4*>(out + item * D + sub * 8);
    const uint32_t av[4] = {a.x, a.y, a.z, a.w};
    const uint32_t bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 fa = Elem<T>::unpack(av[i]);
      const float2 fb = Elem<T>::unpack(bv[i]);
      acc = fmaf(fa.x, fb.x, acc);
      acc = fmaf(fa.y, fb.y, acc);
    }
  }
#pragma unroll
  for (int offset = kLanesPerItem / 2; offset > 0; offset >>= 1) {
    acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  }
  if (sub == 0 && item < num_items) delta[item] = acc;
}

// ---------------------------------------------------------------------------------------------------
// Shared element-wise step: from the raw score x (q.k) and dP, the probability P and dS (without the
// final softmax scale, applied once to dQ / dK at the end). lse2 is lse * log2(e), +inf for rows that
// see nothing (so P = 0 there); invisible cells give P = dS = 0.
struct BwdPointwise {
  bool softcap_on;
  float cap_in;    // scale / softcap
  float cap_out;   // softcap * log2(e)
  float scale_log2;

  __device__ __forceinline__ void operator()(float x, float dp, float lse2, float delta, bool visible,
                                             float* p_out, float* ds_out) const {
    float s2;
    float dtanh = 1.f;
    if (softcap_on) {
      const float th = tanhf(x * cap_in);
      s2 = th * cap_out;
      dtanh = 1.f - th * th;
    } else {
      s2 = x * scale_log2;
    }
    const float prob = visible ? fast_exp2(s2 - lse2) : 0.f;
    *p_out = prob;
    // A select, not a product: dp of an invisible cell may be NaN (uncovered padding rows).
    *ds_out = visible ? prob * (dp - delta) * dtanh : 0.f;
  }
};

__device__ __forceinline__ float lse_to_log2(float lse) { return lse == -INFINITY ? INFINITY : lse * kLog2e; }

__device__ __forceinline__ BwdPointwise make_pointwise(const BwdParams& p) {
  BwdPointwise f;
  f.softcap_on = p.softcap > 0.f;
  f.cap_in = f.softcap_on ? p.scale / p.softcap : 0.f;
  f.cap_out = p.softcap * kLog2e;
  f.scale_log2 = p.scale_log2;
  return f;
}

// ---------------------------------------------------------------------------------------------------
// 2. dK / dV.
template <typename T, int D>
struct DkvTraits {
  static constexpr int kBlockN = kDkvBlockN;  // keys per CTA, 16 per warp
  static constexpr int kBlockM = kDkvBlockM;  // query rows per inner iteration (one pipeline stage)
  static constexpr int kSubM = dkv_sub_m(D);  // rows per compute step within a stage
  static_assert(kBlockM % kSubM == 0 && kSubM % 16 == 0, "sub-blocks of whole k16 steps");
  static constexpr int kWarps = kDkvWarps;
  static constexpr int kThreads = kWarps * 32;
  static_assert(kBlockN == 16 * kWarps, "one warp per 16 keys");
  static_assert(2 * kBlockM <= kThreads, "lse and Delta are loaded by one thread per row each");
  static constexpr int kTileKV = kBlockN * D;
  static constexpr int kTileQ = kBlockM * D;
  static constexpr size_t kSmemBytes =
      static_cast<size_t>(2 * kTileKV + 4 * kTileQ) * sizeof(T) + 4 * kBlockM * sizeof(float);
};

template <typename T, int D>
__global__ void __launch_bounds__(DkvTraits<T, D>::kThreads, 1) ffa_bwd_dkdv_kernel(const BwdParams p) {
  using Tr = DkvTraits<T, D>;
  constexpr int BN = Tr::kBlockN;
  constexpr int BM = Tr::kBlockM;
  constexpr int SUB = Tr::kSubM;
  constexpr int THREADS = Tr::kThreads;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + Tr::kTileKV;
  T* sQ = sV + Tr::kTileKV;       // [2][BM][D]
  T* sdO = sQ + 2 * Tr::kTileQ;   // [2][BM][D]
  float* sLse = reinterpret_cast<float*>(sdO + 2 * Tr::kTileQ);  // [2][BM], raw lse
  float* sDelta = sLse + 2 * BM;                                  // [2][BM]

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;

  const int work = blockIdx.x;
  const int hk = work % p.hkv;
  const int tile = p.plan.dkv.order[work / p.hkv];
  const int n0 = tile * BN;
  const int total_k = p.plan.total_k;
  const int64_t q_stride = static_cast<int64_t>(p.hq) * D;
  const int64_t kv_stride = static_cast<int64_t>(p.hkv) * D;
  const T* q_base = static_cast<const T*>(p.q);
  const T* do_base = static_cast<const T*>(p.dout);

  KeyTileWalker<BN, BM> it;
  it.slices = p.plan.slices;
  it.list = p.plan.dkv.slices;
  it.pos = p.plan.dkv.offsets[tile];
  it.end = p.plan.dkv.offsets[tile + 1];
  it.n0 = n0;
  it.group = p.group;
  bool valid = it.next_slice();

  // Loads the query-side operands of one walker step into a stage.
  auto load_stage = [&](int st, const KeyTileWalker<BN, BM>& w) {
    const int h = hk * p.group + w.head_in_group;
    // Rows past the last one that can see the key tile (w.q_hi <= total_q) are zero-filled, not loaded:
    // they may be uncovered padding holding NaN, and 0 * NaN would leak into dV / dK.
    load_tile_async<BM, D, THREADS>(sQ + st * Tr::kTileQ, q_base + static_cast<int64_t>(h) * D, q_stride, w.m0,
                                    w.q_hi, tid);
    load_tile_async<BM, D, THREADS>(sdO + st * Tr::kTileQ, do_base + static_cast<int64_t>(h) * D, q_stride,
                                    w.m0, w.q_hi, tid);
    if (tid < 2 * BM) {
      const int row_in_tile = tid % BM;
      const int row = w.m0 + row_in_tile;
      const bool ok = row < w.q_hi;
      const int64_t idx = static_cast<int64_t>(ok ? row : 0) * p.hq + h;
      if (tid < BM) {
        cp_async4(sLse + st * BM + row_in_tile, p.lse + idx, ok);
      } else {
        cp_async4(sDelta + st * BM + row_in_tile, p.delta + idx, ok);
      }
    }
  };

  load_tile_async<BN, D, THREADS>(sK, static_cast<const T*>(p.k) + static_cast<int64_t>(hk) * D, kv_stride, n0,
                                  total_k, tid);
  load_tile_async<BN, D, THREADS>(sV, static_cast<const T*>(p.v) + static_cast<int64_t>(hk) * D, kv_stride, n0,
                                  total_k, tid);
  cp_async_commit();
  if (valid) {
    load_stage(0, it);
    cp_async_commit();
  }

  float dk_acc[D / 8][4];
  float dv_acc[D / 8][4];
  zero_acc(dk_acc);
  zero_acc(dv_acc);
  const BwdPointwise pointwise = make_pointwise(p);
  const int warp_key0 = n0 + warp * 16;
  const int key_of[2] = {warp_key0 + g, warp_key0 + g + 8};

  int stage = 0;
  while (valid) {
    // Only what the compute needs of the current step is kept; the walker moves on to the next one.
    const Slice slice = it.slice;
    const int step_m0 = it.m0;
    const bool has_next = it.advance();
    if (has_next) {
      load_stage(stage ^ 1, it);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    const T* sQs = sQ + stage * Tr::kTileQ;
    const T* sdOs = sdO + stage * Tr::kTileQ;
    const float* sLses = sLse + stage * BM;
    const float* sDeltas = sDelta + stage * BM;
    // The stage's BM query rows are processed in sub-blocks of SUB rows (fewer live registers at D=128).
#pragma unroll 1
    for (int sub0 = 0; sub0 < BM; sub0 += SUB) {
      const int m0 = step_m0 + sub0;
      if (!warp_keys_seen_by_rows(slice, warp_key0, m0, SUB)) continue;
      // S^T (this warp's 16 keys x SUB queries) and dP^T = V dO^T.
      float st_acc[SUB / 8][4];
      float dpt_acc[SUB / 8][4];
      zero_acc(st_acc);
      zero_acc(dpt_acc);
      gemm_abt_smema<D, SUB, T>(st_acc, sK, warp * 16, sQs, sub0, lane);
      gemm_abt_smema<D, SUB, T>(dpt_acc, sV, warp * 16, sdOs, sub0, lane);

      const bool masked = tile_needs_mask(slice, m0, SUB, warp_key0, 16);
#pragma unroll
      for (int nb = 0; nb < SUB / 8; ++nb) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int col = nb * 8 + 2 * t + c;  // query row within the sub-block
          const float lse2 = lse_to_log2(sLses[sub0 + col]);
          const float delta = sDeltas[sub0 + col];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int e = 2 * r + c;
            const bool visible = !masked || cell_visible(slice, m0 + col, key_of[r]);
            float prob, ds;
            pointwise(st_acc[nb][e], dpt_acc[nb][e], lse2, delta, visible, &prob, &ds);
            st_acc[nb][e] = prob;
            dpt_acc[nb][e] = ds;
          }
        }
      }

      uint32_t pt_frags[SUB / 16][4];
      acc_to_a_frags<SUB, T>(pt_frags, st_acc);
      gemm_pb<SUB, D, T>(dv_acc, pt_frags, sdOs, sub0, lane);
      uint32_t dst_frags[SUB / 16][4];
      acc_to_a_frags<SUB, T>(dst_frags, dpt_acc);
      gemm_pb<SUB, D, T>(dk_acc, dst_frags, sQs, sub0, lane);
    }
    __syncthreads();

    valid = has_next;
    stage ^= 1;
  }
  cp_async_wait<0>();  // the K/V group when the walk was empty
  __syncthreads();

  // Epilogue: each warp stages its own 16 rows of dK / dV through sK / sV (only it read them).
  store_acc_to_smem<D, T>(sK, warp * 16, dk_acc, p.scale, p.scale, lane);
  store_acc_to_smem<D, T>(sV, warp * 16, dv_acc, 1.f, 1.f, lane);
  __syncthreads();
  store_tile<BN, D, THREADS>(static_cast<T*>(p.dk) + static_cast<int64_t>(hk) * D, kv_stride, n0, total_k, sK,
                             tid);
  store_tile<BN, D, THREADS>(static_cast<T*>(p.dv) + static_cast<int64_t>(hk) * D, kv_stride, n0, total_k, sV,
                             tid);
}

// ---------------------------------------------------------------------------------------------------
// 3. dQ.
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

// ---------------------------------------------------------------------------------------------------
template <typename T, int D>
cudaError_t launch_backward_typed(const BwdParams& params, cudaStream_t stream) {
  const int64_t items = static_cast<int64_t>(params.plan.total_q) * params.hq;
  if (items > 0) {
    constexpr int kItemsPerBlock = 256 / (D / 8);
    const int64_t blocks = (items + kItemsPerBlock - 1) / kItemsPerBlock;
    if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
    ffa_bwd_delta_kernel<T, D><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        static_cast<const T*>(params.dout), static_cast<const T*>(params.out), params.delta, items);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }

  {
    using Tr = DkvTraits<T, D>;
    const int64_t blocks = static_cast<int64_t>(params.plan.dkv.num_tiles) * params.hkv;
    if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
    if (blocks > 0) {
      cudaError_t err = ensure_dynamic_smem<ffa_bwd_dkdv_kernel<T, D>>(Tr::kSmemBytes);
      if (err != cudaSuccess) return err;
      ffa_bwd_dkdv_kernel<T, D><<<static_cast<unsigned>(blocks), Tr::kThreads, Tr::kSmemBytes, stream>>>(params);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
  }
  {
    using Tr = DqTraits<T, D>;
    const int64_t blocks = static_cast<int64_t>(params.plan.dq.num_tiles) * params.hq;
    if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
    if (blocks > 0) {
      cudaError_t err = ensure_dynamic_smem<ffa_bwd_dq_kernel<T, D>>(Tr::kSmemBytes);
      if (err != cudaSuccess) return err;
      ffa_bwd_dq_kernel<T, D><<<static_cast<unsigned>(blocks), Tr::kThreads, Tr::kSmemBytes, stream>>>(params);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t launch_backward(const BwdParams& params, int head_dim, int dtype, cudaStream_t stream) {
  if (dtype == MAGI_FFA_DTYPE_BFLOAT16) {
    if (head_dim == 64) return launch_backward_typed<__nv_bfloat16, 64>(params, stream);
    if (head_dim == 128) return launch_backward_typed<__nv_bfloat16, 128>(params, stream);
  } else if (dtype == MAGI_FFA_DTYPE_FLOAT16) {
    if (head_dim == 64) return launch_backward_typed<__half, 64>(params, stream);
    if (head_dim == 128) return launch_backward_typed<__half, 128>(params, stream);
  }
  return cudaErrorInvalidValue;
}

bool head_dim_supported(int head_dim) { return head_dim == 64 || head_dim == 128; }

}  // namespace magi_ffa
