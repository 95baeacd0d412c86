// Test-only driver: fused_linear_avx512, fused_linear_panel_avx512 and its bf16 form (built on SIMDe,
// fused_linear_avx512_simde.cpp) against fused_linear_scalar on every dtype pair and
// activation, odd shapes, strided rows, bias and residual; checks that the output row padding is untouched and that both paths
// round 16-bit outputs to the same bits. Prints one line per failure; exit status 1 if any.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "cpu/activation.h"
#include "cpu/dtype_convert.h"
#include "cpu/fused_linear.h"

using namespace bigperf::cpu;

namespace {
uint64_t state = 0x9e3779b97f4a7c15ull;
float randn() {
  float s = 0.f;
  for (int i = 0; i < 4; ++i) {
    state ^= state << 13; state ^= state >> 7; state ^= state << 17;
    s += static_cast<float>(state >> 40) / 16777216.f - 0.5f;
  }
  return s * 1.7320508f;
}
int64_t es(DType d) { return d == DType::f32 ? 4 : 2; }
struct Buf {  // rows x cols in dtype d with a row stride, filled with scale * randn
  std::vector<unsigned char> bytes;
  Buf(DType d, int64_t rows, int64_t stride, int64_t cols, float scale) : bytes(rows * stride * es(d) + 64, 0xAB) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) store_from_float(bytes.data(), r * stride + c, d, scale * randn());
  }
};
double rel_err(const void* a, const void* b, DType d, int64_t M, int64_t N, int64_t stride) {
  double num = 0, den = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const double x = load_as_float(a, m * stride + n, d), y = load_as_float(b, m * stride + n, d);
      num += (x - y) * (x - y);
      den += y * y;
    }
  return std::sqrt(num / (den > 0 ? den : 1));
}
}  // namespace

int main() {
  const DType dts[] = {DType::f32, DType::f16, DType::bf16};
  const int64_t shapes[][3] = {{1, 1, 1}, {1, 37, 33}, {3, 50, 64}, {5, 70, 100}, {17, 40, 129},
                               {33, 20, 70}, {2, 300, 1000}, {4, 9, 31},
                               // panel form: several KC slices, NC blocks and MC blocks, MR tails
                               {200, 131, 520}, {13, 33, 257}};
  int cases = 0, failures = 0;
  for (auto& s : shapes)
    for (DType xd : dts)
      for (DType wd : dts)
        for (int act = 0; act < 5; ++act)
          for (int extras = 0; extras < 2; ++extras) {
            const int64_t M = s[0], N = s[1], K = s[2];
            const int64_t xs = K + 3, ws = K + 5, os = N + 7, rs = N + 2;
            Buf x(xd, M, xs, K, 1.f), w(wd, N, ws, K, 3.f / std::sqrt(static_cast<float>(K)));
            Buf res(xd, M, rs, N, 1.f);
            std::vector<float> bias(N);
            for (auto& b : bias) b = randn();
            std::vector<unsigned char> out1(M * os * es(xd) + 64, 0xCD), out2 = out1, out3 = out1;
            FusedLinearArgs a{};
            a.x = x.bytes.data(); a.x_row_stride = xs; a.x_dtype = xd;
            a.w = w.bytes.data(); a.w_row_stride = ws; a.w_dtype = wd;
            a.bias = extras ? bias.data() : nullptr;
            a.residual = extras ? res.bytes.data() : nullptr; a.residual_row_stride = rs;
            a.out = out1.data(); a.out_row_stride = os;
            a.M = M; a.N = N; a.K = K; a.act = static_cast<Activation>(act); a.num_threads = 2;
            fused_linear_avx512(a);
            a.out = out3.data();
            fused_linear_panel_avx512(a);
            a.out = out2.data();
            fused_linear_scalar(a);
            const double err = std::fmax(rel_err(out1.data(), out2.data(), xd, M, N, os),
                                         rel_err(out3.data(), out2.data(), xd, M, N, os));
            const double tol = xd == DType::f32 ? 1e-5 : (xd == DType::f16 ? 2e-3 : 1e-2);
            bool pad_ok = true;
            for (int64_t m = 0; m < M; ++m)  // columns N..os of every row, then past the last row
              for (int64_t b = N * es(xd); b < os * es(xd); ++b)
                pad_ok &= out1[m * os * es(xd) + b] == 0xCD && out3[m * os * es(xd) + b] == 0xCD;
            for (size_t b = M * os * es(xd); b < out1.size(); ++b) pad_ok &= out1[b] == 0xCD && out3[b] == 0xCD;
            // The bf16 panel form (even K; x and the weight rounded to bf16: bf16's tolerance over
            // many outputs, where one output's relative error is unbounded when its sum cancels).
            if (K % 2 == 0 && M * N >= 64) {
              std::vector<unsigned char> out4 = out1;
              std::fill(out4.begin(), out4.end(), 0xCD);
              a.out = out4.data();
              fused_linear_panel_bf16_avx512(a);
              const double bf16_err = rel_err(out4.data(), out2.data(), xd, M, N, os);
              for (int64_t m = 0; m < M; ++m)
                for (int64_t b = N * es(xd); b < os * es(xd); ++b) pad_ok &= out4[m * os * es(xd) + b] == 0xCD;
              if (!(bf16_err <= 1e-2)) {
                ++failures;
                std::printf("FAIL bf16 form M=%lld N=%lld K=%lld x=%d w=%d act=%d err=%g\n", (long long)M, (long long)N,
                            (long long)K, (int)xd, (int)wd, act, bf16_err);
              }
            }
            ++cases;
            if (!(err <= tol) || !pad_ok) {
              ++failures;
              std::printf("FAIL M=%lld N=%lld K=%lld x=%d w=%d act=%d extras=%d err=%g pad_ok=%d\n",
                          (long long)M, (long long)N, (long long)K, (int)xd, (int)wd, act, extras, err, (int)pad_ok);
            }
          }
  // Output rounding: K = 1, x = 1, fp32 weights: both paths must store the same bits.
  for (DType xd : {DType::f16, DType::bf16}) {
    const int64_t N = 4099;
    std::vector<float> wv(N);
    for (int64_t n = 0; n < N; ++n) wv[n] = randn() * std::ldexp(1.f, static_cast<int>(n % 40) - 20);
    uint16_t one = xd == DType::bf16 ? float_to_bf16(1.f) : float_to_half(1.f);
    std::vector<uint16_t> o1(N), o2(N);
    FusedLinearArgs a{};
    a.x = &one; a.x_row_stride = 1; a.x_dtype = xd; a.w = wv.data(); a.w_row_stride = 1; a.w_dtype = DType::f32;
    a.out = o1.data(); a.out_row_stride = N; a.M = 1; a.N = N; a.K = 1; a.act = Activation::none; a.num_threads = 1;
    fused_linear_avx512(a);
    a.out = o2.data();
    fused_linear_scalar(a);
    ++cases;
    if (o1 != o2) { ++failures; std::printf("FAIL rounding x=%d\n", (int)xd); }
  }
  std::printf("%d cases, %d failures\n", cases, failures);
  return failures ? 1 : 0;
}
