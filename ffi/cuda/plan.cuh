// plan.cuh: host-side construction of a plan's tile lists (which slices touch each query / key
// tile, and the launch order). Shared by magi_ffa.cu and the self-test's CPU replay of the schedule.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <numeric>
#include <queue>
#include <utility>
#include <vector>

#include "common/mask.cuh"

namespace magi_ffa {

// A tile list on the host before upload.
struct HostTileLists {
  std::vector<int32_t> offsets;
  std::vector<int32_t> slices;
  std::vector<int32_t> order;
  std::vector<int64_t> cost;  // visible cells per tile
};

// A schedule (params.cuh: Schedule) on the host before upload.
struct HostSchedule {
  int32_t lanes = 0;
  int32_t group = 1;
  std::vector<int32_t> offsets;
  std::vector<int32_t> entries;
};

// Greedy list schedule of one group of `group` heads over `lanes` persistent CTAs: items in costliest-first
// tile order (the heads of a tile next to each other), each to the lane with the least estimated work so
// far (ties: the lowest lane, so the schedule is a pure function of the plan). An item's estimate is its
// tile's visible cells plus `item_overhead` (the fixed cost of an item: loads, epilogue; it also places
// tiles that see nothing, which still run to write their rows).
inline HostSchedule build_schedule(const HostTileLists& lists, int32_t lanes, int32_t group, int64_t item_overhead) {
  HostSchedule schedule;
  schedule.lanes = lanes;
  schedule.group = group;
  std::vector<std::vector<int32_t>> per_lane(static_cast<size_t>(lanes));
  using Load = std::pair<int64_t, int32_t>;  // (work so far, lane)
  std::priority_queue<Load, std::vector<Load>, std::greater<Load>> least;
  for (int32_t lane = 0; lane < lanes; ++lane) least.emplace(0, lane);
  for (const int32_t tile : lists.order) {
    for (int32_t head = 0; head < group; ++head) {
      const Load next = least.top();
      least.pop();
      per_lane[static_cast<size_t>(next.second)].push_back(tile * group + head);
      least.emplace(next.first + lists.cost[static_cast<size_t>(tile)] + item_overhead, next.second);
    }
  }
  schedule.offsets.assign(static_cast<size_t>(lanes) + 1, 0);
  schedule.entries.reserve(lists.order.size() * static_cast<size_t>(group));
  for (int32_t lane = 0; lane < lanes; ++lane) {
    const std::vector<int32_t>& items = per_lane[static_cast<size_t>(lane)];
    schedule.entries.insert(schedule.entries.end(), items.begin(), items.end());
    schedule.offsets[static_cast<size_t>(lane) + 1] = static_cast<int32_t>(schedule.entries.size());
  }
  return schedule;
}

inline int32_t ceil_div(int32_t a, int32_t b) { return (a + b - 1) / b; }

// Orders tiles by decreasing cost; ties keep index order (so the plan, and the launch order, are a pure
// function of the flex key).
inline std::vector<int32_t> costliest_first(const std::vector<int64_t>& cost) {
  std::vector<int32_t> order(cost.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return cost[a] > cost[b]; });
  return order;
}

// Groups (tile, slice) pairs, given in slice order, by tile (counting sort keeps slice order within a tile).
inline void fill_csr(int32_t num_tiles, const std::vector<std::pair<int32_t, int32_t>>& pairs, HostTileLists* out) {
  out->offsets.assign(static_cast<size_t>(num_tiles) + 1, 0);
  for (const auto& pair : pairs) out->offsets[static_cast<size_t>(pair.first) + 1]++;
  for (int32_t i = 0; i < num_tiles; ++i) out->offsets[i + 1] += out->offsets[i];
  out->slices.assign(pairs.size(), 0);
  std::vector<int32_t> cursor(out->offsets.begin(), out->offsets.end() - 1);
  for (const auto& pair : pairs) out->slices[cursor[pair.first]++] = pair.second;
}

// Query tiles of `block_m` rows: each lists the slices some of whose visible cells lie in its rows.
inline HostTileLists build_query_tiles(const std::vector<Slice>& slices, int32_t total_q, int32_t block_m) {
  const int32_t num_tiles = ceil_div(total_q, block_m);
  std::vector<std::pair<int32_t, int32_t>> pairs;
  std::vector<int64_t> cost(static_cast<size_t>(num_tiles), 0);
  for (size_t n = 0; n < slices.size(); ++n) {
    const Slice& s = slices[n];
    if (slice_is_empty(s)) continue;
    for (int32_t tile = s.qs / block_m; tile * block_m < s.qe; ++tile) {
      const int32_t r0 = std::max(tile * block_m, s.qs);
      const int32_t r1 = std::min(tile * block_m + block_m, s.qe);
      int lo, hi;
      visible_keys_of_rows(s, r0, r1, &lo, &hi);
      if (lo >= hi) continue;
      pairs.emplace_back(tile, static_cast<int32_t>(n));
      cost[tile] += static_cast<int64_t>(r1 - r0) * (hi - lo);
    }
  }
  HostTileLists lists;
  fill_csr(num_tiles, pairs, &lists);
  lists.order = costliest_first(cost);
  lists.cost = std::move(cost);
  return lists;
}

// Key tiles of `block_n` keys: each lists the slices some of whose visible cells lie in its keys.
inline HostTileLists build_key_tiles(const std::vector<Slice>& slices, int32_t total_k, int32_t block_n) {
  const int32_t num_tiles = ceil_div(total_k, block_n);
  std::vector<std::pair<int32_t, int32_t>> pairs;
  std::vector<int64_t> cost(static_cast<size_t>(num_tiles), 0);
  for (size_t n = 0; n < slices.size(); ++n) {
    const Slice& s = slices[n];
    if (slice_is_empty(s)) continue;
    for (int32_t tile = s.ks / block_n; tile * block_n < s.ke; ++tile) {
      const int32_t c0 = std::max(tile * block_n, s.ks);
      const int32_t c1 = std::min(tile * block_n + block_n, s.ke);
      int lo, hi;
      visible_rows_of_keys(s, c0, c1, &lo, &hi);
      if (lo >= hi) continue;
      pairs.emplace_back(tile, static_cast<int32_t>(n));
      cost[tile] += static_cast<int64_t>(c1 - c0) * (hi - lo);
    }
  }
  HostTileLists lists;
  fill_csr(num_tiles, pairs, &lists);
  lists.order = costliest_first(cost);
  lists.cost = std::move(cost);
  return lists;
}

}  // namespace magi_ffa
