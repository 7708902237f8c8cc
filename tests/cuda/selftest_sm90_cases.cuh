// selftest_sm90_cases.cuh: forward cases aimed at the sm90 kernel's edges (stage ring wrap-around, key
// tiles that straddle the tensor end or NaN padding inside it, many slices sharing one query tile, rows
// past total_q, GQA, softcap, rows that see nothing); selftest_cases.cuh adds them to the case table.
// Host-only code.
#pragma once

#include <vector>

#include "magi_ffa.h"

namespace magi_ffa_selftest {

// Forward-edge cases (they run the backward too, like every case). CaseT is selftest_case.cuh's Case.
template <typename CaseT>
void add_sm90_forward_cases(std::vector<CaseT>* cases) {
  const int FP = MAGI_FFA_DTYPE_FLOAT16;
  const int F = 0, C = 1, IC = 2, BC = 3;
  using SliceT = typename decltype(CaseT{}.slices)::value_type;
  {
    // 12 key tiles through the 2-stage ring (phases wrap several times); 2 rows in a second query tile;
    // the last key tile runs past the tensor end (TMA zero fill).
    CaseT c;
    c.name = "sm90_ring_wrap_full_q130_k1500_d128_bf16";
    c.slices = {SliceT{0, 130, 0, 1500, F}};
    c.total_q = 130;
    c.total_k = 1500;
    c.hq = c.hkv = 2;
    c.head_dim = 128;
    c.quick = true;
    c.check_determinism = true;
    cases->push_back(c);
  }
  {
    // Key tiles that end inside the tensor past the last visible key, over NaN padding (the producer
    // zeroes those V rows), one starting at an unaligned key (500).
    CaseT c;
    c.name = "sm90_kv_tail_over_nan_padding_d128_fp16";
    c.slices = {SliceT{0, 200, 0, 300, C}, SliceT{200, 260, 500, 531, F}};
    c.total_q = 270;
    c.total_k = 700;
    c.hq = 2;
    c.hkv = 1;
    c.head_dim = 128;
    c.dtype = FP;
    c.quick = true;
    cases->push_back(c);
  }
  {
    // 24 slices on one query tile, with overlapping row ranges (disjoint key ranges): one online softmax
    // over all of them.
    CaseT c;
    c.name = "sm90_many_slices_one_tile_d64_bf16";
    for (int n = 0; n < 24; ++n) c.slices.push_back(SliceT{n * 5, n * 5 + 20, n * 37, n * 37 + 30, n % 4});
    c.total_q = 140;  // the last slice's rows end at 135; 135..139 and the tile's tail see nothing
    c.total_k = 24 * 37;
    c.hq = c.hkv = 2;
    c.quick = true;
    cases->push_back(c);
  }
  {
    CaseT c;
    c.name = "sm90_gqa8_causal_520_d128_bf16";
    c.slices = {SliceT{0, 520, 0, 520, C}};
    c.total_q = c.total_k = 520;
    c.hq = 8;
    c.hkv = 1;
    c.head_dim = 128;
    c.check_determinism = true;
    cases->push_back(c);
  }
  {
    // Packed documents starting mid-tile, with uncovered (NaN) gaps between them.
    CaseT c;
    c.name = "sm90_docs_mid_tile_with_gaps_d128_bf16";
    int at = 3;
    for (int length : {5, 130, 61, 257, 1, 200, 128, 64, 300}) {
      c.slices.push_back(SliceT{at, at + length, at, at + length, C});
      at += length + 7;
    }
    c.total_q = c.total_k = at;
    c.hq = c.hkv = 2;
    c.head_dim = 128;
    c.check_determinism = true;
    cases->push_back(c);
  }
  {
    CaseT c;
    c.name = "sm90_softcap_full_unaligned_d64_fp16";
    c.slices = {SliceT{0, 77, 13, 333, F}, SliceT{77, 200, 13, 250, C}};
    c.total_q = 200;
    c.total_k = 340;
    c.hq = c.hkv = 2;
    c.dtype = FP;
    c.softcap = 20.f;
    c.input_scale = 3.f;
    cases->push_back(c);
  }
  {
    CaseT c;
    c.name = "sm90_bicausal_band_q600_k700_d128_bf16";
    c.slices = {SliceT{0, 600, 0, 700, BC}};
    c.total_q = 600;
    c.total_k = 700;
    c.hq = c.hkv = 1;
    c.head_dim = 128;
    cases->push_back(c);
  }
  {
    // INVCAUSAL with more rows than keys: rows from 150 on see nothing (out 0, lse -inf).
    CaseT c;
    c.name = "sm90_inv_causal_q400_k150_empty_rows_d128_fp16";
    c.slices = {SliceT{0, 400, 0, 150, IC}};
    c.total_q = 400;
    c.total_k = 150;
    c.hq = c.hkv = 1;
    c.head_dim = 128;
    c.dtype = FP;
    cases->push_back(c);
  }
  {
    CaseT c;
    c.name = "sm90_full_1100_hq4_d128_fp16";
    c.slices = {SliceT{0, 1100, 0, 1100, F}};
    c.total_q = c.total_k = 1100;
    c.hq = c.hkv = 4;
    c.head_dim = 128;
    c.dtype = FP;
    cases->push_back(c);
  }
}

}  // namespace magi_ffa_selftest
