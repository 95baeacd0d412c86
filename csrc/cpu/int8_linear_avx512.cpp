// AVX-512 path of the weight-only int8 linear (W8A16): the dot-product kernel of
// int8_weight_kernel.h at 16 fp32 lanes and 32 zmm registers; row tails use masked loads
// instead of padded copies. The W8A8 op (VNNI) is in int8_dynamic_avx512.cpp. Runs only
// where isa_runnable("avx512") says so.
#include "cpu/int8_vec_avx512.h"
#include "cpu/int8_weight_kernel.h"
#include "cpu/int8_weight_panel.h"
#include "cpu/int8_weight_panels.h"
#include "cpu/panel_gemm_bf16.h"

namespace bigperf::cpu {
namespace {

struct Avx512WeightOps : V16 {
  static vec loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, vec v) { _mm512_storeu_ps(p, v); }
  static vec fnmadd(vec a, vec b, vec c) { return _mm512_fnmadd_ps(a, b, c); }
  static vec load_w(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // The first n (< 16) codes; nothing past them is read.
  static vec load_w_tail(const int8_t* p, int64_t n) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(first_lanes(n), p)));
  }
  // MB * R accumulators + R weights + x within 32 registers.
  // The panel form (panel_gemm.h): 12 rows x 2 vectors of accumulators.
  static constexpr int kPanelRows = 12;
  static constexpr int tile_rows(int mb) { return mb <= 2 ? 8 : 6; }
};

inline __m128i load16(const int8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }


// transpose16x16_bytes (transpose_avx2.h) on four 16 x 16 blocks at once, one per 128-bit lane.
struct Zmm16 {
  static __m512i lo8(__m512i a, __m512i b) { return _mm512_unpacklo_epi8(a, b); }
  static __m512i hi8(__m512i a, __m512i b) { return _mm512_unpackhi_epi8(a, b); }
  static __m512i lo16(__m512i a, __m512i b) { return _mm512_unpacklo_epi16(a, b); }
  static __m512i hi16(__m512i a, __m512i b) { return _mm512_unpackhi_epi16(a, b); }
  static __m512i lo32(__m512i a, __m512i b) { return _mm512_unpacklo_epi32(a, b); }
  static __m512i hi32(__m512i a, __m512i b) { return _mm512_unpackhi_epi32(a, b); }
  static __m512i lo64(__m512i a, __m512i b) { return _mm512_unpacklo_epi64(a, b); }
  static __m512i hi64(__m512i a, __m512i b) { return _mm512_unpackhi_epi64(a, b); }
};

template <int L>
inline __m128i lane(__m512i v) { return _mm512_extracti32x4_epi32(v, L); }

// The row-major codes' pair strips for panel_gemm_bf16.h (per channel and symmetric only, as
// panels_code_pair_packer below): 16 rows x 64 k of codes at a time turned into panel order
// by byte transposes (four blocks of 16 k per instruction), then 16 x 16 k at a time, then
// one pair at a time for the last kc % 16; a row past N is zeros.
inline auto rowmajor_code_pair_packer(const Int8WeightLinearArgs& a) {
  constexpr int64_t NR = panel_bf16::kNR;
  return [&a](int64_t n0, int64_t nc, int64_t k0, int64_t kc, uint32_t* dst) {
    for (int64_t s = 0; s < nc; s += NR) {
      for (int64_t c = 0; c < NR; c += 16) {
        uint32_t* out = dst + s * kc + c;  // pair row q at out + q * NR
        const int64_t n = n0 + s + c, valid = imax(0, imin(16, a.N - n));
        const int8_t* rows = a.qw + n * a.qw_row_stride + k0;
        // The weight arrives cold (a layer's weights are evicted between calls), and 16 short row
        // streams are more than the prefetchers follow: each step asks for the next 16 rows' same
        // 64 bytes, one row group ahead, into L2 (quick suite, against torch's bf16 F.linear: bert
        // 768 -> 3072 M = 128 bf16 x 0.90-0.92x -> 0.97-1.01x, llama 4096 M = 16 0.99-1.03x ->
        // 1.12-1.17x; into L1 the group ahead, 64 KB at K = 4096, was evicted first: 0.89x).
        const int8_t* ahead = rows + 16 * a.qw_row_stride;
        const int64_t ahead_rows = imax(0, imin(16, a.N - n - 16));
        auto store_pairs = [&](int64_t k, __m128i even, __m128i odd) {
          _mm512_storeu_si512(out + k / 2 * NR, panel_bf16::code_pairs(even, odd));
        };
        int64_t k = 0;
        for (; k + 64 <= kc; k += 64) {
          __m512i r[16];
          for (int i = 0; i < 16; ++i)
            r[i] = i < valid ? _mm512_loadu_si512(rows + i * a.qw_row_stride + k) : _mm512_setzero_si512();
          for (int64_t i = 0; i < ahead_rows; ++i)
            prefetch_l2(reinterpret_cast<const char*>(ahead + i * a.qw_row_stride + k));
          transpose16x16_bytes<Zmm16>(r);  // lane L of r[j]: the 16 columns' codes at k + 16 L + j
          for (int j = 0; j < 16; j += 2) {
            store_pairs(k + j, _mm512_castsi512_si128(r[j]), _mm512_castsi512_si128(r[j + 1]));
            store_pairs(k + 16 + j, lane<1>(r[j]), lane<1>(r[j + 1]));
            store_pairs(k + 32 + j, lane<2>(r[j]), lane<2>(r[j + 1]));
            store_pairs(k + 48 + j, lane<3>(r[j]), lane<3>(r[j + 1]));
          }
        }
        for (; k + 16 <= kc; k += 16) {
          __m128i r[16];
          for (int i = 0; i < 16; ++i) r[i] = i < valid ? load16(rows + i * a.qw_row_stride + k) : _mm_setzero_si128();
          transpose16x16_epi8(r);  // r[j]: the 16 columns' codes at k + j
          for (int j = 0; j < 16; j += 2) store_pairs(k + j, r[j], r[j + 1]);
        }
        for (; k < kc; k += 2) {  // the last kc % 16 (even) k, one unit at a time
          for (int64_t i = 0; i < 16; ++i) {
            const int8_t* row = rows + i * a.qw_row_stride + k;
            const uint32_t lo = i < valid ? float_to_bf16(static_cast<float>(row[0])) : 0;
            const uint32_t hi = i < valid ? float_to_bf16(static_cast<float>(row[1])) : 0;
            out[k / 2 * NR + i] = lo | hi << 16;
          }
        }
      }
    }
  };
}

// The layout's pair strips for panel_gemm_bf16.h (per channel and symmetric only): the codes
// themselves, exact in bf16 (the caller scales the sums), two rows of a panel per pair row.
// A strip of 32 columns is two panels side by side.
inline auto panels_code_pair_packer(const Int8WeightLinearArgs& a) {
  using namespace w8a16_panels;
  constexpr int64_t NR = panel_bf16::kNR;
  const int64_t panels = (a.N + kPanel - 1) / kPanel;
  return [&a, panels](int64_t n0, int64_t nc, int64_t k0, int64_t kc, uint32_t* dst) {
    for (int64_t s = 0; s < nc; s += NR) {
      uint32_t* strip = dst + s * kc;
      for (int64_t c = 0; c < NR; c += kPanel) {
        const int64_t p = (n0 + s + c) / kPanel;
        if (p >= panels) {
          for (int64_t q = 0; q < kc / 2; ++q) _mm512_storeu_si512(strip + q * NR + c, _mm512_setzero_si512());
          continue;
        }
        const int8_t* src = a.qw + p * a.qw_row_stride + k0 * kPanel;
        for (int64_t q = 0; q < kc / 2; ++q)
          _mm512_storeu_si512(strip + q * NR + c, panel_bf16::code_pairs(load16(src + 2 * q * kPanel),
                                                                         load16(src + (2 * q + 1) * kPanel)));
      }
    }
  };
}

// The panel GEMM in bf16 arithmetic on the pair strips of `pack`; column_scale: per output
// column, what the sums are multiplied by before the epilogue (null: nothing).
template <class Pack>
void int8_weight_linear_bf16(const Int8WeightLinearArgs& a, const Pack& pack, const float* column_scale) {
  const EpilogueArgs out{a.out, a.out_row_stride, a.x_dtype, a.act, a.bias, column_scale};
  auto epilogue = [&](const float* sums, int64_t ld, int64_t m0, int64_t rows, int64_t n0, int64_t cnt) {
    epilogue_rows<V16>(out, sums, ld, m0, rows, n0, cnt);
  };
  panel_bf16::gemm_packed(a.x, a.x_row_stride, a.x_dtype, a.M, a.N, a.K, a.num_threads, pack, epilogue);
}

}  // namespace

void int8_weight_linear_avx512(const Int8WeightLinearArgs& a) { int8_weight_linear_dot<Avx512WeightOps>(a); }
void int8_weight_linear_panel_avx512(const Int8WeightLinearArgs& a) { int8_weight_linear_panel<Avx512WeightOps>(a); }
void int8_weight_linear_panels_dot_avx512(const Int8WeightLinearArgs& a) { int8_weight_linear_panels_dot<Avx512WeightOps>(a); }
void int8_weight_linear_panels_gemm_avx512(const Int8WeightLinearArgs& a) {
  int8_weight_linear_panels_gemm<Avx512WeightOps>(a);
}
void int8_weight_linear_panel_bf16_avx512(const Int8WeightLinearArgs& a) {
  if (a.groups == 1 && !a.zero_point) return int8_weight_linear_bf16(a, rowmajor_code_pair_packer(a), a.scale);
  const auto fp32 = rowmajor_fp32_packer<panel_bf16::kNR>(a);
  int8_weight_linear_bf16(a, panel_bf16::from_fp32(fp32), nullptr);
}
// Per channel and symmetric: the codes are packed as they are (exact) and the scales applied
// to the sums; otherwise the dequantised weight is rounded to bf16.
void int8_weight_linear_panels_gemm_bf16_avx512(const Int8WeightLinearArgs& a) {
  if (a.groups == 1 && !a.zero_point) return int8_weight_linear_bf16(a, panels_code_pair_packer(a), a.scale);
  const auto fp32 = panels_fp32_packer<Avx512WeightOps, panel_bf16::kNR>(a);
  int8_weight_linear_bf16(a, panel_bf16::from_fp32(fp32), nullptr);
}

}  // namespace bigperf::cpu
