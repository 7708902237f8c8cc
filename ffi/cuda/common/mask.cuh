// common/mask.cuh: slice geometry shared by the host planner and the kernels: which cells of a slice are
// visible, which key range a block of query rows can see (and the converse), and whether a tile needs
// the per-element mask. Kept apart from the MMA code so that another inner loop can reuse it.
#pragma once

#include <stdint.h>

#ifdef __CUDACC__
#define MAGI_HD __host__ __device__ __forceinline__
#else
#define MAGI_HD inline
#endif

namespace magi_ffa {

// One slice of the flex key: query rows [qs, qe) x keys [ks, ke), type 0 FULL, 1 CAUSAL (bottom-right:
// j - i <= ke - qe), 2 INVCAUSAL (top-left: j - i >= ks - qs), 3 BICAUSAL (both).
struct Slice {
  int32_t qs, qe, ks, ke;
  int32_t type;
};

constexpr int32_t kTypeCausalBit = 1;
constexpr int32_t kTypeInvCausalBit = 2;

MAGI_HD int imax(int a, int b) { return a > b ? a : b; }
MAGI_HD int imin(int a, int b) { return a < b ? a : b; }

// Cell (i, j) of the slice is visible.
MAGI_HD bool cell_visible(const Slice& s, int i, int j) {
  if (i < s.qs || i >= s.qe || j < s.ks || j >= s.ke) return false;
  const int diff = j - i;
  if ((s.type & kTypeCausalBit) && diff > s.ke - s.qe) return false;
  if ((s.type & kTypeInvCausalBit) && diff < s.ks - s.qs) return false;
  return true;
}

// A slice with no visible cell: an empty range, or a BICAUSAL band narrower than its query range (each
// row sees ke - ks - (qe - qs) + 1 keys).
MAGI_HD bool slice_is_empty(const Slice& s) {
  if (s.qs >= s.qe || s.ks >= s.ke) return true;
  return s.type == (kTypeCausalBit | kTypeInvCausalBit) && (s.ke - s.ks) < (s.qe - s.qs);
}

// Keys [*k_lo, *k_hi) that query rows [r0, r1) (already clipped to [qs, qe)) can see; empty if lo >= hi.
// For every type the keys one row sees form an interval and the intervals of consecutive rows overlap or
// touch, so the union is this single interval.
MAGI_HD void visible_keys_of_rows(const Slice& s, int r0, int r1, int* k_lo, int* k_hi) {
  if (slice_is_empty(s)) {
    *k_lo = 0;
    *k_hi = 0;
    return;
  }
  int lo = s.ks;
  int hi = s.ke;
  if (s.type & kTypeCausalBit) hi = imin(hi, (r1 - 1) + (s.ke - s.qe) + 1);
  if (s.type & kTypeInvCausalBit) lo = imax(lo, r0 + (s.ks - s.qs));
  *k_lo = lo;
  *k_hi = hi;
}

// Query rows [*q_lo, *q_hi) that can see any key of [c0, c1) (already clipped to [ks, ke)).
MAGI_HD void visible_rows_of_keys(const Slice& s, int c0, int c1, int* q_lo, int* q_hi) {
  if (slice_is_empty(s)) {
    *q_lo = 0;
    *q_hi = 0;
    return;
  }
  int lo = s.qs;
  int hi = s.qe;
  if (s.type & kTypeCausalBit) lo = imax(lo, c0 - (s.ke - s.qe));
  if (s.type & kTypeInvCausalBit) hi = imin(hi, (c1 - 1) - (s.ks - s.qs) + 1);
  *q_lo = lo;
  *q_hi = hi;
}

// Whether the tile rows [m0, m0 + bm) x keys [n0, n0 + bn) of the slice needs the per-element mask:
// some row or key lies outside the slice's rectangle, or the tile crosses a diagonal of the type.
MAGI_HD bool tile_needs_mask(const Slice& s, int m0, int bm, int n0, int bn) {
  if (m0 < s.qs || m0 + bm > s.qe || n0 < s.ks || n0 + bn > s.ke) return true;
  if ((s.type & kTypeCausalBit) && (n0 + bn - 1) - m0 > s.ke - s.qe) return true;
  if ((s.type & kTypeInvCausalBit) && n0 - (m0 + bm - 1) < s.ks - s.qs) return true;
  return false;
}

}  // namespace magi_ffa
