// ffa_sm90_selftest.cuh: the self-test's hooks for choosing the forward kernel (selftest.cu includes it):
//   --fwd-kernel sm80|sm90  sets MAGI_FFA_FWD_KERNEL before the library's first forward call (the library
//                           reads it once); without it the library picks (sm90 on sm_90 devices).
//   --bench without --fwd-kernel runs the timings once per forward kernel (a child process each, since
//                           the choice is fixed per process).
// and forward cases aimed at the sm90 kernel's edges (stage ring wrap-around, key tiles that straddle the
// tensor end or NaN padding inside it, many slices sharing one query tile, rows past total_q, GQA,
// softcap, rows that see nothing). Host-only code.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "magi_ffa.h"

namespace magi_ffa_selftest {

// Handles --fwd-kernel (removed from argv). Returns -1 to let main go on, or an exit status when the
// bench already ran here (once per kernel in child processes) or the flag was malformed.
inline int fwd_kernel_flag(int* argc, char** argv) {
  std::string kernel;
  bool bench = false, cpu_replay = false;
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    const char* arg = argv[i];
    if (std::strcmp(arg, "--fwd-kernel") == 0) {
      if (i + 1 >= *argc) {
        std::fprintf(stderr, "--fwd-kernel needs a value: sm80 or sm90\n");
        return 2;
      }
      kernel = argv[++i];
      continue;
    }
    if (std::strncmp(arg, "--fwd-kernel=", 13) == 0) {
      kernel = arg + 13;
      continue;
    }
    if (std::strcmp(arg, "--bench") == 0) bench = true;
    if (std::strcmp(arg, "--cpu-replay") == 0) cpu_replay = true;
    argv[out++] = argv[i];
  }
  *argc = out;
  argv[out] = nullptr;
  if (!kernel.empty()) {
    if (kernel != "sm80" && kernel != "sm90") {
      std::fprintf(stderr, "--fwd-kernel %s: expected sm80 or sm90\n", kernel.c_str());
      return 2;
    }
    setenv("MAGI_FFA_FWD_KERNEL", kernel.c_str(), 1);
  }
  const char* env = std::getenv("MAGI_FFA_FWD_KERNEL");
  if (!cpu_replay) std::printf("forward kernel: %s\n", env != nullptr && env[0] != '\0' ? env : "auto");
  std::fflush(stdout);
  if (!bench || cpu_replay || (env != nullptr && env[0] != '\0')) return -1;

  // --bench with the kernel left open: time each forward kernel this device can run.
  int32_t major = 0, minor = 0;
  const bool sm90 = magi_ffa_device_capability(0, &major, &minor) == 0 && major == 9 && minor == 0;
  int status = 0;
  for (const char* choice : {"sm80", "sm90"}) {
    if (std::strcmp(choice, "sm90") == 0 && !sm90) {
      std::printf("== bench: forward kernel sm90 skipped (device is sm_%d%d)\n", major, minor);
      continue;
    }
    std::printf("== bench: forward kernel %s\n", choice);
    std::fflush(stdout);
    std::vector<char*> child_args(argv, argv + *argc);
    std::string flag = "--fwd-kernel", value = choice;
    child_args.push_back(&flag[0]);
    child_args.push_back(&value[0]);
    child_args.push_back(nullptr);
    const pid_t pid = fork();
    if (pid == 0) {
      execv("/proc/self/exe", child_args.data());
      std::perror("execv");
      _exit(127);
    }
    int child_status = 0;
    if (pid < 0 || waitpid(pid, &child_status, 0) != pid || !WIFEXITED(child_status) ||
        WEXITSTATUS(child_status) != 0) {
      status = 1;
    }
  }
  return status;
}

// Forward-edge cases (they run the backward too, like every case). CaseT is selftest.cu's Case.
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
