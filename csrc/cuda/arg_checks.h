// Argument checks shared by the launchers' validation (kernel_plans.cpp) and the host
// emulators: plain C++, no CUDA runtime, so that they build without a GPU toolchain's
// device passes and run where no driver exists.
#pragma once
#include <climits>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace bigperf::cuda::util {

inline void require(bool ok, const char* fn, const std::string& message) {
  if (!ok) throw std::invalid_argument(std::string(fn) + ": " + message);
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

// The first of `preferred` (configuration indices, best first) whose shared memory per
// block fits `max_smem` bytes (0 = no limit), or -1 when none does.
inline int first_fitting(std::initializer_list<int> preferred, int max_smem, int (*smem_of)(int)) {
  for (int c : preferred) {
    if (max_smem <= 0 || smem_of(c) <= max_smem) return c;
  }
  return -1;
}

}  // namespace bigperf::cuda::util
