// The weight-only int8 linear (W8A16) on the "w8a16-cpu" layout (bigperf/formats/w8a16_cpu.py):
// the weight as 16-column panels, panel p = [K][16] int8 codes of output columns 16p .. 16p+15
// (zero past N), one fp32 scale per output column (symmetric, per channel). AVX2 + FMA.
//
// Why a layout: at M = 1 the row-major kernel (int8_weight_kernel.h) reads 4 weight rows at a
// time, and each 4 KB row ends at a page, where the hardware prefetchers stop: a cold call
// streamed 12-16 GB/s. Here four panels are read at once, each a contiguous stream of
// 16 x K bytes, and the same widening arithmetic streamed 18.5-20.6 GB/s (Zen 3,
// benchmarks/NOTES.md). Two forms, both timed by the dispatcher:
//   * dot (`int8_weight_linear_panels_dot`): rows of x in passes of 16; M = 1 runs four panels
//     per step (x[k] broadcast, 8 accumulators); more rows run blocks of up to 4 rows against
//     one or two panels, which stay in L2 for the later blocks of the pass.
//   * gemm (`int8_weight_linear_panels_gemm`): panel_gemm.h's outer-product GEMM, whose strips
//     of 16 columns are exactly these panels, dequantised with no transposition.
// Needs from the including unit: load_x_row and epilogue_row (int8_vec_avx2.h) and the
// traits class for panel_gemm.h.
#pragma once
#include <immintrin.h>

#include <cstring>

#include "cpu/int8_linear.h"
#include "cpu/int8_linear_common.h"
#include "cpu/int8_weight_panel.h"  // Fp32Rows
#include "cpu/panel_gemm.h"
#include "cpu/thread_pool.h"

namespace bigperf::cpu {
namespace {

namespace w8a16_panels {

constexpr int64_t kPanel = 16;         // output columns per panel
constexpr int64_t kRowsPerPass = 16;   // rows of x packed per pass over the weights
constexpr int64_t kPanelsPerStep = 4;  // panels per step at M = 1 (and per epilogue group)

// The 16 codes of one k of a panel, widened to fp32 (vpmovsxbd + vcvtdq2ps).
inline void load16(const int8_t* p, __m256& lo, __m256& hi) {
  lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8))));
}

// sums[m * ss + 16 j + c] = sum over k < K of x[m * xs + k] * code(panel j, k, c), for NP
// panels from w (ps bytes apart) and MB rows of x. NP * MB * 2 accumulators, the two halves of
// one panel and the broadcasts: within 16 registers for (4, 1), (2, 2), (1, 4).
template <int NP, int MB>
inline void panel_block(const int8_t* w, int64_t ps, int64_t K, const float* x, int64_t xs, float* sums,
                        int64_t ss) {
  __m256 acc[MB][NP][2];
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NP; ++j) acc[m][j][0] = acc[m][j][1] = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    __m256 b[MB];
    for (int m = 0; m < MB; ++m) b[m] = _mm256_broadcast_ss(x + m * xs + k);
    for (int j = 0; j < NP; ++j) {
      __m256 lo, hi;
      load16(w + j * ps + k * kPanel, lo, hi);
      for (int m = 0; m < MB; ++m) {
        acc[m][j][0] = _mm256_fmadd_ps(lo, b[m], acc[m][j][0]);
        acc[m][j][1] = _mm256_fmadd_ps(hi, b[m], acc[m][j][1]);
      }
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NP; ++j) {
      _mm256_storeu_ps(sums + m * ss + j * kPanel, acc[m][j][0]);
      _mm256_storeu_ps(sums + m * ss + j * kPanel + 8, acc[m][j][1]);
    }
}

// The same for np (<= 4) panels and mb (<= 4) rows known at run time.
inline void panel_block_n(int np, int mb, const int8_t* w, int64_t ps, int64_t K, const float* x, int64_t xs,
                          float* sums, int64_t ss) {
  if (mb == 1) {
    switch (np) {
      case 4: return panel_block<4, 1>(w, ps, K, x, xs, sums, ss);
      case 3: return panel_block<3, 1>(w, ps, K, x, xs, sums, ss);
      case 2: return panel_block<2, 1>(w, ps, K, x, xs, sums, ss);
      default: return panel_block<1, 1>(w, ps, K, x, xs, sums, ss);
    }
  }
  if (mb == 2 && np == 2) return panel_block<2, 2>(w, ps, K, x, xs, sums, ss);
  for (int j = 0; j < np; ++j) {  // one panel at a time: it stays in L1/L2 for every row block
    const int8_t* wj = w + j * ps;
    float* sj = sums + j * kPanel;
    switch (mb) {
      case 4: panel_block<1, 4>(wj, ps, K, x, xs, sj, ss); break;
      case 3: panel_block<1, 3>(wj, ps, K, x, xs, sj, ss); break;
      default: panel_block<1, 2>(wj, ps, K, x, xs, sj, ss); break;
    }
  }
}

// Rows [0, ms) of the packed x (row stride xs) against panels [p0, p0 + np): sums[m][c] for
// the np * 16 columns, in row blocks of at most 4 (balanced). At M = 1 all np panels stream
// at once; otherwise each pair (2 rows) or single panel runs every row block before the next.
inline void panel_group(const Int8WeightLinearArgs& a, int64_t p0, int np, const float* xp, int64_t xs, int64_t ms,
                        float (*sums)[kPanelsPerStep * kPanel]) {
  const int8_t* w = a.qw + p0 * a.qw_row_stride;
  if (ms == 1) return panel_block_n(np, 1, w, a.qw_row_stride, a.K, xp, xs, sums[0], kPanelsPerStep * kPanel);
  const int64_t blocks = (ms + 3) / 4;
  const int step = ms == 2 ? 2 : 1;
  for (int j = 0; j < np; j += step) {
    const int nj = step == 2 && j + 1 < np ? 2 : 1;
    for (int64_t i = 0; i < blocks; ++i) {
      const int64_t m0 = ms * i / blocks, mb = ms * (i + 1) / blocks - m0;
      panel_block_n(nj, static_cast<int>(mb), w + j * a.qw_row_stride, a.qw_row_stride, a.K, xp + m0 * xs, xs,
                    sums[m0] + j * kPanel, kPanelsPerStep * kPanel);
    }
  }
}

}  // namespace w8a16_panels

// The dot form on the layout: a.qw is the panels (a.qw_row_stride = 16 K bytes per panel),
// a.scale the [N] per-channel scales; groups 1, no zero points (the binding checks).
inline void int8_weight_linear_panels_dot(const Int8WeightLinearArgs& a) {
  using namespace w8a16_panels;
  if (a.M <= 0 || a.N <= 0) return;
  const int64_t panels = (a.N + kPanel - 1) / kPanel;
  const int64_t kpad = round_up(a.K, 8);  // load_x_row writes whole vectors
  const int threads = threads_for(a.M, a.N, a.K, a.num_threads);
  const int64_t rows = imin(a.M, kRowsPerPass);
  AlignedBuffer xbuf(static_cast<size_t>(rows * kpad) * sizeof(float));
  float* xp = xbuf.as<float>();
  for (int64_t m0 = 0; m0 < a.M; m0 += kRowsPerPass) {
    const int64_t ms = imin(kRowsPerPass, a.M - m0);
    for (int64_t m = 0; m < ms; ++m) load_x_row(a.x, a.x_row_stride, a.x_dtype, m0 + m, a.K, kpad, xp + m * kpad);
    parallel_columns(panels, threads, kPanelsPerStep, [&](int64_t pb, int64_t pe) {
      alignas(64) float sums[kRowsPerPass][kPanelsPerStep * kPanel];
      for (int64_t p0 = pb; p0 < pe; p0 += kPanelsPerStep) {
        const int np = static_cast<int>(imin(kPanelsPerStep, pe - p0));
        panel_group(a, p0, np, xp, kpad, ms, sums);
        const int64_t n0 = p0 * kPanel, cnt = imin(np * kPanel, a.N - n0);
        for (int64_t m = 0; m < ms; ++m) {
          for (int64_t c = 0; c < cnt; ++c) sums[m][c] *= a.scale[n0 + c];
          epilogue_row(a.out, a.out_row_stride, a.x_dtype, a.act, a.bias, sums[m], m0 + m, n0, cnt);
        }
      }
    });
  }
}

// The gemm form on the layout (arguments as the dot form's), for M where arithmetic bounds
// the call: x as fp32 rows (Fp32Rows), the strips dequantised per task.
template <class Ops>
void int8_weight_linear_panels_gemm(const Int8WeightLinearArgs& a) {
  using namespace w8a16_panels;
  static_assert(panel::kNR<Ops> == kPanel, "a strip of the panel GEMM is one panel of the layout");
  if (a.M <= 0 || a.N <= 0) return;
  const Fp32Rows rows(a);
  auto pack = [&](int64_t n0, int64_t nc, int64_t k0, int64_t kc, float* dst) {
    for (int64_t s = 0; s < nc; s += kPanel) {
      const int8_t* src = a.qw + (n0 + s) / kPanel * a.qw_row_stride + k0 * kPanel;
      alignas(32) float sc[kPanel] = {};  // zero past N: those columns' codes are zero padding too
      for (int64_t j = 0; j < imin(kPanel, a.N - n0 - s); ++j) sc[j] = a.scale[n0 + s + j];
      const __m256 s_lo = _mm256_load_ps(sc), s_hi = _mm256_load_ps(sc + 8);
      float* strip = dst + s * kc;
      for (int64_t k = 0; k < kc; ++k) {
        __m256 lo, hi;
        load16(src + k * kPanel, lo, hi);
        _mm256_storeu_ps(strip + k * kPanel, _mm256_mul_ps(lo, s_lo));
        _mm256_storeu_ps(strip + k * kPanel + 8, _mm256_mul_ps(hi, s_hi));
      }
    }
  };
  auto epilogue = [&](const float* sums, int64_t m, int64_t n0, int64_t cnt) {
    epilogue_row(a.out, a.out_row_stride, a.x_dtype, a.act, a.bias, sums, m, n0, cnt);
  };
  panel::gemm_packed<Ops>(rows.x, rows.stride, a.M, a.N, a.K, a.num_threads, pack, epilogue);
}

}  // namespace
}  // namespace bigperf::cpu
