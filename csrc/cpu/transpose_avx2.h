// An 8 x 8 transpose of 32-bit lanes in eight AVX2 registers: element j of r[i] becomes
// element i of r[j]. The panel GEMM packs weight rows into k-major strips with it (float
// lanes), the AVX2 W8A8 GEMM its int8 quads and pairs (integer lanes, the same bits). A
// 16 x 16 byte transpose turns 16 int8 rows into panel order and back (the w8a16-cpu layout's
// row reader, the bf16 panel GEMM's packer of row-major codes).
// Include only from ISA translation units (anonymous namespace: see vec_avx2.h); every x86
// unit here is compiled with AVX2 at least.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace bigperf::cpu {
namespace {

inline void transpose8(__m256 (&r)[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// The 8 x 8 floats at src (rows src_stride apart) transposed into dst (rows dst_stride apart).
inline void transpose8(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m256 r[8];
  for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(src + j * src_stride);
  transpose8(r);
  for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + j * dst_stride, r[j]);
}

inline void transpose8(__m256i (&r)[8]) {
  __m256 f[8];
  for (int i = 0; i < 8; ++i) f[i] = _mm256_castsi256_ps(r[i]);
  transpose8(f);
  for (int i = 0; i < 8; ++i) r[i] = _mm256_castps_si256(f[i]);
}

// A 16 x 16 byte transpose in every 128-bit lane of a vector type, with its unpacks given by
// U (U::lo8 / hi8, lo16 / hi16, lo32 / hi32, lo64 / hi64: the _mm*_unpack* of that width,
// which stay within 128-bit lanes): lane L of r[i] in is row i's bytes, lane L of r[j] out
// is byte j of rows 0..15. On __m128i (Sse16): r[i] = row k + i of a panel ([K][16]) in,
// r[c] = column c's codes at k .. k + 15 out; on __m512i, four such blocks at once.
template <class U, class T>
inline void transpose16x16_bytes(T (&r)[16]) {
  T t[16];
  for (int i = 0; i < 8; ++i) {
    t[i] = U::lo8(r[2 * i], r[2 * i + 1]);
    t[i + 8] = U::hi8(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = U::lo16(t[2 * i], t[2 * i + 1]);
    r[i + 4] = U::hi16(t[2 * i], t[2 * i + 1]);
    r[i + 8] = U::lo16(t[2 * i + 8], t[2 * i + 9]);
    r[i + 12] = U::hi16(t[2 * i + 8], t[2 * i + 9]);
  }
  for (int i = 0; i < 8; ++i) {
    t[i] = U::lo32(r[2 * i], r[2 * i + 1]);
    t[i + 8] = U::hi32(r[2 * i], r[2 * i + 1]);
  }
  // t[a] holds columns 2j, 2j + 1 of rows 0-7 and t[b] of rows 8-15, for (a, b) = kHalves[j].
  static constexpr int kHalves[8][2] = {{0, 1}, {8, 9}, {2, 3}, {10, 11}, {4, 5}, {12, 13}, {6, 7}, {14, 15}};
  for (int j = 0; j < 8; ++j) {
    r[2 * j] = U::lo64(t[kHalves[j][0]], t[kHalves[j][1]]);
    r[2 * j + 1] = U::hi64(t[kHalves[j][0]], t[kHalves[j][1]]);
  }
}

struct Sse16 {
  static __m128i lo8(__m128i a, __m128i b) { return _mm_unpacklo_epi8(a, b); }
  static __m128i hi8(__m128i a, __m128i b) { return _mm_unpackhi_epi8(a, b); }
  static __m128i lo16(__m128i a, __m128i b) { return _mm_unpacklo_epi16(a, b); }
  static __m128i hi16(__m128i a, __m128i b) { return _mm_unpackhi_epi16(a, b); }
  static __m128i lo32(__m128i a, __m128i b) { return _mm_unpacklo_epi32(a, b); }
  static __m128i hi32(__m128i a, __m128i b) { return _mm_unpackhi_epi32(a, b); }
  static __m128i lo64(__m128i a, __m128i b) { return _mm_unpacklo_epi64(a, b); }
  static __m128i hi64(__m128i a, __m128i b) { return _mm_unpackhi_epi64(a, b); }
};

inline void transpose16x16_epi8(__m128i (&r)[16]) { transpose16x16_bytes<Sse16>(r); }

}  // namespace
}  // namespace bigperf::cpu
