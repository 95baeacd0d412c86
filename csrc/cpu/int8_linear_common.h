// Pieces of the int8 linear kernels shared by every ISA path. Include only from ISA
// translation units: everything is in an anonymous namespace so that a copy compiled
// with AVX flags never becomes the one the scalar path links to (see vec_avx2.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/activation.h"
#include "cpu/dtype_convert.h"
#include "cpu/int8_linear.h"
#include "cpu/kernel_util.h"
#include "cpu/thread_pool.h"

namespace bigperf::cpu {
namespace {

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The per-token scale of bigperf.quant.quantize_activation_per_token, bit for bit:
// absmax / qmax in fp32 (qmax = act_qmax(bits): 127 or 63), 1 for an all-zero row, and
// NaN for a row that holds NaN or Inf (absmax NaN or Inf): that row's outputs are then NaN,
// as F.linear gives on the dequantised math. absmax must keep a NaN it met (abs_max_bits).
inline float activation_scale(float absmax, int qmax = 127) {
  if (!(absmax <= 3.40282347e38f)) return NAN;
  return absmax > 0.f ? absmax / static_cast<float>(qmax) : 1.f;
}

// |v| as the bits of a non-negative int32: its integer order is the float order of |v|,
// with +Inf above every finite value and NaN above +Inf, so an integer max over a row
// gives its absmax and keeps a NaN (a float max drops NaN depending on operand order).
inline int32_t abs_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return static_cast<int32_t>(bits & 0x7FFFFFFFu);
}

inline float float_from_bits(int32_t bits) {
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

// The absmax a row is quantised against: the given one (int8_dynamic_linear's act_absmax),
// unless the row's own is NaN or Inf, which must still make the row's scale NaN.
inline float absmax_to_use(float own, const float* given) {
  return given && own <= 3.40282347e38f ? *given : own;
}

// round(v / scale) clamped to [-qmax, qmax]: a true division (not a reciprocal multiply)
// and round-half-to-even, as torch.round; NaN maps to 0 instead of undefined behaviour.
inline int quantize_value(float v, float scale, int qmax = 127) {
  const float lim = static_cast<float>(qmax);
  float r = std::nearbyint(v / scale);
  if (!(r == r)) return 0;
  r = r > lim ? lim : (r < -lim ? -lim : r);
  return static_cast<int>(r);
}

// The rescale of the W8A8 reference (bigperf.ops.int8_linear.dynamic_reference), in the
// same order and in float64, so that the pre-activation is bit-identical to it.
inline float dynamic_rescale(int32_t acc, float x_scale, float w_scale, const float* bias, int64_t n) {
  double y = static_cast<double>(acc) * static_cast<double>(x_scale) * static_cast<double>(w_scale);
  if (bias) y += static_cast<double>(bias[n]);
  return static_cast<float>(y);
}

// Below this many multiply-adds one thread is faster than waking the pool.
constexpr int64_t kInt8SerialWork = int64_t{1} << 18;

inline int threads_for(int64_t M, int64_t N, int64_t K, int requested) {
  return M * N * K < kInt8SerialWork ? 1 : requested;
}

// Columns per block for parallel_dynamic: whole units, about 8 blocks per thread.
inline int64_t block_columns(int64_t n, int threads, int64_t unit) {
  return imax(unit, round_up((n + 8 * threads - 1) / (8 * threads), unit));
}

// body(begin, end) over [0, n) in dynamic blocks of block_columns(n, threads, unit).
template <class Body>
inline void parallel_columns(int64_t n, int threads, int64_t unit, const Body& body) {
  const int64_t cols = block_columns(n, threads, unit);
  const int64_t blocks = (n + cols - 1) / cols;
  parallel_dynamic(blocks, threads, [&](auto take) {
    for (int64_t b; (b = take()) < blocks;) body(b * cols, imin(n, (b + 1) * cols));
  });
}

// Element (n, k) of a row-major weight, dequantised: (q - zero) * scale, as bigperf.quant
// defines it.
inline float rowmajor_weight(const Int8WeightLinearArgs& a, int64_t n, int64_t k) {
  const int64_t g = n * a.groups + k / (a.K / a.groups);
  const float q = static_cast<float>(a.qw[n * a.qw_row_stride + k]);
  return (a.zero_point ? q - static_cast<float>(a.zero_point[g]) : q) * a.scale[g];
}

// The weight-only dot kernels take zero points as sum((q - z) x) = sum(q x) - z sum(x).
// Where a row of x holds Inf or NaN, or its sum overflows, that is Inf - Inf = NaN where
// F.linear on the dequantised weight gives +-Inf (or a finite value): a pass checks the sums
// it took (finite_sums) and recomputes such a row here term by term, each weight dequantised
// first, as the reference math does. Rare, so plain C++; weight(n, k) reads the kernel's layout.
inline bool finite_sums(const float* sums, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    if (!std::isfinite(sums[i])) return false;
  return true;
}

template <class Weight>
void dequantised_row(const Int8WeightLinearArgs& a, int64_t m, const Weight& weight) {
  const char* row = static_cast<const char*>(a.x) + m * a.x_row_stride * element_size(a.x_dtype);
  parallel_for(a.N, threads_for(1, a.N, a.K, a.num_threads), 16, [&](int64_t n_begin, int64_t n_end) {
    for (int64_t n = n_begin; n < n_end; ++n) {
      float acc = 0.f;
      for (int64_t k = 0; k < a.K; ++k) acc += weight(n, k) * load_as_float(row, k, a.x_dtype);
      if (a.bias) acc += a.bias[n];
      store_from_float(a.out, m * a.out_row_stride + n, a.x_dtype, apply_activation(acc, a.act));
    }
  });
}

}  // namespace
}  // namespace bigperf::cpu
