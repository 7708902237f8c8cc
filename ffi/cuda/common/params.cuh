// common/params.cuh: what the kernel files and the host API (magi_ffa.cu) share: tile sizes, the device
// view of a plan and the kernel parameter blocks.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "common/mask.cuh"

namespace magi_ffa {

constexpr float kLog2eHost = 1.4426950408889634f;

// Tile sizes. The plan's tile lists depend only on the three row/column tile sizes below (not on the
// head dim), so one plan serves every head dim and dtype.
constexpr int kFwdBlockM = 128;  // query rows per forward CTA (16 per warp)
constexpr int kFwdWarps = 8;
constexpr int kFwdBlockN = 64;   // keys per forward inner iteration
constexpr int kDqBlockM = 64;    // query rows per dQ CTA (16 per warp)
constexpr int kDqWarps = 4;
constexpr int kDqBlockN = 64;    // keys per dQ inner iteration
constexpr int kDkvBlockN = 64;   // keys per dK/dV CTA (16 per warp)
constexpr int kDkvWarps = 4;
constexpr int kDkvBlockM = 64;   // query rows per dK/dV inner iteration (one pipeline stage)

// Query rows the dK/dV kernel computes at a time within a stage (fewer live registers at D=128: with 32,
// ptxas reports a 16-byte spill at D=128; 16 removes it at the cost of ~20% more ldmatrix traffic).
#ifndef MAGI_FFA_DKV_SUB_M_D128
#define MAGI_FFA_DKV_SUB_M_D128 32
#endif
constexpr int dkv_sub_m(int head_dim) { return head_dim >= 128 ? MAGI_FFA_DKV_SUB_M_D128 : kDkvBlockM; }

// A static schedule of a persistent grid over (tile, head) items, made on the host when the plan is
// created (plan.cuh: build_schedule). Heads are taken `group` at a time; for one group, lane l (one per
// SM) runs entries[offsets[l] .. offsets[l + 1]), each `tile * group + head in the group`, in that order.
// The lists come from a greedy list schedule of the group's items, costliest tile first, each given to the
// lane with the least work so far: every lane ends a group at about the same time (a static stride over
// costliest-first items leaves some lanes all the long causal tiles), and the lanes running at one time
// share the group's few heads, so the rows they all stream (K / V in the forward; Q, dO and the dQ
// accumulator in the backward) stay in L2 (interleaving every head puts all of Q, K, V in the working set).
struct Schedule {
  int32_t lanes;            // the grid it was made for (0: none)
  int32_t group;            // heads per group: 1, 2 or 4
  const int32_t* offsets;   // lanes + 1
  const int32_t* entries;   // tile * group + head in the group
};

// Schedules for groups of 1, 2 and 4 heads; a launch with `heads` heads uses the largest group dividing it.
struct Schedules {
  Schedule by_group[3];
  __host__ __device__ const Schedule& for_heads(int heads) const {
    return by_group[heads % 4 == 0 ? 2 : heads % 2 == 0 ? 1 : 0];
  }
};
constexpr int kScheduleGroups[3] = {1, 2, 4};

// A list of tiles, each with the slices that touch it (CSR), the launch order (costliest first) and, for
// the persistent kernels, the schedules.
struct TileLists {
  int32_t num_tiles;
  const int32_t* offsets;  // num_tiles + 1
  const int32_t* slices;   // slice indices, grouped by tile
  const int32_t* order;    // tile indices, costliest first
  Schedules schedules;     // persistent (sm90) kernels only; lanes = 0 where none was made
};

struct TileHead {
  int tile;
  int head;
};

// The items of one CTA of a persistent grid of gridDim.x CTAs, in order: for each group of heads, the
// entries of lanes blockIdx.x, blockIdx.x + gridDim.x, ... (one lane per CTA when the grid is the
// schedule's; a smaller grid, e.g. forced by MAGI_FFA_SM90_CTAS, runs several lanes per CTA). Every role
// of a CTA (producer, consumers) walks the same sequence.
#if defined(__CUDACC__)
struct ItemWalker {
  const Schedule& schedule;  // in the kernel's parameter space (no registers for a copy)
  int heads;
  int first_head;
  int lane;
  int index;
  int end;
  __device__ ItemWalker(const Schedule& s, int num_heads)
      : schedule(s), heads(num_heads), first_head(0), lane(static_cast<int>(blockIdx.x)) {
    load_lane();
  }
  __device__ void load_lane() {
    const bool in = lane < schedule.lanes;
    index = in ? schedule.offsets[lane] : 0;
    end = in ? schedule.offsets[lane + 1] : 0;
  }
  __device__ bool next(TileHead* item) {
    for (;;) {
      if (index < end) {
        const int entry = schedule.entries[index++];
        item->tile = entry / schedule.group;
        item->head = first_head + entry % schedule.group;
        return true;
      }
      lane += static_cast<int>(gridDim.x);
      if (lane < schedule.lanes) {
        load_lane();
        continue;
      }
      first_head += schedule.group;
      if (first_head >= heads) return false;
      lane = static_cast<int>(blockIdx.x);
      load_lane();
    }
  }
};
#endif  // __CUDACC__

// The device part of a plan.
struct DevicePlan {
  const Slice* slices;
  int32_t num_slices;
  int32_t total_q;
  int32_t total_k;
  TileLists fwd;  // q tiles of kFwdBlockM rows
  TileLists dq;   // q tiles of kDqBlockM rows
  TileLists dkv;  // k tiles of kDkvBlockN keys
};

struct FwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  int32_t hq;
  int32_t hkv;
  int32_t group;  // hq / hkv
  float scale;
  float scale_log2;  // scale * log2(e)
  float softcap;     // 0 = off
  DevicePlan plan;
};

struct BwdParams {
  const void* dout;
  const void* q;
  const void* k;
  const void* v;
  const void* out;
  const float* lse;
  void* dq;
  void* dk;
  void* dv;
  float* delta;  // workspace [total_q, hq]
  int32_t hq;
  int32_t hkv;
  int32_t group;
  float scale;
  float scale_log2;
  float softcap;
  DevicePlan plan;
};

}  // namespace magi_ffa
