// AVX-512 helpers of the int8 kernels: the shared activations (vec_activation.h) over
// vec_avx512.h's traits, masked dtype loads/stores, the epilogue and the x quantisation.
// Include only from *_avx512.cpp units (anonymous namespace: see vec_avx2.h).
#pragma once
#include <immintrin.h>

#include <cstring>

#include "cpu/bf16_avx512.h"
#include "cpu/fused_linear.h"
#include "cpu/epilogue.h"
#include "cpu/int8_linear_common.h"
#include "cpu/vec_activation.h"
#include "cpu/vec_avx512.h"

namespace bigperf::cpu {
namespace {

using V16 = VecAvx512;  // the shared vector traits (AVX-512)
using IsaVec = V16;  // what the ISA-generic int8 headers instantiate with

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// The first cnt (<= 16) elements at p as fp32; lanes past cnt are zero and not read.
inline __m512 load_x16(const char* p, DType d, int64_t cnt = 16) {
  const __mmask16 k = first_lanes(cnt);
  switch (d) {
    case DType::f32: return _mm512_maskz_loadu_ps(k, p);
    case DType::f16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
    case DType::bf16:
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p)), 16));
  }
  return _mm512_setzero_ps();
}

// Stores the first cnt lanes (bf16: bf16_round_bits); nothing past cnt is written.
inline void store_x16(char* p, DType d, __m512 v, int64_t cnt = 16) {
  const __mmask16 k = first_lanes(cnt);
  switch (d) {
    case DType::f32: _mm512_mask_storeu_ps(p, k, v); break;
    case DType::f16:
      _mm256_mask_storeu_epi16(p, k, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    case DType::bf16: _mm256_mask_storeu_epi16(p, k, _mm512_cvtepi32_epi16(bf16_round_bits(v))); break;
  }
}

// Row m of x as fp32 into dst[0, kpad) (kpad a multiple of 16): zero past K.
inline void load_x_row(const void* x, int64_t row_stride, DType d, int64_t m, int64_t K, int64_t kpad, float* dst) {
  const int64_t es = element_size(d);
  const char* src = static_cast<const char*>(x) + m * row_stride * es;
  for (int64_t k = 0; k < kpad; k += 16)
    _mm512_storeu_ps(dst + k, k < K ? load_x16(src + k * es, d, K - k) : _mm512_setzero_ps());
}

// Row m of x quantised per token (quantize_value's semantics: true division, round half
// to even, clamp to +-qmax) and offset to unsigned (q + 128) for vpdpbusd, into
// dst[0, kpad) with zeros past K (a zero u8 contributes nothing). Returns the scale.
// given_absmax: the absmax to quantise against, or null for the row's own.
inline float quantize_x_row_u8(const void* x, int64_t row_stride, DType d, int64_t m, int64_t K, int64_t kpad,
                               float* tmp, uint8_t* dst, int qmax, const float* given_absmax) {
  load_x_row(x, row_stride, d, m, K, kpad, tmp);
  // Integer max of |x| bits: keeps NaN and Inf (see abs_bits).
  __m512i mx = _mm512_setzero_si512();
  for (int64_t k = 0; k < kpad; k += 16)
    mx = _mm512_max_epi32(mx, _mm512_castps_si512(V16::abs(_mm512_loadu_ps(tmp + k))));
  const __m256i half = _mm256_max_epi32(_mm512_castsi512_si256(mx), _mm512_extracti64x4_epi64(mx, 1));
  __m128i h = _mm_max_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
  const float scale = activation_scale(absmax_to_use(float_from_bits(_mm_cvtsi128_si32(h)), given_absmax), qmax);
  const __m512 sv = _mm512_set1_ps(scale);
  const __m512 lo = _mm512_set1_ps(static_cast<float>(-qmax)), hi = _mm512_set1_ps(static_cast<float>(qmax));
  for (int64_t k = 0; k < kpad; k += 16) {
    __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(tmp + k), sv),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm512_min_ps(_mm512_max_ps(q, lo), hi);
    __m512i u = _mm512_add_epi32(_mm512_cvttps_epi32(q), _mm512_set1_epi32(128));
    u = _mm512_maskz_mov_epi32(first_lanes(K - k), u);  // padding stays 0, not 128
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k), _mm512_cvtepi32_epi8(u));
  }
  return scale;
}

}  // namespace
}  // namespace bigperf::cpu
