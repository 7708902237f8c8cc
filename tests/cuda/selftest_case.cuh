// selftest_case.cuh: a self-test case (slices, shapes, dtype) and its random inputs: the seeded generator and
// the bf16 / fp16 bit conversions.
// Part of the self-test (tests/cuda/selftest.cu includes it, one translation unit), host-only code.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "magi_ffa.h"

namespace {

// ---------------------------------------------------------------------------------------------------
struct SliceSpec {
  int qs, qe, ks, ke, type;
};

// Slices as the flat arrays magi_ffa_plan_create takes: [qs, qe] and [ks, ke] pairs, one type per slice.
struct FlatSlices {
  std::vector<int32_t> q_ranges, k_ranges, types;
};

template <typename Slice>
FlatSlices flatten_slices(const std::vector<Slice>& slices) {
  FlatSlices flat;
  for (const Slice& s : slices) {
    flat.q_ranges.insert(flat.q_ranges.end(), {s.qs, s.qe});
    flat.k_ranges.insert(flat.k_ranges.end(), {s.ks, s.ke});
    flat.types.push_back(s.type);
  }
  return flat;
}

// Destroys a plan when the scope ends.
struct PlanGuard {
  void* plan;
  ~PlanGuard() { magi_ffa_plan_destroy(plan); }
};

struct Case {
  std::string name;
  std::vector<SliceSpec> slices;
  int total_q = 0;
  int total_k = 0;
  int hq = 1;
  int hkv = 1;
  int head_dim = 64;
  int dtype = MAGI_FFA_DTYPE_BFLOAT16;
  float softcap = 0.f;
  float scale = 0.f;         // 0: 1/sqrt(head_dim)
  float input_scale = 1.f;   // standard deviation of q and k
  bool quick = false;        // part of --quick
  bool check_determinism = false;
  bool nan_uncovered = true;  // fill q / dout rows that see nothing and k / v rows nobody sees with NaN
};

// Deterministic normal samples (splitmix64 + Box-Muller).
struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
  double normal() { return std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }
  int below(int n) { return static_cast<int>(next() % static_cast<uint64_t>(n)); }
};

uint16_t to_bits(float value, int dtype) {
  if (dtype == MAGI_FFA_DTYPE_BFLOAT16) {
    const __nv_bfloat16_raw raw = __float2bfloat16_rn(value);
    return raw.x;
  }
  const __half_raw raw = __float2half_rn(value);
  return raw.x;
}

float from_bits(uint16_t bits, int dtype) {
  if (dtype == MAGI_FFA_DTYPE_BFLOAT16) {
    __nv_bfloat16_raw raw;
    raw.x = bits;
    return __bfloat162float(__nv_bfloat16(raw));
  }
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}

// Random tensor rounded to the dtype: bits for the GPU, the rounded values as doubles for the reference.
void random_tensor(Rng& rng, size_t count, double stddev, int dtype, std::vector<uint16_t>* bits,
                   std::vector<double>* values) {
  bits->resize(count);
  values->resize(count);
  for (size_t i = 0; i < count; ++i) {
    const uint16_t b = to_bits(static_cast<float>(rng.normal() * stddev), dtype);
    (*bits)[i] = b;
    (*values)[i] = from_bits(b, dtype);
  }
}

}  // namespace
