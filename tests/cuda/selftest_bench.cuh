// selftest_bench.cuh: --bench, forward / backward timings of a few large bf16 shapes.
// Part of the self-test (tests/cuda/selftest.cu includes it, one translation unit), host-only code.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "magi_ffa.h"
#include "selftest_case.cuh"
#include "selftest_gpu.cuh"

namespace {

// ---------------------------------------------------------------------------------------------------
// --bench: forward / backward times (host clock around stream-synchronized batches; median of batches)
// and TFLOP/s from the visible area (forward 4 * area * hq * D, backward 2.5x).
struct BenchCase {
  std::string name;
  std::vector<SliceSpec> slices;
  int total = 0;
  int hq = 16;
  int hkv = 16;
  int head_dim = 128;
};

double slice_area(const SliceSpec& s) {
  const double lq = s.qe - s.qs, lk = s.ke - s.ks;
  if (lq <= 0 || lk <= 0) return 0;
  switch (s.type) {
    case MAGI_FFA_ATTN_FULL:
      return lq * lk;
    case MAGI_FFA_ATTN_CAUSAL:
    case MAGI_FFA_ATTN_INVCAUSAL:
      return lk > lq ? (2 * lk - lq + 1) * lq / 2 : lk * (lk + 1) / 2;
    default:
      return std::max(0.0, (lk - lq + 1) * lq);
  }
}

bool run_bench_case(const BenchCase& b, int batches, int per_batch, const std::vector<int32_t>& bwd_modes) {
  const int dtype = MAGI_FFA_DTYPE_BFLOAT16;
  const size_t q_count = static_cast<size_t>(b.total) * b.hq * b.head_dim;
  const size_t kv_count = static_cast<size_t>(b.total) * b.hkv * b.head_dim;
  std::vector<uint16_t> host(std::max(q_count, kv_count));
  Rng rng(5);
  for (auto& x : host) x = to_bits(static_cast<float>(rng.uniform() * 2 - 1), dtype);
  DeviceBuffer q, k, v, o, lse, dout, dq, dk, dv;
  CHECK(magi_ffa_malloc(&q.pointer, q_count * 2));
  CHECK(magi_ffa_malloc(&k.pointer, kv_count * 2));
  CHECK(magi_ffa_malloc(&v.pointer, kv_count * 2));
  CHECK(magi_ffa_malloc(&o.pointer, q_count * 2));
  CHECK(magi_ffa_malloc(&lse.pointer, static_cast<size_t>(b.total) * b.hq * 4));
  CHECK(magi_ffa_malloc(&dout.pointer, q_count * 2));
  CHECK(magi_ffa_malloc(&dq.pointer, q_count * 2));
  CHECK(magi_ffa_malloc(&dk.pointer, kv_count * 2));
  CHECK(magi_ffa_malloc(&dv.pointer, kv_count * 2));
  CHECK(magi_ffa_memcpy_h2d(q.pointer, host.data(), q_count * 2, nullptr));
  CHECK(magi_ffa_memcpy_h2d(k.pointer, host.data(), kv_count * 2, nullptr));
  CHECK(magi_ffa_memcpy_h2d(v.pointer, host.data() + 1, kv_count * 2 - 2, nullptr));
  CHECK(magi_ffa_memcpy_h2d(dout.pointer, host.data() + 2, q_count * 2 - 4, nullptr));
  const FlatSlices flat = flatten_slices(b.slices);
  double area = 0;
  for (const SliceSpec& s : b.slices) area += slice_area(s);
  void* plan = nullptr;
  CHECK(magi_ffa_plan_create(&plan, flat.q_ranges.data(), flat.k_ranges.data(), flat.types.data(),
                             static_cast<int32_t>(b.slices.size()), b.total, b.total));
  const PlanGuard plan_guard{plan};
  const float scale = 1.f / std::sqrt(static_cast<float>(b.head_dim));
  auto forward = [&]() {
    return magi_ffa_forward(q.pointer, k.pointer, v.pointer, o.pointer, static_cast<float*>(lse.pointer), plan, b.hq,
                            b.hkv, b.head_dim, dtype, scale, 0.f, 0, nullptr);
  };
  int32_t bwd_deterministic = 0;
  auto backward = [&]() {
    return magi_ffa_backward(dout.pointer, q.pointer, k.pointer, v.pointer, o.pointer,
                             static_cast<const float*>(lse.pointer), dq.pointer, dk.pointer, dv.pointer, plan, b.hq,
                             b.hkv, b.head_dim, dtype, scale, 0.f, bwd_deterministic, nullptr);
  };
  auto time_ms = [&](const std::function<int32_t()>& fn, double* median_ms) -> bool {
    for (int i = 0; i < 3; ++i) CHECK(fn());  // warm-up
    CHECK(magi_ffa_stream_synchronize(nullptr));
    std::vector<double> samples;
    for (int batch = 0; batch < batches; ++batch) {
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < per_batch; ++i) CHECK(fn());
      CHECK(magi_ffa_stream_synchronize(nullptr));
      const auto stop = std::chrono::steady_clock::now();
      samples.push_back(std::chrono::duration<double, std::milli>(stop - start).count() / per_batch);
    }
    std::sort(samples.begin(), samples.end());
    *median_ms = samples[samples.size() / 2];
    return true;
  };
  double fwd_ms = 0;
  if (!time_ms(forward, &fwd_ms)) return false;
  const double fwd_flops = 4.0 * area * b.hq * b.head_dim;
  std::string bwd_text;
  for (const int32_t mode : bwd_modes) {
    bwd_deterministic = mode;
    double bwd_ms = 0;
    if (!time_ms(backward, &bwd_ms)) return false;
    char part[128];
    std::snprintf(part, sizeof(part), "   bwd[%s] %8.3f ms %6.1f TFLOP/s", mode ? "det" : "fast", bwd_ms,
                  2.5 * fwd_flops / bwd_ms * 1e-9);
    bwd_text += part;
  }
  std::printf("bench %-40s fwd %8.3f ms %6.1f TFLOP/s%s   (tokens %d, h %d/%d, d %d)\n", b.name.c_str(), fwd_ms,
              fwd_flops / fwd_ms * 1e-9, bwd_text.c_str(), b.total, b.hq, b.hkv, b.head_dim);
  std::fflush(stdout);
  return true;
}

std::vector<BenchCase> make_bench_cases() {
  std::vector<BenchCase> cases;
  for (int d : {128, 64}) {
    const std::string ds = "_d" + std::to_string(d);
    cases.push_back({"full_8k" + ds, {{0, 8192, 0, 8192, 0}}, 8192, 16, 16, d});
    cases.push_back({"causal_8k" + ds, {{0, 8192, 0, 8192, 1}}, 8192, 16, 16, d});
  }
  cases.push_back({"causal_8k_gqa32_8_d128", {{0, 8192, 0, 8192, 1}}, 8192, 32, 8, 128});
  cases.push_back({"causal_16k_d128", {{0, 16384, 0, 16384, 1}}, 16384, 16, 16, 128});
  {
    BenchCase b{"varlen_causal_16x1k_d128", {}, 16384, 16, 16, 128};
    for (int n = 0; n < 16; ++n) b.slices.push_back({n * 1024, n * 1024 + 1024, n * 1024, n * 1024 + 1024, 1});
    cases.push_back(b);
  }
  {
    // Sliding window (1024, 0) over 16k tokens.
    BenchCase b{"sliding_window_1k_16k_d128", {{0, 1024, 0, 1024, 1}, {1024, 16384, 0, 16384, 3}}, 16384, 16, 16,
                128};
    cases.push_back(b);
  }
  cases.push_back({"full_16k_d128", {{0, 16384, 0, 16384, 0}}, 16384, 16, 16, 128});
  {
    // 64 causal documents of 256 tokens: few query stages per key tile (prologue / epilogue bound).
    BenchCase b{"shortdocs_64x256_causal_16k_d128", {}, 16384, 16, 16, 128};
    for (int n = 0; n < 64; ++n) b.slices.push_back({n * 256, n * 256 + 256, n * 256, n * 256 + 256, 1});
    cases.push_back(b);
  }
  {
    // Prefix tree: a 4k causal prompt, 8 causal branches of 1.5k that each also see the whole prompt.
    BenchCase b{"prefix_tree_4k_8x1536_16k_d128", {{0, 4096, 0, 4096, 1}}, 16384, 16, 16, 128};
    for (int n = 0; n < 8; ++n) {
      const int start = 4096 + n * 1536;
      b.slices.push_back({start, start + 1536, 0, 4096, 0});
      b.slices.push_back({start, start + 1536, start, start + 1536, 1});
    }
    cases.push_back(b);
  }
  {
    // MQA on a short sequence: few key tiles per kv head (grid underfill).
    BenchCase b{"mqa_causal_2k_h32_1_d128", {{0, 2048, 0, 2048, 1}}, 2048, 32, 1, 128};
    cases.push_back(b);
  }
  return cases;
}

}  // namespace
