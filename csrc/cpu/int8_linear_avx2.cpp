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

// 16 int8 codes as 16 values of d at p (exact in every float dtype).
inline void store_codes16(__m128i v, DType d, char* p) {
  const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
  const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v)));
  if (d == DType::f32) {
    _mm256_storeu_ps(reinterpret_cast<float*>(p), lo);
    _mm256_storeu_ps(reinterpret_cast<float*>(p) + 8, hi);
  } else if (d == DType::f16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(lo, _MM_FROUND_TO_NEAREST_INT));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p) + 1, _mm256_cvtps_ph(hi, _MM_FROUND_TO_NEAREST_INT));
  } else {  // bf16: an integer of at most 8 bits is exact, its bf16 bits are the fp32 bits' top half
    const __m256i l = _mm256_srli_epi32(_mm256_castps_si256(lo), 16);
    const __m256i h = _mm256_srli_epi32(_mm256_castps_si256(hi), 16);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_permute4x64_epi64(_mm256_packus_epi32(l, h), 0xD8));
  }
}

}  // namespace

// Weight rows [r0, r1) of a w8a16-cpu layout (panels [K][16], panel_bytes = 16 K apart) as
// values of d into out (rows out_row_stride elements apart): the rows PyTorch's paths on the
// layout multiply by, a chunk at a time (formats/_panels.py: panel_rows), in one pass of 16 x
// 16 byte transposes instead of a strided copy per element (measured 8x slower).
void int8_panels_to_rows_avx2(const int8_t* panels, int64_t panel_bytes, int64_t K, int64_t r0, int64_t r1,
                              void* out, int64_t out_row_stride, DType d) {
  const int64_t es = element_size(d);
  char* o = static_cast<char*>(out);
  for (int64_t p = r0 / 16; p * 16 < r1; ++p) {
    const int8_t* src = panels + p * panel_bytes;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      __m128i r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (k + i) * 16));
      transpose16x16_epi8(r);
      for (int c = 0; c < 16; ++c) {
        const int64_t row = p * 16 + c;
        if (row >= r0 && row < r1) store_codes16(r[c], d, o + ((row - r0) * out_row_stride + k) * es);
      }
    }
    for (; k < K; ++k) {  // the last K % 16 codes
      for (int64_t c = 0; c < 16; ++c) {
        const int64_t row = p * 16 + c;
        if (row < r0 || row >= r1) continue;
        const float v = static_cast<float>(src[k * 16 + c]);
        char* dst = o + ((row - r0) * out_row_stride + k) * es;
        if (d == DType::f32) {
          std::memcpy(dst, &v, 4);
        } else if (d == DType::f16) {
          const uint16_t h = static_cast<uint16_t>(_cvtss_sh(v, 0));
          std::memcpy(dst, &h, 2);
        } else {
          uint32_t bits;
          std::memcpy(&bits, &v, 4);
          const uint16_t b = static_cast<uint16_t>(bits >> 16);
          std::memcpy(dst, &b, 2);
        }
      }
    }
  }
}

void int8_weight_linear_avx2(const Int8WeightLinearArgs& a) { int8_weight_linear_dot<Avx2WeightOps>(a); }
void int8_weight_linear_panel_avx2(const Int8WeightLinearArgs& a) { int8_weight_linear_panel<Avx2WeightOps>(a); }
void int8_weight_linear_panels_dot_avx2(const Int8WeightLinearArgs& a) { int8_weight_linear_panels_dot<Avx2WeightOps>(a); }
void int8_weight_linear_panels_gemm_avx2(const Int8WeightLinearArgs& a) {
  int8_weight_linear_panels_gemm<Avx2WeightOps>(a);
}

}  // namespace bigperf::cpu
