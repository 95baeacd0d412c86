// Portable path of the sparse linear kernels: plain loops, the same arithmetic as the
// vector paths (fp32 accumulation, int8 scale applied once per row), used where no vector
// ISA runs and as their definition in the tests.
#include <algorithm>
#include <vector>

#include "cpu/activation.h"
#include "cpu/dtype_convert.h"
#include "cpu/sparse_linear.h"
#include "cpu/thread_pool.h"

namespace bigperf::cpu {
namespace {

constexpr int64_t kRowsPerPass = 16;  // rows of x converted to fp32 at a time
constexpr int64_t kSerialWork = int64_t{1} << 18;

// Rows m0 .. m0+ms of x as fp32, K per row.
std::vector<float> rows_as_float(const void* x, int64_t row_stride, DType d, int64_t m0, int64_t ms, int64_t K) {
  std::vector<float> xf(static_cast<size_t>(ms * K));
  for (int64_t m = 0; m < ms; ++m)
    for (int64_t k = 0; k < K; ++k) xf[m * K + k] = load_as_float(x, (m0 + m) * row_stride + k, d);
  return xf;
}

void store_output(void* out, int64_t out_row_stride, DType d, Activation act, const float* bias, int64_t m,
                  int64_t n, float acc) {
  if (bias) acc += bias[n];
  store_from_float(out, m * out_row_stride + n, d, apply_activation(acc, act));
}

float s24_value(const Sparse24Args& a, int64_t n, int64_t i) {
  const int64_t at = n * a.values_row_stride + i;
  if (a.values_dtype == S24Values::i8) return static_cast<const int8_t*>(a.values)[at];
  return load_as_float(a.values, at, static_cast<DType>(a.values_dtype));
}

}  // namespace

void sparse24_linear_scalar(const Sparse24Args& a) {
  if (a.M <= 0 || a.N <= 0) return;
  const int threads = a.M * a.N * a.K < kSerialWork ? 1 : a.num_threads;
  for (int64_t m0 = 0; m0 < a.M; m0 += kRowsPerPass) {
    const int64_t ms = std::min(kRowsPerPass, a.M - m0);
    const std::vector<float> xf = rows_as_float(a.x, a.x_row_stride, a.x_dtype, m0, ms, a.K);
    parallel_for(a.N, threads, 16, [&](int64_t n_begin, int64_t n_end) {
      float acc[kRowsPerPass];
      for (int64_t n = n_begin; n < n_end; ++n) {
        std::fill(acc, acc + ms, 0.f);
        const uint8_t* meta = a.meta + n * a.meta_row_stride;
        for (int64_t g = 0; g < a.K / 4; ++g) {
          const unsigned nibble = (meta[g / 2] >> (4 * (g % 2))) & 0xFu;
          const float va = s24_value(a, n, 2 * g), vb = s24_value(a, n, 2 * g + 1);
          const int64_t ka = 4 * g + (nibble & 3u), kb = 4 * g + (nibble >> 2);
          for (int64_t m = 0; m < ms; ++m) acc[m] += va * xf[m * a.K + ka] + vb * xf[m * a.K + kb];
        }
        const float scale = a.scale ? a.scale[n] : 1.f;
        for (int64_t m = 0; m < ms; ++m)
          store_output(a.out, a.out_row_stride, a.x_dtype, a.act, a.bias, m0 + m, n, acc[m] * scale);
      }
    });
  }
}

void block_sparse_linear_scalar(const BsrArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  const int64_t block_rows = a.N / a.bn;
  const int threads = a.M * a.nnz * a.bn * a.bk < kSerialWork ? 1 : a.num_threads;
  for (int64_t m0 = 0; m0 < a.M; m0 += kRowsPerPass) {
    const int64_t ms = std::min(kRowsPerPass, a.M - m0);
    const std::vector<float> xf = rows_as_float(a.x, a.x_row_stride, a.x_dtype, m0, ms, a.K);
    parallel_for(block_rows, threads, 1, [&](int64_t br_begin, int64_t br_end) {
      std::vector<float> acc(static_cast<size_t>(a.bn * ms));
      for (int64_t br = br_begin; br < br_end; ++br) {
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t b = a.row_ptr[br]; b < a.row_ptr[br + 1]; ++b) {
          const float* xs = xf.data() + a.col_indices[b] * a.bk;
          for (int64_t i = 0; i < a.bn; ++i) {
            const int64_t base = (b * a.bn + i) * a.bk;
            for (int64_t m = 0; m < ms; ++m) {
              float s = 0.f;
              for (int64_t k = 0; k < a.bk; ++k)
                s += load_as_float(a.values, base + k, a.values_dtype) * xs[m * a.K + k];
              acc[i * ms + m] += s;
            }
          }
        }
        for (int64_t i = 0; i < a.bn; ++i)
          for (int64_t m = 0; m < ms; ++m)
            store_output(a.out, a.out_row_stride, a.x_dtype, a.act, a.bias, m0 + m, br * a.bn + i, acc[i * ms + m]);
      }
    });
  }
}

}  // namespace bigperf::cpu
