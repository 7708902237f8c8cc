// sm90/host.cu: TMA tensor-map encoding (through the driver entry point: no libcuda link) and the
// persistent grid size of the Hopper kernels.
#include <cuda.h>  // CUtensorMap and the driver enums (types only: no libcuda link)
#include <cudaTypedefs.h>

#include <mutex>

#include "common/device_query.cuh"
#include "common/env.cuh"
#include "magi_ffa.h"
#include "sm90/host.cuh"

namespace magi_ffa {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* pointer = nullptr;
    cudaDriverEntryPointQueryResult query = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &pointer, 12000, cudaEnableDefault, &query) ==
            cudaSuccess &&
        query == cudaDriverEntryPointSuccess) {
      fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(pointer);
    }
    (void)cudaGetLastError();
  });
  return fn;
}

}  // namespace

bool sm90_encode_thd(CUtensorMap* map, const void* pointer, int rows, int heads, int head_dim, int box_cols,
                     int box_rows, int dtype, bool fp32) {
  PFN_cuTensorMapEncodeTiled_v12000 fn = encode_fn();
  if (fn == nullptr) return false;
  const cuuint64_t element = fp32 ? 4 : 2;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(head_dim) * element,
                                 static_cast<cuuint64_t>(head_dim) * element * static_cast<cuuint64_t>(heads)};
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(box_cols), 1, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUtensorMapDataType type = fp32                                ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32
                                   : dtype == MAGI_FFA_DTYPE_BFLOAT16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                                      : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult result = fn(map, type, 3, const_cast<void*>(pointer), dims, strides, box, element_strides,
                             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return result == CUDA_SUCCESS;
}

cudaError_t sm90_persistent_ctas(int* ctas) {
  const int forced = env_config().sm90_ctas;
  if (forced > 0) {
    *ctas = forced;
    return cudaSuccess;
  }
  DeviceFacts facts;
  const cudaError_t err = current_device_facts(&facts);
  if (err != cudaSuccess) return err;
  *ctas = facts.sms;
  return cudaSuccess;
}

}  // namespace magi_ffa
