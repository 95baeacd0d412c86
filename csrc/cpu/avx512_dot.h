// vpdpbusd for accumulators that stay in registers across a loop. gcc 12's builtin for it
// copies each accumulator through a scratch register and back, and in loops of many
// accumulators keeps a copy of each on the stack too: W8A8's held_dot_block
// (int8_dynamic_avx512.cpp) ran 11-20 zmm stores and ~30 register moves per 2 quads beside
// its 40-48 vpdpbusd. In inline asm the accumulator is one tied register ("+v"), and the
// loop holds nothing but loads and dot products. SIMDe's emulation
// (tests/csrc/avx512_emulation/simde_shim.h) cannot run the instruction itself: it takes
// the intrinsic.
// Include only from the AVX-512 translation units.
#pragma once
#include <immintrin.h>

namespace bigperf::cpu {
namespace {

// acc + the four u8 x s8 products of each 32-bit lane of u and s (_mm512_dpbusd_epi32).
inline __m512i dpbusd(__m512i acc, __m512i u, __m512i s) {
#if defined(__GNUC__) && !defined(BIGPERF_SIMDE_EMULATION)
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
  return acc;
#else
  return _mm512_dpbusd_epi32(acc, u, s);
#endif
}

}  // namespace
}  // namespace bigperf::cpu
