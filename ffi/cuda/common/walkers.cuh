// common/walkers.cuh: the tile schedulers of the kernels. A walker enumerates, for the tile a CTA owns,
// the (slice, inner tile) pairs it must visit, in a fixed order (so results are deterministic). All
// threads of a CTA run the same walker on the same data, so its decisions are CTA-uniform. This is
// independent of how the inner product is computed (mma.sync here, wgmma later). Host-callable so the
// self-test can replay the schedule on the CPU.
#pragma once

#include "common/mask.cuh"

namespace magi_ffa {

// For a query tile [m0, m0 + BM): each listed slice, then each key tile [n0, n0 + BN) from the first key
// any of the tile's rows can see to the last (key tiles start at the slice's first visible key, so they
// are not aligned to BN; loads are per row, so alignment does not matter).
template <int BM, int BN>
struct QueryTileWalker {
  const Slice* __restrict__ slices;
  const int32_t* __restrict__ list;
  int pos;
  int end;
  int m0;
  Slice slice;  // the current slice
  int n0;       // first key of the current key tile
  int k_hi;     // end of the keys the tile's rows can see in the current slice

  MAGI_HD bool next_slice() {
    while (pos < end) {
      slice = slices[list[pos++]];
      const int r0 = imax(m0, slice.qs);
      const int r1 = imin(m0 + BM, slice.qe);
      if (r0 >= r1) continue;
      int lo, hi;
      visible_keys_of_rows(slice, r0, r1, &lo, &hi);
      if (lo >= hi) continue;
      n0 = lo;
      k_hi = hi;
      return true;
    }
    return false;
  }

  MAGI_HD bool advance() {
    n0 += BN;
    if (n0 < k_hi) return true;
    return next_slice();
  }
};

// For a key tile [n0, n0 + BN): each listed slice, then each query head of the GQA group, then each query
// tile [m0, m0 + BM) from the first row that can see any of the tile's keys to the last.
template <int BN, int BM>
struct KeyTileWalker {
  const Slice* __restrict__ slices;
  const int32_t* __restrict__ list;
  int pos;
  int end;
  int n0;
  int group;
  Slice slice;
  int q_lo;
  int q_hi;
  int head_in_group;
  int m0;

  MAGI_HD bool next_slice() {
    while (pos < end) {
      slice = slices[list[pos++]];
      const int c0 = imax(n0, slice.ks);
      const int c1 = imin(n0 + BN, slice.ke);
      if (c0 >= c1) continue;
      int lo, hi;
      visible_rows_of_keys(slice, c0, c1, &lo, &hi);
      if (lo >= hi) continue;
      q_lo = lo;
      q_hi = hi;
      head_in_group = 0;
      m0 = lo;
      return true;
    }
    return false;
  }

  MAGI_HD bool advance() {
    m0 += BM;
    if (m0 < q_hi) return true;
    if (++head_in_group < group) {
      m0 = q_lo;
      return true;
    }
    return next_slice();
  }
};

// Whether a warp's rows [w0, w0 + 16) can see any key of [n0, n0 + bn) in the slice (else the warp skips
// the tile: it would contribute exactly nothing).
MAGI_HD bool warp_rows_see_keys(const Slice& s, int w0, int n0, int bn) {
  const int r0 = imax(w0, s.qs);
  const int r1 = imin(w0 + 16, s.qe);
  if (r0 >= r1) return false;
  int lo, hi;
  visible_keys_of_rows(s, r0, r1, &lo, &hi);
  return imax(lo, n0) < imin(hi, n0 + bn);
}

// Whether a warp's keys [w0, w0 + 16) are seen by any row of [m0, m0 + bm) in the slice.
MAGI_HD bool warp_keys_seen_by_rows(const Slice& s, int w0, int m0, int bm) {
  const int c0 = imax(w0, s.ks);
  const int c1 = imin(w0 + 16, s.ke);
  if (c0 >= c1) return false;
  int lo, hi;
  visible_rows_of_keys(s, c0, c1, &lo, &hi);
  return imax(lo, m0) < imin(hi, m0 + bm);
}

}  // namespace magi_ffa
