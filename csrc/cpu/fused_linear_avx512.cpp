// AVX-512 path of the fused linear (algorithm in fused_linear_kernel.h); x and W both
// bf16 go through vdpbf16ps. Runs only where isa_runnable("avx512") says so.
#include "cpu/fused_linear_kernel.h"
#include "cpu/panel_gemm_bf16.h"
#include "cpu/transpose_avx512.h"
#include "cpu/vec_avx512.h"

namespace bigperf::cpu {

void fused_linear_avx512(const FusedLinearArgs& a) { fused_linear_vec<VecAvx512>(a); }
void fused_linear_panel_avx512(const FusedLinearArgs& a) { fused_linear_panel_vec<VecAvx512>(a); }

namespace {

// A bf16 weight's pair strips for panel_gemm_bf16.h: a row's k pairs are already 32-bit
// units, so 16 rows x 16 pairs are one 16 x 16 transpose (a row past N is zeros).
inline auto bf16_rows_pair_packer(const FusedLinearArgs& a) {
  constexpr int64_t NR = panel_bf16::kNR;
  return [&a](int64_t n0, int64_t nc, int64_t k0, int64_t kc, uint32_t* dst) {
    const uint16_t* w = static_cast<const uint16_t*>(a.w);
    for (int64_t s = 0; s < nc; s += NR) {
      for (int64_t c = 0; c < NR; c += 16) {
        uint32_t* out = dst + s * kc + c;  // pair row q at out + q * NR
        const int64_t n = n0 + s + c, valid = imax(0, imin(16, a.N - n));
        const uint16_t* rows = w + n * a.w_row_stride + k0;
        int64_t k = 0;
        for (; k + 32 <= kc; k += 32) {
          __m512i r[16];
          for (int i = 0; i < 16; ++i)
            r[i] = i < valid ? _mm512_loadu_si512(rows + i * a.w_row_stride + k) : _mm512_setzero_si512();
          transpose16x16_epi32(r);  // r[j]: pair k / 2 + j of the 16 rows
          for (int j = 0; j < 16; ++j) _mm512_storeu_si512(out + (k / 2 + j) * NR, r[j]);
        }
        for (; k < kc; k += 2)  // the last kc % 32 (even) k, one unit at a time
          for (int64_t i = 0; i < 16; ++i) {
            uint32_t unit = 0;
            if (i < valid) std::memcpy(&unit, rows + i * a.w_row_stride + k, sizeof unit);
            out[k / 2 * NR + i] = unit;
          }
      }
    }
  };
}

}  // namespace

// The panel form in bf16 arithmetic (panel_gemm_bf16.h): x and the weight rounded to bf16 (a
// bf16 weight packed as it is; the others through the fp32 loaders); K even.
void fused_linear_panel_bf16_avx512(const FusedLinearArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  const EpilogueArgs out = epilogue_of(a);
  auto epilogue = [&](const float* sums, int64_t ld, int64_t m0, int64_t rows, int64_t n0, int64_t cnt) {
    epilogue_rows<VecAvx512>(out, sums, ld, m0, rows, n0, cnt);
  };
  if (a.w_dtype == DType::bf16)
    return panel_bf16::gemm_packed(a.x, a.x_row_stride, a.x_dtype, a.M, a.N, a.K, a.num_threads,
                                   bf16_rows_pair_packer(a), epilogue);
  with_weight_loaders(a, [&](const auto& w8, const auto& w1) {
    const auto fp32 = [&](int64_t n0, int64_t nc, int64_t k0, int64_t kc, float* dst) {
      panel::pack_strips<panel_bf16::kNR>(n0, nc, k0, kc, dst, w8, w1);
    };
    panel_bf16::gemm_packed(a.x, a.x_row_stride, a.x_dtype, a.M, a.N, a.K, a.num_threads, panel_bf16::from_fp32(fp32),
                            epilogue);
  });
}

}  // namespace bigperf::cpu
