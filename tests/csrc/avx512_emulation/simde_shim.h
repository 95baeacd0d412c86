// Test-only: lets the AVX-512 kernels compile against SIMDe (portable emulation of the
// intrinsics) on a CPU without AVX-512, so their logic is checked where they cannot run.
// The real immintrin.h is kept out; SIMDe's native aliases stand in, plus plain-C++
// versions of the intrinsics SIMDe 0.7.4 lacks (written from their documented meaning).
#define SIMDE_ENABLE_NATIVE_ALIASES
#define BIGPERF_SIMDE_EMULATION 1  // the kernels take intrinsics, not inline asm (cpu/avx512_dot.h)
#include <simde/x86/avx512.h>
#include <xmmintrin.h>
#include <cmath>
#include <cstring>
#include <cstdint>
#define _IMMINTRIN_H_INCLUDED
typedef simde__mmask16 __mmask16;
typedef simde__mmask64 __mmask64;
#ifndef _MM_FROUND_NO_EXC
#define _MM_FROUND_NO_EXC 0x08
#endif
#ifndef _MM_FROUND_TO_NEAREST_INT
#define _MM_FROUND_TO_NEAREST_INT 0x00
#endif
namespace shim {
// Lane access through memcpy: the SIMDe vector types are plain structs of this size.
template <class T, int N, class V> inline void get(V v, T (&a)[N]) { static_assert(sizeof(V) == sizeof(a)); std::memcpy(a, &v, sizeof a); }
template <class V, class T, int N> inline V put(const T (&a)[N]) { static_assert(sizeof(V) == sizeof(a)); V v; std::memcpy(&v, a, sizeof a); return v; }
}
static inline float shim_h2f(uint16_t h) {
  uint32_t s = (h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, b;
  if (e == 0) { if (m == 0) b = s; else { e = 113; while (!(m & 0x400)) { m <<= 1; --e; } b = s | (e << 23) | ((m & 0x3ff) << 13); } }
  else if (e == 31) b = s | 0x7f800000u | (m << 13); else b = s | ((e + 112) << 23) | (m << 13);
  float f; std::memcpy(&f, &b, 4); return f;
}
static inline uint16_t shim_f2h(float f) {  // round to nearest even
  uint32_t x; std::memcpy(&x, &f, 4); uint32_t s = (x >> 16) & 0x8000, a = x & 0x7fffffff;
  if (a > 0x7f800000) return s | 0x7e00; if (a >= 0x477ff000) return s | 0x7c00;
  if (a < 0x38800000) { if (a < 0x33000000) return s; uint32_t e = a >> 23, m = (a & 0x7fffff) | 0x800000, sh = 126 - e;
    uint32_t r = m >> sh, rem = m & ((1u << sh) - 1), half = 1u << (sh - 1); if (rem > half || (rem == half && (r & 1))) ++r; return s | r; }
  uint32_t r = (a >> 13) - (112u << 10), rem = a & 0x1fff; if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) ++r; return s | r;
}
#define SHIM static inline
SHIM __m512 _mm512_maskz_loadu_ps(__mmask16 k, const void* p) { float t[16]; for (int i = 0; i < 16; ++i) t[i] = (k >> i) & 1 ? ((const float*)p)[i] : 0.f; return shim::put<__m512>(t); }
SHIM void _mm512_mask_storeu_ps(void* p, __mmask16 k, __m512 v) { float t[16]; shim::get(v, t); for (int i = 0; i < 16; ++i) if ((k >> i) & 1) ((float*)p)[i] = t[i]; }
SHIM __m256i _mm256_maskz_loadu_epi16(__mmask16 k, const void* p) { int16_t t[16]; for (int i = 0; i < 16; ++i) t[i] = (k >> i) & 1 ? ((const int16_t*)p)[i] : 0; return shim::put<__m256i>(t); }
SHIM void _mm256_mask_storeu_epi16(void* p, __mmask16 k, __m256i v) { int16_t t[16]; shim::get(v, t); for (int i = 0; i < 16; ++i) if ((k >> i) & 1) ((int16_t*)p)[i] = t[i]; }
SHIM __m128i _mm_maskz_loadu_epi8(__mmask16 k, const void* p) { int8_t t[16]; for (int i = 0; i < 16; ++i) t[i] = (k >> i) & 1 ? ((const int8_t*)p)[i] : 0; return shim::put<__m128i>(t); }
SHIM __m512i _mm512_maskz_loadu_epi8(__mmask64 k, const void* p) { int8_t t[64]; for (int i = 0; i < 64; ++i) t[i] = (k >> i) & 1 ? ((const int8_t*)p)[i] : 0; return shim::put<__m512i>(t); }
SHIM __m256i _mm512_cvtepi32_epi16(__m512i v) { int32_t a[16]; int16_t t[16]; shim::get(v, a); for (int i = 0; i < 16; ++i) t[i] = (int16_t)a[i]; return shim::put<__m256i>(t); }
SHIM __m128i _mm512_cvtepi32_epi8(__m512i v) { int32_t a[16]; int8_t t[16]; shim::get(v, a); for (int i = 0; i < 16; ++i) t[i] = (int8_t)a[i]; return shim::put<__m128i>(t); }
SHIM __m512d _mm512_cvtepi32_pd(__m256i v) { int32_t a[8]; double t[8]; shim::get(v, a); for (int i = 0; i < 8; ++i) t[i] = a[i]; return shim::put<__m512d>(t); }
SHIM __m512 _mm512_cvtepi32_ps(__m512i v) { int32_t a[16]; float t[16]; shim::get(v, a); for (int i = 0; i < 16; ++i) t[i] = (float)a[i]; return shim::put<__m512>(t); }
SHIM __m512i _mm512_cvtepi8_epi32(__m128i v) { int8_t a[16]; int32_t t[16]; shim::get(v, a); for (int i = 0; i < 16; ++i) t[i] = a[i]; return shim::put<__m512i>(t); }
SHIM __m512i _mm512_cvtepu16_epi32(__m256i v) { uint16_t a[16]; int32_t t[16]; shim::get(v, a); for (int i = 0; i < 16; ++i) t[i] = a[i]; return shim::put<__m512i>(t); }
SHIM __m512i _mm512_cvtepu8_epi32(__m128i v) { uint8_t a[16]; int32_t t[16]; shim::get(v, a); for (int i = 0; i < 16; ++i) t[i] = a[i]; return shim::put<__m512i>(t); }
// vpermilps: lane i takes lane (i & ~3) + (control_i & 3) of the same 128-bit lane.
SHIM __m512 _mm512_permutevar_ps(__m512 v, __m512i c) { float a[16], t[16]; int32_t ci[16]; shim::get(v, a); shim::get(c, ci); for (int i = 0; i < 16; ++i) t[i] = a[(i & ~3) + (ci[i] & 3)]; return shim::put<__m512>(t); }
SHIM __m512d _mm512_cvtps_pd(__m256 v) { float a[8]; double t[8]; shim::get(v, a); for (int i = 0; i < 8; ++i) t[i] = a[i]; return shim::put<__m512d>(t); }
SHIM __m256 _mm512_extractf32x8_ps(__m512 v, int half) { float a[16], t[8]; shim::get(v, a); for (int i = 0; i < 8; ++i) t[i] = a[8 * (half & 1) + i]; return shim::put<__m256>(t); }
SHIM __m256 _mm512_cvtpd_ps(__m512d v) { double a[8]; float t[8]; shim::get(v, a); for (int i = 0; i < 8; ++i) t[i] = (float)a[i]; return shim::put<__m256>(t); }
SHIM __m512 _mm512_cvtph_ps(__m256i v) { uint16_t a[16]; float t[16]; shim::get(v, a); for (int i = 0; i < 16; ++i) t[i] = shim_h2f(a[i]); return shim::put<__m512>(t); }
SHIM __m256i _mm512_cvtps_ph(__m512 v, int) { float a[16]; uint16_t t[16]; shim::get(v, a); for (int i = 0; i < 16; ++i) t[i] = shim_f2h(a[i]); return shim::put<__m256i>(t); }
SHIM __m512i _mm512_cvtps_epi32(__m512 v) { float a[16]; int32_t t[16]; shim::get(v, a); for (int i = 0; i < 16; ++i) t[i] = (int32_t)std::nearbyint(a[i]); return shim::put<__m512i>(t); }
SHIM __m512i _mm512_srai_epi32(__m512i v, unsigned int n) { int32_t a[16]; shim::get(v, a); for (int i = 0; i < 16; ++i) a[i] = n > 31 ? (a[i] < 0 ? -1 : 0) : a[i] >> n; return shim::put<__m512i>(a); }
SHIM __m512i _mm512_cvttps_epi32(__m512 v) { float a[16]; int32_t t[16]; shim::get(v, a); for (int i = 0; i < 16; ++i) t[i] = (int32_t)a[i]; return shim::put<__m512i>(t); }
SHIM float _mm512_reduce_add_ps(__m512 v) { float a[16]; shim::get(v, a); float s = 0; for (float x : a) s += x; return s; }
SHIM float _mm512_reduce_max_ps(__m512 v) { float a[16]; shim::get(v, a); float s = a[0]; for (float x : a) s = x > s ? x : s; return s; }
SHIM int _mm512_reduce_add_epi32(__m512i v) { int32_t a[16]; shim::get(v, a); int32_t s = 0; for (int32_t x : a) s += x; return s; }
