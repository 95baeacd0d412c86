// AVX2 + FMA + F16C path of the weight-only int8 linear (W8A16). The W8A8 op is in
// int8_dynamic_avx2.cpp.
//
// Dot-product form: each (x row, weight row) pair keeps an fp32 vector accumulator along
// K; weights are widened int8 -> int32 -> fp32 in registers (vpmovsxbd + vcvtdq2ps),
// never copied or converted per call.
//   * Register tile: R weight rows x up to 4 rows of x. Up to 16 rows of x run against
//     each tile of weight rows in blocks of at most 4, so the weights come from memory
//     once per 16 rows and from L1 for the later blocks. (Measured here: this beats
//     widening each weight once into an fp32 buffer for an outer-product tile, at every
//     M from 5 to 16, per channel or grouped.)
//   * Scales: a group's partial dot stays unscaled and is multiplied by its scale once
//     per group (per channel: once per row, after the horizontal sum).
//   * Zero points: sum((q - z) x) = sum(q x) - z sum(x). x is packed once per pass with
//     its per-group sums kept per vector lane, so the correction is one FMA per group.
//   * Threads split N in groups of kCols columns; the epilogue (bias, activation, cast)
//     runs on each group while it is in cache.
#include "cpu/int8_vec_avx2.h"
#include "cpu/thread_pool.h"

namespace bigperf::cpu {
namespace {

constexpr int64_t kRowsPerPass = 16;  // rows of x per pass over the weights
constexpr int64_t kCols = 48;         // output columns per epilogue group (thread grain)

inline __m256 load_w8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// Read-only state of one pass over the weights with up to kRowsPerPass rows of x.
struct Pass {
  const Int8WeightLinearArgs* a;
  int64_t m0, ms;     // rows of x in this pass
  int64_t G, gs;      // groups and group size (per channel: 1 and K)
  int64_t kpad;       // row stride of the packed x (K rounded up to 32)
  int64_t k8;         // K rounded down to 8, the part read straight from rows
  const float* xp;    // x [ms][kpad]
  const float* xsl;   // per-lane sums of x [ms][G][8], or null (no zero points)
};

// acc[m][r] += dot(w[r][0, len), x[m * xs + 0, len)), len a multiple of 8.
// pf != 0: prefetch w[r] + pf alongside, the same offset in the next tile's rows. With
// K = 4096 each weight row is one 4 KB page, and the hardware prefetchers stop at page
// boundaries: every new tile began with demand misses at full memory latency (measured:
// 0.6 of x.sum()'s read bandwidth, 0.8-0.9 with this). One tile ahead is enough.
template <int R, int MB>
inline void dot_rows(const int8_t* const* w, int64_t len, const float* x, int64_t xs, __m256 (&out)[MB][R],
                     int64_t pf) {
  // Local accumulators: through the reference GCC stores them back every iteration.
  __m256 acc[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = out[m][r];
  int64_t k = 0;
  for (; k + 32 <= len; k += 32) {
    if (pf && (k & 63) == 0) {
      for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(w[r] + k + pf), _MM_HINT_T0);
    }
    for (int u = 0; u < 4; ++u) {
      __m256 wv[R];
      for (int r = 0; r < R; ++r) wv[r] = load_w8(w[r] + k + 8 * u);
      for (int m = 0; m < MB; ++m) {
        const __m256 xv = _mm256_loadu_ps(x + m * xs + k + 8 * u);
        for (int r = 0; r < R; ++r) acc[m][r] = _mm256_fmadd_ps(wv[r], xv, acc[m][r]);
      }
    }
  }
  for (; k + 8 <= len; k += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load_w8(w[r] + k);
    for (int m = 0; m < MB; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + m * xs + k);
      for (int r = 0; r < R; ++r) acc[m][r] = _mm256_fmadd_ps(wv[r], xv, acc[m][r]);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) out[m][r] = acc[m][r];
}

// sums[m][r] = row m of x . dequantised weight row n[r], for all MB rows of the pass.
// Rows [m0, m0 + MB) of the pass against R weight rows.
template <int R, int MB, bool ZP, bool GROUPED>
inline void dot_block(const Pass& p, const int8_t* const* wrow, const int64_t* n, float (*sums)[kCols + 8],
                      int64_t col, int64_t m0, int64_t pf) {
  const Int8WeightLinearArgs& a = *p.a;
  const float* xp = p.xp + m0 * p.kpad;
  const float* xsl = p.xsl ? p.xsl + m0 * p.G * 8 : nullptr;
  sums += m0;
  __m256 tot[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) tot[m][r] = _mm256_setzero_ps();
  if constexpr (GROUPED) {
    for (int64_t g = 0; g < p.G; ++g) {
      const int8_t* w[R];
      for (int r = 0; r < R; ++r) w[r] = wrow[r] + g * p.gs;
      __m256 acc[MB][R];
      for (int m = 0; m < MB; ++m)
        for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_ps();
      dot_rows<R, MB>(w, p.gs, xp + g * p.gs, p.kpad, acc, pf);
      for (int r = 0; r < R; ++r) {
        const __m256 sc = _mm256_set1_ps(a.scale[n[r] * p.G + g]);
        __m256 z = _mm256_setzero_ps();
        if constexpr (ZP) z = _mm256_set1_ps(static_cast<float>(a.zero_point[n[r] * p.G + g]));
        for (int m = 0; m < MB; ++m) {
          __m256 v = acc[m][r];
          if constexpr (ZP) v = _mm256_fnmadd_ps(z, _mm256_loadu_ps(xsl + (m * p.G + g) * 8), v);
          tot[m][r] = _mm256_fmadd_ps(v, sc, tot[m][r]);
        }
      }
    }
  } else {
    dot_rows<R, MB>(wrow, p.k8, xp, p.kpad, tot, pf);
    if (p.k8 < a.K) {
      // The last K % 8 weights go through zero-padded copies: never read past a row.
      alignas(16) int8_t tail[R][8] = {};
      const int8_t* w[R];
      for (int r = 0; r < R; ++r) {
        std::memcpy(tail[r], wrow[r] + p.k8, a.K - p.k8);
        w[r] = tail[r];
      }
      dot_rows<R, MB>(w, 8, xp + p.k8, p.kpad, tot, 0);
    }
  }
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < R; ++r) {
      if constexpr (GROUPED) {
        sums[m][col + r] = V8::hsum(tot[m][r]);
      } else {
        __m256 v = tot[m][r];
        if constexpr (ZP)
          v = _mm256_fnmadd_ps(_mm256_set1_ps(static_cast<float>(a.zero_point[n[r]])), _mm256_loadu_ps(xsl + m * 8), v);
        sums[m][col + r] = V8::hsum(v) * a.scale[n[r]];
      }
    }
  }
}

// Packs the pass's rows of x (fp32, zero-padded to kpad) and, with zero points, the
// per-lane sums of each group.
void pack_x_rows(const Int8WeightLinearArgs& a, const Pass& p, float* xp, float* xsl) {
  for (int64_t m = 0; m < p.ms; ++m) {
    float* row = xp + m * p.kpad;
    load_x_row(a.x, a.x_row_stride, a.x_dtype, p.m0 + m, a.K, p.kpad, row);
    if (!xsl) continue;
    const int64_t span = p.G == 1 ? p.kpad : p.gs;  // per channel: the padded row (zeros)
    for (int64_t g = 0; g < p.G; ++g) {
      __m256 s = _mm256_setzero_ps();
      for (int64_t k = g * span; k < (g + 1) * span; k += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(row + k));
      _mm256_storeu_ps(xsl + (m * p.G + g) * 8, s);
    }
  }
}

// ----------------------------------------------------------------------------- driver

// One thread's share: output columns [n_begin, n_end) for the rows of x in the pass. Tile
// is dot_tile over R weight rows.
template <int R, class Tile>
void run_columns(const Pass& p, int64_t n_begin, int64_t n_end, Tile tile) {
  const Int8WeightLinearArgs& a = *p.a;
  alignas(32) float sums[kRowsPerPass][kCols + 8];
  for (int64_t c0 = n_begin; c0 < n_end; c0 += kCols) {
    const int64_t cnt = i8_min(kCols, n_end - c0);
    for (int64_t t0 = 0; t0 < cnt; t0 += R) {
      const int8_t* wrow[R];
      int64_t n[R];
      for (int r = 0; r < R; ++r) {
        // Past the last column the tile repeats the last row: valid memory, result unused.
        n[r] = c0 + i8_min(t0 + r, cnt - 1);
        wrow[r] = a.qw + n[r] * a.qw_row_stride;
      }
      tile(wrow, n, sums, t0);
    }
    for (int64_t m = 0; m < p.ms; ++m)
      epilogue_row(a.out, a.out_row_stride, a.x_dtype, a.act, a.bias, sums[m], p.m0 + m, c0, cnt);
  }
}

// sums[m][col + r] for every row of the pass: blocks of at most MB rows, each against
// the same R weight rows (from L1 after the first block).
template <int R, int MB, bool ZP, bool GROUPED>
inline void dot_tile(const Pass& p, const int8_t* const* wrow, const int64_t* n, float (*sums)[kCols + 8],
                     int64_t col) {
  const int64_t blocks = (p.ms + MB - 1) / MB;
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t m0 = p.ms * i / blocks, mb = p.ms * (i + 1) / blocks - m0;  // balanced
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

template <int R, int MB, bool ZP, bool GROUPED>
void run_dot(const Pass& p, int threads) {
  parallel_columns(p.a->N, threads, kCols, [&](int64_t nb, int64_t ne) {
    run_columns<R>(p, nb, ne, [&](const int8_t* const* w, const int64_t* n, float (*s)[kCols + 8], int64_t col) {
      dot_tile<R, MB, ZP, GROUPED>(p, w, n, s, col);
    });
  });
}

template <bool ZP, bool GROUPED>
void dispatch_dot(const Pass& p, int threads) {
  // Tiles that fit the 16 ymm registers: R*MB accumulators + R weights + x. M = 1 streams
  // 4 weight rows per tile: with 1, 2, 6 or 8 a cold call read 0.4, 0.6, 0.85 and 0.7 of
  // the bandwidth that 4 reached (more streams in flight, up to what L1 keeps apart).
  switch (p.ms) {
    case 1: return run_dot<4, 1, ZP, GROUPED>(p, threads);
    case 2: return run_dot<4, 2, ZP, GROUPED>(p, threads);
    case 3: return run_dot<3, 3, ZP, GROUPED>(p, threads);
    default: return run_dot<3, 4, ZP, GROUPED>(p, threads);
  }
}

}  // namespace

void int8_weight_linear_avx2(const Int8WeightLinearArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  Pass p{};
  p.a = &a;
  p.G = a.groups;
  p.gs = a.K / a.groups;
  // Groups are stepped through in whole 8-element vectors; other group sizes (the
  // binding allows any divisor of K) take the portable path.
  const bool grouped = p.G > 1;
  if (grouped && p.gs % 8 != 0) return int8_weight_linear_scalar(a);
  const bool zp = a.zero_point != nullptr;
  const int threads = threads_for(a.M, a.N, a.K, a.num_threads);
  p.kpad = round_up(a.K, 32);
  p.k8 = a.K / 8 * 8;
  const int64_t rows = i8_min(a.M, kRowsPerPass);
  Scratch xbuf(static_cast<size_t>(rows * p.kpad) * sizeof(float));
  Scratch lbuf(zp ? static_cast<size_t>(rows * p.G * 8) * sizeof(float) : 0);
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
