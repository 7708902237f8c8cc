// selftest_reference.cuh: the dense float64 CPU reference, per cell, straight from the semantics table.
// Part of the self-test (tests/cuda/selftest.cu includes it, one translation unit), host-only code.
#pragma once

#include <cmath>
#include <vector>

#include "selftest_case.cuh"

namespace {

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

}  // namespace
