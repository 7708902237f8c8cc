// selftest_cases.cuh: the table of correctness cases (make_cases): every mask type, shape edges, GQA, dtypes,
// softcap, padding.
// Part of the self-test (tests/cuda/selftest.cu includes it, one translation unit), host-only code.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "magi_ffa.h"
#include "selftest_case.cuh"
#include "selftest_sm90_cases.cuh"

namespace {

// ---------------------------------------------------------------------------------------------------
std::vector<Case> make_cases() {
  std::vector<Case> cases;
  auto add = [&](Case c) { cases.push_back(std::move(c)); };
  magi_ffa_selftest::add_sm90_forward_cases(&cases);  // forward-kernel edges (selftest_sm90_cases.cuh)
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

}  // namespace
