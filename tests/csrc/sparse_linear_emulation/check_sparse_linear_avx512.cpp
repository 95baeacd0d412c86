// Compares the AVX-512 sparse kernels, compiled against SIMDe (sparse_linear_avx512_simde.cpp),
// with the scalar path: 2:4 with every value dtype, x dtype and activation over many M, N, K
// (tails of the 32-element steps included), the same 2:4 weights in the lane layout (both
// lane kernels against the canonical scalar result, and the bf16-arithmetic panel form for
// bf16 values and int8 codes), BSR over block shapes that take each code path
// (full vectors, several block rows per vector, plain loops) and, for 16-row multiples, in
// the lane layout too (its bf16 form for bf16 values), densities with empty block rows, strided x, and padded outputs that must stay untouched past N. Built and run by
// tests/csrc/test_cpu_sparse_linear.py.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/dtype_convert.h"
#include "cpu/sparse_linear.h"

using namespace bigperf::cpu;
static std::mt19937 rng(7);
static float rnd() { return std::normal_distribution<float>(0.f, 1.f)(rng); }
static int fails = 0, runs = 0;
static double worst = 0;

struct Buf {
  std::vector<char> b;
  int64_t stride;
};
static int64_t es(DType d) { return d == DType::f32 ? 4 : 2; }
static Buf make_x(int64_t M, int64_t K, DType d, int pad) {
  Buf x{std::vector<char>((M * (K + pad) + 1) * es(d)), K + pad};
  for (int64_t i = 0; i < M * x.stride; ++i) store_from_float(x.b.data(), i, d, rnd() * 2);
  return x;
}
static Buf make_out(int64_t M, int64_t N, DType d, int pad) {
  Buf o{std::vector<char>(M * (N + pad) * es(d)), N + pad};
  for (int64_t i = 0; i < M * o.stride; ++i) store_from_float(o.b.data(), i, d, NAN);
  return o;
}
// Relative Frobenius difference over [M, N]; huge when a value is unwritten or past N touched.
static double compare(const Buf& a, const Buf& b, int64_t M, int64_t N, DType d) {
  double num = 0, den = 0;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      const double u = load_as_float(a.b.data(), m * a.stride + n, d);
      const double v = load_as_float(b.b.data(), m * b.stride + n, d);
      if (std::isnan(u)) return 1e9;
      num += (u - v) * (u - v);
      den += v * v;
    }
    for (int64_t n = N; n < a.stride; ++n)
      if (!std::isnan(load_as_float(a.b.data(), m * a.stride + n, d))) return 2e9;
  }
  return std::sqrt(num / (den + 1e-300));
}
static void report(const char* what, double err, DType d, const char* detail) {
  // fp32: both paths round, in different orders; a lone output with cancellation (N = 1)
  // reached 1.2e-5. Wrong selections or indices give errors of order 1.
  const double tol = d == DType::f32 ? 5e-5 : d == DType::f16 ? 2e-3 : 1e-2;
  ++runs;
  worst = err > worst && err < 1e8 ? err : worst;
  if (!(err <= tol)) {
    ++fails;
    std::printf("FAIL %s %s: error %.3g\n", what, detail, err);
  }
}

// x with every element rounded to bf16 (kept in its dtype): the operand the bf16-arithmetic
// forms compute with (panel_gemm_bf16.h), so the scalar path on it is their reference to
// fp32 summation's error. (Against the unrounded x, an activation like silu far below zero
// turns the rounding into relative errors of 0.2.)
static Buf bf16_rounded(const Buf& x, DType d) {
  Buf r = x;
  for (int64_t i = 0; i < static_cast<int64_t>(x.b.size()) / es(d); ++i)
    store_from_float(r.b.data(), i, d, bf16_to_float(float_to_bf16(load_as_float(x.b.data(), i, d))));
  return r;
}

// A bf16-arithmetic form (bf16_form) against the scalar lane loop (scalar), both on x rounded
// to bf16; a copy of the lane call `la` (Sparse24Args or BsrArgs) with x and out replaced.
template <class Args>
static void check_bf16_form(const char* what, const Args& la, const Buf& x, DType xd, int64_t M, int64_t N,
                            int pad, void (*scalar)(const Args&), void (*bf16_form)(const Args&),
                            const char* detail) {
  const Buf xb = bf16_rounded(x, xd);
  Args lb = la;
  lb.x = xb.b.data();
  Buf ref = make_out(M, N, xd, pad), got = make_out(M, N, xd, pad);
  lb.out = ref.b.data();
  scalar(lb);
  lb.out = got.b.data();
  bf16_form(lb);
  report(what, compare(got, ref, M, N, xd), xd, detail);
}

// huge: every row of x holds -huge at k = 3 (int8 codes must keep fp32's range there).
static void check24(int64_t M, int64_t N, int64_t K, S24Values vt, DType xd, Activation act, int pad,
                    float huge = 0.f) {
  const int64_t ves = vt == S24Values::f32 ? 4 : vt == S24Values::i8 ? 1 : 2;
  const int64_t vstride = K / 2 + 3, mstride = K / 8 + 1;  // padded rows: strides are honoured
  std::vector<char> values(N * vstride * ves + 1);
  std::vector<uint8_t> meta(N * mstride + 1);
  std::vector<float> scale(N), bias(N);
  for (int64_t n = 0; n < N; ++n) {
    scale[n] = 0.01f + (rng() % 100) / 1000.f;
    bias[n] = rnd();
    for (int64_t g = 0; g < K / 4; ++g) {
      const int pa = rng() % 3, pb = pa + 1 + rng() % (3 - pa);
      meta[n * mstride + g / 2] |= static_cast<uint8_t>((pa | pb << 2) << (4 * (g % 2)));
    }
    for (int64_t i = 0; i < K / 2; ++i) {
      const int64_t at = n * vstride + i;
      if (vt == S24Values::i8)
        reinterpret_cast<int8_t*>(values.data())[at] = static_cast<int8_t>(rng() % 255 - 127);
      else
        store_from_float(values.data(), at, static_cast<DType>(vt), rnd() / std::sqrt(float(K)));
    }
  }
  Buf x = make_x(M, K, xd, pad);
  if (huge != 0.f)
    for (int64_t m = 0; m < M; ++m) store_from_float(x.b.data(), m * x.stride + 3, xd, -huge);
  Buf got = make_out(M, N, xd, 3), want = make_out(M, N, xd, 3);
  Sparse24Args a{};
  a.x = x.b.data(); a.x_row_stride = x.stride; a.x_dtype = xd;
  a.values = values.data(); a.values_row_stride = vstride; a.values_dtype = vt;
  a.meta = meta.data(); a.meta_row_stride = mstride;
  a.scale = vt == S24Values::i8 ? scale.data() : nullptr;
  a.bias = (M + N) % 2 ? bias.data() : nullptr;
  a.out_row_stride = got.stride; a.M = M; a.N = N; a.K = K; a.act = act; a.num_threads = 2;
  a.out = want.b.data();
  sparse24_linear_scalar(a);
  a.out = got.b.data();
  sparse24_linear_avx512(a);
  char detail[160];
  std::snprintf(detail, sizeof detail, "M=%lld N=%lld K=%lld values=%d x=%d act=%d", (long long)M, (long long)N,
                (long long)K, int(vt), int(xd), int(act));
  report("2:4", compare(got, want, M, N, xd), xd, detail);

  // The same weight in the lane layout (sparse_linear.h, Sparse24Args): the AVX-512
  // lane kernel and the scalar lane loop against the canonical scalar result.
  const int64_t n16 = (N + 15) / 16 * 16, groups = K / 4;
  std::vector<char> lvalues(n16 * (K / 2) * ves + 1, 0);
  std::vector<uint8_t> lmeta(n16 * (K / 8), 0x44);
  std::vector<float> lscale(n16, 0.f);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t b = n / 16, l = n % 16;
    lscale[n] = scale[n];
    for (int64_t j = 0; j < K / 8; ++j) lmeta[(b * (K / 8) + j) * 16 + l] = meta[n * mstride + j];
    for (int64_t g = 0; g < groups; ++g)
      for (int s = 0; s < 2; ++s) {
        const int64_t to = vt == S24Values::i8 ? ((b * (K / 8) + g / 2) * 16 + l) * 4 + 2 * (g % 2) + s
                                               : (b * groups + g) * 32 + (vt == S24Values::bf16 ? 2 * l + s : 16 * s + l);
        std::memcpy(lvalues.data() + to * ves, values.data() + (n * vstride + 2 * g + s) * ves, ves);
      }
  }
  Sparse24Args la = a;
  la.values = lvalues.data(); la.values_row_stride = 0; la.meta = lmeta.data(); la.meta_row_stride = 0;
  la.scale = vt == S24Values::i8 ? lscale.data() : nullptr;
  Buf lanes_scalar = make_out(M, N, xd, 3), lanes_avx512 = make_out(M, N, xd, 3);
  la.out = lanes_scalar.b.data();
  sparse24_lanes_linear_scalar(la);
  la.out = lanes_avx512.b.data();
  sparse24_lanes_linear_avx512(la);
  Buf lanes_panel = make_out(M, N, xd, 3);
  la.out = lanes_panel.b.data();
  sparse24_lanes_linear_panel_avx512(la);
  report("2:4 lanes scalar", compare(lanes_scalar, want, M, N, xd), xd, detail);
  report("2:4 lanes avx512", compare(lanes_avx512, want, M, N, xd), xd, detail);
  report("2:4 lanes panel avx512", compare(lanes_panel, want, M, N, xd), xd, detail);
  if (vt == S24Values::bf16 || vt == S24Values::i8)  // the bf16-arithmetic form reads these
    check_bf16_form("2:4 lanes panel bf16 avx512", la, x, xd, M, N, 3, sparse24_lanes_linear_scalar,
                    sparse24_lanes_linear_panel_bf16_avx512, detail);
}

static void check_bsr(int64_t M, int64_t bn, int64_t bk, int64_t brows, int64_t bcols, double density, DType vd,
                      DType xd, Activation act) {
  const int64_t N = brows * bn, K = bcols * bk;
  std::vector<int32_t> row_ptr(brows + 1, 0), cols;
  for (int64_t r = 0; r < brows; ++r) {
    const bool empty = r % 5 == 1;
    for (int64_t c = 0; c < bcols; ++c)
      if (!empty && (rng() % 1000) < density * 1000) cols.push_back(static_cast<int32_t>(c));
    row_ptr[r + 1] = static_cast<int32_t>(cols.size());
  }
  const int64_t nnz = static_cast<int64_t>(cols.size());
  std::vector<char> values((nnz * bn * bk + 1) * es(vd));
  for (int64_t i = 0; i < nnz * bn * bk; ++i) store_from_float(values.data(), i, vd, rnd() / std::sqrt(float(K)));
  std::vector<float> bias(N);
  for (auto& v : bias) v = rnd();
  const Buf x = make_x(M, K, xd, 5);
  Buf got = make_out(M, N, xd, 2), want = make_out(M, N, xd, 2);
  BsrArgs a{};
  a.x = x.b.data(); a.x_row_stride = x.stride; a.x_dtype = xd;
  a.values = values.data(); a.values_dtype = vd; a.bn = bn; a.bk = bk;
  a.col_indices = cols.data(); a.row_ptr = row_ptr.data(); a.nnz = nnz;
  a.bias = M % 2 ? bias.data() : nullptr;
  a.out_row_stride = got.stride; a.M = M; a.N = N; a.K = K; a.act = act; a.num_threads = 2;
  a.out = want.b.data();
  block_sparse_linear_scalar(a);
  a.out = got.b.data();
  block_sparse_linear_avx512(a);
  char detail[160];
  std::snprintf(detail, sizeof detail, "M=%lld block=%lldx%lld N=%lld K=%lld density=%.2f values=%d x=%d act=%d",
                (long long)M, (long long)bn, (long long)bk, (long long)N, (long long)K, density, int(vd), int(xd),
                int(act));
  report("BSR", compare(got, want, M, N, xd), xd, detail);

  // The same blocks in the lane layout (sparse_linear.h) where it applies: the AVX-512 lane
  // kernel and the scalar lane loop against the canonical scalar result.
  if (bn % 16 || (vd == DType::bf16 && bk % 2)) return;
  std::vector<char> lanes(values.size());
  for (int64_t b = 0; b < nnz; ++b)
    for (int64_t i = 0; i < bn; ++i)
      for (int64_t k = 0; k < bk; ++k) {
        const int64_t strip = (b * bn + i) / 16 * 16 * bk, l = i % 16;
        const int64_t to = strip + (vd == DType::bf16 ? (k / 2) * 32 + 2 * l + k % 2 : k * 16 + l);
        std::memcpy(lanes.data() + to * es(vd), values.data() + ((b * bn + i) * bk + k) * es(vd), es(vd));
      }
  BsrArgs la = a;
  la.values = lanes.data();
  Buf lanes_scalar = make_out(M, N, xd, 2), lanes_avx512 = make_out(M, N, xd, 2);
  la.out = lanes_scalar.b.data();
  block_sparse_lanes_linear_scalar(la);
  la.out = lanes_avx512.b.data();
  block_sparse_lanes_linear_avx512(la);
  Buf lanes_panel = make_out(M, N, xd, 2);
  la.out = lanes_panel.b.data();
  block_sparse_lanes_linear_panel_avx512(la);
  report("BSR lanes scalar", compare(lanes_scalar, want, M, N, xd), xd, detail);
  report("BSR lanes avx512", compare(lanes_avx512, want, M, N, xd), xd, detail);
  report("BSR lanes panel avx512", compare(lanes_panel, want, M, N, xd), xd, detail);
  if (vd == DType::bf16)  // the bf16-arithmetic form
    check_bf16_form("BSR lanes panel bf16 avx512", la, x, xd, M, N, 2, block_sparse_lanes_linear_scalar,
                    block_sparse_lanes_linear_panel_bf16_avx512, detail);
}

int main() {
  const DType dts[3] = {DType::f32, DType::f16, DType::bf16};
  const S24Values vts[4] = {S24Values::f32, S24Values::f16, S24Values::bf16, S24Values::i8};
  int i = 0;
  for (int64_t M : {1, 2, 3, 4, 5, 16, 17, 33})
    for (int64_t N : {1, 5, 45, 77, 130})
      for (int64_t K : {8, 24, 32, 40, 72, 136, 520}) {
        ++i;
        check24(M, N, K, vts[i % 4], dts[(i / 4) % 3], static_cast<Activation>(i % 5), i % 3);
      }
  for (int k = 0; k < 4; ++k)
    for (int d = 0; d < 3; ++d) check24(1, 300, 4096, vts[k], dts[d], Activation::none, 0);
  // x whose products with q * 2^24 would overflow fp32 (the fuzzer's -1e30): exact codes.
  for (int64_t M : {1, 2, 3, 5})
    for (DType d : {DType::f32, DType::bf16}) check24(M, 45, 72, S24Values::i8, d, Activation::none, 1, 1e30f);
  // The panel form past its row blocks (96 rows), tasks (192) and K slices (64).
  for (int k = 0; k < 4; ++k) check24(200, 45, 136, vts[k], dts[k % 3], static_cast<Activation>(k), k % 3);
  struct Block { int64_t bn, bk; };
  const Block blocks[] = {{16, 16}, {8, 32}, {32, 8}, {4, 4}, {3, 12}, {5, 2}, {8, 8}, {16, 48}, {2, 16}, {1, 1},
                         {16, 3}, {32, 2}, {16, 1}};
  for (const Block& b : blocks)
    for (double density : {0.1, 0.5, 1.0})
      for (int64_t M : {1, 2, 3, 5, 17}) {
        ++i;
        check_bsr(M, b.bn, b.bk, 7, 11, density, dts[i % 3], dts[(i / 3) % 3], static_cast<Activation>(i % 5));
      }
  check_bsr(1, 16, 16, 64, 64, 0.3, DType::bf16, DType::f32, Activation::gelu_erf);
  // The panel form past its row block (192) and row tile (12), and over task boundaries.
  check_bsr(200, 16, 16, 9, 7, 0.5, DType::bf16, DType::f32, Activation::silu);
  check_bsr(31, 32, 8, 5, 9, 0.5, DType::f16, DType::bf16, Activation::relu);
  check_bsr(13, 16, 2, 11, 6, 1.0, DType::f32, DType::f16, Activation::none);
  std::printf("%d runs, %d failures, worst relative error %.3g\n", runs, fails, worst);
  return fails ? 1 : 0;
}
