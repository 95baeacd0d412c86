// NaN and Inf in x through a pruned weight, as PyTorch computes them. Every other backend
// (F.linear on the unpacked weight, the reference) multiplies each pruned, zero weight by
// x, and 0 * NaN = 0 * Inf = NaN. The sparse kernels never read x at a pruned position, so
// after a kernel has run, the outputs whose weight row prunes a position where x holds NaN
// or Inf are set to NaN here: the same pattern on every backend and ISA. Costs one scan of
// x per call (O(M K), against the kernel's O(M N K)); the rest runs only for rows of x that
// hold a non-finite value. Plain C++, run by the bindings after the kernel.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/fused_linear.h"  // DType

namespace bigperf::bindings {

// Whether element i of a row of dtype d has an all-ones exponent (NaN or +-Inf).
inline bool nonfinite_at(const void* row, cpu::DType d, int64_t i) {
  if (d == cpu::DType::f32) {
    uint32_t bits;
    std::memcpy(&bits, static_cast<const char*>(row) + 4 * i, 4);
    return (bits & 0x7F800000u) == 0x7F800000u;
  }
  uint16_t bits;
  std::memcpy(&bits, static_cast<const char*>(row) + 2 * i, 2);
  const uint16_t exponent = d == cpu::DType::f16 ? 0x7C00u : 0x7F80u;
  return (bits & exponent) == exponent;
}

// Whether any of the K elements of the row is NaN or Inf: |bits| reaches the all-ones
// exponent. A max reduction without branches, which the compiler vectorises: this runs on
// every call.
inline bool row_has_nonfinite(const void* row, cpu::DType d, int64_t K) {
  if (d == cpu::DType::f32) {
    const auto* p = static_cast<const int32_t*>(row);
    int32_t top = 0;
    for (int64_t k = 0; k < K; ++k) top = std::max(top, p[k] & 0x7FFFFFFF);
    return top >= 0x7F800000;
  }
  const auto* p = static_cast<const int16_t*>(row);
  int16_t top = 0;
  for (int64_t k = 0; k < K; ++k) top = std::max<int16_t>(top, static_cast<int16_t>(p[k] & 0x7FFF));
  return top >= (d == cpu::DType::f16 ? 0x7C00 : 0x7F80);
}

inline void store_nan(void* out, cpu::DType d, int64_t i) {
  if (d == cpu::DType::f32) {
    const uint32_t nan = 0x7FC00000u;
    std::memcpy(static_cast<char*>(out) + 4 * i, &nan, 4);
  } else {
    const uint16_t nan = d == cpu::DType::f16 ? 0x7E00u : 0x7FC0u;
    std::memcpy(static_cast<char*>(out) + 2 * i, &nan, 2);
  }
}

// For each row m of x with a non-finite value: out[m, n] = NaN for every n for which
// prunes(n, k) holds at one of those positions k. Args: the kernel's argument struct
// (x, x_row_stride, x_dtype, out, out_row_stride, M, N, K).
template <class Args, class Prunes>
void nan_where_pruned_meets_nonfinite(const Args& a, const Prunes& prunes) {
  const int64_t es = a.x_dtype == cpu::DType::f32 ? 4 : 2;
  std::vector<int64_t> columns;
  for (int64_t m = 0; m < a.M; ++m) {
    const void* row = static_cast<const char*>(a.x) + m * a.x_row_stride * es;
    if (!row_has_nonfinite(row, a.x_dtype, a.K)) continue;
    columns.clear();
    for (int64_t k = 0; k < a.K; ++k)
      if (nonfinite_at(row, a.x_dtype, k)) columns.push_back(k);
    for (int64_t n = 0; n < a.N; ++n) {
      for (const int64_t k : columns) {
        if (prunes(n, k)) {
          store_nan(a.out, a.x_dtype, m * a.out_row_stride + n);
          break;
        }
      }
    }
  }
}

}  // namespace bigperf::bindings
