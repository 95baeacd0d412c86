// 256-bit vector primitives (AVX2 + FMA + F16C) for the generic fused-linear kernel in
// fused_linear_kernel.h. Include only from *_avx2.cpp translation units.
//
// Everything sits in an anonymous namespace on purpose: inline functions with external
// linkage become COMDAT symbols, and the linker keeps one copy for the whole module. A
// copy compiled with -mavx2 (or the AVX-512 flags) could then be the one the scalar path
// calls, and crash with SIGILL on a CPU without those instructions.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "cpu/fused_linear.h"

namespace bigperf::cpu {
namespace {

struct VecAvx2 {
  using vec = __m256;
  using mask = __m256;
  static constexpr int W = 8;             // fp32 lanes
  static constexpr bool kBf16Dot = false;  // no bf16 dot-product instruction
  // Register tiles, weight rows R x rows of x MB. M > 1: 3 x 4 = 12 accumulators + 3
  // weight vectors + 1 x vector fill the 16 ymm registers (the bf16 mask is reloaded from
  // the stack); it measured 41-44 GMAC/s on one Zen 3 core against 31 for 2 x 6 and 36
  // for 4 x 2 (benchmarks/NOTES.md). M == 1 is bound by memory: 4 rows in flight.
  static constexpr int kRowsM1 = 4;
  // M == 1 with rows of at most this many bytes: one row at a time, so that the weight is
  // read as one sequential stream. Four interleaved streams of short rows share each 4 KB
  // page, and the prefetchers kept up with them badly: K = 768 bf16 (1.5 KB rows) streamed
  // ~6 GB/s against ~11 at 4 KB rows and more on Zen 3 (benchmarks/NOTES.md, session 26).
  static constexpr int64_t kShortRowBytes = 2048;
  static constexpr int kRowsMM = 3;
  static constexpr int kMaxMB = 4;
  // Panel GEMM (panel_gemm.h): 6 rows x 2 vectors = 12 accumulators + 2 weight vectors +
  // 1 broadcast.
  static constexpr int kPanelRows = 6;

  static vec zero() { return _mm256_setzero_ps(); }
  static vec set1(float v) { return _mm256_set1_ps(v); }
  static vec loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void storeu(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
  static vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  static vec div(vec a, vec b) { return _mm256_div_ps(a, b); }
  static vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  // min/max return the second operand when either is NaN (the callers rely on it).
  static vec min(vec a, vec b) { return _mm256_min_ps(a, b); }
  static vec max(vec a, vec b) { return _mm256_max_ps(a, b); }
  static vec abs(vec a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), a); }
  static mask lt(vec a, vec b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static bool all(mask m) { return _mm256_movemask_ps(m) == 0xff; }
  static vec select(mask m, vec a, vec b) { return _mm256_blendv_ps(b, a, m); }  // m ? a : b
  static vec round(vec a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // Lane i of lookup(table, index) is table[index[i]]: a table of W floats (64-byte aligned)
  // read by one in-register permute (piecewise polynomials, vec_activation.h).
  using index = __m256i;
  static index truncate(vec a) { return _mm256_cvttps_epi32(a); }
  static vec to_float(index i) { return _mm256_cvtepi32_ps(i); }
  static vec lookup(const float* table, index i) { return _mm256_permutevar8x32_ps(_mm256_load_ps(table), i); }
  // 2^n for integral n in [-126, 127], built in the exponent field.
  static vec pow2i(vec n) {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  static float hsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }

  // Storage dtypes, W elements at a time.
  static vec load_bf16(const void* p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
  static vec load_f16(const void* p) { return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p))); }
  static void store_f16(void* p, vec v) {
    _mm_storeu_si128(static_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  // Round to nearest even on the bits, NaN kept quiet: the same result as float_to_bf16.
  static void store_bf16(void* p, vec v) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
    r = _mm256_blendv_epi8(r, quiet, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128(static_cast<__m128i*>(p), packed);
  }

  // One K block of a weight row is 2*W elements, consumed as two fp32 halves. For bf16 the
  // halves are the even and the odd elements (a shift and a mask of the 32-bit lanes, no
  // shuffle); x is packed in the same order (deinterleave below).
  template <DType WD>
  static vec wload(const char* p, int half) {
    if constexpr (WD == DType::f32) {
      return _mm256_loadu_ps(reinterpret_cast<const float*>(p) + half * W);
    } else if constexpr (WD == DType::f16) {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p) + half));
    } else {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      return _mm256_castsi256_ps(half == 0 ? _mm256_slli_epi32(v, 16)
                                           : _mm256_and_si256(v, _mm256_set1_epi32(-65536)));
    }
  }
  // (x0, x1) = elements 0..15 in order -> even = 0,2,..,14 and odd = 1,3,..,15.
  static void deinterleave(vec x0, vec x1, vec& even, vec& odd) {
    const vec e = _mm256_shuffle_ps(x0, x1, _MM_SHUFFLE(2, 0, 2, 0));
    const vec o = _mm256_shuffle_ps(x0, x1, _MM_SHUFFLE(3, 1, 3, 1));
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
  }
};

}  // namespace
}  // namespace bigperf::cpu
