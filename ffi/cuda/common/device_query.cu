// common/device_query.cu: the per-device facts of device_query.cuh, cached after the first successful query
// (a failed query is not cached: the next call asks again).
#include <atomic>
#include <mutex>

#include "common/device_query.cuh"

namespace magi_ffa {
namespace {

constexpr int kCachedDevices = 64;

cudaError_t query(int device, DeviceFacts* facts) {
  int major = 0, minor = 0;
  facts->device = device;
  cudaError_t err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&facts->sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&facts->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  facts->sm90 = major == 9 && minor == 0;
  if (facts->sms < 1) facts->sms = 1;
  return err;
}

}  // namespace

cudaError_t current_device_facts(DeviceFacts* facts) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < 0 || device >= kCachedDevices) return query(device, facts);
  static std::atomic<bool> known[kCachedDevices] = {};
  static DeviceFacts cached[kCachedDevices];
  static std::mutex filling;
  if (!known[device].load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(filling);
    if (!known[device].load(std::memory_order_relaxed)) {
      err = query(device, &cached[device]);
      if (err != cudaSuccess) return err;
      known[device].store(true, std::memory_order_release);
    }
  }
  *facts = cached[device];
  return cudaSuccess;
}

}  // namespace magi_ffa
