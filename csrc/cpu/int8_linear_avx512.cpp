// AVX-512 path of the weight-only int8 linear (W8A16): the dot-product kernel of
// int8_weight_kernel.h at 16 fp32 lanes and 32 zmm registers; row tails use masked loads
// instead of padded copies. The W8A8 op (VNNI) is in int8_dynamic_avx512.cpp. Runs only
// where isa_runnable("avx512") says so.
#include "cpu/int8_vec_avx512.h"
#include "cpu/int8_weight_kernel.h"
#include "cpu/int8_weight_panel.h"
#include "cpu/int8_weight_panels.h"

namespace bigperf::cpu {
namespace {

struct Avx512WeightOps : V16 {
  static vec loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, vec v) { _mm512_storeu_ps(p, v); }
  static vec fnmadd(vec a, vec b, vec c) { return _mm512_fnmadd_ps(a, b, c); }
  static vec load_w(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // The first n (< 16) codes; nothing past them is read.
  static vec load_w_tail(const int8_t* p, int64_t n) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(first_lanes(n), p)));
  }
  // MB * R accumulators + R weights + x within 32 registers.
  // The panel form (panel_gemm.h): 12 rows x 2 vectors of accumulators.
  static constexpr int kPanelRows = 12;
  static constexpr int tile_rows(int mb) { return mb <= 2 ? 8 : 6; }
};

}  // namespace

void int8_weight_linear_avx512(const Int8WeightLinearArgs& a) { int8_weight_linear_dot<Avx512WeightOps>(a); }
void int8_weight_linear_panel_avx512(const Int8WeightLinearArgs& a) { int8_weight_linear_panel<Avx512WeightOps>(a); }
void int8_weight_linear_panels_dot_avx512(const Int8WeightLinearArgs& a) { int8_weight_linear_panels_dot<Avx512WeightOps>(a); }
void int8_weight_linear_panels_gemm_avx512(const Int8WeightLinearArgs& a) {
  int8_weight_linear_panels_gemm<Avx512WeightOps>(a);
}

}  // namespace bigperf::cpu
