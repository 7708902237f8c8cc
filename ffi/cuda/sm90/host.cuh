// sm90/host.cuh: host helpers shared by the Hopper forward and backward: TMA tensor maps and the
// persistent grid size.
#pragma once

#include <cuda.h>  // CUtensorMap (types only)
#include <cuda_runtime.h>

namespace magi_ffa {

// A thd tensor [rows, heads, head_dim] as the 3-D tensor map (head_dim, heads, rows) with boxes of
// (box_cols, 1, box_rows), the 128-byte swizzle and zero fill; 16-bit elements of `dtype`, or fp32 when
// `fp32` (then box_cols must be 32). False when the driver cannot encode it.
bool sm90_encode_thd(CUtensorMap* map, const void* pointer, int rows, int heads, int head_dim, int box_cols,
                     int box_rows, int dtype, bool fp32);

// Persistent grid size: one CTA per SM of the current device, or MAGI_FFA_SM90_CTAS (common/env.cuh).
cudaError_t sm90_persistent_ctas(int* ctas);

}  // namespace magi_ffa
