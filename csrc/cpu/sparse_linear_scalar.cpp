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

// Value (group g, slot s) of row n in the lane layout (sparse_linear.h, Sparse24Args).
float lanes_value(const Sparse24Args& a, int64_t n, int64_t g, int s) {
  const int64_t block = n / 16, lane = n % 16;
  if (a.values_dtype == S24Values::i8)
    return static_cast<const int8_t*>(a.values)[((block * (a.K / 8) + g / 2) * 16 + lane) * 4 + 2 * (g % 2) + s];
  const int64_t at = (block * (a.K / 4) + g) * 32 + (a.values_dtype == S24Values::bf16 ? 2 * lane + s : 16 * s + lane);
  return load_as_float(a.values, at, static_cast<DType>(a.values_dtype));
}

// The shared loop of both 2:4 layouts: nibble(n, g) gives row n's positions in group g,
// value(n, g, s) its kept values.
template <class Nibble, class Value>
void s24_scalar_loop(const void* x, int64_t x_row_stride, DType x_dtype, const float* scale, const float* bias,
                     void* out, int64_t out_row_stride, int64_t M, int64_t N, int64_t K, Activation act,
                     int num_threads, const Nibble& nibble, const Value& value) {
  if (M <= 0 || N <= 0) return;
  const int threads = M * N * K < kSerialWork ? 1 : num_threads;
  for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
    const int64_t ms = std::min(kRowsPerPass, M - m0);
    const std::vector<float> xf = rows_as_float(x, x_row_stride, x_dtype, m0, ms, K);
    parallel_for(N, threads, 16, [&](int64_t n_begin, int64_t n_end) {
      float acc[kRowsPerPass];
      for (int64_t n = n_begin; n < n_end; ++n) {
        std::fill(acc, acc + ms, 0.f);
        for (int64_t g = 0; g < K / 4; ++g) {
          const unsigned positions = nibble(n, g);
          const float va = value(n, g, 0), vb = value(n, g, 1);
          const int64_t ka = 4 * g + (positions & 3u), kb = 4 * g + (positions >> 2);
          for (int64_t m = 0; m < ms; ++m) acc[m] += va * xf[m * K + ka] + vb * xf[m * K + kb];
        }
        const float s = scale ? scale[n] : 1.f;
        for (int64_t m = 0; m < ms; ++m) store_output(out, out_row_stride, x_dtype, act, bias, m0 + m, n, acc[m] * s);
      }
    });
  }
}

}  // namespace

void sparse24_lanes_linear_scalar(const Sparse24Args& a) {
  const int64_t steps = a.K / 8;
  s24_scalar_loop(
      a.x, a.x_row_stride, a.x_dtype, a.scale, a.bias, a.out, a.out_row_stride, a.M, a.N, a.K, a.act,
      a.num_threads,
      [&](int64_t n, int64_t g) {
        return (a.meta[((n / 16) * steps + g / 2) * 16 + n % 16] >> (4 * (g % 2))) & 0xFu;
      },
      [&](int64_t n, int64_t g, int s) { return lanes_value(a, n, g, s); });
}

void sparse24_linear_scalar(const Sparse24Args& a) {
  s24_scalar_loop(
      a.x, a.x_row_stride, a.x_dtype, a.scale, a.bias, a.out, a.out_row_stride, a.M, a.N, a.K, a.act,
      a.num_threads,
      [&](int64_t n, int64_t g) { return (a.meta[n * a.meta_row_stride + g / 2] >> (4 * (g % 2))) & 0xFu; },
      [&](int64_t n, int64_t g, int s) { return s24_value(a, n, 2 * g + s); });
}

namespace {

// The shared loop of both BSR layouts: at(b, i, k) is the element index of block b, row i,
// column k in a.values.
template <class At>
void bsr_scalar_loop(const BsrArgs& a, const At& at) {
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
            for (int64_t m = 0; m < ms; ++m) {
              float s = 0.f;
              for (int64_t k = 0; k < a.bk; ++k) s += load_as_float(a.values, at(b, i, k), a.values_dtype) * xs[m * a.K + k];
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

}  // namespace

void block_sparse_linear_scalar(const BsrArgs& a) {
  bsr_scalar_loop(a, [&](int64_t b, int64_t i, int64_t k) { return (b * a.bn + i) * a.bk + k; });
}

void block_sparse_lanes_linear_scalar(const BsrArgs& a) {
  const bool pairs = a.values_dtype == DType::bf16;
  bsr_scalar_loop(a, [&](int64_t b, int64_t i, int64_t k) {
    const int64_t strip = (b * a.bn + i) / 16 * 16 * a.bk, lane = i % 16;  // (16 * bk elements per strip)
    return strip + (pairs ? (k / 2) * 32 + 2 * lane + k % 2 : k * 16 + lane);
  });
}

void block_sparse_lanes_linear_panel_scalar(const BsrArgs& a) { block_sparse_lanes_linear_scalar(a); }

void sparse24_lanes_linear_panel_scalar(const Sparse24Args& a) { sparse24_lanes_linear_scalar(a); }

}  // namespace bigperf::cpu
