// sm90/forward_layout.cuh: the Hopper forward's tile sizes, kernel arguments and shared-memory layout.
#pragma once

#include <cuda.h>  // CUtensorMap (types only)
#include <stddef.h>
#include <stdint.h>

#include "common/params.cuh"

namespace magi_ffa {

constexpr int kSm90BlockM = 128;   // query rows per CTA: two consumer warpgroups x 64
constexpr int kSm90BlockN = 128;   // keys per pipeline stage
constexpr int kSm90Threads = 384;  // producer warpgroup + 2 consumer warpgroups
static_assert(kSm90BlockM == kFwdBlockM, "the plan's forward tile lists are built for kFwdBlockM rows");

struct Sm90FwdArgs {
  CUtensorMap tm_q;  // (D, hq, total_q), box (64, 1, 128)
  CUtensorMap tm_k;  // (D, hkv, total_k), box (64, 1, 128)
  CUtensorMap tm_v;
  CUtensorMap tm_o;  // (D, hq, total_q), box (64, 1, 64): each consumer warpgroup stores its 64 rows
  FwdParams p;
  int32_t pingpong;   // 1: the consumer warpgroups take turns issuing wgmmas (MAGI_FFA_SM90_PINGPONG=0: off)
};

// Byte offsets into the (1024-byte aligned) dynamic shared memory.
template <int D>
struct Sm90Layout {
  // K/V ring depth: 2 stages of 64 KB at D = 128, 4 of 32 KB at D = 64.
  static constexpr int kStages = D == 64 ? 4 : 2;
  static constexpr int kBoxes = D / 64;             // 64-column boxes per row (128 B each)
  static constexpr int kQBox = kSm90BlockM * 128;   // bytes of one Q (or O) box: 128 rows
  static constexpr int kKVBox = kSm90BlockN * 128;  // bytes of one K or V box: 128 keys
  static constexpr int kQBytes = kBoxes * kQBox;
  static constexpr int kKVStage = kBoxes * kKVBox;
  static constexpr int kOffQ = 0;
  // O staging for the TMA store, apart from Q so that the next item's Q can load during this item's epilogue.
  static constexpr int kOffO = kOffQ + kQBytes;
  static constexpr int kOffK = kOffO + kQBytes;
  static constexpr int kOffV = kOffK + kStages * kKVStage;
  static constexpr int kOffBar = kOffV + kStages * kKVStage;
  // barriers: q_full, q_empty, vtmp, full_k[S], full_v[S], empty_k[S], empty_v[S]
  static constexpr int kNumBars = 3 + 4 * kStages;
  static constexpr int kBytes = kOffBar + kNumBars * 8;
  static constexpr size_t kSmemBytes = static_cast<size_t>(kBytes) + 1024;  // + alignment slack
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block");
};

}  // namespace magi_ffa
