// Test-only: the AVX-512 fused-linear unit compiled against SIMDe (portable versions of
// the intrinsics), so that its logic runs on CPUs without AVX-512. The real immintrin.h
// is kept out; SIMDe's native aliases stand in, plus plain-C++ versions of the few
// intrinsics SIMDe 0.7 lacks, written from their documented meaning.
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <xmmintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#define _IMMINTRIN_H_INCLUDED
typedef simde__mmask16 __mmask16;
#ifndef _MM_FROUND_TO_NEAREST_INT
#define _MM_FROUND_TO_NEAREST_INT 0x00
#endif
#ifndef _MM_FROUND_NO_EXC
#define _MM_FROUND_NO_EXC 0x08
#endif

namespace emu {
// Lane access through memcpy: SIMDe's vector types are plain aggregates of this size.
template <class T, int N, class V>
void get(V v, T (&a)[N]) {
  static_assert(sizeof(V) == sizeof(a));
  std::memcpy(a, &v, sizeof a);
}
template <class V, class T, int N>
V put(const T (&a)[N]) {
  static_assert(sizeof(V) == sizeof(a));
  V v;
  std::memcpy(&v, a, sizeof a);
  return v;
}
}  // namespace emu

static inline __m512i _mm512_cvtepi8_epi32(__m128i v) {
  int8_t a[16];
  int32_t t[16];
  emu::get(v, a);
  for (int i = 0; i < 16; ++i) t[i] = a[i];
  return emu::put<__m512i>(t);
}
static inline __m512 _mm512_cvtepi32_ps(__m512i v) {
  int32_t a[16];
  float t[16];
  emu::get(v, a);
  for (int i = 0; i < 16; ++i) t[i] = static_cast<float>(a[i]);
  return emu::put<__m512>(t);
}
static inline __m512i _mm512_cvtepu16_epi32(__m256i v) {
  uint16_t a[16];
  int32_t t[16];
  emu::get(v, a);
  for (int i = 0; i < 16; ++i) t[i] = a[i];
  return emu::put<__m512i>(t);
}
static inline __m256i _mm512_cvtepi32_epi16(__m512i v) {  // vpmovdw: truncation
  int32_t a[16];
  int16_t t[16];
  emu::get(v, a);
  for (int i = 0; i < 16; ++i) t[i] = static_cast<int16_t>(a[i]);
  return emu::put<__m256i>(t);
}
static inline __m512i _mm512_cvtps_epi32(__m512 v) {  // current rounding mode: nearest even
  float a[16];
  int32_t t[16];
  emu::get(v, a);
  for (int i = 0; i < 16; ++i) t[i] = static_cast<int32_t>(std::nearbyint(a[i]));
  return emu::put<__m512i>(t);
}
static inline __m512 _mm512_cvtph_ps(__m256i v) {
  float t[16];
  _mm256_storeu_ps(t, _mm256_cvtph_ps(_mm256_castsi256_si128(v)));
  _mm256_storeu_ps(t + 8, _mm256_cvtph_ps(_mm256_extracti128_si256(v, 1)));
  return emu::put<__m512>(t);
}
static inline __m256i _mm512_cvtps_ph(__m512 v, int rounding) {
  float a[16];
  emu::get(v, a);
  return _mm256_set_m128i(_mm256_cvtps_ph(_mm256_loadu_ps(a + 8), rounding),
                          _mm256_cvtps_ph(_mm256_loadu_ps(a), rounding));
}

#include "cpu/fused_linear_avx512.cpp"
