// dispatch.cu: the kernel-choice table and the launch of each choice (see dispatch.cuh).
#include <cuda_runtime.h>

#include <cstdint>

#include "common/backward_prepost.cuh"
#include "common/env.cuh"
#include "dispatch.cuh"
#include "sm80/backward.cuh"
#include "sm80/forward.cuh"
#include "sm90/backward.cuh"
#include "sm90/forward.cuh"

namespace magi_ffa {
namespace {

enum class Pass { kForward, kBackwardFast, kBackwardDeterministic };
// Which forced choice a rule applies to (kNotSm80: unset or sm90).
enum class Force { kAny, kSm80, kSm90, kNotSm80 };
enum class Arch { kAny, kSm90, kNotSm90 };
enum class When {
  kAlways,
  kNoKeys,       // total_k == 0
  kNoQueries,    // total_q == 0
  kHasKeys,      // total_k > 0
  kFusedTooBig,  // the fused backward's tiles (of the chosen block_n) exceed the device's shared memory
};

struct Rule {
  Pass pass;
  Force force;
  Arch arch;
  When when;
  Kernel kernel;
  const char* reason;
};

// The first matching row decides.
constexpr Rule kRules[] = {
    // ---- forward (MAGI_FFA_FWD_KERNEL)
    {Pass::kForward, Force::kSm80, Arch::kAny, When::kAlways, Kernel::kForwardSm80,
     "forced by MAGI_FFA_FWD_KERNEL=sm80"},
    {Pass::kForward, Force::kSm90, Arch::kNotSm90, When::kAlways, Kernel::kRefuse,
     "MAGI_FFA_FWD_KERNEL=sm90 but the current device is not sm_90 (unset it or use sm80)"},
    {Pass::kForward, Force::kAny, Arch::kAny, When::kNoKeys, Kernel::kForwardSm80,
     "no keys: no K / V tensor map can be built, and the sm80 kernel writes out = 0, lse = -inf"},
    {Pass::kForward, Force::kAny, Arch::kSm90, When::kAlways, Kernel::kForwardSm90, "an sm_90 device"},
    {Pass::kForward, Force::kAny, Arch::kAny, When::kAlways, Kernel::kForwardSm80, "not an sm_90 device"},
    // ---- deterministic backward (no environment variable applies)
    {Pass::kBackwardDeterministic, Force::kAny, Arch::kAny, When::kAlways, Kernel::kBackwardSm80Deterministic,
     "deterministic mode: the atomic-free path"},
    // ---- fast backward (MAGI_FFA_BWD_KERNEL picks its main loop)
    {Pass::kBackwardFast, Force::kSm90, Arch::kNotSm90, When::kAlways, Kernel::kRefuse,
     "MAGI_FFA_BWD_KERNEL=sm90 but the current device is not sm_90 (unset it or use sm80)"},
    {Pass::kBackwardFast, Force::kAny, Arch::kAny, When::kNoQueries, Kernel::kBackwardSm80Deterministic,
     "no query rows: nothing to add to dQ; the atomic-free path writes dk = dv = 0"},
    {Pass::kBackwardFast, Force::kNotSm80, Arch::kSm90, When::kHasKeys, Kernel::kBackwardSm90,
     "an sm_90 device"},
    {Pass::kBackwardFast, Force::kAny, Arch::kAny, When::kFusedTooBig, Kernel::kBackwardSm80Deterministic,
     "the fused kernel's tiles exceed the device's shared memory per block (sm_86 / sm_89: about 100 KB)"},
    {Pass::kBackwardFast, Force::kAny, Arch::kAny, When::kAlways, Kernel::kBackwardSm80Fused,
     "the mma.sync fused fast backward (MAGI_FFA_BWD_KERNEL=sm80, not an sm_90 device, or no keys)"},
};

struct Facts {
  Pass pass;
  ForcedKernel forced;
  bool sm90;
  int total_q;
  int total_k;
  bool fused_fits;
};

bool matches(const Rule& rule, const Facts& facts) {
  if (rule.pass != facts.pass) return false;
  switch (rule.force) {
    case Force::kAny: break;
    case Force::kSm80: if (facts.forced != ForcedKernel::kSm80) return false; break;
    case Force::kSm90: if (facts.forced != ForcedKernel::kSm90) return false; break;
    case Force::kNotSm80: if (facts.forced == ForcedKernel::kSm80) return false; break;
  }
  if (rule.arch == Arch::kSm90 && !facts.sm90) return false;
  if (rule.arch == Arch::kNotSm90 && facts.sm90) return false;
  switch (rule.when) {
    case When::kAlways: return true;
    case When::kNoKeys: return facts.total_k == 0;
    case When::kNoQueries: return facts.total_q == 0;
    case When::kHasKeys: return facts.total_k > 0;
    case When::kFusedTooBig: return !facts.fused_fits;
  }
  return false;
}

void decide(const Facts& facts, Choice* choice) {
  for (const Rule& rule : kRules) {
    if (matches(rule, facts)) {
      choice->kernel = rule.kernel;
      choice->reason = rule.reason;
      return;
    }
  }
  choice->kernel = Kernel::kRefuse;  // unreachable: every pass ends with an unconditional row
  choice->reason = "no kernel rule matched (a bug in dispatch.cu)";
}

// The fast path on the Hopper main loop: Delta (zeroing the fp32 dQ accumulator), the main loop, dq.
cudaError_t launch_backward_sm90_path(const BwdParams& params, const TileLists& wide_keys, int head_dim, int dtype,
                                      cudaStream_t stream) {
  const size_t q_elements =
      static_cast<size_t>(params.plan.total_q) * static_cast<size_t>(params.hq) * static_cast<size_t>(head_dim);
  float* dq_accum = nullptr;
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&dq_accum), q_elements * sizeof(float), stream);
  if (err != cudaSuccess) return err;
  err = launch_backward_delta(params, dq_accum, head_dim, dtype, stream);
  if (err == cudaSuccess) err = launch_backward_sm90(params, wide_keys, dq_accum, head_dim, dtype, stream);
  if (err == cudaSuccess) {
    err = launch_accum_convert(dq_accum, params.dq, params.scale, static_cast<int64_t>(q_elements), dtype, stream);
  }
  const cudaError_t free_err = cudaFreeAsync(dq_accum, stream);
  return err != cudaSuccess ? err : free_err;
}

}  // namespace

cudaError_t choose_forward(const FwdParams& params, int head_dim, int dtype, Choice* choice) {
  (void)head_dim;  // every kernel runs every supported head dim and dtype (common/shapes.cuh)
  (void)dtype;
  const cudaError_t err = current_device_facts(&choice->device);
  if (err != cudaSuccess) return err;
  const Facts facts{Pass::kForward, env_config().fwd_kernel, choice->device.sm90, params.plan.total_q,
                    params.plan.total_k, true};
  decide(facts, choice);
  return cudaSuccess;
}

cudaError_t choose_backward(const BwdParams& params, double wide_mean_stages, int head_dim, int dtype,
                            bool deterministic, Choice* choice) {
  (void)dtype;
  const cudaError_t err = current_device_facts(&choice->device);
  if (err != cudaSuccess) return err;
  choice->block_n = fused_block_n(wide_mean_stages, params.group, env_config().bwd_block_n);
  const bool fits = fused_smem_bytes(head_dim, choice->block_n) <= static_cast<size_t>(choice->device.smem_optin);
  const Facts facts{deterministic ? Pass::kBackwardDeterministic : Pass::kBackwardFast, env_config().bwd_kernel,
                    choice->device.sm90, params.plan.total_q, params.plan.total_k, fits};
  decide(facts, choice);
  return cudaSuccess;
}

cudaError_t launch_forward_choice(const Choice& choice, const FwdParams& params, int head_dim, int dtype,
                                  cudaStream_t stream) {
  switch (choice.kernel) {
    case Kernel::kForwardSm80: return launch_forward_sm80(params, head_dim, dtype, stream);
    case Kernel::kForwardSm90: return launch_forward_sm90(params, head_dim, dtype, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_backward_choice(const Choice& choice, const BwdParams& params, const TileLists& wide_keys,
                                   int head_dim, int dtype, cudaStream_t stream) {
  switch (choice.kernel) {
    case Kernel::kBackwardSm80Deterministic:
      return launch_backward_sm80_deterministic(params, head_dim, dtype, stream);
    case Kernel::kBackwardSm80Fused: {
      const TileLists& tiles = choice.block_n == kFusedBlockNWide ? wide_keys : params.plan.dkv;
      return launch_backward_sm80_fused(params, tiles, choice.block_n, choice.device.sms, head_dim, dtype, stream);
    }
    case Kernel::kBackwardSm90: return launch_backward_sm90_path(params, wide_keys, head_dim, dtype, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace magi_ffa
