// selftest.cu: standalone GPU check of libmagi_ffa.so through its C ABI only (magi_ffa.h).
//
// Every case draws fresh random inputs, poisons the outputs (0xFF bytes = NaN in bf16, fp16 and fp32),
// runs forward and backward on the GPU and compares with a dense float64 CPU reference written from the
// semantics table (per-cell visibility, no tiling): relative L2 error of out, dq, dk, dv, max abs error
// of lse, exact -inf / 0 for rows that see nothing, no NaN anywhere. The backward runs in each mode of
// --bwd-mode (one result line per mode); in deterministic mode the cases marked for it run twice and
// compare bytes (the fast mode's dq uses fp32 atomics, so only its accuracy is checked).
//
// Usage: magi_ffa_selftest [--quick] [--filter SUBSTRING] [--list] [--cpu-replay] [--bench]
//                          [--bwd-mode fast|deterministic|both] [--repeat N]
//   --bwd-mode    backward mode(s) to check / time (default both; fast = deterministic 0, the API default)
//   --bench       time forward / backward on a few large shapes (bf16), print ms and TFLOP/s
//   --quick       only the small cases (for compute-sanitizer runs)
//   --repeat N    run each selected case (or --bench case) N times in this process, stopping at the first
//                 failure (intermittent-hang hunting, e.g. --bench --filter shortdocs --repeat 200)
//   --cpu-replay  no GPU: replays the kernels' schedule on the CPU (the same plan tile lists, walkers,
//                 per-warp skip and mask decisions, tile sizes) with float64 math, and compares it with
//                 the reference. Catches scheduling / masking mistakes on a machine without a GPU.
// Prints one line per case and "N passed, M failed"; exits 1 on any failure.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "magi_ffa.h"
#include "selftest_bench.cuh"
#include "selftest_case.cuh"
#include "selftest_cases.cuh"
#include "selftest_gpu.cuh"
#include "selftest_reference.cuh"
#include "selftest_replay.cuh"
#include "selftest_sm90.cuh"  // --fwd-kernel, --fwd-crosscheck, --fwd-time

namespace {

struct Tolerance {
  double out, grad, lse;
};

Tolerance tolerance_for(int dtype) {
  // Relative L2 vs float64 (lse: max abs). bf16 has 8 significant bits, fp16 11.
  if (dtype == MAGI_FFA_DTYPE_BFLOAT16) return {1e-2, 2e-2, 2e-3};
  return {3e-3, 5e-3, 2e-3};
}

bool run_case(const Case& c, const std::vector<int32_t>& bwd_modes) {
  const size_t q_count = static_cast<size_t>(c.total_q) * c.hq * c.head_dim;
  const size_t kv_count = static_cast<size_t>(c.total_k) * c.hkv * c.head_dim;
  uint64_t seed = 0x1234;
  for (char ch : c.name) seed = seed * 131 + static_cast<unsigned char>(ch);
  Rng rng(seed);
  std::vector<uint16_t> q, k, v, dout;
  std::vector<double> qd, kd, vd, dod;
  random_tensor(rng, q_count, c.input_scale, c.dtype, &q, &qd);
  random_tensor(rng, kv_count, c.input_scale, c.dtype, &k, &kd);
  random_tensor(rng, kv_count, 1.0, c.dtype, &v, &vd);
  random_tensor(rng, q_count, 1.0, c.dtype, &dout, &dod);
  if (c.nan_uncovered) {
    // Padding tokens may hold anything: the kernels must neither read them into a visible result nor let
    // 0 * NaN leak through a matrix product.
    std::vector<char> row_seen(c.total_q, 0), key_seen(c.total_k, 0);
    for (const SliceSpec& s : c.slices) {
      for (int i = s.qs; i < s.qe; ++i) {
        for (int j = s.ks; j < s.ke; ++j) {
          if (cell_visible_ref(s, i, j)) row_seen[i] = key_seen[j] = 1;
        }
      }
    }
    const size_t q_row = static_cast<size_t>(c.hq) * c.head_dim, kv_row = static_cast<size_t>(c.hkv) * c.head_dim;
    for (int i = 0; i < c.total_q; ++i) {
      if (row_seen[i]) continue;
      for (size_t e = i * q_row; e < (i + 1) * q_row; ++e) {
        q[e] = dout[e] = 0xFFFF;
        qd[e] = dod[e] = NAN;
      }
    }
    for (int j = 0; j < c.total_k; ++j) {
      if (key_seen[j]) continue;
      for (size_t e = j * kv_row; e < (j + 1) * kv_row; ++e) {
        k[e] = v[e] = 0xFFFF;
        kd[e] = vd[e] = NAN;
      }
    }
  }

  Reference ref;
  reference(c, qd, kd, vd, dod, &ref);
  bool all_ok = true;
  for (const int32_t deterministic : bwd_modes) {
    const std::string label = c.name + (deterministic ? " [det]" : " [fast]");
    GpuResult gpu;
    if (!run_gpu(c, q, k, v, dout, deterministic, &gpu)) {
      std::printf("FAIL %-59s GPU error: %s\n", label.c_str(), error);
      all_ok = false;
      continue;
    }

    const double e_out = rel_l2(gpu.out, ref.out, c.dtype);
    const double e_dq = rel_l2(gpu.dq, ref.dq, c.dtype);
    const double e_dk = rel_l2(gpu.dk, ref.dk, c.dtype);
    const double e_dv = rel_l2(gpu.dv, ref.dv, c.dtype);
    double e_lse = 0;
    int lse_mismatch = 0;       // -inf where the reference is finite, or the converse, or NaN
    int empty_row_nonzero = 0;  // rows that see nothing must have out exactly 0
    for (size_t i = 0; i < gpu.lse.size(); ++i) {
      const double want = ref.lse[i];
      const double got = gpu.lse[i];
      if (std::isinf(want)) {
        if (!(std::isinf(got) && got < 0)) ++lse_mismatch;
        for (int d = 0; d < c.head_dim; ++d) {
          if (gpu.out[i * c.head_dim + d] != 0 && gpu.out[i * c.head_dim + d] != 0x8000) ++empty_row_nonzero;
        }
      } else if (!std::isfinite(got)) {
        ++lse_mismatch;
      } else {
        e_lse = std::max(e_lse, std::fabs(got - want));
      }
    }
    const Tolerance tol = tolerance_for(c.dtype);
    bool ok = e_out <= tol.out && e_dq <= tol.grad && e_dk <= tol.grad && e_dv <= tol.grad && e_lse <= tol.lse &&
              lse_mismatch == 0 && empty_row_nonzero == 0;
    // (NaN comparisons are false, so a NaN error fails.)
    std::string extra;
    if (lse_mismatch) extra += " lse_inf_mismatch=" + std::to_string(lse_mismatch);
    if (empty_row_nonzero) extra += " empty_row_nonzero=" + std::to_string(empty_row_nonzero);

    if (c.check_determinism) {
      GpuResult again;
      if (!run_gpu(c, q, k, v, dout, deterministic, &again)) {
        std::printf("FAIL %-59s GPU error (second run): %s\n", label.c_str(), error);
        all_ok = false;
        continue;
      }
      // Fast mode: out and lse, and dk / dv when every query head has its own kv head (no head split, so no
      // dK / dV atomics), must still repeat bit for bit; dq (and split dk / dv) may differ in the last bits
      // (atomic order), which is reported, not failed.
      const bool same_rest = again.out == gpu.out && again.dk == gpu.dk && again.dv == gpu.dv &&
                             std::memcmp(again.lse.data(), gpu.lse.data(), gpu.lse.size() * sizeof(float)) == 0;
      const bool same_dq = again.dq == gpu.dq;
      if (deterministic) {
        extra += same_rest && same_dq ? " deterministic" : " NOT_DETERMINISTIC";
        ok = ok && same_rest && same_dq;
      } else {
        const bool same_out = again.out == gpu.out &&
                              std::memcmp(again.lse.data(), gpu.lse.data(), gpu.lse.size() * sizeof(float)) == 0;
        const bool must_repeat_kv = c.hq == c.hkv;
        extra += same_rest ? " out/lse/dk/dv repeat" : (same_out ? " dk/dv differ" : " OUT_LSE_NOT_REPEATABLE");
        extra += same_dq ? ", dq repeats" : ", dq differs in last bits (atomics)";
        ok = ok && same_out && (same_rest || !must_repeat_kv);
      }
    }
    std::printf(
        "%s %-59s out %.2e lse %.1e dq %.2e dk %.2e dv %.2e (slices %zu, q %d, k %d, h %d/%d, d %d, %s%s)%s\n",
        ok ? "PASS" : "FAIL", label.c_str(), e_out, e_lse, e_dq, e_dk, e_dv, c.slices.size(), c.total_q, c.total_k,
        c.hq, c.hkv, c.head_dim, c.dtype == MAGI_FFA_DTYPE_BFLOAT16 ? "bf16" : "fp16", c.softcap > 0 ? ", softcap" : "",
        extra.c_str());
    std::fflush(stdout);
    all_ok = all_ok && ok;
  }
  return all_ok;
}

// Bad arguments must come back as statuses with messages, never crash.
bool run_api_checks() {
  bool ok = true;
  auto expect = [&](const char* what, int32_t status, int32_t want) {
    if (status != want) {
      std::printf("FAIL api: %s returned %d, expected %d (%s)\n", what, status, want, magi_ffa_last_error());
      ok = false;
    } else if (want != 0 && std::strlen(magi_ffa_last_error()) == 0) {
      std::printf("FAIL api: %s gave no error message\n", what);
      ok = false;
    }
  };
  const int32_t qr[2] = {0, 10}, kr[2] = {0, 10}, ty[1] = {1}, bad_ty[1] = {4};
  void* plan = nullptr;
  expect("plan with q range past total_q", magi_ffa_plan_create(&plan, qr, kr, ty, 1, 5, 10),
         MAGI_FFA_E_INVALID_ARGUMENT);
  expect("plan with type 4", magi_ffa_plan_create(&plan, qr, kr, bad_ty, 1, 10, 10), MAGI_FFA_E_INVALID_ARGUMENT);
  expect("valid plan", magi_ffa_plan_create(&plan, qr, kr, ty, 1, 10, 10), 0);
  void* buffer = nullptr;
  expect("malloc", magi_ffa_malloc(&buffer, 1 << 16), 0);
  float* lse = reinterpret_cast<float*>(static_cast<char*>(buffer) + 32768);
  expect("hq % hkv != 0",
         magi_ffa_forward(buffer, buffer, buffer, buffer, lse, plan, 3, 2, 64, MAGI_FFA_DTYPE_BFLOAT16, 0.125f, 0.f,
                          0, nullptr),
         MAGI_FFA_E_INVALID_ARGUMENT);
  expect("head_dim 96",
         magi_ffa_forward(buffer, buffer, buffer, buffer, lse, plan, 1, 1, 96, MAGI_FFA_DTYPE_BFLOAT16, 0.125f, 0.f,
                          0, nullptr),
         MAGI_FFA_E_UNSUPPORTED);
  expect("scale 0",
         magi_ffa_forward(buffer, buffer, buffer, buffer, lse, plan, 1, 1, 64, MAGI_FFA_DTYPE_BFLOAT16, 0.f, 0.f, 0,
                          nullptr),
         MAGI_FFA_E_INVALID_ARGUMENT);
  expect("dtype 7",
         magi_ffa_forward(buffer, buffer, buffer, buffer, lse, plan, 1, 1, 64, 7, 0.125f, 0.f, 0, nullptr),
         MAGI_FFA_E_INVALID_ARGUMENT);
  expect("null plan",
         magi_ffa_forward(buffer, buffer, buffer, buffer, lse, nullptr, 1, 1, 64, MAGI_FFA_DTYPE_BFLOAT16, 0.125f,
                          0.f, 0, nullptr),
         MAGI_FFA_E_INVALID_ARGUMENT);
  expect("misaligned q",
         magi_ffa_forward(static_cast<char*>(buffer) + 2, buffer, buffer, buffer, lse, plan, 1, 1, 64,
                          MAGI_FFA_DTYPE_BFLOAT16, 0.125f, 0.f, 0, nullptr),
         MAGI_FFA_E_INVALID_ARGUMENT);
  expect("plan destroy", magi_ffa_plan_destroy(plan), 0);
  expect("free", magi_ffa_free(buffer), 0);
  std::printf("%s api_argument_checks\n", ok ? "PASS" : "FAIL");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  // --fwd-kernel sm80|sm90 (and --bench once per forward kernel): selftest_sm90.cuh.
  if (const int status = magi_ffa_selftest::fwd_kernel_flag(&argc, argv); status >= 0) return status;
  bool quick = false, list = false, cpu_replay = false, bench = false;
  std::string filter;
  std::vector<int32_t> bwd_modes = {0, 1};  // backward deterministic flag values to run
  int repeat = 1;                            // runs of each selected case
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--bench") {
      bench = true;
    } else if (arg == "--cpu-replay") {
      cpu_replay = true;
    } else if (arg == "--list") {
      list = true;
    } else if (arg == "--filter" && i + 1 < argc) {
      filter = argv[++i];
    } else if (arg == "--repeat" && i + 1 < argc) {
      repeat = std::atoi(argv[++i]);
      if (repeat < 1) {
        std::fprintf(stderr, "--repeat takes a count of at least 1 (got %s)\n", argv[i]);
        return 2;
      }
    } else if (arg == "--bwd-mode" && i + 1 < argc) {
      const std::string mode = argv[++i];
      if (mode == "fast") {
        bwd_modes = {0};
      } else if (mode == "deterministic") {
        bwd_modes = {1};
      } else if (mode == "both") {
        bwd_modes = {0, 1};
      } else {
        std::fprintf(stderr, "--bwd-mode takes fast, deterministic or both (got %s)\n", mode.c_str());
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--quick] [--filter SUBSTRING] [--list] [--cpu-replay] [--bench] "
                   "[--bwd-mode fast|deterministic|both] [--repeat N]\n",
                   argv[0]);
      return 2;
    }
  }
  if (cpu_replay) {
    int passed = 0, failed = 0;
    for (const Case& c : make_cases()) {
      if (quick && !c.quick) continue;
      if (!filter.empty() && c.name.find(filter) == std::string::npos) continue;
      if (run_replay_case(c, bwd_modes)) ++passed; else ++failed;
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
  }
  int32_t count = 0;
  const int32_t status = magi_ffa_device_count(&count);
  if (status != 0 || count == 0) {
    std::printf("no usable GPU (status %d): %s\n", status, magi_ffa_last_error());
    return 1;
  }
  char name[256];
  int32_t major = 0, minor = 0;
  magi_ffa_device_name(0, name, sizeof(name));
  magi_ffa_device_capability(0, &major, &minor);
  std::printf("device 0: %s (sm_%d%d), magi_ffa ABI %d\n", name, major, minor, magi_ffa_abi_version());

  if (bench) {
    bool ok = true;
    for (const BenchCase& b : make_bench_cases()) {
      if (!filter.empty() && b.name.find(filter) == std::string::npos) continue;
      for (int run = 0; run < repeat && ok; ++run) {
        if (repeat > 1) std::printf("bench %s: run %d of %d\n", b.name.c_str(), run + 1, repeat);
        if (!run_bench_case(b, 5, 5, bwd_modes)) {
          std::printf("bench %s failed: %s\n", b.name.c_str(), error);
          ok = false;
        }
      }
    }
    return ok ? 0 : 1;
  }
  int passed = 0, failed = 0;
  if (!list && filter.empty()) {
    if (run_api_checks()) ++passed; else ++failed;
  }
  for (const Case& c : make_cases()) {
    if (quick && !c.quick) continue;
    if (!filter.empty() && c.name.find(filter) == std::string::npos) continue;
    if (list) {
      std::printf("%s\n", c.name.c_str());
      continue;
    }
    for (int run = 0; run < repeat; ++run) {
      if (run_case(c, bwd_modes)) {
        ++passed;
      } else {
        ++failed;
        break;
      }
    }
  }
  if (list) return 0;
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
