// A 16 x 16 transpose of 32-bit lanes in sixteen AVX-512 registers: element j of r[i] becomes
// element i of r[j]. The VNNI W8A8 GEMM packs its weight quads with it, the bf16 panel GEMM
// a bf16 weight's k pairs (fused_linear_avx512.cpp).
// Include only from the AVX-512 translation units (anonymous namespace: see vec_avx2.h).
#pragma once
#include <immintrin.h>

namespace bigperf::cpu {
namespace {

inline void transpose16x16_epi32(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // Each 128-bit lane l of r[4q + j] now holds rows 4q .. 4q + 3 of column 4l + j.
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);        // lanes 0, 2 of each
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);    // lanes 1, 3
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

}  // namespace
}  // namespace bigperf::cpu
