// AVX2 + FMA + F16C path of the weight-only int8 linear (W8A16): the dot-product kernel
// of int8_weight_kernel.h at 8 fp32 lanes and 16 ymm registers, its panel form, and both
// forms on the w8a16-cpu layout (int8_weight_panels.h). The W8A8 op is in
// int8_dynamic_avx2.cpp.
#include "cpu/int8_vec_avx2.h"
#include "cpu/int8_weight_kernel.h"
#include "cpu/int8_weight_panel.h"
#include "cpu/int8_weight_panels.h"

namespace bigperf::cpu {
namespace {

struct Avx2WeightOps : V8 {
  static vec loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void storeu(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static vec fnmadd(vec a, vec b, vec c) { return _mm256_fnmadd_ps(a, b, c); }
  // vpmovsxbd + vcvtdq2ps: 8 codes to fp32 in registers.
  static vec load_w(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  // The first n (< 8) codes through a zero-padded copy: nothing past them is read.
  static vec load_w_tail(const int8_t* p, int64_t n) {
    alignas(16) int8_t tail[8] = {};
    std::memcpy(tail, p, static_cast<size_t>(n));
    return load_w(tail);
  }
  // MB * R accumulators + R weights + x within 16 registers. M = 1 streams 4 rows.
  // The panel form (panel_gemm.h): 6 rows x 2 vectors of accumulators.
  static constexpr int kPanelRows = 6;
  static constexpr int tile_rows(int mb) { return mb <= 2 ? 4 : 3; }
};

}  // namespace

void int8_weight_linear_avx2(const Int8WeightLinearArgs& a) { int8_weight_linear_dot<Avx2WeightOps>(a); }
void int8_weight_linear_panel_avx2(const Int8WeightLinearArgs& a) { int8_weight_linear_panel<Avx2WeightOps>(a); }
void int8_weight_linear_panels_dot_avx2(const Int8WeightLinearArgs& a) { int8_weight_linear_panels_dot(a); }
void int8_weight_linear_panels_gemm_avx2(const Int8WeightLinearArgs& a) {
  int8_weight_linear_panels_gemm<Avx2WeightOps>(a);
}

}  // namespace bigperf::cpu
