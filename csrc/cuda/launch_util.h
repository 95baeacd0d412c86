// Host-side helpers shared by the launchers: a usable device, what it allows (SM count,
// shared memory per block, both cached per device), the opt-in pointer checks and the
// per-device opt-in to more than 48 KiB of shared memory.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>

#include "cuda/arg_checks.h"

namespace bigperf::cuda::util {

constexpr int kMaxDevices = 64;

[[noreturn]] inline void cuda_fail(const char* fn, const char* what, cudaError_t err) {
  throw std::runtime_error(std::string(fn) + ": " + what + " failed: " + cudaGetErrorString(err));
}

// The current device, or a RuntimeError naming `fn` when there is no device or driver.
inline int current_device(const char* fn) {
  int count = 0;
  const cudaError_t count_err = cudaGetDeviceCount(&count);
  if (count_err != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw std::runtime_error(std::string(fn) + ": no CUDA device/driver available (" +
                             (count_err != cudaSuccess ? cudaGetErrorString(count_err) : "0 devices") + ")");
  }
  int device = 0;
  const cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) cuda_fail(fn, "cudaGetDevice", err);
  return device;
}

// A device attribute, queried once per device (0 when the query fails).
template <cudaDeviceAttr Attr>
int cached_attribute(int device) {
  static std::atomic<int> cache[kMaxDevices] = {};
  const bool cacheable = device >= 0 && device < kMaxDevices;
  int v = cacheable ? cache[device].load(std::memory_order_relaxed) : 0;
  if (v == 0) {
    if (cudaDeviceGetAttribute(&v, Attr, device) != cudaSuccess || v <= 0) {
      cudaGetLastError();
      return 0;
    }
    if (cacheable) cache[device].store(v, std::memory_order_relaxed);
  }
  return v;
}

// What the launchers size grids and choose tiles by. sm_count falls back to an H100's 132
// when the query fails; max_smem 0 means unknown (no configuration is ruled out).
struct DeviceLimits {
  int sm_count, max_smem;
};

inline DeviceLimits device_limits(int device) {
  const int sms = cached_attribute<cudaDevAttrMultiProcessorCount>(device);
  return DeviceLimits{sms > 0 ? sms : 132, cached_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(device)};
}

// The configuration a launch runs: `config` as chosen (-1: none fits the device) or forced,
// checked against the shared memory per block the device allows (`max_smem`, 0 = unknown),
// so that a misfit is a ValueError naming it rather than a failed launch.
inline int checked_config(const char* fn, int config, int max_smem, int (*smem_of)(int),
                          std::string (*name_of)(int)) {
  if (config < 0) {
    throw std::invalid_argument(std::string(fn) + ": no tile configuration fits the " + std::to_string(max_smem) +
                                " bytes of shared memory a block may use on this device");
  }
  const int smem = smem_of(config);
  if (max_smem > 0 && smem > max_smem) {
    throw std::invalid_argument(std::string(fn) + ": config " + name_of(config) + " needs " + std::to_string(smem) +
                                " bytes of shared memory per block, the device allows " + std::to_string(max_smem));
  }
  return config;
}

inline std::atomic<bool>& pointer_checks_flag() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("BIGPERF_CUDA_CHECK_POINTERS");
    return env != nullptr && env[0] == '1';
  }()};
  return on;
}

// With pointer checks on: device pointers only, and on the current device (a host
// pointer or another GPU's memory would otherwise surface as an illegal-address fault that
// poisons the context). Null pointers (absent operands) pass.
inline void check_device_pointers(int device, const char* fn,
                                  std::initializer_list<std::pair<uintptr_t, const char*>> pointers) {
  if (!pointer_checks_flag().load(std::memory_order_relaxed)) return;
  for (const auto& [ptr, name] : pointers) {
    if (ptr == 0) continue;
    cudaPointerAttributes attr{};
    const cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
    if (err != cudaSuccess) {
      cudaGetLastError();
      throw std::invalid_argument(std::string(fn) + ": " + name + " is not a CUDA pointer (" +
                                  cudaGetErrorString(err) + ")");
    }
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
      throw std::invalid_argument(std::string(fn) + ": " + name + " is not device memory");
    }
    if (attr.type == cudaMemoryTypeDevice && attr.device != device) {
      throw std::invalid_argument(std::string(fn) + ": " + name + " lives on device " +
                                  std::to_string(attr.device) + " but the current device is " +
                                  std::to_string(device));
    }
  }
}

// The opt-in above 48 KiB is per device and per kernel; `opted_in` is the kernel's own
// bitmask of devices that already have it.
template <class Kernel>
void ensure_smem(Kernel kernel, int bytes, int device, std::atomic<uint64_t>& opted_in, const char* fn) {
  if (bytes <= 48 * 1024) return;
  const uint64_t bit = device < kMaxDevices ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (opted_in.load(std::memory_order_relaxed) & bit)) return;
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    cuda_fail(fn, "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)", err);
  }
  opted_in.fetch_or(bit, std::memory_order_relaxed);
}

inline void check_launch(const char* fn) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) cuda_fail(fn, "kernel launch", err);
}

}  // namespace bigperf::cuda::util
