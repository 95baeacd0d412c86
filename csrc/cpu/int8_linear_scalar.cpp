// Portable path of the int8 linear kernels: plain C++, the definition the vector paths
// are tested against, and what non-x86 machines run.
#include <algorithm>
#include <vector>

#include "cpu/activation.h"
#include "cpu/dtype_convert.h"
#include "cpu/int8_linear.h"
#include "cpu/int8_linear_common.h"
#include "cpu/thread_pool.h"

namespace bigperf::cpu {

void int8_weight_linear_scalar(const Int8WeightLinearArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  const int64_t G = a.groups;
  const int64_t gs = a.K / G;
  const int64_t xes = element_size(a.x_dtype);
  // x as fp32 once per call, and its per-group sums for the zero-point identity
  // sum((q - z) * x) = sum(q * x) - z * sum(x).
  std::vector<float> xf(static_cast<size_t>(a.M * a.K));
  std::vector<float> xsum(static_cast<size_t>(a.M * G), 0.f);
  for (int64_t m = 0; m < a.M; ++m) {
    const char* row = static_cast<const char*>(a.x) + m * a.x_row_stride * xes;
    for (int64_t k = 0; k < a.K; ++k) {
      const float v = load_as_float(row, k, a.x_dtype);
      xf[m * a.K + k] = v;
      xsum[m * G + k / gs] += v;
    }
  }
  const int threads = threads_for(a.M, a.N, a.K, a.num_threads);
  parallel_for(a.N, threads, 16, [&](int64_t n_begin, int64_t n_end) {
    for (int64_t n = n_begin; n < n_end; ++n) {
      const int8_t* q = a.qw + n * a.qw_row_stride;
      for (int64_t m = 0; m < a.M; ++m) {
        const float* x = xf.data() + m * a.K;
        float acc = 0.f;
        for (int64_t g = 0; g < G; ++g) {
          float dot = 0.f;
          for (int64_t k = g * gs; k < (g + 1) * gs; ++k) dot += static_cast<float>(q[k]) * x[k];
          if (a.zero_point) dot -= static_cast<float>(a.zero_point[n * G + g]) * xsum[m * G + g];
          acc += a.scale[n * G + g] * dot;
        }
        if (a.bias) acc += a.bias[n];
        store_from_float(a.out, m * a.out_row_stride + n, a.x_dtype, apply_activation(acc, a.act));
      }
    }
  });
  for (int64_t m = 0; a.zero_point && m < a.M; ++m)
    if (!finite_sums(xsum.data() + m * G, G))
      dequantised_row(a, m, [&a](int64_t n, int64_t k) { return rowmajor_weight(a, n, k); });
}

void int8_dynamic_linear_scalar(const Int8DynamicLinearArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  const int64_t xes = element_size(a.x_dtype);
  std::vector<int8_t> xq(static_cast<size_t>(a.M * a.K));
  std::vector<float> xs(static_cast<size_t>(a.M));
  std::vector<float> row(static_cast<size_t>(a.K));
  const int qmax = act_qmax(a.act_bits);
  for (int64_t m = 0; m < a.M; ++m) {
    const char* src = static_cast<const char*>(a.x) + m * a.x_row_stride * xes;
    int32_t absmax = 0;
    for (int64_t k = 0; k < a.K; ++k) {
      row[k] = load_as_float(src, k, a.x_dtype);
      absmax = std::max(absmax, abs_bits(row[k]));
    }
    xs[m] = activation_scale(absmax_to_use(float_from_bits(absmax), given_absmax(a, m)), qmax);
    for (int64_t k = 0; k < a.K; ++k) xq[m * a.K + k] = static_cast<int8_t>(quantize_value(row[k], xs[m], qmax));
  }
  const int threads = threads_for(a.M, a.N, a.K, a.num_threads);
  parallel_for(a.N, threads, 16, [&](int64_t n_begin, int64_t n_end) {
    for (int64_t n = n_begin; n < n_end; ++n) {
      const int8_t* w = a.qw + n * a.qw_row_stride;
      for (int64_t m = 0; m < a.M; ++m) {
        const int8_t* x = xq.data() + m * a.K;
        int32_t acc = 0;
        for (int64_t k = 0; k < a.K; ++k) acc += static_cast<int32_t>(x[k]) * static_cast<int32_t>(w[k]);
        const float y = dynamic_rescale(acc, xs[m], a.w_scale[n], a.bias, n);
        store_from_float(a.out, m * a.out_row_stride + n, a.x_dtype, apply_activation(y, a.act));
      }
    }
  });
}

void int8_weight_linear_panel_scalar(const Int8WeightLinearArgs& a) { int8_weight_linear_scalar(a); }

}  // namespace bigperf::cpu
