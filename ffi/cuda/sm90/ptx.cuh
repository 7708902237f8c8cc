// sm90/ptx.cuh: Hopper (sm_90a) building blocks of the sm90 forward as inline PTX: shared-memory
// matrix descriptors for wgmma, wgmma fences, mbarriers, TMA (cp.async.bulk.tensor) loads and stores,
// proxy fences, named barriers and setmaxnreg. Only called from code compiled for sm_90a (the kernel
// body is guarded by MAGI_FFA_SM90_ENABLED), so the sm_80 pass never assembles them.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "sm90/wgmma.cuh"

namespace magi_ffa {
namespace sm90 {

__device__ __forceinline__ uint32_t smem_u32(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// wgmma shared-memory matrix descriptor with the 128-byte swizzle (mode 1 in bits 62-63). Addresses and
// byte offsets are encoded >> 4 in 14-bit fields: start address bits 0-13, leading-dimension byte offset
// 16-29, stride-dimension byte offset 32-45; base offset (49-51) 0 since every swizzle atom (8 rows of
// 128 B) starts on a 1024-byte boundary.
//  - K-major (Q, K: rows of 64 elements = 128 B, one row per M/N index): SBO = 1024 (next 8 rows), LBO
//    unused (1). Stepping 16 elements along K inside the 128-byte row adds 32 B to the start address.
//  - MN-major (V read transposed: rows are keys = the K dimension, 64 head-dim elements per row): LBO =
//    offset between 64-element column blocks (our 64-column TMA boxes), SBO = 1024 (next 8 keys).
__device__ __forceinline__ uint64_t make_desc_sw128(uint32_t smem_address, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return static_cast<uint64_t>((smem_address & 0x3FFFFu) >> 4) |
         (static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFFu) << 16) |
         (static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFFu) << 32) | (uint64_t{1} << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Pins registers at a point of the instruction stream: the compiler may not move their reads or writes
// across this (used around asynchronous wgmma, whose register operands the compiler sees as written at
// issue time).
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
  }
}

// ---------------------------------------------------------------------------------------------------
// mbarriers (shared::cta addresses).
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void fence_mbar_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t ns;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(ns));
  return ns;
}

__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  asm volatile(
      "{\n.reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}

// Waits by spinning on try_wait (which suspends the thread for a while between polls). The consumer
// warpgroups use this one: any extra state or exit path in their waits (even an iteration-count trap)
// makes ptxas serialize their wgmmas for lack of registers.
__device__ __forceinline__ void mbar_wait_plain(uint32_t bar, uint32_t parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

// Waits until the phase of parity `parity` has completed. A wait that lasts over 30 s of wall time can
// only be a pipeline bug (a lost arrival): the kernel traps, so the launch fails with an error instead of
// hanging the device.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  if (mbar_try_wait(bar, parity)) return;
  const uint64_t start = global_timer_ns();
  uint32_t spins = 0;
  while (!mbar_try_wait(bar, parity)) {
    if ((++spins & 1023u) == 0 && global_timer_ns() - start > 30ull * 1000000000ull) __trap();
  }
}

// ---------------------------------------------------------------------------------------------------
// TMA. The tensor map is a __grid_constant__ kernel parameter; its generic address is what PTX wants.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const void* tensor_map, int32_t c0, int32_t c1, int32_t c2,
                                            uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void tma_store_3d(const void* tensor_map, int32_t c0, int32_t c1, int32_t c2, uint32_t src) {
  asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.tile.bulk_group [%0, {%1, %2, %3}], [%4];\n" ::"l"(
                   reinterpret_cast<uint64_t>(tensor_map)),
               "r"(c0), "r"(c1), "r"(c2), "r"(src)
               : "memory");
}
// Element-wise add of a shared-memory box into global memory (fp32 here), in the bulk group like a store.
__device__ __forceinline__ void tma_reduce_add_3d(const void* tensor_map, int32_t c0, int32_t c1, int32_t c2,
                                                  uint32_t src) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group [%0, {%1, %2, %3}], [%4];\n" ::"l"(
          reinterpret_cast<uint64_t>(tensor_map)),
      "r"(c0), "r"(c1), "r"(c2), "r"(src)
      : "memory");
}
__device__ __forceinline__ void tma_store_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void tma_store_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
__device__ __forceinline__ void tma_store_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }
__device__ __forceinline__ void prefetch_tensor_map(const void* tensor_map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(tensor_map)) : "memory");
}

// Generic-proxy writes to shared memory become visible to the async proxy (TMA, wgmma) after this.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Named barrier `id` (1..15; 0 is __syncthreads) over `threads` threads (a multiple of 32).
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Arrives on named barrier `id` without waiting (the producer side of a bar.sync over `threads`).
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

}  // namespace sm90
}  // namespace magi_ffa
