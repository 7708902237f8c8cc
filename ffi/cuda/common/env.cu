// common/env.cu: reads the MAGI_FFA_* environment variables (the only getenv calls of the library).
#include <cstdio>
#include <cstdlib>

#include "common/env.cuh"

namespace magi_ffa {
namespace {

EnvConfig parse_environment() {
  EnvConfig config;
  // Keeps the first failure: one message at a time is enough to fix them all in turn.
  auto check = [&](bool valid, const char* message) {
    if (!valid && config.error == nullptr) config.error = message;
  };
  check(parse_forced_kernel(std::getenv("MAGI_FFA_FWD_KERNEL"), &config.fwd_kernel),
        "the environment variable MAGI_FFA_FWD_KERNEL must be sm80, sm90 or unset");
  check(parse_forced_kernel(std::getenv("MAGI_FFA_BWD_KERNEL"), &config.bwd_kernel),
        "the environment variable MAGI_FFA_BWD_KERNEL must be sm80, sm90 or unset");
  check(parse_bwd_block_n(std::getenv("MAGI_FFA_BWD_BLOCK_N"), &config.bwd_block_n),
        "the environment variable MAGI_FFA_BWD_BLOCK_N must be 64, 128 or unset");
  check(parse_positive_count(std::getenv("MAGI_FFA_SM90_CTAS"), &config.sm90_ctas),
        "the environment variable MAGI_FFA_SM90_CTAS must be a positive integer (persistent CTAs) or unset");
  check(parse_switch(std::getenv("MAGI_FFA_SM90_PINGPONG"), true, &config.sm90_pingpong),
        "the environment variable MAGI_FFA_SM90_PINGPONG must be 0, 1 or unset");
#if MAGI_FFA_EXPERIMENTS
  const char* ablate = std::getenv("MAGI_FFA_SM90_BWD_ABLATE");
  int value = 0;
  const bool valid = parse_positive_count(ablate, &value) || (ablate != nullptr && std::strcmp(ablate, "0") == 0);
  if (!valid || !(value == 0 || value == 1 || value == 2 || value == 4 || value == 6)) {
    check(false, "the environment variable MAGI_FFA_SM90_BWD_ABLATE must be 0, 1, 2, 4, 6 or unset");
  } else {
    config.sm90_bwd_ablate = value;
    if (value != 0) {
      std::fprintf(stderr,
                   "magi_ffa (experiment build): MAGI_FFA_SM90_BWD_ABLATE=%d: the Hopper backward's results are "
                   "WRONG by design (a timing ablation)\n",
                   value);
    }
  }
#endif
  return config;
}

}  // namespace

const EnvConfig& env_config() {
  static const EnvConfig config = parse_environment();  // thread-safe initialization (C++11)
  return config;
}

}  // namespace magi_ffa
