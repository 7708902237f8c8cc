// sm80/backward_dkdv.cu: the mma.sync dK / dV kernel, and in fast mode the fused dQ (sm80/backward.cu has the
// overview of both modes).
//
// One CTA per (key tile, kv head[, head split]); warp w owns keys [16 w, 16 w + 16) of the tile. The CTA walks
// every slice touching its keys, every query head of its part of the GQA group and every query tile of
// kDkvBlockM rows that can see the keys (KeyTileWalker), double-buffering Q / dO / lse / Delta stages with
// cp.async. Per stage, in sub-blocks of dkv_sub_m(D) rows: S^T = K Q^T and dP^T = V dO^T, P^T and dS^T
// (BwdPointwise), dV += P^T dO, dK += dS^T Q, all in fp32 registers. Fast mode (kFusedDq) also stages dS^T
// in shared memory and adds dQ = dS K to the fp32 accumulator with atomics (warps split rows x columns).
// dK (scaled) and dV are written once at the end, or added into fp32 workspaces when the group is split.
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

// dK / dV (and, in fast mode, dQ through atomics). BN keys per CTA: kDkvBlockN (the plan's dkv lists) or
// kFusedBlockNWide (the wide lists, fast mode only).
template <typename T, int D, int BN, bool kFusedDq>
struct DkvTraits {
  static constexpr int kBlockN = BN;          // keys per CTA, 16 per warp
  static constexpr int kBlockM = kDkvBlockM;  // query rows per inner iteration (one pipeline stage)
  static constexpr int kSubM = dkv_sub_m(D);  // rows per compute step within a stage
  static_assert(kBlockM % kSubM == 0 && kSubM % 16 == 0, "sub-blocks of whole k16 steps");
  static constexpr int kWarps = BN / 16;
  static constexpr int kThreads = kWarps * 32;
  static_assert(kBlockN == 16 * kWarps, "one warp per 16 keys");
  static_assert(2 * kBlockM <= kThreads, "lse and Delta are loaded by one thread per row each");
  // Fused dQ: the stage's rows in bands of 16 (one per warp), the columns split among kDqColGroups warps.
  static constexpr int kDqBands = kBlockM / 16;
  static_assert(kWarps % kDqBands == 0, "fused dQ: whole row bands per warp group");
  static constexpr int kDqColGroups = kWarps / kDqBands;
  static_assert(D % (16 * kDqColGroups) == 0, "fused dQ: whole n16 column blocks per warp");
  static_assert(kBlockN % 64 == 0, "the seen-key mask is whole 64-bit words");
  static constexpr int kTileKV = kBlockN * D;
  static constexpr int kTileQ = kBlockM * D;
  // dS^T of one stage, [kBlockN keys][kBlockM rows] swizzled (fast mode only).
  static constexpr int kTileDs = kFusedDq ? kBlockN * kBlockM : 0;
  static constexpr size_t kSmemBytes =
      static_cast<size_t>(2 * kTileKV + 4 * kTileQ + kTileDs) * sizeof(T) + 4 * kBlockM * sizeof(float);
  static_assert(!kFusedDq || kSmemBytes == fused_smem_bytes(D, BN), "fused_smem_bytes must match the layout");
};

// Fused dQ: columns accumulated per pass (bounds the live fp32 registers next to dK and dV at D = 128).
constexpr int fused_dq_cols(int group_cols) { return group_cols > 64 ? 64 : group_cols; }

// Keys of [n0, n0 + 64 * WORDS) that some slice of the tile's list shows (bit r % 64 of word r / 64 = key
// n0 + r). Every key of a non-empty slice's range is seen by some row of it, and the list holds only slices
// with visible cells in the tile, so this is the union of the listed key ranges.
template <int WORDS>
__device__ __forceinline__ void seen_keys_of_tile(uint64_t (&mask)[WORDS], const Slice* slices,
                                                  const int32_t* list, int pos, int end, int n0) {
#pragma unroll
  for (int w = 0; w < WORDS; ++w) mask[w] = 0;
  for (; pos < end; ++pos) {
    const Slice s = slices[list[pos]];
    if (slice_is_empty(s)) continue;
#pragma unroll
    for (int w = 0; w < WORDS; ++w) {
      const int base = n0 + 64 * w;
      const int c0 = imax(base, s.ks) - base;
      const int c1 = imin(base + 64, s.ke) - base;
      if (c0 >= c1) continue;
      const uint64_t below_c1 = c1 >= 64 ? ~uint64_t{0} : ((uint64_t{1} << c1) - 1);
      const uint64_t below_c0 = (uint64_t{1} << c0) - 1;
      mask[w] |= below_c1 & ~below_c0;
    }
  }
}

// load_tile_async for a key tile where only rows whose bit is set in `seen` are read; the others are
// zero-filled (keys nobody sees may hold NaN padding, and the fused dQ product sums over all the tile's keys:
// 0 * NaN would leak).
template <int ROWS, int D, int THREADS, typename T>
__device__ __forceinline__ void load_key_tile_async(T* smem, const T* base, int64_t stride, int row0, int limit,
                                                    const uint64_t (&seen)[ROWS / 64], int tid) {
  constexpr int kChunksPerRow = D / 8;
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % THREADS == 0, "tile chunks must divide evenly among threads");
#pragma unroll
  for (int it = 0; it < kChunks / THREADS; ++it) {
    const int idx = it * THREADS + tid;
    const int row = idx / kChunksPerRow;
    const int chunk = idx % kChunksPerRow;
    const int grow = row0 + row;
    // The word by compile-time indices only (a run-time index would put the array in local memory).
    uint64_t word = seen[0];
#pragma unroll
    for (int w = 1; w < ROWS / 64; ++w) word = row >= 64 * w ? seen[w] : word;
    const bool valid = grow < limit && ((word >> (row & 63)) & 1u) != 0;
    const T* src = valid ? base + static_cast<int64_t>(grow) * stride + chunk * 8 : base;
    cp_async16(smem + swizzle<D>(row, chunk), src, valid);
  }
}

// acc[16 x NCOLS] += A[16 x KN] * B[KN x (col_chunk0*8 ...)], the NCOLS columns from chunk col_chunk0 of a
// swizzled row-major [*][ND] tile (gemm_pb restricted to a column window).
template <int KN, int ND, int NCOLS, typename T>
__device__ __forceinline__ void gemm_pb_cols(float (&acc)[NCOLS / 8][4], const uint32_t (&a)[KN / 16][4],
                                             const T* sB, int col_chunk0, int lane) {
#pragma unroll
  for (int kc = 0; kc < KN / 16; ++kc) {
#pragma unroll
    for (int db = 0; db < NCOLS / 16; ++db) {
      uint32_t b[4];
      const int row = kc * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
      const int chunk = col_chunk0 + db * 2 + (lane >> 4);
      ldsm_x4_trans(b, sB + swizzle<ND>(row, chunk));
      Elem<T>::mma(acc[2 * db], a[kc], b[0], b[1]);
      Elem<T>::mma(acc[2 * db + 1], a[kc], b[2], b[3]);
    }
  }
}

// Two fp32 atomic adds: one vector reduction (no return value) on sm_90, two scalar ones before.
__device__ __forceinline__ void atomic_add2(float* at, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(at), "f"(x), "f"(y) : "memory");
#else
  atomicAdd(at, x);
  atomicAdd(at + 1, y);
#endif
}

// key_tiles: the plan's tile list of BN-key tiles (p.plan.dkv for BN = kDkvBlockN).
template <typename T, int D, int BN, bool kFusedDq>
__global__ void __launch_bounds__(DkvTraits<T, D, BN, kFusedDq>::kThreads, 1)
    ffa_bwd_dkdv_kernel(const BwdParams p, const TileLists key_tiles, const FusedWork fw) {
  using Tr = DkvTraits<T, D, BN, kFusedDq>;
  // The 64-key tiles are the plan's own dK/dV list (read where v1 read it: fewer live values).
  const TileLists& tiles = BN == kDkvBlockN ? p.plan.dkv : key_tiles;
  constexpr int BM = Tr::kBlockM;
  constexpr int SUB = Tr::kSubM;
  constexpr int THREADS = Tr::kThreads;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + Tr::kTileKV;
  T* sQ = sV + Tr::kTileKV;       // [2][BM][D]
  T* sdO = sQ + 2 * Tr::kTileQ;   // [2][BM][D]
  T* sdS = sdO + 2 * Tr::kTileQ;  // [BN][BM], fast mode only
  float* sLse = reinterpret_cast<float*>(sdS + Tr::kTileDs);  // [2][BM], raw lse
  float* sDelta = sLse + 2 * BM;                               // [2][BM]

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;

  // blockIdx = (tile rank, kv head, head split), split fastest (the splits of a tile run side by side).
  const int splits = kFusedDq ? fw.head_splits : 1;
  const int work = blockIdx.x / splits;
  const int split = blockIdx.x % splits;
  const int hk = work % p.hkv;
  const int tile = tiles.order[work / p.hkv];
  const int n0 = tile * BN;
  const int heads_per_cta = p.group / splits;
  const int head0 = hk * p.group + split * heads_per_cta;  // first query head of this CTA
  float* __restrict__ dq_accum = fw.dq_accum;
  const int total_k = p.plan.total_k;
  const int64_t q_stride = static_cast<int64_t>(p.hq) * D;
  const int64_t kv_stride = static_cast<int64_t>(p.hkv) * D;
  const T* q_base = static_cast<const T*>(p.q);
  const T* do_base = static_cast<const T*>(p.dout);

  KeyTileWalker<BN, BM> it;
  it.slices = p.plan.slices;
  it.list = tiles.slices;
  it.pos = tiles.offsets[tile];
  it.end = tiles.offsets[tile + 1];
  it.n0 = n0;
  it.group = heads_per_cta;  // the walker's head index runs over this CTA's heads only
  bool valid = it.next_slice();

  // Loads the query-side operands of one walker step into a stage.
  auto load_stage = [&](int st, const KeyTileWalker<BN, BM>& w) {
    const int h = head0 + w.head_in_group;
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

  const T* k_base = static_cast<const T*>(p.k) + static_cast<int64_t>(hk) * D;
  if constexpr (kFusedDq) {
    uint64_t seen[BN / 64];
    seen_keys_of_tile<BN / 64>(seen, p.plan.slices, tiles.slices, tiles.offsets[tile],
                               tiles.offsets[tile + 1], n0);
    load_key_tile_async<BN, D, THREADS>(sK, k_base, kv_stride, n0, total_k, seen, tid);
  } else {
    load_tile_async<BN, D, THREADS>(sK, k_base, kv_stride, n0, total_k, tid);
  }
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
    const int step_q_hi = it.q_hi;
    const int step_head = head0 + it.head_in_group;
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
      if (!warp_keys_seen_by_rows(slice, warp_key0, m0, SUB)) {
        if constexpr (kFusedDq) {
          // dS^T of this warp's keys is zero here; the staged tile must say so (it holds the last stage).
#pragma unroll
          for (int nb = 0; nb < SUB / 8; ++nb) {
            const int chunk = (sub0 >> 3) + nb;
            *reinterpret_cast<uint32_t*>(sdS + swizzle<BM>(warp * 16 + g, chunk) + 2 * t) = 0u;
            *reinterpret_cast<uint32_t*>(sdS + swizzle<BM>(warp * 16 + g + 8, chunk) + 2 * t) = 0u;
          }
        }
        continue;
      }
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
      if constexpr (kFusedDq) {
        // Stage dS^T (keys x rows) for the dQ product; fragment kc covers row chunks 2kc and 2kc + 1 of the
        // sub-block, [0] / [2] for key g and [1] / [3] for key g + 8. Conflict-free: bank = (chunk ^ g) * 4 + t.
#pragma unroll
        for (int kc = 0; kc < SUB / 16; ++kc) {
          const int chunk = (sub0 >> 3) + 2 * kc;
          *reinterpret_cast<uint32_t*>(sdS + swizzle<BM>(warp * 16 + g, chunk) + 2 * t) = dst_frags[kc][0];
          *reinterpret_cast<uint32_t*>(sdS + swizzle<BM>(warp * 16 + g + 8, chunk) + 2 * t) = dst_frags[kc][1];
          *reinterpret_cast<uint32_t*>(sdS + swizzle<BM>(warp * 16 + g, chunk + 1) + 2 * t) = dst_frags[kc][2];
          *reinterpret_cast<uint32_t*>(sdS + swizzle<BM>(warp * 16 + g + 8, chunk + 1) + 2 * t) = dst_frags[kc][3];
        }
      }
      gemm_pb<SUB, D, T>(dk_acc, dst_frags, sQs, sub0, lane);
    }

    if constexpr (kFusedDq) {
      __syncthreads();  // the stage's dS^T is complete
      // dQ[rows, :] += dS[rows, keys] K[keys, :]; warp w owns the stage's rows [16 band, 16 band + 16) and
      // column group w / kDqBands.
      constexpr int kGroupCols = D / Tr::kDqColGroups;
      // (Compile-time 0 / warp when one column group: the compiler cannot bound `warp` by itself.)
      const int band = Tr::kDqColGroups == 1 ? warp : warp % Tr::kDqBands;
      const int col_group = Tr::kDqColGroups == 1 ? 0 : warp / Tr::kDqBands;
      const int row0 = step_m0 + band * 16;
      if (warp_rows_see_keys(slice, row0, n0, BN)) {
        // A fragments of dS (rows x keys) from the keys x rows tile: transposing ldmatrix; matrix L/8 of
        // the x4 is (keys +0 / +8) x (rows +0 / +8) in fragment order.
        uint32_t ds_frags[BN / 16][4];
#pragma unroll
        for (int kc = 0; kc < BN / 16; ++kc) {
          const int key = kc * 16 + (lane & 7) + ((lane >> 4) << 3);
          const int chunk = band * 2 + ((lane >> 3) & 1);
          ldsm_x4_trans(ds_frags[kc], sdS + swizzle<BM>(key, chunk));
        }
        const int row_lo = row0 + g;
        const int row_hi = row0 + g + 8;
        float* dq_lo = dq_accum + (static_cast<int64_t>(row_lo) * p.hq + step_head) * D;
        float* dq_hi = dq_accum + (static_cast<int64_t>(row_hi) * p.hq + step_head) * D;
        constexpr int kDqCols = fused_dq_cols(kGroupCols);
#pragma unroll
        for (int pass = 0; pass < kGroupCols / kDqCols; ++pass) {
          const int c0 = col_group * kGroupCols + pass * kDqCols;
          float dq_acc[kDqCols / 8][4];
          zero_acc(dq_acc);
          gemm_pb_cols<BN, D, kDqCols, T>(dq_acc, ds_frags, sK, c0 / 8, lane);
          // Rows at or past step_q_hi see none of the tile's keys (dS = 0) and may lie past total_q.
#pragma unroll
          for (int nb = 0; nb < kDqCols / 8; ++nb) {
            const int col = c0 + nb * 8 + 2 * t;
            if (row_lo < step_q_hi) atomic_add2(dq_lo + col, dq_acc[nb][0], dq_acc[nb][1]);
            if (row_hi < step_q_hi) atomic_add2(dq_hi + col, dq_acc[nb][2], dq_acc[nb][3]);
          }
        }
      }
    }
    __syncthreads();

    valid = has_next;
    stage ^= 1;
  }
  cp_async_wait<0>();  // the K/V group when the walk was empty
  __syncthreads();
  const int hk_out = head0 / p.group;  // = hk, recomputed: one register fewer across the loop

  if constexpr (kFusedDq) {
    if (splits > 1) {
      // Head-split CTAs share the tile's keys: add the unscaled sums into the fp32 workspaces.
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int key = key_of[r];
        if (key >= total_k) continue;
        float* dk_row = fw.dk_accum + (static_cast<int64_t>(key) * p.hkv + hk_out) * D;
        float* dv_row = fw.dv_accum + (static_cast<int64_t>(key) * p.hkv + hk_out) * D;
#pragma unroll
        for (int nb = 0; nb < D / 8; ++nb) {
          const int col = nb * 8 + 2 * t;
          atomic_add2(dk_row + col, dk_acc[nb][2 * r], dk_acc[nb][2 * r + 1]);
          atomic_add2(dv_row + col, dv_acc[nb][2 * r], dv_acc[nb][2 * r + 1]);
        }
      }
      return;
    }
  }

  // Epilogue: each warp stages its own 16 rows of dK / dV through sK / sV (only it read them).
  store_acc_to_smem<D, T>(sK, warp * 16, dk_acc, p.scale, p.scale, lane);
  store_acc_to_smem<D, T>(sV, warp * 16, dv_acc, 1.f, 1.f, lane);
  __syncthreads();
  store_tile<BN, D, THREADS>(static_cast<T*>(p.dk) + static_cast<int64_t>(hk_out) * D, kv_stride, n0, total_k, sK,
                             tid);
  store_tile<BN, D, THREADS>(static_cast<T*>(p.dv) + static_cast<int64_t>(hk_out) * D, kv_stride, n0, total_k, sV,
                             tid);
}

template <typename T, int D, int BN, bool kFusedDq>
cudaError_t launch_dkdv(const BwdParams& params, const TileLists& key_tiles, const FusedWork& fw,
                        cudaStream_t stream) {
  using Tr = DkvTraits<T, D, BN, kFusedDq>;
  const int64_t blocks = static_cast<int64_t>(key_tiles.num_tiles) * params.hkv * fw.head_splits;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  if (blocks == 0) return cudaSuccess;
  cudaError_t err = ensure_dynamic_smem<ffa_bwd_dkdv_kernel<T, D, BN, kFusedDq>>(Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  ffa_bwd_dkdv_kernel<T, D, BN, kFusedDq>
      <<<static_cast<unsigned>(blocks), Tr::kThreads, Tr::kSmemBytes, stream>>>(params, key_tiles, fw);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_dkdv_sm80(const BwdParams& params, const TileLists& key_tiles, const FusedWork* fw, int head_dim,
                             int dtype, cudaStream_t stream) {
  return with_shape(head_dim, dtype, [&](auto shape) {
    using T = typename decltype(shape)::Elem;
    constexpr int D = decltype(shape)::kHeadDim;
    if (fw == nullptr) {
      const FusedWork none{nullptr, nullptr, nullptr, 1, kDkvBlockN};
      return launch_dkdv<T, D, kDkvBlockN, false>(params, params.plan.dkv, none, stream);
    }
    return fw->block_n == kFusedBlockNWide ? launch_dkdv<T, D, kFusedBlockNWide, true>(params, key_tiles, *fw, stream)
                                           : launch_dkdv<T, D, kDkvBlockN, true>(params, key_tiles, *fw, stream);
  });
}

}  // namespace magi_ffa
