// selftest_gpu.cuh: running a case on the GPU through the C ABI only, and the relative L2 error used to judge it.
// Part of the self-test (tests/cuda/selftest.cu includes it, one translation unit), host-only code.
#pragma once

#include <cmath>
#include <cstdio>
#include <vector>

#include "magi_ffa.h"
#include "selftest_case.cuh"

namespace {

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

  const FlatSlices flat = flatten_slices(c.slices);
  void* plan = nullptr;
  CHECK(magi_ffa_plan_create(&plan, flat.q_ranges.data(), flat.k_ranges.data(), flat.types.data(),
                             static_cast<int32_t>(c.slices.size()), c.total_q, c.total_k));
  const PlanGuard plan_guard{plan};

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

}  // namespace
