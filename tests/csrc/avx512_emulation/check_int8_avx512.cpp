// Compares the AVX-512 int8 kernels, compiled against SIMDe (simde_shim.h), with the
// scalar path on many shapes: every M regime, per channel and every group size, zero
// points, the three x dtypes, every activation, strided x, and padded outputs that must
// stay untouched past N; W8A8 with 8- and 7-bit activation codes; both on the weights held in
// the w8a16-cpu and w8a8-cpu panel layouts too (packed here as bigperf/formats/_panels.py
// does); W8A16's bf16 panel GEMM on both weights (bf16's tolerance). Built and run by tests/csrc/test_cpu_int8_avx512_emulated.py.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#include "cpu/dtype_convert.h"
#include "cpu/int8_linear.h"
using namespace bigperf::cpu;
static std::mt19937 rng(1);
static float rnd() { return std::normal_distribution<float>(0.f, 1.f)(rng); }
static int fails = 0, runs = 0;
static double worst_wo = 0, worst_dyn = 0;
struct Buf { std::vector<char> b; int64_t stride; };
static Buf make_x(int64_t M, int64_t K, DType d, int pad) {
  Buf x; x.stride = K + pad; int64_t es = d == DType::f32 ? 4 : 2; x.b.resize((M * x.stride + 1) * es);
  for (int64_t i = 0; i < M * x.stride; ++i) store_from_float(x.b.data(), i, d, rnd() * 2);
  return x;
}
static double compare(const Buf& a, const Buf& b, int64_t M, int64_t N, DType d, int64_t pad) {
  double num = 0, den = 0;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double u = load_as_float(a.b.data(), m * a.stride + n, d), v = load_as_float(b.b.data(), m * b.stride + n, d);
      if (std::isnan(u)) return 1e9;
      num += (u - v) * (u - v); den += v * v;
    }
    for (int64_t n = N; n < N + pad; ++n) if (!std::isnan(load_as_float(a.b.data(), m * a.stride + n, d))) return 2e9;
  }
  return std::sqrt(num / (den + 1e-300));
}
static Buf make_out(int64_t M, int64_t N, DType d, int pad) {
  Buf o; o.stride = N + pad; int64_t es = d == DType::f32 ? 4 : 2; o.b.resize(M * o.stride * es);
  for (int64_t i = 0; i < M * o.stride; ++i) store_from_float(o.b.data(), i, d, NAN);
  return o;
}
// The [N, K] weight (row stride ws) in panel order: [Np / 16][kp / u][16][u], zero padded.
static std::vector<int8_t> to_panels(const int8_t* w, int64_t ws, int64_t N, int64_t K, int64_t kp, int64_t u) {
  const int64_t np = (N + 15) / 16 * 16;
  std::vector<int8_t> out(np * kp, 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      out[(n / 16) * kp * 16 + ((k / u) * 16 + n % 16) * u + k % u] = w[n * ws + k];
  return out;
}
// [N][G] -> group-major [G][Np], zero past N.
template <class T>
static std::vector<T> group_major(const T* t, int64_t N, int64_t G) {
  const int64_t np = (N + 15) / 16 * 16;
  std::vector<T> out(G * np, T(0));
  for (int64_t n = 0; n < N; ++n) for (int64_t g = 0; g < G; ++g) out[g * np + n] = t[n * G + g];
  return out;
}
int main() {
  const DType dts[3] = {DType::f32, DType::f16, DType::bf16};
  const double tol[3] = {1e-5, 2e-3, 1e-2};
  int64_t Ms[] = {1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 33};
  int64_t Ns[] = {1, 45, 77, 130};
  struct Big { int64_t M, N, K; };
  // Past the GEMM's row block (192), column block (128) and K slice (1024) of the AVX-512
  // W8A8 path; gsi 0 / zp 0 only.
  const Big bigs[] = {{200, 300, 2100}, {13, 129, 4099}};
  for (int64_t M : Ms) for (int64_t N : Ns) for (int gsi = 0; gsi < 6; ++gsi) for (int zp = 0; zp < 2; ++zp) {
    const int64_t gs = gsi < 2 ? 0 : int64_t{32} << (gsi - 2);  // 0: per channel; else 32 .. 256
    int64_t K = gs ? 3 * gs : (gsi == 0 ? 97 : 1000 + M % 3);
    if (M == 33 && N == 130 && gsi == 0 && zp == 0) M = bigs[0].M, N = bigs[0].N, K = bigs[0].K;
    if (M == 13 && N == 130 && gsi == 0 && zp == 0) N = bigs[1].N, K = bigs[1].K;
    int64_t G = gs ? K / gs : 1;
    DType d = dts[(M + N + gsi) % 3];
    Activation act = static_cast<Activation>((M + 2 * N + gsi + zp) % 5);
    std::vector<int8_t> w(N * (K + 3));
    for (auto& v : w) v = (int8_t)(rng() % 256 - 128);
    std::vector<float> sc(N * G), bias(N); std::vector<int8_t> z(N * G);
    for (auto& v : sc) v = 0.02f * (0.5f + (rng() % 1000) / 1000.f);
    for (auto& v : z) v = (int8_t)(rng() % 21 - 10);
    for (auto& v : bias) v = rnd();
    Buf x = make_x(M, K, d, 3);
    Int8WeightLinearArgs a{}; a.x = x.b.data(); a.x_row_stride = x.stride; a.x_dtype = d; a.qw = w.data(); a.qw_row_stride = K + 3;
    a.scale = sc.data(); a.zero_point = zp ? z.data() : nullptr; a.groups = G; a.bias = (M & 1) ? bias.data() : nullptr;
    a.M = M; a.N = N; a.K = K; a.act = act; a.num_threads = 1 + (N & 1);
    Buf o1 = make_out(M, N, d, 2), o2 = make_out(M, N, d, 2);
    a.out = o1.b.data(); a.out_row_stride = o1.stride; int8_weight_linear_avx512(a);
    a.out = o2.b.data(); a.out_row_stride = o2.stride; int8_weight_linear_scalar(a);
    Buf o3 = make_out(M, N, d, 2);  // the panel form (int8_weight_panel.h) on the same inputs
    a.out = o3.b.data(); a.out_row_stride = o3.stride; int8_weight_linear_panel_avx512(a);
    // The w8a16-cpu layout: both forms of the AVX-512 panel kernels.
    const std::vector<int8_t> panels = to_panels(w.data(), K + 3, N, K, K, 1);
    const std::vector<float> gm_scale = group_major(sc.data(), N, G);
    const std::vector<int8_t> gm_zero = group_major(z.data(), N, G);
    Int8WeightLinearArgs h = a;
    h.qw = panels.data(); h.qw_row_stride = K * 16; h.scale = gm_scale.data();
    h.zero_point = zp ? gm_zero.data() : nullptr;
    Buf o4 = make_out(M, N, d, 2), o5 = make_out(M, N, d, 2);
    h.out = o4.b.data(); h.out_row_stride = o4.stride; int8_weight_linear_panels_dot_avx512(h);
    h.out = o5.b.data(); h.out_row_stride = o5.stride; int8_weight_linear_panels_gemm_avx512(h);
    double e = std::fmax(std::fmax(compare(o1, o2, M, N, d, 2), compare(o3, o2, M, N, d, 2)),
                         std::fmax(compare(o4, o2, M, N, d, 2), compare(o5, o2, M, N, d, 2)));
    ++runs;
    if (d == DType::f32) worst_wo = std::fmax(worst_wo, e);
    if (e > tol[(int)d]) { ++fails; printf("FAIL wo M=%ld N=%ld K=%ld gs=%ld zp=%d dt=%d act=%d err=%g\n", (long)M, (long)N, (long)K, (long)gs, zp, (int)d, (int)act, e); }
    // The panel GEMM in bf16 arithmetic (panel_gemm_bf16.h, even K) on both weights: x and the
    // weight rounded to bf16, so held to bf16's tolerance against the fp32 scalar path (over
    // many outputs: one output's relative error is unbounded where its sum cancels).
    if (K % 2 == 0 && N > 1) {
      Buf o6 = make_out(M, N, d, 2), o7 = make_out(M, N, d, 2);
      a.out = o6.b.data(); a.out_row_stride = o6.stride; int8_weight_linear_panel_bf16_avx512(a);
      h.out = o7.b.data(); h.out_row_stride = o7.stride; int8_weight_linear_panels_gemm_bf16_avx512(h);
      e = std::fmax(compare(o6, o2, M, N, d, 2), compare(o7, o2, M, N, d, 2));
      ++runs;
      if (e > 1e-2) { ++fails; printf("FAIL wo bf16 M=%ld N=%ld K=%ld gs=%ld zp=%d dt=%d act=%d err=%g\n", (long)M, (long)N, (long)K, (long)gs, zp, (int)d, (int)act, e); }
    }
    if (zp || gsi > 1) continue;
    // dynamic: per channel, symmetric scales, any int8 weights; 8- and 7-bit x codes
    for (int bits = 8; bits >= 7; --bits) {
      Int8DynamicLinearArgs b{}; b.x = x.b.data(); b.x_row_stride = x.stride; b.x_dtype = d; b.qw = w.data(); b.qw_row_stride = K + 3;
      b.w_scale = sc.data(); b.bias = a.bias; b.M = M; b.N = N; b.K = K; b.act = act; b.num_threads = a.num_threads;
      b.act_bits = bits;
      Buf p1 = make_out(M, N, d, 2), p2 = make_out(M, N, d, 2);
      b.out = p1.b.data(); b.out_row_stride = p1.stride; int8_dynamic_linear_avx512(b);
      b.out = p2.b.data(); b.out_row_stride = p2.stride; int8_dynamic_linear_scalar(b);
      // The w8a8-cpu layout (k pairs for 8-bit x, quads for 7-bit) read by the VNNI kernel.
      const int64_t kp = (K + 31) / 32 * 32;
      const std::vector<int8_t> held = to_panels(w.data(), K + 3, N, K, kp, bits == 8 ? 2 : 4);
      std::vector<int32_t> colsum((N + 15) / 16 * 16, 0);
      for (int64_t n = 0; n < N; ++n) for (int64_t k = 0; k < K; ++k) colsum[n] += w[n * (K + 3) + k];
      Int8DynamicLinearArgs c = b;
      c.panels = held.data(); c.colsum = colsum.data();
      Buf p5 = make_out(M, N, d, 2);
      c.out = p5.b.data(); c.out_row_stride = p5.stride; int8_dynamic_linear_panels_avx512(c);
      e = std::fmax(compare(p1, p2, M, N, d, 2), compare(p5, p2, M, N, d, 2)); ++runs;
      if (d == DType::f32) worst_dyn = std::fmax(worst_dyn, e);
      if (e > (d == DType::f32 ? 1e-6 : tol[(int)d])) { ++fails; printf("FAIL dyn M=%ld N=%ld K=%ld dt=%d act=%d bits=%d err=%g\n", (long)M, (long)N, (long)K, (int)d, (int)act, bits, e); }
      // A given absmax per row (int8_dynamic_linear's act_absmax): 1.5x the row's own, and
      // half of it for row 0, whose codes then clamp.
      std::vector<float> given(M);
      for (int64_t m = 0; m < M; ++m) {
        float own = 0.f;
        for (int64_t k = 0; k < K; ++k) own = std::fmax(own, std::fabs(load_as_float(x.b.data(), m * x.stride + k, d)));
        given[m] = (m == 0 ? 0.5f : 1.5f) * own;
      }
      b.x_absmax = given.data();
      Buf p3 = make_out(M, N, d, 2), p4 = make_out(M, N, d, 2);
      b.out = p3.b.data(); b.out_row_stride = p3.stride; int8_dynamic_linear_avx512(b);
      b.out = p4.b.data(); b.out_row_stride = p4.stride; int8_dynamic_linear_scalar(b);
      e = compare(p3, p4, M, N, d, 2); ++runs;
      if (e > (d == DType::f32 ? 1e-6 : tol[(int)d])) { ++fails; printf("FAIL dyn given absmax M=%ld N=%ld K=%ld dt=%d bits=%d err=%g\n", (long)M, (long)N, (long)K, (int)d, bits, e); }
    }
  }
  // NaN and Inf in x: W8A8 rows that hold one are NaN through (scale NaN), on both paths;
  // weight-only outputs have the scalar path's NaN / Inf pattern (relu keeps NaN), with zero
  // points (odd ai) too, on the row-major and panel layouts, and the scalar path has the
  // pattern of the dequantised math, (q - z) * scale * x (not sum(q x) - z sum(x)'s Inf - Inf).
  for (int64_t M : {1, 3, 17, 200}) for (int64_t K : {int64_t{97}, int64_t{1000}, int64_t{2100}}) for (int ai = 0; ai < 5; ++ai) {
    const int64_t N = 45;
    const DType d = dts[(M + K + ai) % 3];
    std::vector<int8_t> w(N * K);
    for (auto& v : w) v = (int8_t)(rng() % 256 - 128);
    std::vector<float> sc(N), bias(N);
    for (auto& v : sc) v = 0.02f * (0.5f + (rng() % 1000) / 1000.f);
    for (auto& v : bias) v = rnd();
    Buf x = make_x(M, K, d, 0);
    store_from_float(x.b.data(), K / 2, d, NAN);  // row 0
    if (M > 1) store_from_float(x.b.data(), (M - 1) * x.stride, d, -INFINITY);  // last row
    Int8DynamicLinearArgs b{}; b.x = x.b.data(); b.x_row_stride = x.stride; b.x_dtype = d; b.qw = w.data();
    b.qw_row_stride = K; b.w_scale = sc.data(); b.bias = bias.data(); b.M = M; b.N = N; b.K = K;
    b.act = static_cast<Activation>(ai); b.num_threads = 2; b.act_bits = 8;
    Buf p1 = make_out(M, N, d, 0), p2 = make_out(M, N, d, 0);
    b.out = p1.b.data(); b.out_row_stride = N; int8_dynamic_linear_avx512(b);
    b.out = p2.b.data(); b.out_row_stride = N; int8_dynamic_linear_scalar(b);
    Int8WeightLinearArgs a{}; a.x = x.b.data(); a.x_row_stride = x.stride; a.x_dtype = d; a.qw = w.data();
    a.qw_row_stride = K; a.scale = sc.data(); a.groups = 1; a.bias = bias.data(); a.M = M; a.N = N; a.K = K;
    a.act = b.act; a.num_threads = 2;
    std::vector<int8_t> z(N);
    for (auto& v : z) v = (int8_t)(rng() % 21 - 10);
    if (ai & 1) a.zero_point = z.data();
    Buf q1 = make_out(M, N, d, 0), q2 = make_out(M, N, d, 0);
    a.out = q1.b.data(); a.out_row_stride = N; int8_weight_linear_avx512(a);
    a.out = q2.b.data(); a.out_row_stride = N; int8_weight_linear_scalar(a);
    Buf q3 = make_out(M, N, d, 0), q4 = make_out(M, N, d, 0);
    a.out = q3.b.data(); a.out_row_stride = N; int8_weight_linear_panel_avx512(a);
    const std::vector<int8_t> panels = to_panels(w.data(), K, N, K, K, 1);
    const std::vector<float> gm_scale = group_major(sc.data(), N, 1);
    const std::vector<int8_t> gm_zero = group_major(z.data(), N, 1);
    Int8WeightLinearArgs h = a;
    h.qw = panels.data(); h.qw_row_stride = K * 16; h.scale = gm_scale.data();
    h.zero_point = a.zero_point ? gm_zero.data() : nullptr;
    h.out = q4.b.data(); h.out_row_stride = N; int8_weight_linear_panels_dot_avx512(h);
    int bad = 0;
    for (int64_t m = 0; m < M; ++m) for (int64_t n = 0; n < N; ++n) {
      const int64_t i = m * N + n;
      const bool poisoned = m == 0 || m == M - 1;
      const float d1 = load_as_float(p1.b.data(), i, d), d2 = load_as_float(p2.b.data(), i, d);
      if (poisoned ? !(std::isnan(d1) && std::isnan(d2)) : !(std::isfinite(d1) && std::isfinite(d2))) ++bad;
      const float w1 = load_as_float(q1.b.data(), i, d), w2 = load_as_float(q2.b.data(), i, d);
      if (std::isnan(w1) != std::isnan(w2) || std::isinf(w1) != std::isinf(w2) || (m == 0 && !std::isnan(w1))) ++bad;
      for (const Buf* q : {&q3, &q4}) {
        const float w3 = load_as_float(q->b.data(), i, d);
        if (std::isnan(w3) != std::isnan(w2) || std::isinf(w3) != std::isinf(w2)) ++bad;
      }
      double dequantised = bias[n];
      for (int64_t k = 0; k < K; ++k)
        dequantised += static_cast<double>((w[n * K + k] - (a.zero_point ? z[n] : 0)) * sc[n]) *
                       load_as_float(x.b.data(), m * x.stride + k, d);
      if (ai == 1 && dequantised < 0) dequantised = 0;  // relu (NaN kept)
      if (ai <= 1 && (std::isnan(w2) != std::isnan(dequantised) || std::isinf(w2) != std::isinf(dequantised))) ++bad;
    }
    ++runs;
    if (bad) { ++fails; printf("FAIL nonfinite M=%ld K=%ld dt=%d act=%d: %d outputs\n", (long)M, (long)K, (int)d, ai, bad); }
  }
  printf("%d runs, %d failures; worst fp32 rel error: weight-only %.2e, dynamic %.2e\n", runs, fails, worst_wo, worst_dyn);
  return fails != 0;
}
