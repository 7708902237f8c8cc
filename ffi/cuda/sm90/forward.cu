// sm90/forward.cu: the Hopper (sm_90a) FFA forward: TMA loads into 128-byte-swizzled shared memory,
// wgmma for S = Q K^T (both operands from shared memory) and O += P V (P from registers, V read
// transposed from shared memory through the descriptor's transpose bit), warp specialization.
//
// Work item = (query tile of 128 rows, query head); persistent CTAs (one per SM) take items in the plan's
// costliest-first order with a static stride, so every item is computed by exactly one CTA (deterministic).
// Three warpgroups: warpgroup 0 is the producer (one warp issues every TMA load; its registers are given
// up with setmaxnreg), warpgroups 1 and 2 are consumers, each owning 64 query rows of the tile, issuing
// their wgmmas in turn (ping-pong through named barriers). K and V tiles of 128 keys flow through a ring
// (2 stages at D = 128, 4 at D = 64) guarded by mbarriers: full_k / full_v (TMA bytes landed) and
// empty_k / empty_v (all 8 consumer warps are done reading; K is released as soon as S is computed). Q has
// its own full / empty pair (released after an item's last S, so the next item's Q loads during the
// epilogue); O is staged in its own buffer and written by TMA.
//
// The CTA walks every slice touching its rows (the plan's forward CSR list) and every key tile those rows
// can see (common/walkers.cuh: the same walker the sm80 kernel and the CPU replay use), keeping one online
// softmax per row over the union: rows shared by several slices merge exactly, no atomics, deterministic.
// Key tiles start at a slice's first visible key (TMA takes any coordinate); keys past the tensor end are
// zero-filled by TMA, keys past the last visible key inside the tensor (another document, padding that
// may hold NaN) are zeroed in the V stage by the producer before it is released (0 * NaN would leak into
// P V); in S they are masked. Rows no slice makes visible end with out = 0, lse = -inf.
//
// Consumer loop (per warpgroup, per key tile j), with the softmax of tile j overlapping the P V product
// of tile j-1 on the tensor cores:
//
// Files: the tile sizes, arguments and shared-memory layout are in forward_layout.cuh, the producer's
// watchdog in watchdog.cuh, tensor maps and the grid size in host.cu; which forward runs is dispatch.cu's.
#include <cuda.h>  // CUtensorMap (types only: no libcuda link)

#include <algorithm>
#include <type_traits>

#include "common/device.cuh"
#include "common/env.cuh"
#include "common/launch.cuh"
#include "common/params.cuh"
#include "common/shapes.cuh"
#include "common/walkers.cuh"
#include "magi_ffa.h"
#include "sm90/forward.cuh"
#include "sm90/forward_layout.cuh"
#include "sm90/host.cuh"
#include "sm90/ptx.cuh"
#include "sm90/watchdog.cuh"

namespace magi_ffa {
namespace {

template <typename T, int D>
__global__ void __launch_bounds__(kSm90Threads, 1) ffa_forward_sm90_kernel(const __grid_constant__ Sm90FwdArgs args) {
#if defined(MAGI_FFA_SM90_ENABLED)
  using namespace sm90;
  using L = Sm90Layout<D>;
  constexpr int BM = kSm90BlockM;
  constexpr int BN = kSm90BlockN;
  constexpr int S = L::kStages;
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  // Register split (setmaxnreg): 128 x 40 + 256 x 232 = 64512 of the SM's 65536.
  constexpr int kProducerRegs = 40;
  constexpr int kConsumerRegs = 232;
  // Named barriers (0 is __syncthreads): 1 + cw = consumer warpgroup cw's own 128 threads (epilogue);
  // 3 + cw = "warpgroup cw may issue its wgmmas now" (ping-pong of the two consumer warpgroups, 256).
  constexpr int kBarEpilogue = 1;
  constexpr int kBarSchedule = 3;
  const FwdParams& p = args.p;

  extern __shared__ unsigned char smem_raw[];
  // 1024-byte alignment: the 128-byte swizzle pattern repeats every 8 rows of 128 B.
  const uint32_t raw_addr = smem_u32(smem_raw);
  const uint32_t base = (raw_addr + 1023u) & ~1023u;
  unsigned char* smem = smem_raw + (base - raw_addr);
  const uint32_t sQ = base + L::kOffQ;
  const uint32_t sO = base + L::kOffO;
  const uint32_t sK = base + L::kOffK;
  const uint32_t sV = base + L::kOffV;
  const uint32_t bar0 = base + L::kOffBar;
  const uint32_t bar_q_full = bar0;
  const uint32_t bar_q_empty = bar0 + 8;
  const uint32_t bar_vtmp = bar0 + 16;
  auto bar_full_k = [&](int s) { return bar0 + 24 + 8 * s; };
  auto bar_full_v = [&](int s) { return bar0 + 24 + 8 * (S + s); };
  auto bar_empty_k = [&](int s) { return bar0 + 24 + 8 * (2 * S + s); };
  auto bar_empty_v = [&](int s) { return bar0 + 24 + 8 * (3 * S + s); };

  const int total_q = p.plan.total_q;
  const int total_k = p.plan.total_k;
  const int warpgroup = threadIdx.x / 128;
  const int lane = threadIdx.x & 31;

  if (threadIdx.x == 0) {
    mbar_init(bar_q_full, 1);
    mbar_init(bar_q_empty, 8);  // one arrival per consumer warp
    mbar_init(bar_vtmp, 1);
    for (int s = 0; s < S; ++s) {
      mbar_init(bar_full_k(s), 1);
      mbar_init(bar_full_v(s), 1);
      mbar_init(bar_empty_k(s), 8);
      mbar_init(bar_empty_v(s), 8);
    }
    fence_mbar_init();
  }
  __syncthreads();

  // Persistent CTAs: items (query tile, head) in the plan's schedule (params.cuh: Schedule, ItemWalker;
  // balanced lanes, a few heads at a time). Each item is computed entirely by one CTA, so results do not
  // depend on the assignment. The producer and both consumer warpgroups walk the same items and steps in the same
  // order; ring stages and barrier phases run on across items.
  if (warpgroup == 0) {
    // ---------------------------------------------------------------- producer (one warp)
    setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x >= 32) return;
    if (lane == 0) {
      prefetch_tensor_map(&args.tm_q);
      prefetch_tensor_map(&args.tm_k);
      prefetch_tensor_map(&args.tm_v);
    }
    int step = 0;
    uint32_t vtmp_phase = 0;
    int item_count = 0;
    ItemWalker items(p.plan.fwd.schedules.for_heads(p.hq), p.hq);
    for (TileHead item; items.next(&item); ++item_count) {
      const int h = item.head;
      const int tile = item.tile;
      const int w = h * p.plan.fwd.num_tiles + tile;  // the item's number, for the watchdog's fault code
      const int m0 = tile * BM;
      const int hk = h / p.group;
      QueryTileWalker<BM, BN> it;
      it.slices = p.plan.slices;
      it.list = p.plan.fwd.slices;
      it.pos = p.plan.fwd.offsets[tile];
      it.end = p.plan.fwd.offsets[tile + 1];
      it.m0 = m0;
      bool valid = it.next_slice();
      if (lane == 0) {
        // The consumers are done reading the previous item's Q (its last S = Q K^T has completed).
        if (item_count > 0) producer_wait(bar_q_empty, (item_count - 1) & 1, kWaitQEmpty, w);
        mbar_arrive_expect_tx(bar_q_full, L::kQBytes);
#pragma unroll
        for (int b = 0; b < L::kBoxes; ++b) tma_load_3d(sQ + b * L::kQBox, &args.tm_q, b * 64, h, m0, bar_q_full);
      }
      while (valid) {
        const int n0 = it.n0;
        const int k_hi = it.k_hi;
        valid = it.advance();
        const int s = step % S;
        const uint32_t use = static_cast<uint32_t>(step / S);
        if (lane == 0) {
          if (step >= S) producer_wait(bar_empty_k(s), (use - 1) & 1, kWaitEmptyK, w);
          mbar_arrive_expect_tx(bar_full_k(s), L::kKVStage);
#pragma unroll
          for (int b = 0; b < L::kBoxes; ++b) {
            tma_load_3d(sK + s * L::kKVStage + b * L::kKVBox, &args.tm_k, b * 64, hk, n0, bar_full_k(s));
          }
        }
        if (step >= S) producer_wait(bar_empty_v(s), (use - 1) & 1, kWaitEmptyV, w);
        // Keys [k_hi, min(n0 + BN, total_k)) are in the tensor but nobody in this step may see them (another
        // document, padding that may hold NaN): zero them in V, since 0 * NaN would leak into P V. TMA
        // zero-fills only past the tensor end. In S they are masked.
        const int tail_lo = k_hi - n0;
        const int tail_hi = imin(BN, total_k - n0);
        const uint32_t v_dst = sV + s * L::kKVStage;
        if (tail_lo < tail_hi) {
          if (lane == 0) {
            mbar_arrive_expect_tx(bar_vtmp, L::kKVStage);
#pragma unroll
            for (int b = 0; b < L::kBoxes; ++b) tma_load_3d(v_dst + b * L::kKVBox, &args.tm_v, b * 64, hk, n0, bar_vtmp);
          }
          producer_wait(bar_vtmp, vtmp_phase, kWaitVtmp, w);
          vtmp_phase ^= 1;
          // Whole 128-byte rows are zeroed, so the swizzle does not matter.
          const int chunks = (tail_hi - tail_lo) * 8;  // 16-byte chunks per box
          unsigned char* v_stage = smem + (v_dst - base);
#pragma unroll
          for (int b = 0; b < L::kBoxes; ++b) {
            uint4* dst = reinterpret_cast<uint4*>(v_stage + b * L::kKVBox + tail_lo * 128);
            for (int c = lane; c < chunks; c += 32) dst[c] = make_uint4(0, 0, 0, 0);
          }
          fence_proxy_async_smem();  // the zeros, written by the generic proxy, before wgmma reads them
          __syncwarp();
          if (lane == 0) mbar_arrive(bar_full_v(s));
        } else if (lane == 0) {
          mbar_arrive_expect_tx(bar_full_v(s), L::kKVStage);
#pragma unroll
          for (int b = 0; b < L::kBoxes; ++b) {
            tma_load_3d(v_dst + b * L::kKVBox, &args.tm_v, b * 64, hk, n0, bar_full_v(s));
          }
        }
        // The producer warp's lanes reconverge every step and every item. Without this, lanes 1-31 (which
        // skip lane 0's Q / K waits) ran ahead into later steps' empty-V waits while lane 0 spun on an
        // empty-Q wait, and about one launch in a few hundred of 64 short documents never finished (the
        // watchdog caught lane 0 on Q empty; 60,000 launches with the reconvergence ran clean).
        __syncwarp();
        ++step;
      }
      __syncwarp();
    }
  } else {
  // ------------------------------------------------------------------ consumers
  setmaxnreg_inc<kConsumerRegs>();

  const int cw = warpgroup - 1;                   // consumer warpgroup: rows [m0 + 64 cw, + 64) of a tile
  const int warp_in_wg = (threadIdx.x / 32) & 3;  // warp within the warpgroup
  const int g = lane >> 2;
  const int t = lane & 3;

  const bool softcap_on = p.softcap > 0.f;
  const float cap_in = softcap_on ? p.scale / p.softcap : 0.f;  // raw score -> tanh argument
  const float cap_out = p.softcap * kLog2e;                      // tanh -> log2-domain score
  // Scores stay raw (or capped, then already in the log2 domain) in S; mult brings them to the log2
  // domain inside the exp2's FMA.
  const float mult = softcap_on ? 1.f : p.scale_log2;

  float o[D / 2];
  float sacc[BN / 2];
  uint32_t pfrag[BN / 16][4];
  float row_max[2];  // in raw score units
  float row_sum[2];  // this thread's partial sums

  // Q descriptor of k-chunk kk (16 head-dim columns) for this warpgroup's 64 rows (K-major, 128-byte
  // swizzle: +32 B per 16 columns inside a 128-byte row, the next box past 64 columns).
  auto desc_q = [&](int kk) {
    return make_desc_sw128(sQ + (kk / 4) * L::kQBox + cw * 64 * 128 + (kk % 4) * 32, 16, 1024);
  };
  auto desc_k = [&](int s, int kk) {
    return make_desc_sw128(sK + s * L::kKVStage + (kk / 4) * L::kKVBox + (kk % 4) * 32, 16, 1024);
  };
  // V read transposed (N-major B) for keys [16 kc, 16 kc + 16): LBO = distance between the 64-column
  // boxes, SBO = next 8 keys.
  auto desc_v = [&](int s, int kc) { return make_desc_sw128(sV + s * L::kKVStage + kc * 16 * 128, L::kKVBox, 1024); };

  // Ping-pong: warpgroup cw issues its wgmmas only after the other one issued its own, so one computes
  // its softmax while the tensor cores run the other's products. Warpgroup 1 lets warpgroup 0 go first.
  const bool pingpong = args.pingpong != 0;
  auto schedule_wait = [&]() {
    if (pingpong) named_barrier_sync(kBarSchedule + cw, 256);
  };
  auto schedule_pass = [&]() {
    if (pingpong) named_barrier_arrive(kBarSchedule + (cw ^ 1), 256);
  };
  if (pingpong && cw == 1) named_barrier_arrive(kBarSchedule, 256);

  auto issue_qk = [&](int s) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) Wgmma<BN, kBf16>::ss(sacc, desc_q(kk), desc_k(s, kk), kk > 0 ? 1 : 0);
    wgmma_commit();
  };
  auto issue_pv = [&](int s) {
#pragma unroll
    for (int kc = 0; kc < BN / 16; ++kc) Wgmma<D, kBf16>::rs(o, pfrag[kc], desc_v(s, kc), 1);
    wgmma_commit();
  };
  auto to_pfrag = [&]() {
#pragma unroll
    for (int kc = 0; kc < BN / 16; ++kc) {
      pfrag[kc][0] = Elem<T>::pack(sacc[8 * kc + 0], sacc[8 * kc + 1]);
      pfrag[kc][1] = Elem<T>::pack(sacc[8 * kc + 2], sacc[8 * kc + 3]);
      pfrag[kc][2] = Elem<T>::pack(sacc[8 * kc + 4], sacc[8 * kc + 5]);
      pfrag[kc][3] = Elem<T>::pack(sacc[8 * kc + 6], sacc[8 * kc + 7]);
    }
  };

  int step = 0;
  int item_count = 0;
  ItemWalker items(p.plan.fwd.schedules.for_heads(p.hq), p.hq);
  for (TileHead item; items.next(&item); ++item_count) {
    const int h = item.head;
    const int tile = item.tile;
    const int m0 = tile * BM;
    const int wg_row0 = m0 + 64 * cw;
    const int row_of[2] = {wg_row0 + 16 * warp_in_wg + g, wg_row0 + 16 * warp_in_wg + g + 8};

    // Scores of one key tile -> probabilities (in place, fp32) and the online-softmax state update;
    // rescale gets the factor for the running O rows.
    auto softmax_tile = [&](const Slice& slice, int n0, float (&rescale)[2]) {
      if (softcap_on) {
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) sacc[i] = tanhf(sacc[i] * cap_in) * cap_out;
      }
      if (tile_needs_mask(slice, wg_row0, 64, n0, BN)) {
        // Keys [lo, hi) (relative to n0) of the thread's two rows; empty for a row outside the slice.
        int lo[2], hi[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = row_of[r];
          const bool in = row >= slice.qs && row < slice.qe;
          int l = slice.ks, e = slice.ke;
          if (slice.type & kTypeCausalBit) e = imin(e, row + (slice.ke - slice.qe) + 1);
          if (slice.type & kTypeInvCausalBit) l = imax(l, row + (slice.ks - slice.qs));
          lo[r] = in ? l - n0 : 0;
          hi[r] = in ? e - n0 : 0;
        }
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) {
          const int r = (i >> 1) & 1;
          const int j = 8 * (i >> 2) + 2 * t + (i & 1);
          if (j < lo[r] || j >= hi[r]) sacc[i] = -INFINITY;
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float tile_max = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < BN / 8; ++nb) {
          tile_max = fmaxf(tile_max, fmaxf(sacc[4 * nb + 2 * r], sacc[4 * nb + 2 * r + 1]));
        }
        tile_max = quad_max(tile_max);
        const float new_max = fmaxf(row_max[r], tile_max);
        // A row that has seen nothing yet keeps max -inf; subtracting 0 then keeps every exp2 at 0.
        const float base_scaled = new_max == -INFINITY ? 0.f : new_max * mult;
        rescale[r] = fast_exp2(row_max[r] * mult - base_scaled);
        row_max[r] = new_max;
        float sum = 0.f;
#pragma unroll
        for (int nb = 0; nb < BN / 8; ++nb) {
          const float p0 = fast_exp2(fmaf(sacc[4 * nb + 2 * r], mult, -base_scaled));
          const float p1 = fast_exp2(fmaf(sacc[4 * nb + 2 * r + 1], mult, -base_scaled));
          sacc[4 * nb + 2 * r] = p0;
          sacc[4 * nb + 2 * r + 1] = p1;
          sum += p0 + p1;
        }
        row_sum[r] = row_sum[r] * rescale[r] + sum;
      }
    };

#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.f;

    QueryTileWalker<BM, BN> it;
    it.slices = p.plan.slices;
    it.list = p.plan.fwd.slices;
    it.pos = p.plan.fwd.offsets[tile];
    it.end = p.plan.fwd.offsets[tile + 1];
    it.m0 = m0;

    mbar_wait_plain(bar_q_full, item_count & 1);
    // Every step is computed by both warpgroups (a warpgroup whose rows see none of a tile's keys gets
    // P = 0 from the mask): keeping the wgmmas out of data-dependent branches keeps them asynchronous.
    bool valid = it.next_slice();
    if (valid) {
      Slice slice = it.slice;
      int n0 = it.n0;
      valid = it.advance();
      // First step: S = Q K^T, softmax, P.
      int s = step % S;
      uint32_t parity = static_cast<uint32_t>(step / S) & 1;
      mbar_wait_plain(bar_full_k(s), parity);
      schedule_wait();
      wgmma_fence();
      issue_qk(s);
      schedule_pass();
      wgmma_wait<0>();
      fence_regs(sacc);
      if (lane == 0) {
        mbar_arrive(bar_empty_k(s));
        if (!valid) mbar_arrive(bar_q_empty);  // Q no longer read: the producer may load the next item's
      }
      {
        float rescale[2];
        softmax_tile(slice, n0, rescale);
      }
      to_pfrag();
      int prev_stage = s;
      uint32_t prev_parity = parity;
      ++step;
      while (valid) {
        slice = it.slice;
        n0 = it.n0;
        valid = it.advance();
        s = step % S;
        parity = static_cast<uint32_t>(step / S) & 1;
        mbar_wait_plain(bar_full_k(s), parity);
        mbar_wait_plain(bar_full_v(prev_stage), prev_parity);
        fence_regs(o);
        fence_regs(pfrag);
        schedule_wait();
        wgmma_fence();
        issue_qk(s);           // S_j = Q K_j^T
        issue_pv(prev_stage);  // O += P_{j-1} V_{j-1}, on the tensor cores during the softmax below
        schedule_pass();
        wgmma_wait<1>();
        fence_regs(sacc);
        if (lane == 0) {
          mbar_arrive(bar_empty_k(s));
          if (!valid) mbar_arrive(bar_q_empty);
        }
        float rescale[2];
        softmax_tile(slice, n0, rescale);
        wgmma_wait<0>();
        fence_regs(o);
        fence_regs(pfrag);
        if (lane == 0) mbar_arrive(bar_empty_v(prev_stage));
#pragma unroll
        for (int i = 0; i < D / 2; ++i) o[i] *= rescale[(i >> 1) & 1];
        to_pfrag();
        prev_stage = s;
        prev_parity = parity;
        ++step;
      }
      mbar_wait_plain(bar_full_v(prev_stage), prev_parity);
      fence_regs(o);
      fence_regs(pfrag);
      schedule_wait();
      wgmma_fence();
      issue_pv(prev_stage);
      schedule_pass();
      wgmma_wait<0>();
      fence_regs(o);
      fence_regs(pfrag);  // the wgmma read them until here: keep their registers from being reused earlier
      if (lane == 0) mbar_arrive(bar_empty_v(prev_stage));
    } else if (lane == 0) {
      mbar_arrive(bar_q_empty);  // no step: Q is not read at all
    }

    // ---------------------------------------------------------------- epilogue of the item
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float sum = quad_sum(row_sum[r]);
      const bool seen = sum > 0.f;
      inv[r] = seen ? 1.f / sum : 0.f;
      const float lse = seen ? (row_max[r] * mult + __log2f(sum)) * kLn2 : -INFINITY;
      if (t == 0 && row_of[r] < total_q) p.lse[static_cast<int64_t>(row_of[r]) * p.hq + h] = lse;
    }
    // O (normalized, as T) into this warpgroup's rows of the O staging buffer in the 128-byte-swizzled
    // box layout of the output tensor map, then one TMA store per 64-column box (rows past total_q are
    // clipped by TMA). The previous item's store must have finished reading the buffer first.
    if ((threadIdx.x & 127) == 0) tma_store_wait_read();
    named_barrier_sync(kBarEpilogue + cw, 128);
    unsigned char* o_bytes = smem + L::kOffO;
#pragma unroll
    for (int i = 0; i < D / 2; i += 2) {
      const int r = (i >> 1) & 1;
      const int row_local = 16 * warp_in_wg + g + 8 * r;  // 0..63 within the warpgroup
      const int col = 8 * (i >> 2) + 2 * t;
      const int box = col / 64;
      const int chunk = (col % 64) / 8;
      const int offset =
          box * L::kQBox + (64 * cw + row_local) * 128 + ((chunk ^ (row_local & 7)) << 4) + (col % 8) * 2;
      *reinterpret_cast<uint32_t*>(o_bytes + offset) = Elem<T>::pack(o[i] * inv[r], o[i + 1] * inv[r]);
    }
    fence_proxy_async_smem();  // generic stores before the TMA (async proxy) reads them
    named_barrier_sync(kBarEpilogue + cw, 128);
    // (A warpgroup whose 64 rows all lie past total_q stores nothing: no box entirely out of bounds.)
    if ((threadIdx.x & 127) == 0 && wg_row0 < total_q) {
#pragma unroll
      for (int b = 0; b < L::kBoxes; ++b) {
        tma_store_3d(&args.tm_o, b * 64, h, wg_row0, sO + b * L::kQBox + cw * 64 * 128);
      }
      tma_store_commit();
    }
  }
  if (cw == 0) schedule_wait();  // takes warpgroup 1's last pass, so no arrival is left pending
  if ((threadIdx.x & 127) == 0) tma_store_wait_all();
  }
#else
  (void)args;
#endif
}

template <typename T, int D>
cudaError_t launch_typed(const FwdParams& params, int dtype, cudaStream_t stream) {
  using L = Sm90Layout<D>;
  const int64_t blocks = static_cast<int64_t>(params.plan.fwd.num_tiles) * params.hq;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  // No keys at all: no K / V map can be built (a zero extent); dispatch.cu sends that case to the sm80 kernel.
  if (params.plan.total_k == 0) return cudaErrorInvalidValue;
  Sm90FwdArgs args;
  args.p = params;
  const int tq = params.plan.total_q, tk = params.plan.total_k;
  if (!sm90_encode_thd(&args.tm_q, params.q, tq, params.hq, D, 64, kSm90BlockM, dtype, false) ||
      !sm90_encode_thd(&args.tm_k, params.k, tk, params.hkv, D, 64, kSm90BlockN, dtype, false) ||
      !sm90_encode_thd(&args.tm_v, params.v, tk, params.hkv, D, 64, kSm90BlockN, dtype, false) ||
      !sm90_encode_thd(&args.tm_o, params.out, tq, params.hq, D, 64, 64, dtype, false)) {
    return cudaErrorInvalidValue;
  }
  args.pingpong = env_config().sm90_pingpong ? 1 : 0;
  const Schedule& schedule = params.plan.fwd.schedules.for_heads(params.hq);
  if (schedule.lanes <= 0) return cudaErrorInvalidValue;  // the plan was made on a device without sm90 kernels
  int ctas = 0;
  cudaError_t err = sm90_persistent_ctas(&ctas);
  if (err != cudaSuccess) return err;
  const int grid = std::min(schedule.lanes, ctas);
  err = ensure_dynamic_smem<ffa_forward_sm90_kernel<T, D>>(L::kSmemBytes);
  if (err != cudaSuccess) return err;
  ffa_forward_sm90_kernel<T, D><<<static_cast<unsigned>(grid), kSm90Threads, L::kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_forward_sm90(const FwdParams& params, int head_dim, int dtype, cudaStream_t stream) {
  return with_shape(head_dim, dtype, [&](auto shape) {
    using S = decltype(shape);
    return launch_typed<typename S::Elem, S::kHeadDim>(params, dtype, stream);
  });
}

}  // namespace magi_ffa
