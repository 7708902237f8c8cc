// common/device.cuh: device building blocks shared by the FFA kernels (sm_80+ instructions, also fine on
// Hopper): element traits, mma.sync m16n8k16, ldmatrix, cp.async, the swizzled shared-memory layout and
// warp-level GEMM helpers. Nothing here knows about slices or masks (see mask.cuh), so a later
// wgmma/TMA path can reuse the scheduling without this file.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace magi_ffa {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---------------------------------------------------------------------------------------------------
// Element traits: packing two floats into one 32-bit register and the matching mma instruction.
template <typename T>
struct Elem;

template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t bits) {
    __nv_bfloat162 v = *reinterpret_cast<__nv_bfloat162*>(&bits);
    return __bfloat1622float2(v);
  }
  // c += a * b for one m16n8k16 tile, fp32 accumulate.
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct Elem<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t bits) {
    __half2 v = *reinterpret_cast<__half2*>(&bits);
    return __half22float2(v);
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// ---------------------------------------------------------------------------------------------------
// Fast math. ex2.approx(-inf) = +0, which the online softmax relies on for masked entries.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---------------------------------------------------------------------------------------------------
// Shared memory. Tiles are [rows][D] 16-bit elements, stored in 16-byte chunks whose index is XORed with
// (row & 7): the 8 rows one ldmatrix phase reads (same logical chunk) then sit in 8 distinct bank groups.
template <int D>
__device__ __forceinline__ int swizzle(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// 16-byte global -> shared copy; when !valid the destination is zero-filled and nothing is read (the
// source pointer must still be a valid address, callers pass the tensor base).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(src_bytes)
               : "memory");
}

// 4-byte variant (lse / Delta vectors, strided by the head count).
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Copies rows [row0, row0 + ROWS) of a [*, stride] global tensor (row r at base + r * stride) into a
// swizzled [ROWS][D] shared tile; rows outside [0, limit) are zero-filled.
template <int ROWS, int D, int THREADS, typename T>
__device__ __forceinline__ void load_tile_async(T* smem, const T* base, int64_t stride, int row0, int limit,
                                                int tid) {
  constexpr int kChunksPerRow = D / 8;
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % THREADS == 0, "tile chunks must divide evenly among threads");
#pragma unroll
  for (int it = 0; it < kChunks / THREADS; ++it) {
    const int idx = it * THREADS + tid;
    const int row = idx / kChunksPerRow;
    const int chunk = idx % kChunksPerRow;
    const int grow = row0 + row;
    const bool valid = grow >= 0 && grow < limit;
    const T* src = valid ? base + static_cast<int64_t>(grow) * stride + chunk * 8 : base;
    cp_async16(smem + swizzle<D>(row, chunk), src, valid);
  }
}

// Copies a swizzled [ROWS][D] shared tile to global rows [row0, row0 + ROWS) with row stride `stride`;
// rows at or past `limit` are skipped.
template <int ROWS, int D, int THREADS, typename T>
__device__ __forceinline__ void store_tile(T* base, int64_t stride, int row0, int limit, const T* smem,
                                           int tid) {
  constexpr int kChunksPerRow = D / 8;
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % THREADS == 0, "tile chunks must divide evenly among threads");
#pragma unroll
  for (int it = 0; it < kChunks / THREADS; ++it) {
    const int idx = it * THREADS + tid;
    const int row = idx / kChunksPerRow;
    const int chunk = idx % kChunksPerRow;
    const int grow = row0 + row;
    if (grow < limit) {
      const uint4 v = *reinterpret_cast<const uint4*>(smem + swizzle<D>(row, chunk));
      *reinterpret_cast<uint4*>(base + static_cast<int64_t>(grow) * stride + chunk * 8) = v;
    }
  }
}

// Writes a warp's 16 x NC fp32 accumulator (mma C layout) into rows [row0, row0+16) of a swizzled
// [*][NC] shared tile as T, row g scaled by mul_lo and row g+8 by mul_hi.
template <int NC, typename T>
__device__ __forceinline__ void store_acc_to_smem(T* smem, int row0, const float (&acc)[NC / 8][4],
                                                  float mul_lo, float mul_hi, int lane) {
  const int g = lane >> 2;
  const int t = lane & 3;
#pragma unroll
  for (int nb = 0; nb < NC / 8; ++nb) {
    const int r_lo = row0 + g;
    const int r_hi = row0 + g + 8;
    *reinterpret_cast<uint32_t*>(smem + swizzle<NC>(r_lo, nb) + 2 * t) =
        Elem<T>::pack(acc[nb][0] * mul_lo, acc[nb][1] * mul_lo);
    *reinterpret_cast<uint32_t*>(smem + swizzle<NC>(r_hi, nb) + 2 * t) =
        Elem<T>::pack(acc[nb][2] * mul_hi, acc[nb][3] * mul_hi);
  }
}

// ---------------------------------------------------------------------------------------------------
// Warp-level GEMMs. A warp computes a 16-row block. Accumulators use the mma C layout: acc[nb][0..1]
// are row g = lane/4, columns nb*8 + 2*(lane%4) + {0,1}; acc[nb][2..3] the same columns of row g + 8.

// Loads the A fragments of rows [a_row0, a_row0+16) x [0, KD) of a swizzled [*][KD] tile.
template <int KD, typename T>
__device__ __forceinline__ void load_a_frags(uint32_t (&a)[KD / 16][4], const T* sA, int a_row0, int lane) {
#pragma unroll
  for (int kc = 0; kc < KD / 16; ++kc) {
    ldsm_x4(a[kc], sA + swizzle<KD>(a_row0 + (lane & 15), kc * 2 + (lane >> 4)));
  }
}

// acc[16 x NC] += A[16 x KD] * B[NC x KD]^T, A given as fragments, B rows [b_row0, b_row0+NC) of a
// swizzled [*][KD] tile (row-major, so B^T is what the mma's "col" operand wants: plain ldmatrix).
template <int KD, int NC, typename T>
__device__ __forceinline__ void gemm_abt_rega(float (&acc)[NC / 8][4], const uint32_t (&a)[KD / 16][4],
                                              const T* sB, int b_row0, int lane) {
#pragma unroll
  for (int kc = 0; kc < KD / 16; ++kc) {
#pragma unroll
    for (int nb = 0; nb < NC / 16; ++nb) {
      uint32_t b[4];
      const int row = b_row0 + nb * 16 + (lane & 7) + ((lane >> 4) << 3);
      const int chunk = kc * 2 + ((lane >> 3) & 1);
      ldsm_x4(b, sB + swizzle<KD>(row, chunk));
      Elem<T>::mma(acc[2 * nb], a[kc], b[0], b[1]);
      Elem<T>::mma(acc[2 * nb + 1], a[kc], b[2], b[3]);
    }
  }
}

// Same product with A read from shared memory one k-chunk at a time (fewer live registers).
template <int KD, int NC, typename T>
__device__ __forceinline__ void gemm_abt_smema(float (&acc)[NC / 8][4], const T* sA, int a_row0, const T* sB,
                                               int b_row0, int lane) {
#pragma unroll
  for (int kc = 0; kc < KD / 16; ++kc) {
    uint32_t a[4];
    ldsm_x4(a, sA + swizzle<KD>(a_row0 + (lane & 15), kc * 2 + (lane >> 4)));
#pragma unroll
    for (int nb = 0; nb < NC / 16; ++nb) {
      uint32_t b[4];
      const int row = b_row0 + nb * 16 + (lane & 7) + ((lane >> 4) << 3);
      const int chunk = kc * 2 + ((lane >> 3) & 1);
      ldsm_x4(b, sB + swizzle<KD>(row, chunk));
      Elem<T>::mma(acc[2 * nb], a, b[0], b[1]);
      Elem<T>::mma(acc[2 * nb + 1], a, b[2], b[3]);
    }
  }
}

// acc[16 x ND] += P[16 x KN] * B[KN x ND], P given as packed fragments (from a C accumulator), B rows
// [b_row0, b_row0+KN) of a swizzled row-major [*][ND] tile (transposing ldmatrix).
template <int KN, int ND, typename T>
__device__ __forceinline__ void gemm_pb(float (&acc)[ND / 8][4], const uint32_t (&p)[KN / 16][4], const T* sB,
                                        int b_row0, int lane) {
#pragma unroll
  for (int kc = 0; kc < KN / 16; ++kc) {
#pragma unroll
    for (int db = 0; db < ND / 16; ++db) {
      uint32_t b[4];
      const int row = b_row0 + kc * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
      const int chunk = db * 2 + (lane >> 4);
      ldsm_x4_trans(b, sB + swizzle<ND>(row, chunk));
      Elem<T>::mma(acc[2 * db], p[kc], b[0], b[1]);
      Elem<T>::mma(acc[2 * db + 1], p[kc], b[2], b[3]);
    }
  }
}

// Packs a 16 x KN fp32 C accumulator into A fragments (k16 chunk kc = column blocks 2kc and 2kc+1).
template <int KN, typename T>
__device__ __forceinline__ void acc_to_a_frags(uint32_t (&p)[KN / 16][4], const float (&acc)[KN / 8][4]) {
#pragma unroll
  for (int kc = 0; kc < KN / 16; ++kc) {
    p[kc][0] = Elem<T>::pack(acc[2 * kc][0], acc[2 * kc][1]);
    p[kc][1] = Elem<T>::pack(acc[2 * kc][2], acc[2 * kc][3]);
    p[kc][2] = Elem<T>::pack(acc[2 * kc + 1][0], acc[2 * kc + 1][1]);
    p[kc][3] = Elem<T>::pack(acc[2 * kc + 1][2], acc[2 * kc + 1][3]);
  }
}

template <int N>
__device__ __forceinline__ void zero_acc(float (&acc)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
  }
}

// Max / sum over the 4 lanes of a quad (the lanes that share an accumulator row).
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return x;
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

}  // namespace magi_ffa
