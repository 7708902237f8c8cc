// selftest.cu: standalone GPU check of libmagi_ffa.so through its C ABI only (magi_ffa.h).
//
// Every case draws fresh random inputs, poisons the outputs (0xFF bytes = NaN in bf16, fp16 and fp32),
// runs forward and backward on the GPU and compares with a dense float64 CPU reference written from the
// semantics table (per-cell visibility, no tiling): relative L2 error of out, dq, dk, dv, max abs error
// of lse, exact -inf / 0 for rows that see nothing, no NaN anywhere. The backward runs in each mode of
// --bwd-mode (one result line per mode); in deterministic mode the cases marked for it run twice and
// compare bytes (the fast mode's dq uses fp32 atomics, so only its accuracy is checked).
//
// Usage: magi_ffa_selftest [--quick] [--filter SUBSTRING] [--list] [--cpu-replay] [--bench]
//                          [--bwd-mode fast|deterministic|both] [--repeat N]
//   --bwd-mode    backward mode(s) to check / time (default both; fast = deterministic 0, the API default)
//   --bench       time forward / backward on a few large shapes (bf16), print ms and TFLOP/s
//   --quick       only the small cases (for compute-sanitizer runs)
//   --repeat N    run each selected case (or --bench case) N times in this process, stopping at the first
//                 failure (intermittent-hang hunting, e.g. --bench --filter shortdocs --repeat 200)
//   --cpu-replay  no GPU: replays the kernels' schedule on the CPU (the same plan tile lists, walkers,
//                 per-warp skip and mask decisions, tile sizes) with float64 math, and compares it with
//                 the reference. Catches scheduling / masking mistakes on a machine without a GPU.
// Prints one line per case and "N passed, M failed"; exits 1 on any failure.
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

#include "common/env.cuh"
#include "common/params.cuh"
#include "common/walkers.cuh"
#include "magi_ffa.h"
#include "plan.cuh"
#include "selftest_sm90.cuh"
#include "sm80/backward.cuh"

namespace {

// ---------------------------------------------------------------------------------------------------
struct SliceSpec {
  int qs, qe, ks, ke, type;
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

// ---------------------------------------------------------------------------------------------------
// Reference (float64, dense per cell, straight from the semantics table).
bool cell_visible_ref(const SliceSpec& s, int i, int j) {
  if (i < s.qs || i >= s.qe || j < s.ks || j >= s.ke) return false;
  switch (s.type) {
    case MAGI_FFA_ATTN_FULL:
      return true;
    case MAGI_FFA_ATTN_CAUSAL:
      return j - i <= s.ke - s.qe;
    case MAGI_FFA_ATTN_INVCAUSAL:
      return j - i >= s.ks - s.qs;
    case MAGI_FFA_ATTN_BICAUSAL:
      return j - i <= s.ke - s.qe && j - i >= s.ks - s.qs;
    default:
      return false;
  }
}

struct Reference {
  std::vector<double> out, lse, dq, dk, dv;
};

void reference(const Case& c, const std::vector<double>& q, const std::vector<double>& k,
               const std::vector<double>& v, const std::vector<double>& dout, Reference* ref) {
  const int D = c.head_dim;
  const int group = c.hq / c.hkv;
  const double scale = c.scale > 0.f ? c.scale : 1.0 / std::sqrt(static_cast<double>(D));
  const double cap = c.softcap;
  ref->out.assign(static_cast<size_t>(c.total_q) * c.hq * D, 0.0);
  ref->lse.assign(static_cast<size_t>(c.total_q) * c.hq, -INFINITY);
  ref->dq.assign(static_cast<size_t>(c.total_q) * c.hq * D, 0.0);
  std::vector<std::vector<double>> dk_per_head(c.hq), dv_per_head(c.hq);

  // Visible keys of each row, with multiplicity (a cell in two slices counts twice, like the kernel).
  std::vector<std::vector<int>> keys_of_row(c.total_q);
  for (const SliceSpec& s : c.slices) {
    for (int i = s.qs; i < s.qe; ++i) {
      for (int j = s.ks; j < s.ke; ++j) {
        if (cell_visible_ref(s, i, j)) keys_of_row[i].push_back(j);
      }
    }
  }

  auto head_work = [&](int h) {
    const int hk = h / group;
    std::vector<double>& dk = dk_per_head[h];
    std::vector<double>& dv = dv_per_head[h];
    dk.assign(static_cast<size_t>(c.total_k) * D, 0.0);
    dv.assign(static_cast<size_t>(c.total_k) * D, 0.0);
    std::vector<double> logits, probs, dtanh;
    for (int i = 0; i < c.total_q; ++i) {
      const std::vector<int>& keys = keys_of_row[i];
      if (keys.empty()) continue;
      const double* qi = &q[(static_cast<size_t>(i) * c.hq + h) * D];
      const double* doi = &dout[(static_cast<size_t>(i) * c.hq + h) * D];
      logits.resize(keys.size());
      dtanh.resize(keys.size());
      double max_logit = -INFINITY;
      for (size_t n = 0; n < keys.size(); ++n) {
        const double* kj = &k[(static_cast<size_t>(keys[n]) * c.hkv + hk) * D];
        double dot = 0;
        for (int d = 0; d < D; ++d) dot += qi[d] * kj[d];
        double s = dot * scale;
        dtanh[n] = 1.0;
        if (cap > 0) {
          const double t = std::tanh(s / cap);
          s = cap * t;
          dtanh[n] = 1.0 - t * t;
        }
        logits[n] = s;
        max_logit = std::max(max_logit, s);
      }
      double sum = 0;
      for (double s : logits) sum += std::exp(s - max_logit);
      const double lse = max_logit + std::log(sum);
      ref->lse[static_cast<size_t>(i) * c.hq + h] = lse;
      probs.resize(keys.size());
      double* oi = &ref->out[(static_cast<size_t>(i) * c.hq + h) * D];
      for (size_t n = 0; n < keys.size(); ++n) {
        probs[n] = std::exp(logits[n] - lse);
        const double* vj = &v[(static_cast<size_t>(keys[n]) * c.hkv + hk) * D];
        for (int d = 0; d < D; ++d) oi[d] += probs[n] * vj[d];
      }
      // Backward.
      double delta = 0;
      std::vector<double> dp(keys.size());
      for (size_t n = 0; n < keys.size(); ++n) {
        const double* vj = &v[(static_cast<size_t>(keys[n]) * c.hkv + hk) * D];
        double dot = 0;
        for (int d = 0; d < D; ++d) dot += doi[d] * vj[d];
        dp[n] = dot;
        delta += probs[n] * dot;
      }
      double* dqi = &ref->dq[(static_cast<size_t>(i) * c.hq + h) * D];
      for (size_t n = 0; n < keys.size(); ++n) {
        const int j = keys[n];
        const double ds = probs[n] * (dp[n] - delta) * dtanh[n] * scale;
        const double* kj = &k[(static_cast<size_t>(j) * c.hkv + hk) * D];
        for (int d = 0; d < D; ++d) {
          dqi[d] += ds * kj[d];
          dk[static_cast<size_t>(j) * D + d] += ds * qi[d];
          dv[static_cast<size_t>(j) * D + d] += probs[n] * doi[d];
        }
      }
    }
  };
  const unsigned threads = std::max(1u, std::min<unsigned>(std::thread::hardware_concurrency(), c.hq));
  for (int h0 = 0; h0 < c.hq; h0 += static_cast<int>(threads)) {
    std::vector<std::thread> pool;
    for (int h = h0; h < std::min(c.hq, h0 + static_cast<int>(threads)); ++h) pool.emplace_back(head_work, h);
    for (std::thread& t : pool) t.join();
  }
  ref->dk.assign(static_cast<size_t>(c.total_k) * c.hkv * D, 0.0);
  ref->dv.assign(static_cast<size_t>(c.total_k) * c.hkv * D, 0.0);
  for (int h = 0; h < c.hq; ++h) {
    const int hk = h / group;
    for (int j = 0; j < c.total_k; ++j) {
      for (int d = 0; d < D; ++d) {
        ref->dk[(static_cast<size_t>(j) * c.hkv + hk) * D + d] += dk_per_head[h][static_cast<size_t>(j) * D + d];
        ref->dv[(static_cast<size_t>(j) * c.hkv + hk) * D + d] += dv_per_head[h][static_cast<size_t>(j) * D + d];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// GPU side through the C ABI.
#define CHECK(call)                                                                                   \
  do {                                                                                                \
    const int32_t status_ = (call);                                                                   \
    if (status_ != 0) {                                                                               \
      std::snprintf(error, sizeof(error), "%s -> %d: %s", #call, status_, magi_ffa_last_error());     \
      return false;                                                                                   \
    }                                                                                                 \
  } while (0)

struct DeviceBuffer {
  void* pointer = nullptr;
  ~DeviceBuffer() {
    if (pointer) magi_ffa_free(pointer);
  }
};

struct GpuResult {
  std::vector<uint16_t> out, dq, dk, dv;
  std::vector<float> lse;
};

char error[2048];

bool run_gpu(const Case& c, const std::vector<uint16_t>& q, const std::vector<uint16_t>& k,
             const std::vector<uint16_t>& v, const std::vector<uint16_t>& dout, int32_t bwd_deterministic,
             GpuResult* result) {
  const size_t q_bytes = q.size() * 2, kv_bytes = k.size() * 2;
  const size_t lse_bytes = static_cast<size_t>(c.total_q) * c.hq * sizeof(float);
  DeviceBuffer dq_in, dk_in, dv_in, ddo, dout_buf, dlse, ddq, ddk, ddv;
  CHECK(magi_ffa_malloc(&dq_in.pointer, q_bytes));
  CHECK(magi_ffa_malloc(&dk_in.pointer, kv_bytes));
  CHECK(magi_ffa_malloc(&dv_in.pointer, kv_bytes));
  CHECK(magi_ffa_malloc(&ddo.pointer, q_bytes));
  CHECK(magi_ffa_malloc(&dout_buf.pointer, q_bytes));
  CHECK(magi_ffa_malloc(&dlse.pointer, lse_bytes));
  CHECK(magi_ffa_malloc(&ddq.pointer, q_bytes));
  CHECK(magi_ffa_malloc(&ddk.pointer, kv_bytes));
  CHECK(magi_ffa_malloc(&ddv.pointer, kv_bytes));
  CHECK(magi_ffa_memcpy_h2d(dq_in.pointer, q.data(), q_bytes, nullptr));
  CHECK(magi_ffa_memcpy_h2d(dk_in.pointer, k.data(), kv_bytes, nullptr));
  CHECK(magi_ffa_memcpy_h2d(dv_in.pointer, v.data(), kv_bytes, nullptr));
  CHECK(magi_ffa_memcpy_h2d(ddo.pointer, dout.data(), q_bytes, nullptr));
  // Poison every output: 0xFFFF is NaN in bf16 and fp16, 0xFFFFFFFF in fp32.
  CHECK(magi_ffa_memset(dout_buf.pointer, 0xFF, q_bytes, nullptr));
  CHECK(magi_ffa_memset(dlse.pointer, 0xFF, lse_bytes, nullptr));
  CHECK(magi_ffa_memset(ddq.pointer, 0xFF, q_bytes, nullptr));
  CHECK(magi_ffa_memset(ddk.pointer, 0xFF, kv_bytes, nullptr));
  CHECK(magi_ffa_memset(ddv.pointer, 0xFF, kv_bytes, nullptr));

  std::vector<int32_t> q_ranges, k_ranges, types;
  for (const SliceSpec& s : c.slices) {
    q_ranges.push_back(s.qs);
    q_ranges.push_back(s.qe);
    k_ranges.push_back(s.ks);
    k_ranges.push_back(s.ke);
    types.push_back(s.type);
  }
  void* plan = nullptr;
  CHECK(magi_ffa_plan_create(&plan, q_ranges.data(), k_ranges.data(), types.data(),
                             static_cast<int32_t>(c.slices.size()), c.total_q, c.total_k));
  struct PlanGuard {
    void* plan;
    ~PlanGuard() { magi_ffa_plan_destroy(plan); }
  } plan_guard{plan};

  const float scale = c.scale > 0.f ? c.scale : 1.f / std::sqrt(static_cast<float>(c.head_dim));
  CHECK(magi_ffa_stream_synchronize(nullptr));  // inputs and poison in place before the kernels run
  void* stream = nullptr;
  CHECK(magi_ffa_stream_create(&stream));
  struct StreamGuard {
    void* stream;
    ~StreamGuard() { magi_ffa_stream_destroy(stream); }
  } stream_guard{stream};
  CHECK(magi_ffa_forward(dq_in.pointer, dk_in.pointer, dv_in.pointer, dout_buf.pointer,
                         static_cast<float*>(dlse.pointer), plan, c.hq, c.hkv, c.head_dim, c.dtype, scale,
                         c.softcap, 1, stream));
  CHECK(magi_ffa_backward(ddo.pointer, dq_in.pointer, dk_in.pointer, dv_in.pointer, dout_buf.pointer,
                          static_cast<const float*>(dlse.pointer), ddq.pointer, ddk.pointer, ddv.pointer, plan,
                          c.hq, c.hkv, c.head_dim, c.dtype, scale, c.softcap, bwd_deterministic, stream));
  CHECK(magi_ffa_stream_synchronize(stream));

  result->out.resize(q.size());
  result->dq.resize(q.size());
  result->dk.resize(k.size());
  result->dv.resize(k.size());
  result->lse.resize(static_cast<size_t>(c.total_q) * c.hq);
  CHECK(magi_ffa_memcpy_d2h(result->out.data(), dout_buf.pointer, q_bytes, nullptr));
  CHECK(magi_ffa_memcpy_d2h(result->lse.data(), dlse.pointer, lse_bytes, nullptr));
  CHECK(magi_ffa_memcpy_d2h(result->dq.data(), ddq.pointer, q_bytes, nullptr));
  CHECK(magi_ffa_memcpy_d2h(result->dk.data(), ddk.pointer, kv_bytes, nullptr));
  CHECK(magi_ffa_memcpy_d2h(result->dv.data(), ddv.pointer, kv_bytes, nullptr));
  CHECK(magi_ffa_stream_synchronize(nullptr));
  return true;
}

// Relative L2 error; NaN if the GPU tensor holds a NaN / inf (an unwritten or broken element). The
// reference norm is floored at an RMS of 1e-2 per element: a gradient that is exactly zero in float64
// (a diagonal-only BICAUSAL band, where dS = P * (dP - Delta) cancels) is then judged by its absolute
// error, which is rounding-sized, instead of dividing by zero.
double rel_l2(const std::vector<uint16_t>& got, const std::vector<double>& want, int dtype) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = from_bits(got[i], dtype);
    if (!std::isfinite(g)) return NAN;
    diff += (g - want[i]) * (g - want[i]);
    norm += want[i] * want[i];
  }
  const double norm_floor = 1e-4 * static_cast<double>(got.size());
  return std::sqrt(diff / std::max(norm, norm_floor));
}

// ---------------------------------------------------------------------------------------------------
// CPU replay of the kernels' schedule (see --cpu-replay). Mirrors sm80/forward.cu / backward_*.cu decision by
// decision; the arithmetic is plain float64, so any difference from the reference is a schedule bug
// (a visible cell skipped, an invisible one let through, a cell visited twice).
struct Replay {
  std::vector<double> out, lse, dq, dk, dv;
};

std::vector<magi_ffa::Slice> to_slices(const Case& c) {
  std::vector<magi_ffa::Slice> slices;
  for (const SliceSpec& s : c.slices) slices.push_back({s.qs, s.qe, s.ks, s.ke, s.type});
  return slices;
}

bool is_permutation_of_tiles(const std::vector<int32_t>& order) {
  std::vector<int32_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    if (sorted[i] != static_cast<int32_t>(i)) return false;
  }
  return true;
}

// fused_dq: replay the fast backward (dQ added from the dK/dV walk, sm80/backward_dkdv.cu's fused kernel) instead of
// the deterministic one's separate dQ kernel.
void replay(const Case& c, const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v,
            const std::vector<double>& dout, const Reference& ref, bool fused_dq, Replay* out,
            std::string* problem) {
  using namespace magi_ffa;
  const int D = c.head_dim;
  const int group = c.hq / c.hkv;
  const double scale = c.scale > 0.f ? c.scale : 1.0 / std::sqrt(static_cast<double>(D));
  const double cap = c.softcap;
  const std::vector<Slice> slices = to_slices(c);
  const HostTileLists fwd = build_query_tiles(slices, c.total_q, kFwdBlockM);
  const HostTileLists dql = build_query_tiles(slices, c.total_q, kDqBlockM);
  const HostTileLists dkv = build_key_tiles(slices, c.total_k, kDkvBlockN);
  if (!is_permutation_of_tiles(fwd.order) || !is_permutation_of_tiles(dql.order) ||
      !is_permutation_of_tiles(dkv.order)) {
    *problem += " tile order is not a permutation;";
  }
  // The persistent kernels' schedules: every (tile, head in the group) exactly once, for any lane count.
  const HostTileLists wide_keys = build_key_tiles(slices, c.total_k, kFusedBlockNWide);
  for (const HostTileLists* lists : {&fwd, &wide_keys}) {
    for (const int lanes : {1, 3, 132}) {
      for (const int group : kScheduleGroups) {
        const HostSchedule schedule = build_schedule(*lists, lanes, group, 1024);
        std::vector<int> seen(lists->order.size() * static_cast<size_t>(group), 0);
        bool ok = schedule.offsets.size() == static_cast<size_t>(lanes) + 1 && schedule.offsets.front() == 0 &&
                  schedule.offsets.back() == static_cast<int32_t>(schedule.entries.size());
        for (const int32_t entry : schedule.entries) {
          ok = ok && entry >= 0 && static_cast<size_t>(entry) < seen.size() && seen[static_cast<size_t>(entry)]++ == 0;
        }
        for (const int count : seen) ok = ok && count == 1;
        if (!ok) *problem += " a schedule misses or repeats an item;";
      }
    }
  }
  // Out-of-range rows / keys are zero-filled by the kernels' loads.
  auto q_row = [&](int i, int h, int d) { return i < c.total_q ? q[(static_cast<size_t>(i) * c.hq + h) * D + d] : 0.0; };
  auto do_row = [&](int i, int h, int d) {
    return i < c.total_q ? dout[(static_cast<size_t>(i) * c.hq + h) * D + d] : 0.0;
  };
  auto k_row = [&](int j, int hk, int d) {
    return j < c.total_k ? k[(static_cast<size_t>(j) * c.hkv + hk) * D + d] : 0.0;
  };
  auto v_row = [&](int j, int hk, int d) {
    return j < c.total_k ? v[(static_cast<size_t>(j) * c.hkv + hk) * D + d] : 0.0;
  };
  // Capped, scaled logit and its tanh derivative.
  auto logit = [&](int i, int h, int j, double* dtanh) {
    const int hk = h / group;
    double dot = 0;
    for (int d = 0; d < D; ++d) dot += q_row(i, h, d) * k_row(j, hk, d);
    double s = dot * scale;
    *dtanh = 1.0;
    if (cap > 0) {
      const double t = std::tanh(s / cap);
      s = cap * t;
      *dtanh = 1.0 - t * t;
    }
    return s;
  };
  // Rows past total_q read lse = 0 and Delta = 0 in the kernels (zero-filled); -inf lse gives P = 0.
  auto lse_of = [&](int i, int h) { return i < c.total_q ? ref.lse[static_cast<size_t>(i) * c.hq + h] : 0.0; };
  std::vector<double> delta(static_cast<size_t>(c.total_q) * c.hq, 0.0);
  for (int i = 0; i < c.total_q; ++i) {
    for (int h = 0; h < c.hq; ++h) {
      double sum = 0;
      for (int d = 0; d < D; ++d) sum += do_row(i, h, d) * ref.out[(static_cast<size_t>(i) * c.hq + h) * D + d];
      delta[static_cast<size_t>(i) * c.hq + h] = sum;
    }
  }
  auto delta_of = [&](int i, int h) { return i < c.total_q ? delta[static_cast<size_t>(i) * c.hq + h] : 0.0; };

  out->out.assign(static_cast<size_t>(c.total_q) * c.hq * D, 0.0);
  out->lse.assign(static_cast<size_t>(c.total_q) * c.hq, -INFINITY);
  out->dq.assign(static_cast<size_t>(c.total_q) * c.hq * D, 0.0);
  out->dk.assign(static_cast<size_t>(c.total_k) * c.hkv * D, 0.0);
  out->dv.assign(static_cast<size_t>(c.total_k) * c.hkv * D, 0.0);

  // Forward: one CTA per (q tile, head), warps of 16 rows.
  for (int tile = 0; tile < static_cast<int>(fwd.order.size()); ++tile) {
    for (int h = 0; h < c.hq; ++h) {
      const int hk = h / group;
      const int m0 = tile * kFwdBlockM;
      std::vector<double> row_max(kFwdBlockM, -INFINITY), row_sum(kFwdBlockM, 0.0);
      std::vector<double> acc(static_cast<size_t>(kFwdBlockM) * D, 0.0);
      QueryTileWalker<kFwdBlockM, kFwdBlockN> it{};
      it.slices = slices.data();
      it.list = fwd.slices.data();
      it.pos = fwd.offsets[tile];
      it.end = fwd.offsets[tile + 1];
      it.m0 = m0;
      for (bool valid = it.next_slice(); valid; valid = it.advance()) {
        for (int w = 0; w < kFwdWarps; ++w) {
          const int w0 = m0 + 16 * w;
          if (!warp_rows_see_keys(it.slice, w0, it.n0, kFwdBlockN)) continue;
          const bool masked = tile_needs_mask(it.slice, w0, 16, it.n0, kFwdBlockN);
          for (int i = w0; i < w0 + 16; ++i) {
            const int r = i - m0;
            for (int j = it.n0; j < it.n0 + kFwdBlockN; ++j) {
              if (masked && !cell_visible(it.slice, i, j)) continue;
              double dt;
              const double s = logit(i, h, j, &dt);
              const double new_max = std::max(row_max[r], s);
              const double rescale = std::exp(row_max[r] - new_max);
              const double prob = std::exp(s - new_max);
              row_sum[r] = row_sum[r] * rescale + prob;
              for (int d = 0; d < D; ++d) {
                acc[static_cast<size_t>(r) * D + d] = acc[static_cast<size_t>(r) * D + d] * rescale + prob * v_row(j, hk, d);
              }
              row_max[r] = new_max;
            }
          }
        }
      }
      for (int r = 0; r < kFwdBlockM && m0 + r < c.total_q; ++r) {
        const size_t row = static_cast<size_t>(m0 + r) * c.hq + h;
        if (row_sum[r] > 0) {
          out->lse[row] = row_max[r] + std::log(row_sum[r]);
          for (int d = 0; d < D; ++d) out->out[row * D + d] = acc[static_cast<size_t>(r) * D + d] / row_sum[r];
        }
      }
    }
  }

  // dK / dV: one CTA per (k tile, kv head), warps of 16 keys, stages of kDkvBlockM rows in sub-blocks. The
  // fast mode's fused kernel walks tiles of fused_block_n(...) keys (its own plan list).
  auto replay_dkv = [&](auto block_n_constant) {
    constexpr int BN = decltype(block_n_constant)::value;
    const HostTileLists key_tiles = BN == kDkvBlockN ? dkv : build_key_tiles(slices, c.total_k, BN);
    if (!is_permutation_of_tiles(key_tiles.order)) *problem += " key tile order is not a permutation;";
    const int SUB = dkv_sub_m(D);
    // The fast mode splits a kv head's query heads over CTAs when the grid is small (the H100 / H200 SM
    // count, 132, stands in for the device's).
    const int splits = fused_dq ? fused_head_splits(static_cast<int>(key_tiles.order.size()), c.hkv, group, 132) : 1;
    const int heads_per_cta = group / splits;
    for (int tile = 0; tile < static_cast<int>(key_tiles.order.size()); ++tile) {
      for (int cta = 0; cta < c.hkv * splits; ++cta) {
        const int hk = cta / splits;
        const int head0 = hk * group + (cta % splits) * heads_per_cta;
        const int n0 = tile * BN;
        KeyTileWalker<BN, kDkvBlockM> it{};
        it.slices = slices.data();
        it.list = key_tiles.slices.data();
        it.pos = key_tiles.offsets[tile];
        it.end = key_tiles.offsets[tile + 1];
        it.n0 = n0;
        it.group = heads_per_cta;
        for (bool valid = it.next_slice(); valid; valid = it.advance()) {
          const int h = head0 + it.head_in_group;
          for (int sub0 = 0; sub0 < kDkvBlockM; sub0 += SUB) {
            const int m0 = it.m0 + sub0;
            for (int w = 0; w < BN / 16; ++w) {
              const int w0 = n0 + 16 * w;
              if (!warp_keys_seen_by_rows(it.slice, w0, m0, SUB)) continue;
              const bool masked = tile_needs_mask(it.slice, m0, SUB, w0, 16);
              for (int j = w0; j < w0 + 16; ++j) {
                for (int i = m0; i < m0 + SUB; ++i) {
                  if (masked && !cell_visible(it.slice, i, j)) continue;
                  double dt;
                  const double s = logit(i, h, j, &dt);
                  const double lse = lse_of(i, h);
                  const double prob = std::isinf(lse) ? 0.0 : std::exp(s - lse);
                  double dp = 0;
                  for (int d = 0; d < D; ++d) dp += do_row(i, h, d) * v_row(j, hk, d);
                  const double ds = prob * (dp - delta_of(i, h)) * dt;
                  if (fused_dq) {
                    // The fused dQ phase: the warp owning row i's 16-row band of the stage skips the step when
                    // its rows see none of the tile's keys; rows at or past q_hi are not added.
                    const int band0 = it.m0 + 16 * ((i - it.m0) / 16);
                    if (i < it.q_hi && warp_rows_see_keys(it.slice, band0, n0, BN)) {
                      for (int d = 0; d < D; ++d) {
                        out->dq[(static_cast<size_t>(i) * c.hq + h) * D + d] += scale * ds * k_row(j, hk, d);
                      }
                    }
                  }
                  if (j >= c.total_k) continue;  // not stored
                  for (int d = 0; d < D; ++d) {
                    out->dk[(static_cast<size_t>(j) * c.hkv + hk) * D + d] += scale * ds * q_row(i, h, d);
                    out->dv[(static_cast<size_t>(j) * c.hkv + hk) * D + d] += prob * do_row(i, h, d);
                  }
                }
              }
            }
          }
        }
      }
    }
  };
  // MAGI_FFA_BWD_BLOCK_N, parsed by the library's own rule, so the replay walks the tiles the GPU run walks.
  int forced_block_n = 0;
  if (!parse_bwd_block_n(std::getenv("MAGI_FFA_BWD_BLOCK_N"), &forced_block_n)) {
    std::fprintf(stderr, "MAGI_FFA_BWD_BLOCK_N must be 64, 128 or unset\n");
    std::exit(2);
  }
  const HostTileLists wide = build_key_tiles(slices, c.total_k, kFusedBlockNWide);
  const double wide_stages = fused_mean_stages(slices.data(), wide.offsets.data(), wide.slices.data(),
                                               static_cast<int>(wide.order.size()), kFusedBlockNWide);
  if (fused_dq && fused_block_n(wide_stages, group, forced_block_n) == kFusedBlockNWide) {
    replay_dkv(std::integral_constant<int, kFusedBlockNWide>{});
  } else {
    replay_dkv(std::integral_constant<int, kDkvBlockN>{});
  }

  // dQ: one CTA per (q tile, head), warps of 16 rows (deterministic mode only).
  for (int tile = 0; !fused_dq && tile < static_cast<int>(dql.order.size()); ++tile) {
    for (int h = 0; h < c.hq; ++h) {
      const int hk = h / group;
      const int m0 = tile * kDqBlockM;
      QueryTileWalker<kDqBlockM, kDqBlockN> it{};
      it.slices = slices.data();
      it.list = dql.slices.data();
      it.pos = dql.offsets[tile];
      it.end = dql.offsets[tile + 1];
      it.m0 = m0;
      for (bool valid = it.next_slice(); valid; valid = it.advance()) {
        for (int w = 0; w < kDqWarps; ++w) {
          const int w0 = m0 + 16 * w;
          if (!warp_rows_see_keys(it.slice, w0, it.n0, kDqBlockN)) continue;
          const bool masked = tile_needs_mask(it.slice, w0, 16, it.n0, kDqBlockN);
          for (int i = w0; i < w0 + 16; ++i) {
            for (int j = it.n0; j < it.n0 + kDqBlockN; ++j) {
              if (masked && !cell_visible(it.slice, i, j)) continue;
              double dt;
              const double s = logit(i, h, j, &dt);
              const double lse = lse_of(i, h);
              const double prob = std::isinf(lse) ? 0.0 : std::exp(s - lse);
              double dp = 0;
              for (int d = 0; d < D; ++d) dp += do_row(i, h, d) * v_row(j, hk, d);
              const double ds = prob * (dp - delta_of(i, h)) * dt;
              if (i >= c.total_q) continue;  // not stored
              for (int d = 0; d < D; ++d) {
                out->dq[(static_cast<size_t>(i) * c.hq + h) * D + d] += scale * ds * k_row(j, hk, d);
              }
            }
          }
        }
      }
    }
  }
}

double rel_l2_double(const std::vector<double>& got, const std::vector<double>& want) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return NAN;
    diff += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  if (norm == 0) return diff == 0 ? 0 : INFINITY;
  return std::sqrt(diff / norm);
}

bool run_replay_case(const Case& c, const std::vector<int32_t>& bwd_modes) {
  const size_t q_count = static_cast<size_t>(c.total_q) * c.hq * c.head_dim;
  const size_t kv_count = static_cast<size_t>(c.total_k) * c.hkv * c.head_dim;
  Rng rng(99);
  std::vector<uint16_t> bits;
  std::vector<double> qd, kd, vd, dod;
  random_tensor(rng, q_count, c.input_scale, c.dtype, &bits, &qd);
  random_tensor(rng, kv_count, c.input_scale, c.dtype, &bits, &kd);
  random_tensor(rng, kv_count, 1.0, c.dtype, &bits, &vd);
  random_tensor(rng, q_count, 1.0, c.dtype, &bits, &dod);
  Reference ref;
  reference(c, qd, kd, vd, dod, &ref);
  bool all_ok = true;
  for (const int32_t deterministic : bwd_modes) {
    Replay rep;
    std::string problem;
    replay(c, qd, kd, vd, dod, ref, deterministic == 0, &rep, &problem);
    // The reference's Delta is sum_j P dP exactly; the replay's is dO . out: equal up to rounding.
    const double e_out = rel_l2_double(rep.out, ref.out);
    const double e_dq = rel_l2_double(rep.dq, ref.dq);
    const double e_dk = rel_l2_double(rep.dk, ref.dk);
    const double e_dv = rel_l2_double(rep.dv, ref.dv);
    double e_lse = 0;
    for (size_t i = 0; i < rep.lse.size(); ++i) {
      if (std::isinf(ref.lse[i]) != std::isinf(rep.lse[i])) {
        e_lse = INFINITY;
      } else if (!std::isinf(ref.lse[i])) {
        e_lse = std::max(e_lse, std::fabs(rep.lse[i] - ref.lse[i]));
      }
    }
    const double tol = 1e-9;
    const bool ok = problem.empty() && e_out <= tol && e_dq <= tol && e_dk <= tol && e_dv <= tol && e_lse <= tol;
    const std::string label = c.name + (deterministic ? " [det]" : " [fast]");
    std::printf("%s replay %-52s out %.1e lse %.1e dq %.1e dk %.1e dv %.1e%s\n", ok ? "PASS" : "FAIL",
                label.c_str(), e_out, e_lse, e_dq, e_dk, e_dv, problem.c_str());
    std::fflush(stdout);
    all_ok = all_ok && ok;
  }
  return all_ok;
}

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
  std::vector<int32_t> q_ranges, k_ranges, types;
  double area = 0;
  for (const SliceSpec& s : b.slices) {
    q_ranges.insert(q_ranges.end(), {s.qs, s.qe});
    k_ranges.insert(k_ranges.end(), {s.ks, s.ke});
    types.push_back(s.type);
    area += slice_area(s);
  }
  void* plan = nullptr;
  CHECK(magi_ffa_plan_create(&plan, q_ranges.data(), k_ranges.data(), types.data(),
                             static_cast<int32_t>(b.slices.size()), b.total, b.total));
  struct PlanGuard {
    void* plan;
    ~PlanGuard() { magi_ffa_plan_destroy(plan); }
  } plan_guard{plan};
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

// ---------------------------------------------------------------------------------------------------
std::vector<Case> make_cases() {
  std::vector<Case> cases;
  auto add = [&](Case c) { cases.push_back(std::move(c)); };
  magi_ffa_selftest::add_sm90_forward_cases(&cases);  // forward-kernel edges (selftest_sm90.cuh)
  const int FP = MAGI_FFA_DTYPE_FLOAT16;
  const int F = 0, C = 1, IC = 2, BC = 3;

  {
    Case c;
    c.name = "full_256_d64_bf16";
    c.slices = {{0, 256, 0, 256, F}};
    c.total_q = c.total_k = 256;
    c.hq = c.hkv = 2;
    c.quick = true;
    add(c);
  }
  {
    Case c;
    c.name = "causal_300_d128_bf16";
    c.slices = {{0, 300, 0, 300, C}};
    c.total_q = c.total_k = 300;
    c.hq = c.hkv = 2;
    c.head_dim = 128;
    c.quick = true;
    c.check_determinism = true;
    add(c);
  }
  {
    Case c;
    c.name = "causal_1024_d128_fp16";
    c.slices = {{0, 1024, 0, 1024, C}};
    c.total_q = c.total_k = 1024;
    c.hq = c.hkv = 2;
    c.head_dim = 128;
    c.dtype = FP;
    add(c);
  }
  {
    Case c;
    c.name = "causal_q200_k300_bottom_right_d64_fp16";
    c.slices = {{0, 200, 0, 300, C}};
    c.total_q = 200;
    c.total_k = 300;
    c.hq = c.hkv = 2;
    c.dtype = FP;
    add(c);
  }
  {
    Case c;
    c.name = "causal_q300_k130_empty_top_rows_d128_bf16";
    c.slices = {{0, 300, 0, 130, C}};
    c.total_q = 300;
    c.total_k = 130;
    c.hq = c.hkv = 1;
    c.head_dim = 128;
    add(c);
  }
  {
    Case c;
    c.name = "varlen_causal_docs_gqa4_d128_bf16";
    const int cu[] = {0, 37, 160, 161, 400, 517};
    for (int n = 0; n + 1 < 6; ++n) c.slices.push_back({cu[n], cu[n + 1], cu[n], cu[n + 1], C});
    c.total_q = c.total_k = 517;
    c.hq = 8;
    c.hkv = 2;
    c.head_dim = 128;
    c.check_determinism = true;
    add(c);
  }
  {
    Case c;
    c.name = "varlen_full_docs_d64_fp16";
    const int cu[] = {0, 70, 71, 200, 333};
    for (int n = 0; n + 1 < 5; ++n) c.slices.push_back({cu[n], cu[n + 1], cu[n], cu[n + 1], F});
    c.total_q = c.total_k = 333;
    c.hq = c.hkv = 2;
    c.dtype = FP;
    c.quick = true;
    add(c);
  }
  {
    Case c;
    c.name = "inv_causal_q257_k300_d64_bf16";
    c.slices = {{0, 257, 0, 300, IC}};
    c.total_q = 257;
    c.total_k = 300;
    c.hq = c.hkv = 2;
    add(c);
  }
  {
    Case c;
    c.name = "inv_causal_q300_k200_d128_fp16";
    c.slices = {{0, 300, 0, 200, IC}};
    c.total_q = 300;
    c.total_k = 200;
    c.hq = c.hkv = 1;
    c.head_dim = 128;
    c.dtype = FP;
    add(c);
  }
  {
    Case c;
    c.name = "bi_causal_band_q200_k300_d64_bf16";
    c.slices = {{0, 200, 0, 300, BC}};
    c.total_q = 200;
    c.total_k = 300;
    c.hq = c.hkv = 2;
    c.quick = true;
    add(c);
  }
  {
    Case c;
    c.name = "bi_causal_diagonal_q160_k160_d128_bf16";
    c.slices = {{0, 160, 0, 160, BC}};
    c.total_q = c.total_k = 160;
    c.hq = c.hkv = 2;
    c.head_dim = 128;
    add(c);
  }
  {
    Case c;
    c.name = "bi_causal_empty_band_q300_k200_plus_full_d64_bf16";
    c.slices = {{0, 300, 0, 200, BC}, {100, 150, 200, 260, F}};
    c.total_q = 300;
    c.total_k = 260;
    c.hq = c.hkv = 1;
    c.quick = true;
    add(c);
  }
  {
    // Sliding window (64, 0) over 333 tokens: [0,64)x[0,64) C + [64,333)x[0,333) BC.
    Case c;
    c.name = "sliding_window_64_0_d128_bf16";
    c.slices = {{0, 64, 0, 64, C}, {64, 333, 0, 333, BC}};
    c.total_q = c.total_k = 333;
    c.hq = c.hkv = 2;
    c.head_dim = 128;
    add(c);
  }
  {
    // Window (L=40, R=25), S=300: [0,40)x[0,65) C, [40,275)x[0,300) BC, [275,300)x[235,300) IC.
    Case c;
    c.name = "sliding_window_40_25_d64_fp16";
    c.slices = {{0, 40, 0, 65, C}, {40, 275, 0, 300, BC}, {275, 300, 235, 300, IC}};
    c.total_q = c.total_k = 300;
    c.hq = c.hkv = 2;
    c.dtype = FP;
    add(c);
  }
  {
    // Prefix tree: nodeLengths [100, 60, 90], paths [[0,1],[0,2]]: rows of nodes 1 and 2 are shared by
    // two slices each (merged in one softmax).
    Case c;
    c.name = "prefix_tree_overlapping_rows_d128_bf16";
    c.slices = {{0, 100, 0, 100, C}, {100, 160, 100, 160, C}, {100, 160, 0, 100, F}, {160, 250, 160, 250, C},
                {160, 250, 0, 100, F}};
    c.total_q = c.total_k = 250;
    c.hq = 4;
    c.hkv = 2;
    c.head_dim = 128;
    c.quick = true;
    add(c);
  }
  {
    Case c;
    c.name = "uncovered_rows_and_keys_d64_bf16";
    c.slices = {{10, 50, 20, 90, F}, {200, 260, 150, 200, C}, {5, 5, 0, 10, F}, {0, 10, 7, 7, C}};
    c.total_q = 300;
    c.total_k = 260;
    c.hq = c.hkv = 2;
    c.quick = true;
    add(c);
  }
  {
    Case c;
    c.name = "no_slices_d64_bf16";
    c.total_q = 70;
    c.total_k = 50;
    c.hq = c.hkv = 1;
    c.quick = true;
    add(c);
  }
  {
    Case c;
    c.name = "gqa2_causal_d64_bf16";
    c.slices = {{0, 200, 0, 200, C}};
    c.total_q = c.total_k = 200;
    c.hq = 4;
    c.hkv = 2;
    add(c);
  }
  {
    Case c;
    c.name = "mqa_full_d128_fp16";
    c.slices = {{0, 190, 0, 230, F}};
    c.total_q = 190;
    c.total_k = 230;
    c.hq = 4;
    c.hkv = 1;
    c.head_dim = 128;
    c.dtype = FP;
    add(c);
  }
  {
    Case c;
    c.name = "softcap_causal_d128_bf16";
    c.slices = {{0, 260, 0, 260, C}};
    c.total_q = c.total_k = 260;
    c.hq = c.hkv = 2;
    c.head_dim = 128;
    c.softcap = 5.f;
    c.input_scale = 2.5f;
    c.quick = true;
    add(c);
  }
  {
    Case c;
    c.name = "softcap_window_d64_fp16";
    c.slices = {{0, 40, 0, 65, C}, {40, 275, 0, 300, BC}, {275, 300, 235, 300, IC}};
    c.total_q = c.total_k = 300;
    c.hq = 2;
    c.hkv = 1;
    c.softcap = 3.f;
    c.input_scale = 2.f;
    c.dtype = FP;
    add(c);
  }
  {
    Case c;
    c.name = "custom_scale_peaky_full_d64_bf16";
    c.slices = {{0, 150, 0, 150, F}};
    c.total_q = c.total_k = 150;
    c.hq = c.hkv = 1;
    c.scale = 0.4f;
    c.input_scale = 1.5f;
    add(c);
  }
  {
    Case c;
    c.name = "tiny_single_row_three_keys_d64_fp16";
    c.slices = {{0, 1, 0, 3, F}};
    c.total_q = 1;
    c.total_k = 3;
    c.hq = c.hkv = 1;
    c.dtype = FP;
    c.quick = true;
    add(c);
  }
  {
    // 50 x 50 grid of 50-token blocks, each a random type or absent.
    Case c;
    c.name = "grid_50x50_random_types_d64_bf16";
    Rng rng(12345);
    for (int qb = 0; qb < 50; ++qb) {
      for (int kb = 0; kb < 50; ++kb) {
        const int pick = rng.below(6);
        if (pick >= 4) continue;  // about a third of the blocks absent
        c.slices.push_back({qb * 50, qb * 50 + 50, kb * 50, kb * 50 + 50, pick});
      }
    }
    c.total_q = c.total_k = 2500;
    c.hq = 2;
    c.hkv = 1;
    c.check_determinism = true;
    add(c);
  }
  {
    // Many small uneven slices: random documents with random types and uneven q / k lengths.
    Case c;
    c.name = "random_uneven_slices_d128_fp16";
    Rng rng(777);
    int q = 0, k = 0;
    while (q < 700 && k < 700) {
      const int lq = 1 + rng.below(60);
      const int lk = 1 + rng.below(60);
      c.slices.push_back({q, std::min(q + lq, 700), k, std::min(k + lk, 700), rng.below(4)});
      if (rng.below(3) != 0) q += lq;  // sometimes the next slice shares the rows (disjoint keys)
      k += lk;
    }
    c.total_q = c.total_k = 700;
    c.hq = c.hkv = 2;
    c.head_dim = 128;
    c.dtype = FP;
    add(c);
  }
  {
    // Many slices of every type at every alignment relative to the tiles (q and k positions advance by
    // unrelated amounts), so each tile-boundary / diagonal case of the mask decisions occurs.
    Case c;
    c.name = "offset_sweep_all_types_d64_bf16";
    int q = 0, k = 0;
    for (int n = 0; n < 120; ++n) {
      const int lq = 1 + (n * 37) % 83;
      const int lk = 1 + (n * 53) % 97;
      c.slices.push_back({q, q + lq, k, k + lk, n % 4});
      q += lq;
      k += lk;
    }
    c.total_q = q + 5;
    c.total_k = k + 3;
    c.hq = c.hkv = 1;
    add(c);
  }
  {
    Case c;
    c.name = "offset_sweep_all_types_d128_fp16_gqa";
    int q = 0, k = 0;
    for (int n = 0; n < 90; ++n) {
      const int lq = 1 + (n * 41) % 131;
      const int lk = 1 + (n * 29) % 151;
      c.slices.push_back({q, q + lq, k, k + lk, (n / 2) % 4});
      q += lq;
      k += lk;
    }
    c.total_q = q;
    c.total_k = k;
    c.hq = 2;
    c.hkv = 1;
    c.head_dim = 128;
    c.dtype = FP;
    add(c);
  }
  {
    Case c;
    c.name = "random_sweep_all_types_d64_fp16";
    Rng rng(4242);
    int q = 0, k = 0;
    for (int n = 0; n < 200; ++n) {
      const int lq = 1 + rng.below(100);
      const int lk = 1 + rng.below(100);
      c.slices.push_back({q, q + lq, k, k + lk, rng.below(4)});
      q += lq;
      k += lk;
    }
    c.total_q = q;
    c.total_k = k;
    c.hq = c.hkv = 1;
    c.dtype = FP;
    add(c);
  }
  {
    // Query ranges starting one row past a tile boundary: a warp whose only visible key in a key tile is
    // the tile's last column.
    Case c;
    c.name = "inv_causal_unaligned_rows_d64_bf16";
    c.slices = {{129, 329, 0, 300, IC}, {1, 129, 300, 400, BC}};
    c.total_q = 340;
    c.total_k = 400;
    c.hq = c.hkv = 1;
    add(c);
  }
  return cases;
}

struct Tolerance {
  double out, grad, lse;
};

Tolerance tolerance_for(int dtype) {
  // Relative L2 vs float64 (lse: max abs). bf16 has 8 significant bits, fp16 11.
  if (dtype == MAGI_FFA_DTYPE_BFLOAT16) return {1e-2, 2e-2, 2e-3};
  return {3e-3, 5e-3, 2e-3};
}

bool run_case(const Case& c, const std::vector<int32_t>& bwd_modes) {
  const size_t q_count = static_cast<size_t>(c.total_q) * c.hq * c.head_dim;
  const size_t kv_count = static_cast<size_t>(c.total_k) * c.hkv * c.head_dim;
  uint64_t seed = 0x1234;
  for (char ch : c.name) seed = seed * 131 + static_cast<unsigned char>(ch);
  Rng rng(seed);
  std::vector<uint16_t> q, k, v, dout;
  std::vector<double> qd, kd, vd, dod;
  random_tensor(rng, q_count, c.input_scale, c.dtype, &q, &qd);
  random_tensor(rng, kv_count, c.input_scale, c.dtype, &k, &kd);
  random_tensor(rng, kv_count, 1.0, c.dtype, &v, &vd);
  random_tensor(rng, q_count, 1.0, c.dtype, &dout, &dod);
  if (c.nan_uncovered) {
    // Padding tokens may hold anything: the kernels must neither read them into a visible result nor let
    // 0 * NaN leak through a matrix product.
    std::vector<char> row_seen(c.total_q, 0), key_seen(c.total_k, 0);
    for (const SliceSpec& s : c.slices) {
      for (int i = s.qs; i < s.qe; ++i) {
        for (int j = s.ks; j < s.ke; ++j) {
          if (cell_visible_ref(s, i, j)) row_seen[i] = key_seen[j] = 1;
        }
      }
    }
    const size_t q_row = static_cast<size_t>(c.hq) * c.head_dim, kv_row = static_cast<size_t>(c.hkv) * c.head_dim;
    for (int i = 0; i < c.total_q; ++i) {
      if (row_seen[i]) continue;
      for (size_t e = i * q_row; e < (i + 1) * q_row; ++e) {
        q[e] = dout[e] = 0xFFFF;
        qd[e] = dod[e] = NAN;
      }
    }
    for (int j = 0; j < c.total_k; ++j) {
      if (key_seen[j]) continue;
      for (size_t e = j * kv_row; e < (j + 1) * kv_row; ++e) {
        k[e] = v[e] = 0xFFFF;
        kd[e] = vd[e] = NAN;
      }
    }
  }

  Reference ref;
  reference(c, qd, kd, vd, dod, &ref);
  bool all_ok = true;
  for (const int32_t deterministic : bwd_modes) {
    const std::string label = c.name + (deterministic ? " [det]" : " [fast]");
    GpuResult gpu;
    if (!run_gpu(c, q, k, v, dout, deterministic, &gpu)) {
      std::printf("FAIL %-59s GPU error: %s\n", label.c_str(), error);
      all_ok = false;
      continue;
    }

    const double e_out = rel_l2(gpu.out, ref.out, c.dtype);
    const double e_dq = rel_l2(gpu.dq, ref.dq, c.dtype);
    const double e_dk = rel_l2(gpu.dk, ref.dk, c.dtype);
    const double e_dv = rel_l2(gpu.dv, ref.dv, c.dtype);
    double e_lse = 0;
    int lse_mismatch = 0;       // -inf where the reference is finite, or the converse, or NaN
    int empty_row_nonzero = 0;  // rows that see nothing must have out exactly 0
    for (size_t i = 0; i < gpu.lse.size(); ++i) {
      const double want = ref.lse[i];
      const double got = gpu.lse[i];
      if (std::isinf(want)) {
        if (!(std::isinf(got) && got < 0)) ++lse_mismatch;
        for (int d = 0; d < c.head_dim; ++d) {
          if (gpu.out[i * c.head_dim + d] != 0 && gpu.out[i * c.head_dim + d] != 0x8000) ++empty_row_nonzero;
        }
      } else if (!std::isfinite(got)) {
        ++lse_mismatch;
      } else {
        e_lse = std::max(e_lse, std::fabs(got - want));
      }
    }
    const Tolerance tol = tolerance_for(c.dtype);
    bool ok = e_out <= tol.out && e_dq <= tol.grad && e_dk <= tol.grad && e_dv <= tol.grad && e_lse <= tol.lse &&
              lse_mismatch == 0 && empty_row_nonzero == 0;
    // (NaN comparisons are false, so a NaN error fails.)
    std::string extra;
    if (lse_mismatch) extra += " lse_inf_mismatch=" + std::to_string(lse_mismatch);
    if (empty_row_nonzero) extra += " empty_row_nonzero=" + std::to_string(empty_row_nonzero);

    if (c.check_determinism) {
      GpuResult again;
      if (!run_gpu(c, q, k, v, dout, deterministic, &again)) {
        std::printf("FAIL %-59s GPU error (second run): %s\n", label.c_str(), error);
        all_ok = false;
        continue;
      }
      // Fast mode: out and lse, and dk / dv when every query head has its own kv head (no head split, so no
      // dK / dV atomics), must still repeat bit for bit; dq (and split dk / dv) may differ in the last bits
      // (atomic order), which is reported, not failed.
      const bool same_rest = again.out == gpu.out && again.dk == gpu.dk && again.dv == gpu.dv &&
                             std::memcmp(again.lse.data(), gpu.lse.data(), gpu.lse.size() * sizeof(float)) == 0;
      const bool same_dq = again.dq == gpu.dq;
      if (deterministic) {
        extra += same_rest && same_dq ? " deterministic" : " NOT_DETERMINISTIC";
        ok = ok && same_rest && same_dq;
      } else {
        const bool same_out = again.out == gpu.out &&
                              std::memcmp(again.lse.data(), gpu.lse.data(), gpu.lse.size() * sizeof(float)) == 0;
        const bool must_repeat_kv = c.hq == c.hkv;
        extra += same_rest ? " out/lse/dk/dv repeat" : (same_out ? " dk/dv differ" : " OUT_LSE_NOT_REPEATABLE");
        extra += same_dq ? ", dq repeats" : ", dq differs in last bits (atomics)";
        ok = ok && same_out && (same_rest || !must_repeat_kv);
      }
    }
    std::printf(
        "%s %-59s out %.2e lse %.1e dq %.2e dk %.2e dv %.2e (slices %zu, q %d, k %d, h %d/%d, d %d, %s%s)%s\n",
        ok ? "PASS" : "FAIL", label.c_str(), e_out, e_lse, e_dq, e_dk, e_dv, c.slices.size(), c.total_q, c.total_k,
        c.hq, c.hkv, c.head_dim, c.dtype == MAGI_FFA_DTYPE_BFLOAT16 ? "bf16" : "fp16", c.softcap > 0 ? ", softcap" : "",
        extra.c_str());
    std::fflush(stdout);
    all_ok = all_ok && ok;
  }
  return all_ok;
}

// Bad arguments must come back as statuses with messages, never crash.
bool run_api_checks() {
  bool ok = true;
  auto expect = [&](const char* what, int32_t status, int32_t want) {
    if (status != want) {
      std::printf("FAIL api: %s returned %d, expected %d (%s)\n", what, status, want, magi_ffa_last_error());
      ok = false;
    } else if (want != 0 && std::strlen(magi_ffa_last_error()) == 0) {
      std::printf("FAIL api: %s gave no error message\n", what);
      ok = false;
    }
  };
  const int32_t qr[2] = {0, 10}, kr[2] = {0, 10}, ty[1] = {1}, bad_ty[1] = {4};
  void* plan = nullptr;
  expect("plan with q range past total_q", magi_ffa_plan_create(&plan, qr, kr, ty, 1, 5, 10),
         MAGI_FFA_E_INVALID_ARGUMENT);
  expect("plan with type 4", magi_ffa_plan_create(&plan, qr, kr, bad_ty, 1, 10, 10), MAGI_FFA_E_INVALID_ARGUMENT);
  expect("valid plan", magi_ffa_plan_create(&plan, qr, kr, ty, 1, 10, 10), 0);
  void* buffer = nullptr;
  expect("malloc", magi_ffa_malloc(&buffer, 1 << 16), 0);
  float* lse = reinterpret_cast<float*>(static_cast<char*>(buffer) + 32768);
  expect("hq % hkv != 0",
         magi_ffa_forward(buffer, buffer, buffer, buffer, lse, plan, 3, 2, 64, MAGI_FFA_DTYPE_BFLOAT16, 0.125f, 0.f,
                          0, nullptr),
         MAGI_FFA_E_INVALID_ARGUMENT);
  expect("head_dim 96",
         magi_ffa_forward(buffer, buffer, buffer, buffer, lse, plan, 1, 1, 96, MAGI_FFA_DTYPE_BFLOAT16, 0.125f, 0.f,
                          0, nullptr),
         MAGI_FFA_E_UNSUPPORTED);
  expect("scale 0",
         magi_ffa_forward(buffer, buffer, buffer, buffer, lse, plan, 1, 1, 64, MAGI_FFA_DTYPE_BFLOAT16, 0.f, 0.f, 0,
                          nullptr),
         MAGI_FFA_E_INVALID_ARGUMENT);
  expect("dtype 7",
         magi_ffa_forward(buffer, buffer, buffer, buffer, lse, plan, 1, 1, 64, 7, 0.125f, 0.f, 0, nullptr),
         MAGI_FFA_E_INVALID_ARGUMENT);
  expect("null plan",
         magi_ffa_forward(buffer, buffer, buffer, buffer, lse, nullptr, 1, 1, 64, MAGI_FFA_DTYPE_BFLOAT16, 0.125f,
                          0.f, 0, nullptr),
         MAGI_FFA_E_INVALID_ARGUMENT);
  expect("misaligned q",
         magi_ffa_forward(static_cast<char*>(buffer) + 2, buffer, buffer, buffer, lse, plan, 1, 1, 64,
                          MAGI_FFA_DTYPE_BFLOAT16, 0.125f, 0.f, 0, nullptr),
         MAGI_FFA_E_INVALID_ARGUMENT);
  expect("plan destroy", magi_ffa_plan_destroy(plan), 0);
  expect("free", magi_ffa_free(buffer), 0);
  std::printf("%s api_argument_checks\n", ok ? "PASS" : "FAIL");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  // --fwd-kernel sm80|sm90 (and --bench once per forward kernel): selftest_sm90.cuh.
  if (const int status = magi_ffa_selftest::fwd_kernel_flag(&argc, argv); status >= 0) return status;
  bool quick = false, list = false, cpu_replay = false, bench = false;
  std::string filter;
  std::vector<int32_t> bwd_modes = {0, 1};  // backward deterministic flag values to run
  int repeat = 1;                            // runs of each selected case
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--bench") {
      bench = true;
    } else if (arg == "--cpu-replay") {
      cpu_replay = true;
    } else if (arg == "--list") {
      list = true;
    } else if (arg == "--filter" && i + 1 < argc) {
      filter = argv[++i];
    } else if (arg == "--repeat" && i + 1 < argc) {
      repeat = std::atoi(argv[++i]);
      if (repeat < 1) {
        std::fprintf(stderr, "--repeat takes a count of at least 1 (got %s)\n", argv[i]);
        return 2;
      }
    } else if (arg == "--bwd-mode" && i + 1 < argc) {
      const std::string mode = argv[++i];
      if (mode == "fast") {
        bwd_modes = {0};
      } else if (mode == "deterministic") {
        bwd_modes = {1};
      } else if (mode == "both") {
        bwd_modes = {0, 1};
      } else {
        std::fprintf(stderr, "--bwd-mode takes fast, deterministic or both (got %s)\n", mode.c_str());
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--quick] [--filter SUBSTRING] [--list] [--cpu-replay] [--bench] "
                   "[--bwd-mode fast|deterministic|both] [--repeat N]\n",
                   argv[0]);
      return 2;
    }
  }
  if (cpu_replay) {
    int passed = 0, failed = 0;
    for (const Case& c : make_cases()) {
      if (quick && !c.quick) continue;
      if (!filter.empty() && c.name.find(filter) == std::string::npos) continue;
      if (run_replay_case(c, bwd_modes)) ++passed; else ++failed;
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
  }
  int32_t count = 0;
  const int32_t status = magi_ffa_device_count(&count);
  if (status != 0 || count == 0) {
    std::printf("no usable GPU (status %d): %s\n", status, magi_ffa_last_error());
    return 1;
  }
  char name[256];
  int32_t major = 0, minor = 0;
  magi_ffa_device_name(0, name, sizeof(name));
  magi_ffa_device_capability(0, &major, &minor);
  std::printf("device 0: %s (sm_%d%d), magi_ffa ABI %d\n", name, major, minor, magi_ffa_abi_version());

  if (bench) {
    bool ok = true;
    for (const BenchCase& b : make_bench_cases()) {
      if (!filter.empty() && b.name.find(filter) == std::string::npos) continue;
      for (int run = 0; run < repeat && ok; ++run) {
        if (repeat > 1) std::printf("bench %s: run %d of %d\n", b.name.c_str(), run + 1, repeat);
        if (!run_bench_case(b, 5, 5, bwd_modes)) {
          std::printf("bench %s failed: %s\n", b.name.c_str(), error);
          ok = false;
        }
      }
    }
    return ok ? 0 : 1;
  }
  int passed = 0, failed = 0;
  if (!list && filter.empty()) {
    if (run_api_checks()) ++passed; else ++failed;
  }
  for (const Case& c : make_cases()) {
    if (quick && !c.quick) continue;
    if (!filter.empty() && c.name.find(filter) == std::string::npos) continue;
    if (list) {
      std::printf("%s\n", c.name.c_str());
      continue;
    }
    for (int run = 0; run < repeat; ++run) {
      if (run_case(c, bwd_modes)) {
        ++passed;
      } else {
        ++failed;
        break;
      }
    }
  }
  if (list) return 0;
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
