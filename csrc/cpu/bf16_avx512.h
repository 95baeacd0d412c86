// fp32 -> bf16 on 16 lanes, the one rounding every AVX-512 path uses: round to nearest even on
// the bits, NaN kept quiet, as the scalar float_to_bf16 (dtype_convert.h). Not vcvtneps2bf16,
// which flushes subnormals (outputs would differ from the other paths) and which SIMDe lacks.
// Include only from the AVX-512 translation units (anonymous namespace: see vec_avx2.h).
#pragma once
#include <immintrin.h>

namespace bigperf::cpu {
namespace {

// Each lane's bf16 bits in its low 16 bits (the high 16 zero).
inline __m512i bf16_round_bits(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
  return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, quiet);
}

}  // namespace
}  // namespace bigperf::cpu
