// sm80/backward_pointwise.cuh: the mma.sync backward kernels' shared element-wise step (device code).
#pragma once

#include "common/device.cuh"
#include "common/params.cuh"

namespace magi_ffa {

// Shared element-wise step: from the raw score x (q.k) and dP, the probability P and dS (without the
// final softmax scale, applied once to dQ / dK at the end). lse2 is lse * log2(e), +inf for rows that
// see nothing (so P = 0 there); invisible cells give P = dS = 0.
struct BwdPointwise {
  bool softcap_on;
  float cap_in;    // scale / softcap
  float cap_out;   // softcap * log2(e)
  float scale_log2;

  __device__ __forceinline__ void operator()(float x, float dp, float lse2, float delta, bool visible,
                                             float* p_out, float* ds_out) const {
    float s2;
    float dtanh = 1.f;
    if (softcap_on) {
      const float th = tanhf(x * cap_in);
      s2 = th * cap_out;
      dtanh = 1.f - th * th;
    } else {
      s2 = x * scale_log2;
    }
    const float prob = visible ? fast_exp2(s2 - lse2) : 0.f;
    *p_out = prob;
    // A select, not a product: dp of an invisible cell may be NaN (uncovered padding rows).
    *ds_out = visible ? prob * (dp - delta) * dtanh : 0.f;
  }
};

__device__ __forceinline__ float lse_to_log2(float lse) { return lse == -INFINITY ? INFINITY : lse * kLog2e; }

__device__ __forceinline__ BwdPointwise make_pointwise(const BwdParams& p) {
  BwdPointwise f;
  f.softcap_on = p.softcap > 0.f;
  f.cap_in = f.softcap_on ? p.scale / p.softcap : 0.f;
  f.cap_out = p.softcap * kLog2e;
  f.scale_log2 = p.scale_log2;
  return f;
}

}  // namespace magi_ffa
