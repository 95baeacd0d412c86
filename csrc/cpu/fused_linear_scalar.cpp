// Portable path: plain C++ for the baseline ISA. It is what aarch64 runs, and the plain
// definition the vector paths are tested against, so it favours obviousness; the only
// speed concessions are converting each weight row once for all rows of x, and eight
// independent partial sums that the compiler can keep in SIMD registers.
#include <algorithm>
#include <vector>

#include "cpu/activation.h"
#include "cpu/dtype_convert.h"
#include "cpu/fused_linear.h"
#include "cpu/thread_pool.h"

namespace bigperf::cpu {
namespace {

constexpr int64_t kRowBlock = 16;  // rows of x converted and kept per pass over the weights

float dot(const float* x, const float* w, int64_t K) {
  float part[8] = {};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8)
    for (int j = 0; j < 8; ++j) part[j] += x[k + j] * w[k + j];
  float acc = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
  for (; k < K; ++k) acc += x[k] * w[k];
  return acc;
}

}  // namespace

void fused_linear_scalar(const FusedLinearArgs& a) {
  const int64_t x_elem = a.x_dtype == DType::f32 ? 4 : 2;
  const int64_t w_elem = a.w_dtype == DType::f32 ? 4 : 2;
  const int threads = a.M * a.N * a.K < (int64_t{1} << 16) ? 1 : a.num_threads;
  for (int64_t m0 = 0; m0 < a.M; m0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, a.M - m0);
    // Threads split N (output columns): each weight row is read by exactly one thread.
    parallel_for(a.N, threads, 16, [&](int64_t n_begin, int64_t n_end) {
      std::vector<float> xs(static_cast<size_t>(rows * a.K));
      std::vector<float> w_row(static_cast<size_t>(a.K));
      for (int64_t m = 0; m < rows; ++m) {
        const void* x_ptr = static_cast<const char*>(a.x) + (m0 + m) * a.x_row_stride * x_elem;
        for (int64_t k = 0; k < a.K; ++k) xs[m * a.K + k] = load_as_float(x_ptr, k, a.x_dtype);
      }
      for (int64_t n = n_begin; n < n_end; ++n) {
        const void* w_ptr = static_cast<const char*>(a.w) + n * a.w_row_stride * w_elem;
        for (int64_t k = 0; k < a.K; ++k) w_row[k] = load_as_float(w_ptr, k, a.w_dtype);
        for (int64_t m = 0; m < rows; ++m) {
          float acc = dot(xs.data() + m * a.K, w_row.data(), a.K);
          if (a.bias) acc += a.bias[n];
          acc = apply_activation(acc, a.act);
          const int64_t row = m0 + m;
          if (a.residual) acc += load_as_float(a.residual, row * a.residual_row_stride + n, a.x_dtype);
          store_from_float(a.out, row * a.out_row_stride + n, a.x_dtype, acc);
        }
      }
    });
  }
}

void fused_linear_panel_scalar(const FusedLinearArgs& a) { fused_linear_scalar(a); }

}  // namespace bigperf::cpu
