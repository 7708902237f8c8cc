// sm90/watchdog.cuh: the Hopper forward producer's mbarrier wait with a watchdog (device code).
#pragma once

#include <stdint.h>

#include "sm90/ptx.cuh"

namespace magi_ffa {

#if defined(MAGI_FFA_SM90_ENABLED)
// Which producer wait timed out (the watchdog fails differently for each, see watchdog_fire).
enum ProducerWait : int { kWaitQEmpty = 0, kWaitEmptyK = 1, kWaitEmptyV = 2, kWaitVtmp = 3 };

// The producer's mbarrier wait with a watchdog: a wait that lasts over 30 s can only be a lost arrival or
// a deadlock, so the kernel stops instead of hanging the device. Elapsed time is summed from forward steps
// of %globaltimer only (a step back, or a jump of over a second between two polls, counts as nothing), so a
// timer adjustment can neither trap early nor hide a hang. No printf here (any function call in the kernel
// makes ptxas serialize the consumers' wgmmas, C7510); instead the failure itself says which wait it was:
// Q empty traps (cudaErrorIllegalInstruction), K empty reads the unmapped address 0xdead0000'<item>
// (cudaErrorIllegalAddress; compute-sanitizer prints the address and the block), V empty and the V tail
// hit a breakpoint (cudaErrorLaunchFailure).
__device__ __forceinline__ void watchdog_fire(int what, int item) {
  if (what == kWaitEmptyK) {
    asm volatile("{\n.reg .u64 a;\n.reg .u32 t;\nmov.b64 a, {%0, %1};\nld.volatile.global.u32 t, [a];\n}\n"
                 :
                 : "r"(static_cast<uint32_t>(item)), "r"(0xdead0000u)
                 : "memory");
  } else if (what != kWaitQEmpty) {
    asm volatile("brkpt;\n" ::: "memory");
  }
  __trap();
}

__device__ __forceinline__ void producer_wait(uint32_t bar, uint32_t parity, int what, int item) {
  if (sm90::mbar_try_wait(bar, parity)) return;
  // Low 32 bits of the timer (ns): a poll-to-poll step is their difference modulo 2^32; a step back shows
  // as a huge value and is dropped with the jumps. Waited time in units of 1024 ns (30 s = 29.3e6 units).
  uint32_t last = static_cast<uint32_t>(sm90::global_timer_ns());
  uint32_t waited = 0;
  uint32_t spins = 0;
  while (!sm90::mbar_try_wait(bar, parity)) {
    if ((++spins & 1023u) != 0) continue;
    const uint32_t now = static_cast<uint32_t>(sm90::global_timer_ns());
    const uint32_t delta = now - last;
    if (delta < 1000000000u) waited += delta >> 10;
    last = now;
    if (waited > 30000000000u / 1024u) watchdog_fire(what, item);
  }
}
#endif  // MAGI_FFA_SM90_ENABLED

}  // namespace magi_ffa
