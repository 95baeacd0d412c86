// Host-side checks shared by the W8A16 and 2:4 launchers: a usable device, device-resident
// pointers, SM counts and the per-device opt-in to more than 48 KiB of shared memory.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace bigperf::cuda::util {

constexpr int kMaxDevices = 64;

[[noreturn]] inline void cuda_fail(const char* fn, const char* what, cudaError_t err) {
  throw std::runtime_error(std::string(fn) + ": " + what + " failed: " + cudaGetErrorString(err));
}

inline void require(bool ok, const char* fn, const std::string& message) {
  if (!ok) throw std::invalid_argument(std::string(fn) + ": " + message);
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

inline int sm_count(int device) {
  static std::atomic<int> cache[kMaxDevices] = {};
  if (device < 0 || device >= kMaxDevices) return 132;
  int n = cache[device].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) {
      cudaGetLastError();
      return 132;
    }
    cache[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

// A host pointer or another GPU's memory would otherwise surface as an illegal-address
// fault that poisons the whole context.
inline void check_device_pointer(uintptr_t ptr, int device, const char* fn, const char* name) {
  if (ptr == 0) return;
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
    throw std::invalid_argument(std::string(fn) + ": " + name + " lives on device " + std::to_string(attr.device) +
                                " but the current device is " + std::to_string(device));
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

// Shared checks of a [rows, cols] fp16/bf16 matrix handed over as (pointer, row stride):
// 16-byte aligned base, and with more than one row a stride that keeps every row start
// 16-byte aligned and the last row inside int64 arithmetic.
inline void check_matrix(const char* fn, uintptr_t ptr, const char* ptr_name, int64_t stride, const char* stride_name,
                         int64_t rows, int64_t cols, const char* cols_name, int elem_bytes = 2) {
  require(ptr != 0, fn, std::string(ptr_name) + " is null");
  require(ptr % 16 == 0, fn,
          std::string(ptr_name) + " must be 16-byte aligned, got address % 16 = " + std::to_string(ptr % 16));
  if (rows <= 1) return;
  require(stride >= cols, fn,
          std::string(stride_name) + " (" + std::to_string(stride) + ") must be >= " + cols_name + " (" +
              std::to_string(cols) + ")");
  require((stride * elem_bytes) % 16 == 0, fn,
          std::string(stride_name) + " must be a multiple of " + std::to_string(16 / elem_bytes) +
              " elements, got " + std::to_string(stride));
  require(stride <= (INT64_MAX / 4 - cols) / (rows - 1), fn, std::string(stride_name) + " is too large");
}

}  // namespace bigperf::cuda::util
