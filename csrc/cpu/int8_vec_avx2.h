// AVX2 helpers of the int8 kernels: the shared activations (vec_activation.h) over
// vec_avx2.h's traits, dtype loads/stores, the epilogue and the x quantisation.
// Include only from *_avx2.cpp units (anonymous namespace: see vec_avx2.h).
#pragma once
#include <immintrin.h>

#include <cstring>

#include "cpu/fused_linear.h"
#include "cpu/epilogue.h"
#include "cpu/int8_linear_common.h"
#include "cpu/vec_activation.h"
#include "cpu/vec_avx2.h"

namespace bigperf::cpu {
namespace {

using V8 = VecAvx2;  // the shared vector traits (AVX2)
using IsaVec = V8;  // what the ISA-generic int8 headers instantiate with

inline __m256 load_x8(const char* p, DType d) {
  switch (d) {
    case DType::f32: return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
    case DType::f16: return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    case DType::bf16: {
      const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    }
  }
  return _mm256_setzero_ps();
}

// Round to nearest even (bf16 on the bits, NaN kept quiet): float_to_bf16 / float_to_half.
inline void store_x8(char* p, DType d, __m256 v) {
  switch (d) {
    case DType::f32: _mm256_storeu_ps(reinterpret_cast<float*>(p), v); break;
    case DType::f16:
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    case DType::bf16: {
      const __m256i bits = _mm256_castps_si256(v);
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
      __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
      const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
      r = _mm256_blendv_epi8(r, quiet, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                       _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
      break;
    }
  }
}

// Row m of x as fp32 into dst[0, kpad): zero past K, nothing read past the row.
inline void load_x_row(const void* x, int64_t row_stride, DType d, int64_t m, int64_t K, int64_t kpad, float* dst) {
  const int64_t es = element_size(d);
  const char* src = static_cast<const char*>(x) + m * row_stride * es;
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) _mm256_storeu_ps(dst + k, load_x8(src + k * es, d));
  if (k < K) {
    alignas(32) char tb[32] = {};
    std::memcpy(tb, src + k * es, (K - k) * es);
    _mm256_storeu_ps(dst + k, load_x8(tb, d));
    k += 8;
  }
  for (; k < kpad; k += 8) _mm256_storeu_ps(dst + k, _mm256_setzero_ps());
}

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// Row m of x quantised per token (see quantize_value; codes in [-qmax, qmax]) into
// int16 dst[0, kpad), zero past K; returns the row's scale. Vector division and
// round-half-even, as torch. given_absmax: the absmax to quantise against, or null for
// the row's own.
inline float quantize_x_row(const void* x, int64_t row_stride, DType d, int64_t m, int64_t K, int64_t kpad,
                            float* tmp, int16_t* dst, int qmax, const float* given_absmax) {
  load_x_row(x, row_stride, d, m, K, kpad, tmp);
  // Integer max of |x| bits: keeps NaN and Inf (see abs_bits).
  __m256i mx = _mm256_setzero_si256();
  for (int64_t k = 0; k < kpad; k += 8)
    mx = _mm256_max_epi32(mx, _mm256_castps_si256(V8::abs(_mm256_loadu_ps(tmp + k))));
  __m128i h = _mm_max_epi32(_mm256_castsi256_si128(mx), _mm256_extracti128_si256(mx, 1));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
  const float scale = activation_scale(absmax_to_use(float_from_bits(_mm_cvtsi128_si32(h)), given_absmax), qmax);
  const __m256 sv = _mm256_set1_ps(scale);
  const __m256 lo = _mm256_set1_ps(static_cast<float>(-qmax)), hi = _mm256_set1_ps(static_cast<float>(qmax));
  for (int64_t k = 0; k < kpad; k += 16) {
    __m256 a = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(tmp + k), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 b = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(tmp + k + 8), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    a = _mm256_min_ps(_mm256_max_ps(a, lo), hi);
    b = _mm256_min_ps(_mm256_max_ps(b, lo), hi);
    // packs interleaves 128-bit lanes; the permute puts k back in order.
    const __m256i p = _mm256_packs_epi32(_mm256_cvttps_epi32(a), _mm256_cvttps_epi32(b));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), _mm256_permute4x64_epi64(p, _MM_SHUFFLE(3, 1, 2, 0)));
  }
  return scale;
}

}  // namespace
}  // namespace bigperf::cpu
