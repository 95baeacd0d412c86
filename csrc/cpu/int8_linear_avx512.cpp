// AVX-512 path of the weight-only int8 linear (W8A16); the W8A8 op (VNNI) is in
// int8_dynamic_avx512.cpp. Runs only where isa_runnable("avx512") says so.
//
// The dot form of int8_linear_avx2.cpp at 16 lanes with 32 registers (see there for the
// why of each piece): int8 widened in registers, up to 16 rows of x per pass in blocks of
// at most 4 against each tile of weight rows, group scales once per group, zero points
// through per-lane sums of x. Row tails use masked loads instead of padded copies.
#include "cpu/int8_vec_avx512.h"
#include "cpu/thread_pool.h"

namespace bigperf::cpu {
namespace {

constexpr int64_t kRowsPerPass = 16;  // rows of x per pass over the weights
constexpr int64_t kCols = 48;       // output columns per epilogue group (thread grain)

inline __m512 load_w16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
// The first n (< 16) weights at p; nothing past them is read.
inline __m512 load_w16(const int8_t* p, int64_t n) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(first_lanes(n), p)));
}

struct Pass {
  const Int8WeightLinearArgs* a;
  int64_t m0, ms;
  int64_t G, gs;
  int64_t kpad;       // row stride of the packed x (K rounded up to 64)
  int64_t k16;        // K rounded down to 16
  const float* xp;    // x [ms][kpad]
  const float* xsl;   // per-lane sums of x [ms][G][16], or null
};

// acc[m][r] += dot(w[r][0, len), x[m]), len a multiple of 16; tail (< 16) masked.
// pf != 0: prefetch pf bytes ahead, the next tile's rows (see int8_linear_avx2.cpp).
template <int R, int MB>
inline void dot_rows(const int8_t* const* w, int64_t len, int64_t tail, const float* x, int64_t xs,
                     __m512 (&out)[MB][R], int64_t pf) {
  __m512 acc[MB][R];  // local: through the reference GCC stores them every iteration
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = out[m][r];
  int64_t k = 0;
  for (; k + 64 <= len; k += 64) {
    if (pf) {
      for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(w[r] + k + pf), _MM_HINT_T0);
    }
    for (int u = 0; u < 4; ++u) {
      __m512 wv[R];
      for (int r = 0; r < R; ++r) wv[r] = load_w16(w[r] + k + 16 * u);
      for (int m = 0; m < MB; ++m) {
        const __m512 xv = _mm512_loadu_ps(x + m * xs + k + 16 * u);
        for (int r = 0; r < R; ++r) acc[m][r] = _mm512_fmadd_ps(wv[r], xv, acc[m][r]);
      }
    }
  }
  for (; k < len + (tail ? 16 : 0); k += 16) {
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = k < len ? load_w16(w[r] + k) : load_w16(w[r] + k, tail);
    for (int m = 0; m < MB; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + m * xs + k);
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_fmadd_ps(wv[r], xv, acc[m][r]);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) out[m][r] = acc[m][r];
}

// Rows [m0, m0 + MB) of the pass against R weight rows.
template <int R, int MB, bool ZP, bool GROUPED>
inline void dot_block(const Pass& p, const int8_t* const* wrow, const int64_t* n, float (*sums)[kCols + 32],
                      int64_t col, int64_t m0, int64_t pf) {
  const Int8WeightLinearArgs& a = *p.a;
  const float* xp = p.xp + m0 * p.kpad;
  const float* xsl = p.xsl ? p.xsl + m0 * p.G * 16 : nullptr;
  sums += m0;
  __m512 tot[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) tot[m][r] = _mm512_setzero_ps();
  if constexpr (GROUPED) {
    for (int64_t g = 0; g < p.G; ++g) {
      const int8_t* w[R];
      for (int r = 0; r < R; ++r) w[r] = wrow[r] + g * p.gs;
      __m512 acc[MB][R];
      for (int m = 0; m < MB; ++m)
        for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
      dot_rows<R, MB>(w, p.gs, 0, xp + g * p.gs, p.kpad, acc, pf);
      for (int r = 0; r < R; ++r) {
        const __m512 sc = _mm512_set1_ps(a.scale[n[r] * p.G + g]);
        __m512 z = _mm512_setzero_ps();
        if constexpr (ZP) z = _mm512_set1_ps(static_cast<float>(a.zero_point[n[r] * p.G + g]));
        for (int m = 0; m < MB; ++m) {
          __m512 v = acc[m][r];
          if constexpr (ZP) v = _mm512_fnmadd_ps(z, _mm512_loadu_ps(xsl + (m * p.G + g) * 16), v);
          tot[m][r] = _mm512_fmadd_ps(v, sc, tot[m][r]);
        }
      }
    }
  } else {
    dot_rows<R, MB>(wrow, p.k16, a.K - p.k16, xp, p.kpad, tot, pf);
  }
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < R; ++r) {
      if constexpr (GROUPED) {
        sums[m][col + r] = _mm512_reduce_add_ps(tot[m][r]);
      } else {
        __m512 v = tot[m][r];
        if constexpr (ZP)
          v = _mm512_fnmadd_ps(_mm512_set1_ps(static_cast<float>(a.zero_point[n[r]])), _mm512_loadu_ps(xsl + m * 16), v);
        sums[m][col + r] = _mm512_reduce_add_ps(v) * a.scale[n[r]];
      }
    }
  }
}

// sums[m][col + r] for every row of the pass, in balanced blocks of at most MB rows
// against the same R weight rows (from L1 after the first block).
template <int R, int MB, bool ZP, bool GROUPED>
inline void dot_tile(const Pass& p, const int8_t* const* wrow, const int64_t* n, float (*sums)[kCols + 32],
                     int64_t col) {
  const int64_t blocks = (p.ms + MB - 1) / MB;
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t m0 = p.ms * i / blocks, mb = p.ms * (i + 1) / blocks - m0;
    const int64_t pf = i == 0 ? R * p.a->qw_row_stride : 0;  // the first block streams
    if constexpr (MB >= 4) {
      if (mb == 4) { dot_block<R, 4, ZP, GROUPED>(p, wrow, n, sums, col, m0, pf); continue; }
    }
    if constexpr (MB >= 3) {
      if (mb == 3) { dot_block<R, 3, ZP, GROUPED>(p, wrow, n, sums, col, m0, pf); continue; }
    }
    if constexpr (MB >= 2) {
      if (mb == 2) { dot_block<R, 2, ZP, GROUPED>(p, wrow, n, sums, col, m0, pf); continue; }
    }
    dot_block<R, 1, ZP, GROUPED>(p, wrow, n, sums, col, m0, pf);
  }
}

void pack_x_rows(const Int8WeightLinearArgs& a, const Pass& p, float* xp, float* xsl) {
  for (int64_t m = 0; m < p.ms; ++m) {
    float* row = xp + m * p.kpad;
    load_x_row(a.x, a.x_row_stride, a.x_dtype, p.m0 + m, a.K, p.kpad, row);
    if (!xsl) continue;
    const int64_t span = p.G == 1 ? p.kpad : p.gs;
    for (int64_t g = 0; g < p.G; ++g) {
      __m512 s = _mm512_setzero_ps();
      for (int64_t k = g * span; k < (g + 1) * span; k += 16) s = _mm512_add_ps(s, _mm512_loadu_ps(row + k));
      _mm512_storeu_ps(xsl + (m * p.G + g) * 16, s);
    }
  }
}

// ----------------------------------------------------------------------------- driver

template <int R, class Tile>
void run_columns(const Pass& p, int64_t n_begin, int64_t n_end, Tile tile) {
  const Int8WeightLinearArgs& a = *p.a;
  alignas(64) float sums[kRowsPerPass][kCols + 32];
  for (int64_t c0 = n_begin; c0 < n_end; c0 += kCols) {
    const int64_t cnt = i8_min(kCols, n_end - c0);
    for (int64_t t0 = 0; t0 < cnt; t0 += R) {
      const int8_t* wrow[R];
      int64_t n[R];
      for (int r = 0; r < R; ++r) {
        n[r] = c0 + i8_min(t0 + r, cnt - 1);  // past the end: repeat the last row, unused
        wrow[r] = a.qw + n[r] * a.qw_row_stride;
      }
      tile(wrow, n, sums, t0);
    }
    for (int64_t m = 0; m < p.ms; ++m)
      epilogue_row(a.out, a.out_row_stride, a.x_dtype, a.act, a.bias, sums[m], p.m0 + m, c0, cnt);
  }
}

template <int R, int MB, bool ZP, bool GROUPED>
void run_dot(const Pass& p, int threads) {
  parallel_columns(p.a->N, threads, kCols, [&](int64_t nb, int64_t ne) {
    run_columns<R>(p, nb, ne, [&](const int8_t* const* w, const int64_t* n, float (*s)[kCols + 32], int64_t col) {
      dot_tile<R, MB, ZP, GROUPED>(p, w, n, s, col);
    });
  });
}

template <bool ZP, bool GROUPED>
void dispatch_dot(const Pass& p, int threads) {
  // R*MB accumulators + R weights + x within 32 zmm registers; R divides kCols.
  switch (p.ms) {
    case 1: return run_dot<8, 1, ZP, GROUPED>(p, threads);
    case 2: return run_dot<8, 2, ZP, GROUPED>(p, threads);
    case 3: return run_dot<6, 3, ZP, GROUPED>(p, threads);
    default: return run_dot<6, 4, ZP, GROUPED>(p, threads);
  }
}

}  // namespace

void int8_weight_linear_avx512(const Int8WeightLinearArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  Pass p{};
  p.a = &a;
  p.G = a.groups;
  p.gs = a.K / a.groups;
  const bool grouped = p.G > 1;
  if (grouped && p.gs % 16 != 0) return int8_weight_linear_scalar(a);
  const bool zp = a.zero_point != nullptr;
  const int threads = threads_for(a.M, a.N, a.K, a.num_threads);
  p.kpad = round_up(a.K, 64);
  p.k16 = a.K / 16 * 16;
  const int64_t rows = i8_min(a.M, kRowsPerPass);
  Scratch xbuf(static_cast<size_t>(rows * p.kpad) * sizeof(float));
  Scratch lbuf(zp ? static_cast<size_t>(rows * p.G * 16) * sizeof(float) : 0);
  p.xp = xbuf.as<float>();
  p.xsl = zp ? lbuf.as<float>() : nullptr;
  for (int64_t m0 = 0; m0 < a.M; m0 += kRowsPerPass) {
    p.m0 = m0;
    p.ms = i8_min(kRowsPerPass, a.M - m0);
    pack_x_rows(a, p, xbuf.as<float>(), zp ? lbuf.as<float>() : nullptr);
    if (zp && grouped) dispatch_dot<true, true>(p, threads);
    else if (zp) dispatch_dot<true, false>(p, threads);
    else if (grouped) dispatch_dot<false, true>(p, threads);
    else dispatch_dot<false, false>(p, threads);
  }
}

}  // namespace bigperf::cpu
