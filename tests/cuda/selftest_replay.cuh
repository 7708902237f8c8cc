// selftest_replay.cuh: --cpu-replay, the kernels' schedule replayed on the CPU in float64 against the reference.
// Part of the self-test (tests/cuda/selftest.cu includes it, one translation unit), host-only code.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "common/env.cuh"
#include "common/params.cuh"
#include "common/walkers.cuh"
#include "plan.cuh"
#include "selftest_case.cuh"
#include "selftest_reference.cuh"
#include "sm80/backward.cuh"

namespace {

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
  // The backward's probability P = exp(s - lse) (0 for an empty row) and score gradient dS = P (dP - Delta) dtanh
  // of cell (i, j), head h.
  auto score_grad = [&](int i, int h, int j, double* prob) {
    double dt;
    const double s = logit(i, h, j, &dt);
    const double lse = lse_of(i, h);
    *prob = std::isinf(lse) ? 0.0 : std::exp(s - lse);
    double dp = 0;
    for (int d = 0; d < D; ++d) dp += do_row(i, h, d) * v_row(j, h / group, d);
    return *prob * (dp - delta_of(i, h)) * dt;
  };
  // Points a tile walker (query or key tiles) at tile `tile` of `lists`.
  auto start_walk = [&](auto& it, const HostTileLists& lists, int tile) {
    it.slices = slices.data();
    it.list = lists.slices.data();
    it.pos = lists.offsets[tile];
    it.end = lists.offsets[tile + 1];
  };
  // A query-tile CTA's walk (the forward's and the deterministic dQ's): tile `tile` of `lists` with a
  // QueryTileWalker<BM, BN>, warps of 16 rows skipping key blocks their rows do not see; visit(i, j) for each
  // visible cell, rows then keys ascending.
  auto walk_query_tile = [&](auto block_m, auto block_n, int warps, const HostTileLists& lists, int tile,
                             auto&& visit) {
    constexpr int BM = decltype(block_m)::value;
    constexpr int BN = decltype(block_n)::value;
    const int m0 = tile * BM;
    QueryTileWalker<BM, BN> it{};
    start_walk(it, lists, tile);
    it.m0 = m0;
    for (bool valid = it.next_slice(); valid; valid = it.advance()) {
      for (int w = 0; w < warps; ++w) {
        const int w0 = m0 + 16 * w;
        if (!warp_rows_see_keys(it.slice, w0, it.n0, BN)) continue;
        const bool masked = tile_needs_mask(it.slice, w0, 16, it.n0, BN);
        for (int i = w0; i < w0 + 16; ++i) {
          for (int j = it.n0; j < it.n0 + BN; ++j) {
            if (masked && !cell_visible(it.slice, i, j)) continue;
            visit(i, j);
          }
        }
      }
    }
  };

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
      walk_query_tile(std::integral_constant<int, kFwdBlockM>{}, std::integral_constant<int, kFwdBlockN>{},
                      kFwdWarps, fwd, tile, [&](int i, int j) {
                        const int r = i - m0;
                        double dt;
                        const double s = logit(i, h, j, &dt);
                        const double new_max = std::max(row_max[r], s);
                        const double rescale = std::exp(row_max[r] - new_max);
                        const double prob = std::exp(s - new_max);
                        row_sum[r] = row_sum[r] * rescale + prob;
                        for (int d = 0; d < D; ++d) {
                          acc[static_cast<size_t>(r) * D + d] =
                              acc[static_cast<size_t>(r) * D + d] * rescale + prob * v_row(j, hk, d);
                        }
                        row_max[r] = new_max;
                      });
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
        start_walk(it, key_tiles, tile);
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
                  double prob;
                  const double ds = score_grad(i, h, j, &prob);
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
      walk_query_tile(std::integral_constant<int, kDqBlockM>{}, std::integral_constant<int, kDqBlockN>{}, kDqWarps,
                      dql, tile, [&](int i, int j) {
                        double prob;
                        const double ds = score_grad(i, h, j, &prob);
                        if (i >= c.total_q) return;  // not stored
                        for (int d = 0; d < D; ++d) {
                          out->dq[(static_cast<size_t>(i) * c.hq + h) * D + d] += scale * ds * k_row(j, hk, d);
                        }
                      });
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

}  // namespace
