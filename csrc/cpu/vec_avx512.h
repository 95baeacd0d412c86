// 512-bit vector primitives (AVX-512 F/BW/VL/DQ + BF16) for the generic fused-linear
// kernel in fused_linear_kernel.h. Include only from *_avx512.cpp translation units; the
// anonymous namespace keeps these out of the other units (see vec_avx2.h for why).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "cpu/bf16_avx512.h"
#include "cpu/fused_linear.h"

namespace bigperf::cpu {
namespace {

struct VecAvx512 {
  using vec = __m512;
  using mask = __mmask16;
  using pairs = __m512bh;                 // 32 bf16 values, as vdpbf16ps takes them
  static constexpr int W = 16;            // fp32 lanes
  static constexpr bool kBf16Dot = true;  // vdpbf16ps when x and W are both bf16
  // 32 zmm registers: R + MB*R accumulators + one x vector + the bf16 mask.
  static constexpr int kRowsM1 = 4;
  static constexpr int64_t kShortRowBytes = 0;  // not measured on an AVX-512 CPU yet (vec_avx2.h)
  static constexpr int kRowsMM = 4;
  static constexpr int kMaxMB = 4;
  // Panel GEMM (panel_gemm.h): 12 rows x 2 vectors = 24 accumulators + 2 weight vectors +
  // 1 broadcast, of 32 registers.
  static constexpr int kPanelRows = 12;

  static vec zero() { return _mm512_setzero_ps(); }
  static vec set1(float v) { return _mm512_set1_ps(v); }
  static vec loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, vec v) { _mm512_storeu_ps(p, v); }
  static vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  static vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
  static vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
  static vec div(vec a, vec b) { return _mm512_div_ps(a, b); }
  static vec fmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  // vminps/vmaxps: the second operand when either is NaN, as in the AVX2 traits.
  static vec min(vec a, vec b) { return _mm512_min_ps(a, b); }
  static vec max(vec a, vec b) { return _mm512_max_ps(a, b); }
  static vec abs(vec a) {
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7fffffff)));
  }
  static mask lt(vec a, vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static bool all(mask m) { return m == 0xffff; }
  static vec select(mask m, vec a, vec b) { return _mm512_mask_blend_ps(m, b, a); }  // m ? a : b
  static vec round(vec a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // Lane i of lookup(table, index) is table[index[i]]: a table of W floats (64-byte aligned)
  // read by one in-register permute (piecewise polynomials, vec_activation.h).
  using index = __m512i;
  static index truncate(vec a) { return _mm512_cvttps_epi32(a); }
  static vec to_float(index i) { return _mm512_cvtepi32_ps(i); }
  static vec lookup(const float* table, index i) { return _mm512_permutexvar_ps(i, _mm512_load_ps(table)); }
  static vec pow2i(vec n) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  static float hsum(vec v) {
    __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }

  static vec load_bf16(const void* p) {
    const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  }
  static vec load_f16(const void* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(static_cast<const __m256i*>(p))); }
  static void store_f16(void* p, vec v) {
    _mm256_storeu_si256(static_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  // bf16_round_bits (bf16_avx512.h): outputs match the other paths bit for bit.
  static void store_bf16(void* p, vec v) {
    _mm256_storeu_si256(static_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_round_bits(v)));
  }

  // Two fp32 halves per K block of 2*W elements; bf16 as even/odd elements (vec_avx2.h).
  template <DType WD>
  static vec wload(const char* p, int half) {
    if constexpr (WD == DType::f32) {
      return _mm512_loadu_ps(reinterpret_cast<const float*>(p) + half * W);
    } else if constexpr (WD == DType::f16) {
      return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p) + half));
    } else {
      const __m512i v = _mm512_loadu_si512(p);
      return _mm512_castsi512_ps(half == 0 ? _mm512_slli_epi32(v, 16)
                                           : _mm512_and_si512(v, _mm512_set1_epi32(-65536)));
    }
  }
  static void deinterleave(vec x0, vec x1, vec& even, vec& odd) {
    // Index bit 4 selects the second source: even = x[0, 2, ..., 30] of the 32 elements.
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const vec e = _mm512_permutex2var_ps(x0, ie, x1);
    odd = _mm512_permutex2var_ps(x0, io, x1);
    even = e;
  }

  // x and W both bf16: 2*W elements per vdpbf16ps (pairs of products summed into fp32).
  static pairs load_pairs(const void* p) { return (pairs)_mm512_loadu_si512(p); }
  static vec dot_bf16(vec acc, pairs a, pairs b) { return _mm512_dpbf16_ps(acc, a, b); }
};

}  // namespace
}  // namespace bigperf::cpu
