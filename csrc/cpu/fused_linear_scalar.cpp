// Portable path: plain C++ (the compiler may auto-vectorise for the baseline ISA).
// The reference that the vector paths are tested against, and what aarch64 runs.
#include <vector>

#include "cpu/activation.h"
#include "cpu/dtype_convert.h"
#include "cpu/fused_linear.h"
#include "cpu/thread_pool.h"

namespace bigperf::cpu {

void fused_linear_scalar(const FusedLinearArgs& a) {
  // Threads split N (output columns): each weight row is read by exactly one thread.
  parallel_for(a.N, a.num_threads, 16, [&](int64_t n_begin, int64_t n_end) {
    std::vector<float> x_row(static_cast<size_t>(a.K));
    std::vector<float> w_row(static_cast<size_t>(a.K));
    for (int64_t m = 0; m < a.M; ++m) {
      const char* x_base = static_cast<const char*>(a.x);
      const int64_t x_elem = a.x_dtype == DType::f32 ? 4 : 2;
      const void* x_ptr = x_base + m * a.x_row_stride * x_elem;
      for (int64_t k = 0; k < a.K; ++k) x_row[k] = load_as_float(x_ptr, k, a.x_dtype);
      for (int64_t n = n_begin; n < n_end; ++n) {
        const int64_t w_elem = a.w_dtype == DType::f32 ? 4 : 2;
        const void* w_ptr = static_cast<const char*>(a.w) + n * a.w_row_stride * w_elem;
        for (int64_t k = 0; k < a.K; ++k) w_row[k] = load_as_float(w_ptr, k, a.w_dtype);
        float acc = 0.f;
        for (int64_t k = 0; k < a.K; ++k) acc += x_row[k] * w_row[k];
        if (a.bias) acc += a.bias[n];
        acc = apply_activation(acc, a.act);
        if (a.residual) acc += load_as_float(a.residual, m * a.residual_row_stride + n, a.x_dtype);
        store_from_float(a.out, m * a.out_row_stride + n, a.x_dtype, acc);
      }
    }
  });
}

}  // namespace bigperf::cpu
