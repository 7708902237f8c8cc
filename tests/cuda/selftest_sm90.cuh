// selftest_sm90.cuh: the self-test's hooks for choosing the forward kernel (selftest.cu includes it):
//   --fwd-kernel sm80|sm90  sets MAGI_FFA_FWD_KERNEL before the library's first forward call (the library
//                           reads it once); without it the library picks (sm90 on sm_90 devices).
//   --bench without --fwd-kernel runs the timings once per forward kernel (a child process each, since
//                           the choice is fixed per process).
//   --fwd-crosscheck        runs large forward problems (bench-like shapes: full, causal GQA, packed
//                           documents, sliding window, prefix tree; thousands of (tile, head) items, so the
//                           persistent CTAs run many each) once per forward kernel in child processes
//                           (--fwd-dump FILE) and compares the two results: out relative L2 and lse max
//                           abs difference, identical -inf rows. Needs an sm_90 device.
//   --fwd-time              forward-only timings (bf16, S = 16k, H = 16, D = 128: full, causal, packed
//                           documents 256-4096, sliding window 1024, prefix tree, 64 short documents) of
//                           the kernel / variant the environment selects (MAGI_FFA_FWD_KERNEL,
//                           MAGI_FFA_SM90_PINGPONG, MAGI_FFA_SM90_CTAS).
//   --fwd-hammer N          the --fwd-time shapes (those matching --filter) launched N times each, a
//                           synchronization every 100 launches (hang hunting).
// Host-only code. The forward cases aimed at the sm90 kernel's edges are in selftest_sm90_cases.cuh.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "magi_ffa.h"

namespace magi_ffa_selftest {

// ---------------------------------------------------------------------------------------------------
// --fwd-crosscheck / --fwd-dump: the sm90 forward against the sm80 one on large shapes.
struct CrossSlice {
  int32_t qs, qe, ks, ke, type;
};
struct CrossCase {
  std::string name;
  std::vector<CrossSlice> slices;
  int total = 0;
  int hq = 8, hkv = 8, head_dim = 128;
  int dtype = MAGI_FFA_DTYPE_BFLOAT16;
  float softcap = 0.f;
};

inline std::vector<CrossCase> cross_cases() {
  std::vector<CrossCase> cases;
  cases.push_back({"full_4096_d128", {{0, 4096, 0, 4096, 0}}, 4096, 8, 8, 128});
  cases.push_back({"causal_4096_gqa8_2_d128", {{0, 4096, 0, 4096, 1}}, 4096, 8, 2, 128});
  cases.push_back({"causal_3000_d64_fp16", {{0, 3000, 0, 3000, 1}}, 3000, 8, 8, 64, MAGI_FFA_DTYPE_FLOAT16});
  {
    // Packed documents of 100..1600 tokens (causal), lengths from a fixed LCG.
    CrossCase c{"varlen_docs_causal_d128", {}, 0, 8, 8, 128};
    uint32_t state = 12345;
    int at = 0;
    while (at < 6000) {
      state = state * 1664525u + 1013904223u;
      const int length = 100 + static_cast<int>((state >> 8) % 1500);
      c.slices.push_back({at, at + length, at, at + length, 1});
      at += length;
    }
    c.total = at;
    cases.push_back(c);
  }
  // Sliding window (512, 0): [0, 512) causal + [512, S) bicausal over [0, S).
  cases.push_back({"sliding_window_512_4096_d128", {{0, 512, 0, 512, 1}, {512, 4096, 0, 4096, 3}}, 4096, 8, 8, 128});
  cases.push_back({"sliding_window_300_3000_d64", {{0, 300, 0, 300, 1}, {300, 3000, 0, 3000, 3}}, 3000, 4, 4, 64});
  {
    // Prefix tree: a 1000-token prompt, 6 completions of 300..800 tokens, each causal on itself and full
    // on the prompt (shared query rows across two slices each).
    CrossCase c{"prefix_tree_1000_x6_d128", {}, 0, 8, 8, 128};
    c.slices.push_back({0, 1000, 0, 1000, 1});
    int at = 1000;
    for (int n = 0; n < 6; ++n) {
      const int length = 300 + 100 * n;
      c.slices.push_back({at, at + length, at, at + length, 1});
      c.slices.push_back({at, at + length, 0, 1000, 0});
      at += length;
    }
    c.total = at;
    cases.push_back(c);
  }
  cases.push_back({"softcap_causal_2048_d128", {{0, 2048, 0, 2048, 1}}, 2048, 4, 4, 128, MAGI_FFA_DTYPE_BFLOAT16, 30.f});
  return cases;
}

inline uint16_t cross_random_bits(uint64_t* state, int dtype) {
  *state = *state * 6364136223846793005ull + 1442695040888963407ull;
  const float u = static_cast<float>((*state >> 40) & 0xFFFFFF) / 16777216.f * 2.f - 1.f;  // [-1, 1)
  uint32_t bits;
  std::memcpy(&bits, &u, 4);
  if (dtype == MAGI_FFA_DTYPE_BFLOAT16) return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
  // fp16 of a value in [-1, 1): sign, exponent and 10 mantissa bits (truncated; subnormals flushed).
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const int exponent = static_cast<int>((bits >> 23) & 0xFF) - 127 + 15;
  if (exponent <= 0) return static_cast<uint16_t>(sign);
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(exponent) << 10) | ((bits >> 13) & 0x3FFu));
}

// Child: runs every cross case's forward with the kernel the environment selects and writes
// out (16-bit) and lse (fp32) of each, in order, to `path`. Returns an exit status.
inline int fwd_dump(const char* path) {
  FILE* file = std::fopen(path, "wb");
  if (file == nullptr) {
    std::perror(path);
    return 1;
  }
  int status = 0;
  for (const CrossCase& c : cross_cases()) {
    const size_t q_count = static_cast<size_t>(c.total) * c.hq * c.head_dim;
    const size_t kv_count = static_cast<size_t>(c.total) * c.hkv * c.head_dim;
    const size_t lse_count = static_cast<size_t>(c.total) * c.hq;
    std::vector<uint16_t> q(q_count), k(kv_count), v(kv_count), out(q_count);
    std::vector<float> lse(lse_count);
    uint64_t state = 0x5eed0000u + c.name.size();
    for (auto& x : q) x = cross_random_bits(&state, c.dtype);
    for (auto& x : k) x = cross_random_bits(&state, c.dtype);
    for (auto& x : v) x = cross_random_bits(&state, c.dtype);
    const FlatSlices flat = flatten_slices(c.slices);
    void *dq = nullptr, *dk = nullptr, *dv = nullptr, *dout = nullptr, *dlse = nullptr, *plan = nullptr;
    int32_t rc = magi_ffa_malloc(&dq, q_count * 2);
    if (rc == 0) rc = magi_ffa_malloc(&dk, kv_count * 2);
    if (rc == 0) rc = magi_ffa_malloc(&dv, kv_count * 2);
    if (rc == 0) rc = magi_ffa_malloc(&dout, q_count * 2);
    if (rc == 0) rc = magi_ffa_malloc(&dlse, lse_count * 4);
    if (rc == 0) rc = magi_ffa_memcpy_h2d(dq, q.data(), q_count * 2, nullptr);
    if (rc == 0) rc = magi_ffa_memcpy_h2d(dk, k.data(), kv_count * 2, nullptr);
    if (rc == 0) rc = magi_ffa_memcpy_h2d(dv, v.data(), kv_count * 2, nullptr);
    if (rc == 0) rc = magi_ffa_memset(dout, 0xFF, q_count * 2, nullptr);  // poison: NaN
    if (rc == 0) rc = magi_ffa_memset(dlse, 0xFF, lse_count * 4, nullptr);
    if (rc == 0) {
      rc = magi_ffa_plan_create(&plan, flat.q_ranges.data(), flat.k_ranges.data(), flat.types.data(),
                                static_cast<int32_t>(c.slices.size()), c.total, c.total);
    }
    if (rc == 0) {
      rc = magi_ffa_forward(dq, dk, dv, dout, static_cast<float*>(dlse), plan, c.hq, c.hkv, c.head_dim, c.dtype,
                            1.f / std::sqrt(static_cast<float>(c.head_dim)), c.softcap, 0, nullptr);
    }
    if (rc == 0) rc = magi_ffa_stream_synchronize(nullptr);
    if (rc == 0) rc = magi_ffa_memcpy_d2h(out.data(), dout, q_count * 2, nullptr);
    if (rc == 0) rc = magi_ffa_memcpy_d2h(lse.data(), dlse, lse_count * 4, nullptr);
    if (rc != 0) {
      std::printf("fwd-dump %s failed: %d %s\n", c.name.c_str(), rc, magi_ffa_last_error());
      status = 1;
    }
    if (plan != nullptr) magi_ffa_plan_destroy(plan);
    for (void* pointer : {dq, dk, dv, dout, dlse}) magi_ffa_free(pointer);
    std::fwrite(out.data(), 2, out.size(), file);
    std::fwrite(lse.data(), 4, lse.size(), file);
  }
  std::fclose(file);
  return status;
}

inline double cross_to_double(uint16_t bits, int dtype) {
  if (dtype == MAGI_FFA_DTYPE_BFLOAT16) {
    const uint32_t wide = static_cast<uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &wide, 4);
    return value;
  }
  const int exponent = (bits >> 10) & 0x1F;
  const int mantissa = bits & 0x3FF;
  const double sign = (bits & 0x8000) ? -1.0 : 1.0;
  if (exponent == 0x1F) return mantissa ? NAN : sign * INFINITY;
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

// Runs a child process of this program with extra arguments; true when it exited with status 0.
inline bool run_child(char** argv, int argc, const std::vector<std::string>& extra) {
  std::vector<std::string> storage(extra);
  std::vector<char*> child_args(argv, argv + argc);
  for (std::string& arg : storage) child_args.push_back(&arg[0]);
  child_args.push_back(nullptr);
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    execv("/proc/self/exe", child_args.data());
    std::perror("execv");
    _exit(127);
  }
  int child_status = 0;
  return pid > 0 && waitpid(pid, &child_status, 0) == pid && WIFEXITED(child_status) &&
         WEXITSTATUS(child_status) == 0;
}

// Parent: dumps with both kernels, then compares case by case.
inline int fwd_crosscheck(int argc, char** argv) {
  int32_t major = 0, minor = 0;
  if (magi_ffa_device_capability(0, &major, &minor) != 0 || major != 9 || minor != 0) {
    std::printf("fwd-crosscheck: needs an sm_90 device (%s)\n", magi_ffa_last_error());
    return 1;
  }
  const std::string base = "/tmp/magi_ffa_fwd_dump_" + std::to_string(getpid());
  const std::string path80 = base + "_sm80.bin", path90 = base + "_sm90.bin";
  char* program[1] = {argv[0]};
  if (!run_child(program, 1, {"--fwd-kernel", "sm80", "--fwd-dump", path80}) ||
      !run_child(program, 1, {"--fwd-kernel", "sm90", "--fwd-dump", path90})) {
    std::printf("fwd-crosscheck: a child run failed\n");
    return 1;
  }
  (void)argc;
  FILE* a = std::fopen(path80.c_str(), "rb");
  FILE* b = std::fopen(path90.c_str(), "rb");
  if (a == nullptr || b == nullptr) {
    std::printf("fwd-crosscheck: missing dump files\n");
    return 1;
  }
  int failed = 0;
  for (const CrossCase& c : cross_cases()) {
    const size_t q_count = static_cast<size_t>(c.total) * c.hq * c.head_dim;
    const size_t lse_count = static_cast<size_t>(c.total) * c.hq;
    std::vector<uint16_t> out_a(q_count), out_b(q_count);
    std::vector<float> lse_a(lse_count), lse_b(lse_count);
    bool ok = std::fread(out_a.data(), 2, q_count, a) == q_count && std::fread(lse_a.data(), 4, lse_count, a) == lse_count &&
              std::fread(out_b.data(), 2, q_count, b) == q_count && std::fread(lse_b.data(), 4, lse_count, b) == lse_count;
    double diff2 = 0, ref2 = 0, lse_diff = 0;
    size_t bad = 0;  // NaN, or -inf in one and not the other
    for (size_t i = 0; ok && i < q_count; ++i) {
      const double x = cross_to_double(out_a[i], c.dtype), y = cross_to_double(out_b[i], c.dtype);
      if (std::isnan(x) || std::isnan(y)) {
        ++bad;
        continue;
      }
      diff2 += (x - y) * (x - y);
      ref2 += x * x;
    }
    for (size_t i = 0; ok && i < lse_count; ++i) {
      const bool inf_a = std::isinf(lse_a[i]), inf_b = std::isinf(lse_b[i]);
      if (std::isnan(lse_a[i]) || std::isnan(lse_b[i]) || inf_a != inf_b) {
        ++bad;
      } else if (!inf_a) {
        lse_diff = std::max(lse_diff, static_cast<double>(std::fabs(lse_a[i] - lse_b[i])));
      }
    }
    const double rel = std::sqrt(diff2 / std::max(ref2, 1e-30));
    // Both are bf16 / fp16 roundings of the same fp32 math in different orders.
    const double out_tol = c.dtype == MAGI_FFA_DTYPE_BFLOAT16 ? 1e-2 : 3e-3;
    ok = ok && bad == 0 && rel <= out_tol && lse_diff <= 2e-3;
    if (!ok) ++failed;
    std::printf("%s fwd-crosscheck %-32s sm90 vs sm80: out rel L2 %.2e, lse max diff %.1e, NaN/inf mismatches %zu "
                "(tokens %d, slices %zu, h %d/%d, d %d)\n",
                ok ? "PASS" : "FAIL", c.name.c_str(), rel, lse_diff, bad, c.total, c.slices.size(), c.hq, c.hkv,
                c.head_dim);
  }
  std::fclose(a);
  std::fclose(b);
  std::remove(path80.c_str());
  std::remove(path90.c_str());
  std::printf("fwd-crosscheck: %s\n", failed == 0 ? "all cases agree" : "MISMATCH");
  return failed == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------------
// --fwd-time: forward-only timings on the benchmark shapes (bf16, S = 16k, H = 16, D = 128) with whatever
// kernel / variant the environment selects; TFLOP/s counted by mask area (4 * area * H * D).
inline double cross_area(const CrossSlice& s) {
  const double lq = s.qe - s.qs, lk = s.ke - s.ks;
  if (lq <= 0 || lk <= 0) return 0;
  if (s.type == 0) return lq * lk;
  if (s.type == 1 || s.type == 2) return lk > lq ? (2 * lk - lq + 1) * lq / 2 : lk * (lk + 1) / 2;
  return std::max(0.0, (lk - lq + 1) * lq);
}

inline std::vector<CrossCase> time_cases() {
  const int S = 16384;
  std::vector<CrossCase> cases;
  cases.push_back({"full_16k", {{0, S, 0, S, 0}}, S, 16, 16, 128});
  cases.push_back({"causal_16k", {{0, S, 0, S, 1}}, S, 16, 16, 128});
  {
    CrossCase c{"varlen_causal_docs_256_4096", {}, S, 16, 16, 128};
    uint32_t state = 777;
    int at = 0;
    while (at < S) {
      state = state * 1664525u + 1013904223u;
      const int length = std::min(S - at, 256 + static_cast<int>((state >> 8) % 3841));
      c.slices.push_back({at, at + length, at, at + length, 1});
      at += length;
    }
    cases.push_back(c);
  }
  cases.push_back({"sliding_window_1024_16k", {{0, 1024, 0, 1024, 1}, {1024, S, 0, S, 3}}, S, 16, 16, 128});
  {
    // Prefix tree: a 4096-token prompt and 8 branches of 1536 tokens.
    CrossCase c{"prefix_tree_4k_x8", {{0, 4096, 0, 4096, 1}}, S, 16, 16, 128};
    for (int n = 0; n < 8; ++n) {
      const int at = 4096 + n * 1536;
      c.slices.push_back({at, at + 1536, at, at + 1536, 1});
      c.slices.push_back({at, at + 1536, 0, 4096, 0});
    }
    cases.push_back(c);
  }
  {
    CrossCase c{"short_docs_64x256", {}, S, 16, 16, 128};
    for (int n = 0; n < 64; ++n) c.slices.push_back({n * 256, n * 256 + 256, n * 256, n * 256 + 256, 1});
    cases.push_back(c);
  }
  return cases;
}

// hammer > 0: instead of timing, launch each selected case `hammer` times back to back (a stream
// synchronization every 100 launches reports progress and any error): intermittent-hang hunting.
inline int fwd_time(int hammer = 0, const std::string& filter = "") {
  // Only for the label: the library reads (and checks) these itself (ffi/cuda/common/env.cu).
  const char* env_kernel = std::getenv("MAGI_FFA_FWD_KERNEL");
  const char* env_pingpong = std::getenv("MAGI_FFA_SM90_PINGPONG");
  char label[128];
  std::snprintf(label, sizeof(label), "kernel=%s pingpong=%s", env_kernel ? env_kernel : "auto",
                env_pingpong ? env_pingpong : "1");
  int status = 0;
  for (const CrossCase& c : time_cases()) {
    if (!filter.empty() && c.name.find(filter) == std::string::npos) continue;
    const size_t q_count = static_cast<size_t>(c.total) * c.hq * c.head_dim;
    const size_t kv_count = static_cast<size_t>(c.total) * c.hkv * c.head_dim;
    std::vector<uint16_t> host(std::max(q_count, kv_count));
    uint64_t state = 99;
    for (auto& x : host) x = cross_random_bits(&state, c.dtype);
    const FlatSlices flat = flatten_slices(c.slices);
    double area = 0;
    for (const CrossSlice& sl : c.slices) area += cross_area(sl);
    void *dq = nullptr, *dk = nullptr, *dv = nullptr, *dout = nullptr, *dlse = nullptr, *plan = nullptr;
    int32_t rc = magi_ffa_malloc(&dq, q_count * 2);
    if (rc == 0) rc = magi_ffa_malloc(&dk, kv_count * 2);
    if (rc == 0) rc = magi_ffa_malloc(&dv, kv_count * 2);
    if (rc == 0) rc = magi_ffa_malloc(&dout, q_count * 2);
    if (rc == 0) rc = magi_ffa_malloc(&dlse, static_cast<size_t>(c.total) * c.hq * 4);
    if (rc == 0) rc = magi_ffa_memcpy_h2d(dq, host.data(), q_count * 2, nullptr);
    if (rc == 0) rc = magi_ffa_memcpy_h2d(dk, host.data() + 1, kv_count * 2 - 2, nullptr);
    if (rc == 0) rc = magi_ffa_memcpy_h2d(dv, host.data() + 2, kv_count * 2 - 4, nullptr);
    if (rc == 0) {
      rc = magi_ffa_plan_create(&plan, flat.q_ranges.data(), flat.k_ranges.data(), flat.types.data(),
                                static_cast<int32_t>(c.slices.size()), c.total, c.total);
    }
    const float scale = 1.f / std::sqrt(static_cast<float>(c.head_dim));
    auto forward = [&]() {
      return magi_ffa_forward(dq, dk, dv, dout, static_cast<float*>(dlse), plan, c.hq, c.hkv, c.head_dim, c.dtype,
                              scale, c.softcap, 0, nullptr);
    };
    if (hammer > 0) {
      const auto start = std::chrono::steady_clock::now();
      int launched = 0;
      while (rc == 0 && launched < hammer) {
        for (int i = 0; rc == 0 && i < 100 && launched < hammer; ++i, ++launched) rc = forward();
        if (rc == 0) rc = magi_ffa_stream_synchronize(nullptr);
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("fwd-hammer %-30s %d launches in %.2f s: %s%s (%s)\n", c.name.c_str(), launched, seconds,
                  rc == 0 ? "ok" : "FAILED ", rc == 0 ? "" : magi_ffa_last_error(), label);
      std::fflush(stdout);
      if (rc != 0) status = 1;
      if (plan != nullptr) magi_ffa_plan_destroy(plan);
      for (void* pointer : {dq, dk, dv, dout, dlse}) magi_ffa_free(pointer);
      if (rc != 0) return status;
      continue;
    }
    std::vector<double> samples;
    for (int i = 0; rc == 0 && i < 3; ++i) rc = forward();  // warm-up
    if (rc == 0) rc = magi_ffa_stream_synchronize(nullptr);
    for (int batch = 0; rc == 0 && batch < 7; ++batch) {
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; rc == 0 && i < 5; ++i) rc = forward();
      if (rc == 0) rc = magi_ffa_stream_synchronize(nullptr);
      const auto stop = std::chrono::steady_clock::now();
      samples.push_back(std::chrono::duration<double, std::milli>(stop - start).count() / 5);
    }
    if (rc != 0) {
      std::printf("fwd-time %s failed: %d %s\n", c.name.c_str(), rc, magi_ffa_last_error());
      status = 1;
    } else {
      std::sort(samples.begin(), samples.end());
      const double ms = samples[samples.size() / 2];
      std::printf("fwd-time %-30s %8.3f ms %6.1f TFLOP/s   (%s)\n", c.name.c_str(), ms,
                  4.0 * area * c.hq * c.head_dim / ms * 1e-9, label);
    }
    std::fflush(stdout);
    if (plan != nullptr) magi_ffa_plan_destroy(plan);
    for (void* pointer : {dq, dk, dv, dout, dlse}) magi_ffa_free(pointer);
  }
  return status;
}

// Handles --fwd-kernel (removed from argv). Returns -1 to let main go on, or an exit status when the
// bench already ran here (once per kernel in child processes) or the flag was malformed.
inline int fwd_kernel_flag(int* argc, char** argv) {
  std::string kernel, dump_path;
  bool bench = false, cpu_replay = false, crosscheck = false, time_only = false;
  int hammer = 0;
  std::string filter;
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    const char* arg = argv[i];
    if (std::strcmp(arg, "--fwd-crosscheck") == 0) {
      crosscheck = true;
      continue;
    }
    if (std::strcmp(arg, "--fwd-time") == 0) {
      time_only = true;
      continue;
    }
    if (std::strcmp(arg, "--fwd-hammer") == 0 && i + 1 < *argc) {
      time_only = true;
      hammer = std::atoi(argv[++i]);
      continue;
    }
    if (std::strcmp(arg, "--fwd-dump") == 0 && i + 1 < *argc) {
      dump_path = argv[++i];
      continue;
    }
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
    if (std::strcmp(arg, "--filter") == 0 && i + 1 < *argc) filter = argv[i + 1];
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
  if (crosscheck) return fwd_crosscheck(*argc, argv);
  const char* env = std::getenv("MAGI_FFA_FWD_KERNEL");
  if (!cpu_replay) std::printf("forward kernel: %s\n", env != nullptr && env[0] != '\0' ? env : "auto");
  std::fflush(stdout);
  if (!dump_path.empty()) return fwd_dump(dump_path.c_str());
  if (time_only) return fwd_time(hammer, filter);
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
    if (!run_child(argv, *argc, {"--fwd-kernel", choice})) status = 1;
  }
  return status;
}

}  // namespace magi_ffa_selftest
