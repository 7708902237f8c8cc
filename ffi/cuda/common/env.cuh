// common/env.cuh: every MAGI_FFA_* environment variable the library reads, parsed in one place (env.cu).
// The variables are read once, at the first forward or backward call of the process (so a program may set
// them before that call), and never again. An invalid value makes every forward / backward call fail with
// MAGI_FFA_E_INVALID_ARGUMENT and a message naming the variable and its valid values; an empty value counts
// as unset. README.md ("Environment variables") lists them all, with the TypeScript side's.
//
// The parsers are inline and free of getenv, so the self-test (tests/cuda/) can apply the very same rules
// to the values it passes on to the library.
#pragma once

#include <cstdlib>
#include <cstring>

namespace magi_ffa {

// A kernel family forced by MAGI_FFA_FWD_KERNEL / MAGI_FFA_BWD_KERNEL.
enum class ForcedKernel { kAuto, kSm80, kSm90 };

struct EnvConfig {
  // MAGI_FFA_FWD_KERNEL=sm80|sm90: forces the forward kernel (an impossible forced choice is an error).
  ForcedKernel fwd_kernel = ForcedKernel::kAuto;
  // MAGI_FFA_BWD_KERNEL=sm80|sm90: forces the fast-mode backward's main loop (mma.sync fused or Hopper).
  ForcedKernel bwd_kernel = ForcedKernel::kAuto;
  // MAGI_FFA_BWD_BLOCK_N=64|128: key-tile size of the mma.sync fast backward (0: chosen per problem).
  int bwd_block_n = 0;
  // MAGI_FFA_SM90_CTAS=N (N >= 1): persistent CTAs of the Hopper kernels (0: one per SM). A test knob: a
  // small N makes every CTA run many work items in a row.
  int sm90_ctas = 0;
  // MAGI_FFA_SM90_PINGPONG=0|1: the Hopper forward's consumer warpgroups take turns issuing wgmmas (1, the
  // default); 0 is for A/B timing.
  bool sm90_pingpong = true;
#if MAGI_FFA_EXPERIMENTS
  // MAGI_FFA_SM90_BWD_ABLATE=0|1|2|4|6 (experiment builds only; RESULTS ARE WRONG): a timing ablation of the
  // Hopper backward (bf16, D = 128): 1 no dQ reduce-add, 2 no dQ product, 4 no softmax, 6 both (sm90/backward.cu).
  int sm90_bwd_ablate = 0;
#endif
  // The first invalid variable's message (static storage), or nullptr when every variable is valid.
  const char* error = nullptr;
};

// The process's configuration, parsed on first use (thread-safe).
const EnvConfig& env_config();

// ---------------------------------------------------------------------------------------------------
// Parsers: each takes the raw value (nullptr or "" = unset) and returns false for an invalid one.
inline bool env_unset(const char* text) { return text == nullptr || text[0] == '\0'; }

inline bool parse_forced_kernel(const char* text, ForcedKernel* out) {
  if (env_unset(text)) *out = ForcedKernel::kAuto;
  else if (std::strcmp(text, "sm80") == 0) *out = ForcedKernel::kSm80;
  else if (std::strcmp(text, "sm90") == 0) *out = ForcedKernel::kSm90;
  else return false;
  return true;
}

// 64 or 128 (the mma.sync fast backward's two tile sizes), or unset (0).
inline bool parse_bwd_block_n(const char* text, int* out) {
  if (env_unset(text)) *out = 0;
  else if (std::strcmp(text, "64") == 0) *out = 64;
  else if (std::strcmp(text, "128") == 0) *out = 128;
  else return false;
  return true;
}

// A positive decimal integer below 2^20, or unset (0).
inline bool parse_positive_count(const char* text, int* out) {
  if (env_unset(text)) {
    *out = 0;
    return true;
  }
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (*end != '\0' || value < 1 || value >= (1L << 20)) return false;
  *out = static_cast<int>(value);
  return true;
}

// "0" or "1", or unset (`fallback`).
inline bool parse_switch(const char* text, bool fallback, bool* out) {
  if (env_unset(text)) *out = fallback;
  else if (std::strcmp(text, "0") == 0) *out = false;
  else if (std::strcmp(text, "1") == 0) *out = true;
  else return false;
  return true;
}

}  // namespace magi_ffa
