// sm90/backward.cu: the Hopper (sm_90a) fast-mode backward main loop: dK, dV and dQ from one pass over
// (key tile, query tile) pairs, with wgmma, TMA loads and TMA reduce-adds of dQ.
//
// Work item = (key tile of 128 keys, kv head); persistent CTAs (one per SM) take items in the plan's
// schedule (params.cuh: Schedule, ItemWalker: balanced lanes, a few kv heads at a time). Each item is owned
// by one CTA, which walks every slice
// touching its keys, every query head of the GQA group and every query tile of 64 rows that can see the
// keys (KeyTileWalker: the same schedule as the mma.sync backward), so dK / dV of the tile are summed in
// registers and written once, with no atomics.
//
// Roles: warpgroup 0 is the producer (one warp: TMA loads of K / V once per item, Q / dO per step, and the
// step's lse / Delta rows); warpgroups 1 and 2 are consumers, each owning 64 of the tile's keys. Per step
// (query tile [m0, m0 + 64) of head h), each consumer warpgroup computes
//   S^T = K_wg Q^T, dP^T = V_wg dO^T                          (wgmma, both operands in shared memory)
//   P^T = exp2(S^T * scale * log2 e - lse2), dS^T = P^T (dP^T - Delta)   (masked cells: 0, by select)
//   dV_wg += P^T dO                                           (wgmma, P^T from registers)
// then writes its dS^T half (bf16 / fp16) to shared memory; after both halves are there each warpgroup
// issues dQ[:, 64 wg .. + 64) = dS K[:, 64 wg .. + 64) (wgmma, both operands transposed from shared
// memory) and then dK_wg += dS^T Q (dS^T from registers). It waits for dQ only, and stages and adds it to
// the fp32 dQ accumulator [total_q, hq, D] (one TMA reduce-add per 32 columns; rows past total_q are
// clipped by TMA) while dK runs on the tensor cores: the issue order dV, dQ, dK hides the staging. Delta,
// zeroing and the final dq = accumulator * scale conversion are the shared launches of
// common/backward_prepost.cu (dispatch.cu runs the three).
//
// Pipelines (mbarriers): kv_full / kv_empty (per item), full / empty per Q-dO stage (2 stages); the
// stage's lse / Delta rows, plain stores by the producer, are ordered by two named barriers per stage
// (rows full / rows empty). The dS^T buffer is double-buffered so one 256-thread barrier per step orders it.
//
// Head dims 64 and 128 (bf16 / fp16). At D = 64 each warpgroup adds its own keys' dS K into all 64 dQ
// columns instead (no shared dS^T, a warpgroup barrier only).
#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <type_traits>

#include "common/device.cuh"
#include "common/env.cuh"
#include "common/params.cuh"
#include "common/launch.cuh"
#include "sm90/backward.cuh"
#include "sm90/host.cuh"
#include "sm90/ptx.cuh"
#include "common/walkers.cuh"
#include "magi_ffa.h"

namespace magi_ffa {
namespace {

constexpr int kBwdBlockN = 128;  // keys per item: two consumer warpgroups x 64
constexpr int kBwdBlockM = 64;   // query rows per step
constexpr int kBwdStages = 2;    // Q / dO stages
constexpr int kBwdThreads = 384;

struct Sm90BwdArgs {
  CUtensorMap tm_q;   // (D, hq, total_q), box (64, 1, 64)
  CUtensorMap tm_do;  // same
  CUtensorMap tm_k;   // (D, hkv, total_k), box (64, 1, 128)
  CUtensorMap tm_v;
  CUtensorMap tm_dq;  // fp32 accumulator (D, hq, total_q), box (32, 1, 64)
  BwdParams p;
  TileLists tiles;    // key tiles of kBwdBlockN keys
};

struct BwdLayout {
  static constexpr int kKBox = kBwdBlockN * 128;      // one 64-column box of K or V: 16 KB
  static constexpr int kQBox = kBwdBlockM * 128;      // one 64-column box of Q or dO: 8 KB
  static constexpr int kDqBox = kBwdBlockM * 128;     // 32 fp32 columns x 64 rows: 8 KB
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + 2 * kKBox;
  static constexpr int kOffQ = kOffV + 2 * kKBox;                 // [stage][box]
  static constexpr int kOffDo = kOffQ + kBwdStages * 2 * kQBox;   // [stage][box]
  static constexpr int kOffDs = kOffDo + kBwdStages * 2 * kQBox;  // [buffer]: 128 keys x 64 queries, 16 KB
  static constexpr int kDsBytes = kBwdBlockN * 128;
  static constexpr int kOffDq = kOffDs + 2 * kDsBytes;            // [warpgroup][box]
  static constexpr int kOffRows = kOffDq + 2 * 2 * kDqBox;        // [stage] lse2[64], delta[64]
  static constexpr int kOffBar = kOffRows + kBwdStages * 2 * kBwdBlockM * 4;
  // kv_full, kv_empty, full[2], empty[2], tmp (loads whose rows the producer zeroes before release)
  static constexpr int kNumBars = 3 + 2 * kBwdStages;
  static constexpr int kBytes = kOffBar + kNumBars * 8;
  static constexpr size_t kSmemBytes = static_cast<size_t>(kBytes) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block");
};

#if defined(MAGI_FFA_SM90_ENABLED)
__device__ __forceinline__ float bwd_lse2(float lse) { return lse == -INFINITY ? INFINITY : lse * kLog2e; }
#endif

// Timing ablations (results are WRONG): which part costs what. Only an experiment build
// (`deno task build --experiments`, MAGI_FFA_EXPERIMENTS) instantiates them, chosen by MAGI_FFA_SM90_BWD_ABLATE
// (bf16, D = 128); the default library compiles kAblateNone only (hence [[maybe_unused]]: the kernel body is
// all that reads the others).
constexpr int kAblateNone = 0;
[[maybe_unused]] constexpr int kAblateDqReduce = 1;  // dQ staged but not added to global memory
[[maybe_unused]] constexpr int kAblateDq = 2;        // no dS^T buffer, no barrier, no dQ product, no dQ staging / reduce
[[maybe_unused]] constexpr int kAblateSoftmax = 4;   // P^T = S^T scaled, no exp2, no mask

template <typename T, int D, int kAblate, bool kSoftcap>
__global__ void __launch_bounds__(kBwdThreads, 1) ffa_bwd_sm90_kernel(const __grid_constant__ Sm90BwdArgs args) {
#if defined(MAGI_FFA_SM90_ENABLED)
  using namespace sm90;
  using L = BwdLayout;  // sized for D = 128; D = 64 uses the first box of each K / V / Q / dO tile
  constexpr int kBoxes = D / 64;  // 64-column boxes per row
  constexpr int BM = kBwdBlockM;
  constexpr int BN = kBwdBlockN;
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  constexpr int kProducerRegs = 40;
  constexpr int kConsumerRegs = 232;
  // Named barriers: 1 = both consumer warpgroups (dS^T halves written), 2 + wg = one warpgroup (dQ staging).
  constexpr int kBarDs = 1;
  constexpr int kBarDq = 2;
  // The lse / Delta rows of stage s: written by the producer warp with plain stores, read by both consumer
  // warpgroups (32 + 256 threads). Named barriers order both directions (rows full: producer arrives,
  // consumers sync; rows empty: consumers arrive after their last read, the producer syncs before it
  // writes the stage again). The stage's mbarriers order the TMA loads; racecheck does not count an
  // mbarrier wait as ordering plain shared-memory accesses, and reported these rows as hazards.
  constexpr int kBarRowsFull = 4;   // + stage
  constexpr int kBarRowsEmpty = 6;  // + stage
  constexpr int kRowsThreads = 32 + 256;
  const BwdParams& p = args.p;

  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_addr = smem_u32(smem_raw);
  const uint32_t base = (raw_addr + 1023u) & ~1023u;
  unsigned char* smem = smem_raw + (base - raw_addr);
  const uint32_t sK = base + L::kOffK;
  const uint32_t sV = base + L::kOffV;
  auto sQ = [&](int s) { return base + L::kOffQ + s * 2 * L::kQBox; };
  auto sDo = [&](int s) { return base + L::kOffDo + s * 2 * L::kQBox; };
  auto sDs = [&](int b) { return base + L::kOffDs + b * L::kDsBytes; };
  float* rows_f = reinterpret_cast<float*>(smem + L::kOffRows);  // [stage][lse2 64 | delta 64]
  const uint32_t bar0 = base + L::kOffBar;
  const uint32_t bar_kv_full = bar0;
  const uint32_t bar_kv_empty = bar0 + 8;
  auto bar_full = [&](int s) { return bar0 + 16 + 8 * s; };
  auto bar_empty = [&](int s) { return bar0 + 16 + 8 * (kBwdStages + s); };
  const uint32_t bar_tmp = bar0 + 16 + 8 * (2 * kBwdStages);

  const int total_q = p.plan.total_q;
  const int total_k = p.plan.total_k;
  const int warpgroup = threadIdx.x / 128;
  const int lane = threadIdx.x & 31;

  if (threadIdx.x == 0) {
    mbar_init(bar_kv_full, 1);
    mbar_init(bar_kv_empty, 8);  // every consumer warp
    for (int s = 0; s < kBwdStages; ++s) {
      mbar_init(bar_full(s), 1);  // the TMA's arrive.expect_tx (or, with zeroed tail rows, a plain arrive)
      mbar_init(bar_empty(s), 8);
    }
    mbar_init(bar_tmp, 1);
    fence_mbar_init();
  }
  __syncthreads();

  if (warpgroup == 0) {
    // ---------------------------------------------------------------- producer (one warp)
    setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x >= 32) return;
    if (lane == 0) {
      prefetch_tensor_map(&args.tm_q);
      prefetch_tensor_map(&args.tm_do);
      prefetch_tensor_map(&args.tm_k);
      prefetch_tensor_map(&args.tm_v);
    }
    int step = 0;
    int item_count = 0;
    uint32_t tmp_phase = 0;
    ItemWalker items(args.tiles, p.hkv);
    for (TileHead item; items.next(&item); ++item_count) {
      const int tile = item.tile;
      const int hk = item.head;
      const int n0 = tile * BN;
      // Keys of the tile that no listed slice covers (padding, which may hold NaN) are zeroed in K and V
      // before release: a NaN K row would leak into dQ through 0 * NaN. Keys past total_k are zero-filled
      // by TMA already. Lane l checks keys l, l + 32, l + 64, l + 96.
      uint32_t uncovered = 0;
      for (int r = 0; r < BN / 32; ++r) {
        const int key = n0 + lane + 32 * r;
        if (key >= total_k) continue;
        bool covered = false;
        for (int pos = args.tiles.offsets[tile]; pos < args.tiles.offsets[tile + 1] && !covered; ++pos) {
          const Slice& sl = p.plan.slices[args.tiles.slices[pos]];
          covered = !slice_is_empty(sl) && key >= sl.ks && key < sl.ke;
        }
        if (!covered) uncovered |= 1u << r;
      }
      const bool zero_kv = __any_sync(0xffffffffu, uncovered != 0);
      const uint32_t kv_bar = zero_kv ? bar_tmp : bar_kv_full;
      if (lane == 0) {
        if (item_count > 0) mbar_wait(bar_kv_empty, (item_count - 1) & 1);
        mbar_arrive_expect_tx(kv_bar, 2 * kBoxes * L::kKBox);
        for (int b = 0; b < kBoxes; ++b) {
          tma_load_3d(sK + b * L::kKBox, &args.tm_k, b * 64, hk, n0, kv_bar);
          tma_load_3d(sV + b * L::kKBox, &args.tm_v, b * 64, hk, n0, kv_bar);
        }
      }
      if (zero_kv) {
        mbar_wait(bar_tmp, tmp_phase);
        tmp_phase ^= 1;
        for (int r = 0; r < BN / 32; ++r) {
          if (!(uncovered & (1u << r))) continue;
          const int row = lane + 32 * r;
          for (int b = 0; b < kBoxes; ++b) {
            uint4* k_row = reinterpret_cast<uint4*>(smem + L::kOffK + b * L::kKBox + row * 128);
            uint4* v_row = reinterpret_cast<uint4*>(smem + L::kOffV + b * L::kKBox + row * 128);
            for (int c = 0; c < 8; ++c) k_row[c] = v_row[c] = make_uint4(0, 0, 0, 0);
          }
        }
        fence_proxy_async_smem();  // generic-proxy zeros before wgmma (async proxy) reads them
        __syncwarp();
        if (lane == 0) mbar_arrive(bar_kv_full);
      }
      // Reconverge before the steps: lanes must not spin on different barriers at once (the sm90 forward
      // hung that way, see ffa_fwd_sm90.cu).
      __syncwarp();
      KeyTileWalker<BN, BM> it;
      it.slices = p.plan.slices;
      it.list = args.tiles.slices;
      it.pos = args.tiles.offsets[tile];
      it.end = args.tiles.offsets[tile + 1];
      it.n0 = n0;
      it.group = p.group;
      bool valid = it.next_slice();
      while (valid) {
        const int m0 = it.m0;
        const int q_hi = it.q_hi;
        const int h = hk * p.group + it.head_in_group;
        valid = it.advance();
        const int s = step % kBwdStages;
        if (step >= kBwdStages) {
          mbar_wait(bar_empty(s), ((step / kBwdStages) - 1) & 1);
          named_barrier_sync(kBarRowsEmpty + s, kRowsThreads);
        }
        // Rows [q_hi, m0 + 64) inside the tensor see none of the tile's keys in this slice (another
        // document, or padding that may hold NaN): zeroed in Q and dO before release (0 * NaN would leak
        // into dK / dV). TMA zero-fills rows past total_q.
        const int tail_lo = q_hi - m0;
        const int tail_hi = imin(BM, total_q - m0);
        const bool zero_tail = tail_lo < tail_hi;
        const uint32_t q_bar = zero_tail ? bar_tmp : bar_full(s);
        if (lane == 0) {
          mbar_arrive_expect_tx(q_bar, 2 * kBoxes * L::kQBox);
          for (int b = 0; b < kBoxes; ++b) {
            tma_load_3d(sQ(s) + b * L::kQBox, &args.tm_q, b * 64, h, m0, q_bar);
            tma_load_3d(sDo(s) + b * L::kQBox, &args.tm_do, b * 64, h, m0, q_bar);
          }
        }
        if (zero_tail) {
          mbar_wait(bar_tmp, tmp_phase);
          tmp_phase ^= 1;
          const int chunks = (tail_hi - tail_lo) * 8;  // 16-byte chunks per box
          for (int b = 0; b < kBoxes; ++b) {
            uint4* q_rows = reinterpret_cast<uint4*>(smem + L::kOffQ + s * 2 * L::kQBox + b * L::kQBox + tail_lo * 128);
            uint4* do_rows = reinterpret_cast<uint4*>(smem + L::kOffDo + s * 2 * L::kQBox + b * L::kQBox + tail_lo * 128);
            for (int c = lane; c < chunks; c += 32) q_rows[c] = do_rows[c] = make_uint4(0, 0, 0, 0);
          }
          fence_proxy_async_smem();
        }
        // lse (log2 domain; +inf for rows past total_q or that see nothing, so P = 0) and Delta.
        float* rows = rows_f + s * 2 * BM;
        for (int i = lane; i < BM; i += 32) {
          const int row = m0 + i;
          const bool in = row < total_q;
          rows[i] = in ? bwd_lse2(p.lse[static_cast<int64_t>(row) * p.hq + h]) : INFINITY;
          rows[BM + i] = in ? p.delta[static_cast<int64_t>(row) * p.hq + h] : 0.f;
        }
        named_barrier_arrive(kBarRowsFull + s, kRowsThreads);
        __syncwarp();
        if (lane == 0 && zero_tail) mbar_arrive(bar_full(s));  // in place of the TMA's arrive.expect_tx
        ++step;
      }
    }
    // The consumers arrive on "rows empty" after every step; sync the last stages' arrivals so that no named
    // barrier is left half-arrived.
    for (int last = step - kBwdStages < 0 ? 0 : step - kBwdStages; last < step; ++last) {
      named_barrier_sync(kBarRowsEmpty + last % kBwdStages, kRowsThreads);
    }
  } else {
    // ---------------------------------------------------------------- consumers
    setmaxnreg_inc<kConsumerRegs>();
    const int cw = warpgroup - 1;                   // keys [n0 + 64 cw, + 64) of the tile
    const int warp_in_wg = (threadIdx.x / 32) & 3;
    const int g = lane >> 2;
    const int t = lane & 3;
    // Softcap is a template parameter: its tanh / log2 paths cost registers even when not taken.
    constexpr bool softcap_on = kSoftcap;
    const float cap_in = softcap_on ? p.scale / p.softcap : 0.f;
    const float cap_out = p.softcap * kLog2e;
    const float inv_cap_out = softcap_on ? 1.f / cap_out : 0.f;
    const float scale_log2 = p.scale_log2;

    float dv[D / 2];
    float dk[D / 2];
    float st[BM / 2];   // S^T, then P^T (64 keys x 64 queries)
    float dpt[BM / 2];  // dP^T, then dS^T
    float dq[32];       // dQ[:, 64 cw .. + 64) of the step
    uint32_t pfrag[BM / 16][4];
    uint32_t dsfrag[BM / 16][4];

    // Descriptors (128-byte swizzle). K-major operands: 16 head-dim columns = +32 B inside a 128-byte row,
    // the next 64 columns in the next box. MN-major operands: 16 K-rows = +2048 B; LBO = the box stride.
    auto desc_kv = [&](uint32_t tile_base, int kk) {
      return make_desc_sw128(tile_base + (kk / 4) * L::kKBox + cw * 64 * 128 + (kk % 4) * 32, 16, 1024);
    };
    auto desc_qdo = [&](uint32_t tile_base, int kk) {
      return make_desc_sw128(tile_base + (kk / 4) * L::kQBox + (kk % 4) * 32, 16, 1024);
    };
    auto desc_qdo_mn = [&](uint32_t tile_base, int kc) {
      return make_desc_sw128(tile_base + kc * 16 * 128, L::kQBox, 1024);
    };

    const int key_row0 = 64 * cw + 16 * warp_in_wg + g;  // tile-local key of the thread's first row
    int step = 0;
    int item_count = 0;
    ItemWalker items(args.tiles, p.hkv);
    for (TileHead item; items.next(&item); ++item_count) {
      const int tile = item.tile;
      const int hk = item.head;
      const int n0 = tile * BN;
      const int key_of[2] = {n0 + key_row0, n0 + key_row0 + 8};
#pragma unroll
      for (int i = 0; i < D / 2; ++i) {
        dv[i] = 0.f;
        dk[i] = 0.f;
      }
      mbar_wait_plain(bar_kv_full, item_count & 1);

      KeyTileWalker<BN, BM> it;
      it.slices = p.plan.slices;
      it.list = args.tiles.slices;
      it.pos = args.tiles.offsets[tile];
      it.end = args.tiles.offsets[tile + 1];
      it.n0 = n0;
      it.group = p.group;
      bool valid = it.next_slice();
      while (valid) {
        const Slice slice = it.slice;
        const int m0 = it.m0;
        const int h = hk * p.group + it.head_in_group;
        valid = it.advance();
        const int s = step % kBwdStages;
        mbar_wait_plain(bar_full(s), (step / kBwdStages) & 1);

        // S^T = K_wg Q^T and dP^T = V_wg dO^T.
        wgmma_fence();
        Wgmma<64, kBf16>::ss_zero(st, desc_kv(sK, 0), desc_qdo(sQ(s), 0));
#pragma unroll
        for (int kk = 1; kk < D / 16; ++kk) Wgmma<64, kBf16>::ss(st, desc_kv(sK, kk), desc_qdo(sQ(s), kk), 1);
        wgmma_commit();
        Wgmma<64, kBf16>::ss_zero(dpt, desc_kv(sV, 0), desc_qdo(sDo(s), 0));
#pragma unroll
        for (int kk = 1; kk < D / 16; ++kk) Wgmma<64, kBf16>::ss(dpt, desc_kv(sV, kk), desc_qdo(sDo(s), kk), 1);
        wgmma_commit();
        wgmma_wait<1>();
        fence_regs(st);

        // P^T. Column c of the accumulator is query m0 + c; rows are keys key_of[r]. Softcap and the mask
        // are separate loops behind warpgroup-uniform branches: inside one loop the compiler evaluates both
        // sides of a select for every element (tanh, the visibility test), which cost 40 % of the step.
        named_barrier_sync(kBarRowsFull + s, kRowsThreads);  // the producer's lse / Delta rows are written
        const float* rows = rows_f + s * 2 * BM;
        if constexpr ((kAblate & kAblateSoftmax) != 0) {
#pragma unroll
          for (int i = 0; i < BM / 2; ++i) st[i] *= 0.001f;
        } else {
          if constexpr (softcap_on) {
#pragma unroll
            for (int i = 0; i < BM / 2; ++i) st[i] = tanhf(st[i] * cap_in) * cap_out;  // log2-domain score
          }
          const float mult = softcap_on ? 1.f : scale_log2;
          if (tile_needs_mask(slice, m0, BM, n0 + 64 * cw, 64)) {
            // Queries [lo, hi) (relative to m0) that see each of the thread's two keys; empty for a key
            // outside the slice.
            int lo[2], hi[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              const int key = key_of[r];
              const bool in = key >= slice.ks && key < slice.ke;
              int first = slice.qs, end = slice.qe;
              if (slice.type & kTypeCausalBit) first = imax(first, key - (slice.ke - slice.qe));
              if (slice.type & kTypeInvCausalBit) end = imin(end, key - (slice.ks - slice.qs) + 1);
              lo[r] = in ? first - m0 : 0;
              hi[r] = in ? end - m0 : 0;
            }
#pragma unroll
            for (int i = 0; i < BM / 2; ++i) {
              const int c = 8 * (i >> 2) + 2 * t + (i & 1);
              const int r = (i >> 1) & 1;
              const bool visible = c >= lo[r] && c < hi[r];
              st[i] = visible ? fast_exp2(fmaf(st[i], mult, -rows[c])) : 0.f;
            }
          } else {
#pragma unroll
            for (int i = 0; i < BM / 2; ++i) {
              const int c = 8 * (i >> 2) + 2 * t + (i & 1);
              st[i] = fast_exp2(fmaf(st[i], mult, -rows[c]));
            }
          }
        }
        wgmma_wait<0>();
        fence_regs(dpt);
        // dS^T = P^T (dP^T - Delta) (times d(softcap)/dx); a select, so a NaN dP of a masked cell stays out.
        if constexpr (softcap_on) {
#pragma unroll
          for (int i = 0; i < BM / 2; ++i) {
            const int c = 8 * (i >> 2) + 2 * t + (i & 1);
            // s2 = log2(P) + lse2 recovers the capped logit (P > 0 only where it matters).
            const float th = (__log2f(st[i]) + rows[c]) * inv_cap_out;
            const float ds = st[i] * (dpt[i] - rows[BM + c]) * (1.f - th * th);
            dpt[i] = st[i] != 0.f ? ds : 0.f;
          }
        } else {
#pragma unroll
          for (int i = 0; i < BM / 2; ++i) {
            const int c = 8 * (i >> 2) + 2 * t + (i & 1);
            const float ds = st[i] * (dpt[i] - rows[BM + c]);
            dpt[i] = st[i] != 0.f ? ds : 0.f;
          }
        }
        named_barrier_arrive(kBarRowsEmpty + s, kRowsThreads);  // the rows are no longer read
#pragma unroll
        for (int kc = 0; kc < BM / 16; ++kc) {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            pfrag[kc][j] = Elem<T>::pack(st[8 * kc + 2 * j], st[8 * kc + 2 * j + 1]);
            dsfrag[kc][j] = Elem<T>::pack(dpt[8 * kc + 2 * j], dpt[8 * kc + 2 * j + 1]);
          }
        }
        // dV += P^T dO (B read transposed from the dO stage).
        wgmma_fence();
#pragma unroll
        for (int kc = 0; kc < BM / 16; ++kc) Wgmma<D, kBf16>::rs(dv, pfrag[kc], desc_qdo_mn(sDo(s), kc), 1);
        wgmma_commit();
        // dK += dS^T Q (B read transposed from the Q stage).
        auto issue_dk = [&] {
#pragma unroll
          for (int kc = 0; kc < BM / 16; ++kc) Wgmma<D, kBf16>::rs(dk, dsfrag[kc], desc_qdo_mn(sQ(s), kc), 1);
          wgmma_commit();
        };

        if constexpr ((kAblate & kAblateDq) == 0) {
          // dS^T half into the shared buffer: row = tile-local key, 64 queries = one 128-byte swizzled row.
          const int buffer = step & 1;
          unsigned char* ds_bytes = smem + (sDs(buffer) - base);
#pragma unroll
          for (int i = 0; i < BM / 2; i += 2) {
            const int row = key_row0 + 8 * ((i >> 1) & 1);
            const int c = 8 * (i >> 2) + 2 * t;
            const int offset = row * 128 + (((c >> 3) ^ (row & 7)) << 4) + (c & 7) * 2;
            *reinterpret_cast<uint32_t*>(ds_bytes + offset) = dsfrag[i >> 3][(i & 7) >> 1];
          }
          fence_proxy_async_smem();
          if constexpr (D == 128) {
            // dQ[:, 64 cw .. + 64) = dS K[:, 64 cw .. + 64): A = dS (queries x keys) read from dS^T (both
            // warpgroups' halves), B = K.
            named_barrier_sync(kBarDs, 256);
            auto ds_desc = [&](int kc) { return make_desc_sw128(sDs(buffer) + kc * 16 * 128, L::kDsBytes, 1024); };
            auto k_desc = [&](int kc) { return make_desc_sw128(sK + cw * L::kKBox + kc * 16 * 128, L::kKBox, 1024); };
            wgmma_fence();
            WgmmaMN<64, kBf16>::ss_zero(dq, ds_desc(0), k_desc(0));
#pragma unroll
            for (int kc = 1; kc < BN / 16; ++kc) WgmmaMN<64, kBf16>::ss(dq, ds_desc(kc), k_desc(kc), 1);
          } else {
            // D = 64: each warpgroup adds its own keys' part, dQ += dS[:, its 64 keys] K[its 64 keys, :], so
            // it needs only its own half of dS^T (a warpgroup barrier).
            named_barrier_sync(kBarDq + cw, 128);
            auto ds_desc = [&](int kc) {
              return make_desc_sw128(sDs(buffer) + (64 * cw + 16 * kc) * 128, L::kDsBytes, 1024);
            };
            auto k_desc = [&](int kc) { return make_desc_sw128(sK + (64 * cw + 16 * kc) * 128, L::kKBox, 1024); };
            wgmma_fence();
            WgmmaMN<64, kBf16>::ss_zero(dq, ds_desc(0), k_desc(0));
#pragma unroll
            for (int kc = 1; kc < 64 / 16; ++kc) WgmmaMN<64, kBf16>::ss(dq, ds_desc(kc), k_desc(kc), 1);
          }
          wgmma_commit();
          issue_dk();
          wgmma_wait<1>();  // dV and dQ; dK runs on during the staging below
          fence_regs(dq);

          // dQ half into this warpgroup's staging (two boxes of 32 fp32 columns, 128-byte swizzle), then one
          // TMA reduce-add per box. The previous reduce must have finished reading the staging first.
          if ((threadIdx.x & 127) == 0) tma_store_wait_read();
          named_barrier_sync(kBarDq + cw, 128);
          unsigned char* dq_bytes = smem + L::kOffDq + cw * 2 * L::kDqBox;
#pragma unroll
          for (int i = 0; i < 32; i += 2) {
            const int row = 16 * warp_in_wg + g + 8 * ((i >> 1) & 1);
            const int c = 8 * (i >> 2) + 2 * t;  // 0..63
            const int box = c >> 5;
            const int cb = c & 31;
            const int offset = box * L::kDqBox + row * 128 + (((cb >> 2) ^ (row & 7)) << 4) + (cb & 3) * 4;
            *reinterpret_cast<float2*>(dq_bytes + offset) = make_float2(dq[i], dq[i + 1]);
          }
          fence_proxy_async_smem();
          named_barrier_sync(kBarDq + cw, 128);
          if ((kAblate & kAblateDqReduce) == 0 && (threadIdx.x & 127) == 0) {
            const uint32_t staging = base + L::kOffDq + cw * 2 * L::kDqBox;
            const int col0 = D == 128 ? 64 * cw : 0;  // D = 64: both warpgroups add into all 64 columns
            tma_reduce_add_3d(&args.tm_dq, col0, h, m0, staging);
            tma_reduce_add_3d(&args.tm_dq, col0 + 32, h, m0, staging + L::kDqBox);
            tma_store_commit();
          }
        } else {
          issue_dk();
        }
        wgmma_wait<0>();
        fence_regs(dv);
        fence_regs(dk);
        fence_regs(pfrag);
        fence_regs(dsfrag);
        // Every lane's reads of the stage's lse / Delta rows come before the warp's arrive (lane 0 arrives for
        // the warp; without the sync the producer's next writes of the rows race with lagging lanes' reads).
        __syncwarp();
        if (lane == 0) mbar_arrive(bar_empty(s));  // Q, dO, lse, Delta of the stage are no longer read
        ++step;
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(bar_kv_empty);  // K / V of the item are no longer read

      // dK (times the softmax scale) and dV of the warpgroup's 64 keys, straight from registers.
      T* dk_out = static_cast<T*>(p.dk);
      T* dv_out = static_cast<T*>(p.dv);
#pragma unroll
      for (int i = 0; i < D / 2; i += 2) {
        const int key = key_of[(i >> 1) & 1];
        if (key >= total_k) continue;
        const int col = 8 * (i >> 2) + 2 * t;
        const int64_t at = (static_cast<int64_t>(key) * p.hkv + hk) * D + col;
        *reinterpret_cast<uint32_t*>(dk_out + at) = Elem<T>::pack(dk[i] * p.scale, dk[i + 1] * p.scale);
        *reinterpret_cast<uint32_t*>(dv_out + at) = Elem<T>::pack(dv[i], dv[i + 1]);
      }
    }
    if ((threadIdx.x & 127) == 0) tma_store_wait_all();
  }
#else
  (void)args;
#endif
}

template <typename T, int D, int kAblate, bool kSoftcap = false>
cudaError_t launch_typed(const BwdParams& params, const TileLists& tiles, float* dq_accum, int dtype,
                         cudaStream_t stream) {
  const int64_t items = static_cast<int64_t>(tiles.num_tiles) * params.hkv;
  if (items == 0) return cudaSuccess;
  if (items > 0x7fffffff) return cudaErrorInvalidConfiguration;
  Sm90BwdArgs args;
  args.p = params;
  args.tiles = tiles;
  const int tq = params.plan.total_q, tk = params.plan.total_k;
  if (!sm90_encode_thd(&args.tm_q, params.q, tq, params.hq, D, 64, kBwdBlockM, dtype, false) ||
      !sm90_encode_thd(&args.tm_do, params.dout, tq, params.hq, D, 64, kBwdBlockM, dtype, false) ||
      !sm90_encode_thd(&args.tm_k, params.k, tk, params.hkv, D, 64, kBwdBlockN, dtype, false) ||
      !sm90_encode_thd(&args.tm_v, params.v, tk, params.hkv, D, 64, kBwdBlockN, dtype, false) ||
      !sm90_encode_thd(&args.tm_dq, dq_accum, tq, params.hq, D, 32, kBwdBlockM, dtype, true)) {
    return cudaErrorInvalidValue;
  }
  int ctas = 0;
  cudaError_t err = sm90_persistent_ctas(&ctas);
  if (err != cudaSuccess) return err;
  const int grid = persistent_grid(tiles, params.hkv, ctas);
  err = ensure_dynamic_smem<ffa_bwd_sm90_kernel<T, D, kAblate, kSoftcap>>(BwdLayout::kSmemBytes);
  if (err != cudaSuccess) return err;
  ffa_bwd_sm90_kernel<T, D, kAblate, kSoftcap><<<static_cast<unsigned>(grid), kBwdThreads, BwdLayout::kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

template <int D>
cudaError_t launch_dim(const BwdParams& params, const TileLists& tiles, float* dq_accum, int dtype,
                       cudaStream_t stream) {
  const bool bf16 = dtype == MAGI_FFA_DTYPE_BFLOAT16;
  if (!bf16 && dtype != MAGI_FFA_DTYPE_FLOAT16) return cudaErrorInvalidValue;
  if (params.softcap > 0.f) {
    return bf16 ? launch_typed<__nv_bfloat16, D, kAblateNone, true>(params, tiles, dq_accum, dtype, stream)
                : launch_typed<__half, D, kAblateNone, true>(params, tiles, dq_accum, dtype, stream);
  }
  if (!bf16) return launch_typed<__half, D, kAblateNone>(params, tiles, dq_accum, dtype, stream);
#if MAGI_FFA_EXPERIMENTS
  if constexpr (D == 128) {
    switch (env_config().sm90_bwd_ablate) {
      case kAblateDqReduce:
        return launch_typed<__nv_bfloat16, D, kAblateDqReduce>(params, tiles, dq_accum, dtype, stream);
      case kAblateDq:
        return launch_typed<__nv_bfloat16, D, kAblateDq>(params, tiles, dq_accum, dtype, stream);
      case kAblateSoftmax:
        return launch_typed<__nv_bfloat16, D, kAblateSoftmax>(params, tiles, dq_accum, dtype, stream);
      case kAblateDq | kAblateSoftmax:
        return launch_typed<__nv_bfloat16, D, kAblateDq | kAblateSoftmax>(params, tiles, dq_accum, dtype, stream);
      default:
        break;
    }
  }
#endif
  return launch_typed<__nv_bfloat16, D, kAblateNone>(params, tiles, dq_accum, dtype, stream);
}

}  // namespace

cudaError_t launch_backward_sm90(const BwdParams& params, const TileLists& tiles, float* dq_accum, int head_dim,
                                 int dtype, cudaStream_t stream) {
  if (head_dim == 64) return launch_dim<64>(params, tiles, dq_accum, dtype, stream);
  if (head_dim == 128) return launch_dim<128>(params, tiles, dq_accum, dtype, stream);
  return cudaErrorInvalidValue;
}

}  // namespace magi_ffa
