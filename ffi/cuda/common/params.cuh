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

// A list of tiles, each with the slices that touch it (CSR), and the launch order (costliest first).
struct TileLists {
  int32_t num_tiles;
  const int32_t* offsets;  // num_tiles + 1
  const int32_t* slices;   // slice indices, grouped by tile
  const int32_t* order;    // tile indices, costliest first
};

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
