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

// The w8a16-cpu kernels' panel vector (int8_weight_panels.h): 16 lanes as one zmm.
struct Zmm16 {
  using vec = __m512;
  static constexpr int H = 1;
  static vec zero() { return _mm512_setzero_ps(); }
  static vec set1(float v) { return _mm512_set1_ps(v); }
  static vec bcast(const float* p) { return _mm512_set1_ps(*p); }
  static vec fmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static vec fnmadd(vec a, vec b, vec c) { return _mm512_fnmadd_ps(a, b, c); }
  static vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
  static vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
  static void load_codes(const int8_t* p, vec (&v)[H]) {
    v[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static void loadf(const float* p, vec (&v)[H]) { v[0] = _mm512_loadu_ps(p); }
  static void storef(float* p, const vec (&v)[H]) { _mm512_storeu_ps(p, v[0]); }
};

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
void int8_weight_linear_panels_dot_avx512(const Int8WeightLinearArgs& a) { int8_weight_linear_panels_dot<Zmm16>(a); }
void int8_weight_linear_panels_gemm_avx512(const Int8WeightLinearArgs& a) {
  int8_weight_linear_panels_gemm<Avx512WeightOps, Zmm16>(a);
}

}  // namespace bigperf::cpu
