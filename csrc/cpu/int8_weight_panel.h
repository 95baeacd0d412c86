// The weight-only int8 linear (W8A16) in the panel form of panel_gemm.h, for M where the
// GEMM is bound by arithmetic: each task widens its weight codes once into fp32 panels,
// (q - zero) * scale per element (the layer's dequantised weight, as bigperf.quant
// defines it), and every row of x reuses them. The dispatcher times it against the
// dot-product kernel (int8_weight_kernel.h) and PyTorch's GEMM on dequantised chunks.
// Needs from the including unit: Ops (vector traits with loadu, storeu, set1, fmadd, W and
// kPanelRows), load_x_row and IsaVec, the vector traits the epilogue (epilogue.h) runs on
// (int8_vec_*.h).
#pragma once
#include <immintrin.h>

#include <cstring>

#include "cpu/int8_linear.h"
#include "cpu/int8_linear_common.h"
#include "cpu/panel_gemm.h"

namespace bigperf::cpu {
namespace {

// x as fp32 rows for the panel GEMM: read in place when it already is, else converted once
// per call.
struct Fp32Rows {
  explicit Fp32Rows(const Int8WeightLinearArgs& a)
      : kpad((a.K + 15) / 16 * 16),
        converted(a.x_dtype == DType::f32 ? 0 : static_cast<size_t>(a.M * kpad) * sizeof(float)),
        x(static_cast<const float*>(a.x)),
        stride(a.x_row_stride) {
    if (a.x_dtype == DType::f32) return;
    for (int64_t m = 0; m < a.M; ++m)
      load_x_row(a.x, a.x_row_stride, a.x_dtype, m, a.K, kpad, converted.as<float>() + m * kpad);
    x = converted.as<float>();
    stride = kpad;
  }
  int64_t kpad;
  AlignedBuffer converted;
  const float* x;
  int64_t stride;
};

// The row-major weight's strips for panel_gemm.h's packers (pack_strips of NR columns):
// pack(n0, nc, k0, kc, dst) writes the dequantised weight, (q - zero) * scale.
template <int64_t NR>
auto rowmajor_fp32_packer(const Int8WeightLinearArgs& a) {
  const int64_t G = a.groups;
  const int64_t gs = a.K > 0 ? a.K / G : 1;
  const int8_t* zp = a.zero_point;
  auto w1 = [&a](int64_t n, int64_t k) { return rowmajor_weight(a, n, k); };
  // Eight of them from k (k a multiple of 8): one group when the group size is a multiple
  // of 8 (or per channel), else a scale and zero point per lane.
  auto w8 = [&a, G, gs, zp](int64_t n, int64_t k) {
    const __m256 q = _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a.qw + n * a.qw_row_stride + k))));
    __m256 scale, zero;
    if (gs % 8 == 0) {
      const int64_t g = n * G + k / gs;
      scale = _mm256_set1_ps(a.scale[g]);
      zero = _mm256_set1_ps(zp ? static_cast<float>(zp[g]) : 0.f);
    } else {
      alignas(32) float s8[8], z8[8];
      for (int j = 0; j < 8; ++j) {
        const int64_t g = n * G + (k + j) / gs;
        s8[j] = a.scale[g];
        z8[j] = zp ? static_cast<float>(zp[g]) : 0.f;
      }
      scale = _mm256_load_ps(s8);
      zero = _mm256_load_ps(z8);
    }
    return _mm256_mul_ps(_mm256_sub_ps(q, zero), scale);
  };
  return [w8, w1](int64_t n0, int64_t nc, int64_t k0, int64_t kc, float* dst) {
    panel::pack_strips<NR>(n0, nc, k0, kc, dst, w8, w1);
  };
}

template <class Ops>
void int8_weight_linear_panel(const Int8WeightLinearArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  const Fp32Rows rows(a);
  const EpilogueArgs out{a.out, a.out_row_stride, a.x_dtype, a.act, a.bias};
  auto epilogue = [&](const float* sums, int64_t ld, int64_t m0, int64_t rows, int64_t n0, int64_t cnt) {
    epilogue_rows<IsaVec>(out, sums, ld, m0, rows, n0, cnt);
  };
  panel::gemm_packed<Ops>(rows.x, rows.stride, a.M, a.N, a.K, a.num_threads,
                          rowmajor_fp32_packer<panel::kNR<Ops>>(a), epilogue);
}

}  // namespace
}  // namespace bigperf::cpu
