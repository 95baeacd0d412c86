// The weight-only int8 linear (W8A16) dot-product kernel, written once for every vector
// ISA. An ISA unit (int8_linear_avx2.cpp, int8_linear_avx512.cpp) includes its vector
// header, defines a traits struct Ops and calls int8_weight_linear_dot<Ops>(args).
//
// Ops provides: vec, W (fp32 lanes), zero, set1, loadu, storeu, add, fmadd, fnmadd, hsum;
// load_w(p) (W int8 codes widened to fp32 in registers) and load_w_tail(p, n) (the first
// n < W codes, nothing past them read); tile_rows(MB) (weight rows per register tile for
// MB rows of x: MB * R accumulators + R weights + x must fit the register file).
//
// Dot-product form: each (x row, weight row) pair keeps a vector accumulator along K;
// weights are widened in registers, never copied or converted per call.
//   * Register tile: R weight rows x up to 4 rows of x. Up to 16 rows of x run against
//     each tile of weight rows in blocks of at most 4, so the weights come from memory
//     once per 16 rows and from L1 for the later blocks. (Measured on AVX2: this beats
//     widening each weight once into an fp32 buffer for an outer-product tile, at every
//     M from 5 to 16, per channel or grouped.)
//   * Scales: a group's partial dot stays unscaled and is multiplied by its scale once
//     per group (per channel: once per row, after the horizontal sum).
//   * Zero points: sum((q - z) x) = sum(q x) - z sum(x). x is packed once per pass with
//     its per-group sums kept per vector lane, so the correction is one FMA per group; a
//     row whose sums are not finite is recomputed on the dequantised weight (dequantised_row).
//   * Threads split N in groups of kCols columns; the epilogue (bias, activation, cast)
//     runs on each group while it is in cache.
//   * M = 1 streams 4 weight rows per tile on AVX2: with 1, 2, 6 or 8 a cold call read
//     0.4, 0.6, 0.85 and 0.7 of the bandwidth that 4 reached.
// Needs from the including unit: load_x_row and IsaVec, the vector traits the epilogue
// (epilogue.h) runs on (int8_vec_*.h), and the shared pieces of int8_linear_common.h.
#pragma once
#include <cstring>

#include "cpu/int8_linear_common.h"
#include "cpu/thread_pool.h"

namespace bigperf::cpu {
namespace {

namespace w8a16 {

constexpr int64_t kRowsPerPass = 16;  // rows of x per pass over the weights
constexpr int64_t kCols = 48;         // output columns per epilogue group (thread grain)
constexpr int64_t kSumsStride = kCols + 32;  // room for a last tile past kCols

// Read-only state of one pass over the weights with up to kRowsPerPass rows of x.
struct Pass {
  const Int8WeightLinearArgs* a;
  int64_t m0, ms;     // rows of x in this pass
  int64_t G, gs;      // groups and group size (per channel: 1 and K)
  int64_t kpad;       // row stride of the packed x (K rounded up to 4 vectors)
  int64_t kfull;      // K rounded down to whole vectors, the part read with full loads
  const float* xp;    // x [ms][kpad]
  const float* xsl;   // per-lane sums of x [ms][G][W], or null (no zero points)
};

// acc[m][r] += dot(w[r][0, len + tail), x[m * xs + ...]); len a multiple of W, tail < W
// codes read with load_w_tail. pf != 0: prefetch w[r] + pf alongside, the same offset in
// the next tile's rows. With K = 4096 each weight row is one 4 KB page, and the hardware
// prefetchers stop at page boundaries: every new tile began with demand misses at full
// memory latency (measured: 0.6 of x.sum()'s read bandwidth, 0.8-0.9 with this). One
// tile ahead is enough.
template <class Ops, int R, int MB>
inline void dot_rows(const int8_t* const* w, int64_t len, int64_t tail, const float* x, int64_t xs,
                     typename Ops::vec (&out)[MB][R], int64_t pf) {
  using vec = typename Ops::vec;
  constexpr int W = Ops::W;
  // Local accumulators: through the reference GCC stores them back every iteration.
  vec acc[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = out[m][r];
  int64_t k = 0;
  for (; k + 4 * W <= len; k += 4 * W) {
    if (pf && (k & 63) == 0) {  // one prefetch per 64-byte line of each row
      for (int r = 0; r < R; ++r) prefetch_l1(reinterpret_cast<const char*>(w[r] + k + pf));
    }
    for (int u = 0; u < 4; ++u) {
      vec wv[R];
      for (int r = 0; r < R; ++r) wv[r] = Ops::load_w(w[r] + k + W * u);
      for (int m = 0; m < MB; ++m) {
        const vec xv = Ops::loadu(x + m * xs + k + W * u);
        for (int r = 0; r < R; ++r) acc[m][r] = Ops::fmadd(wv[r], xv, acc[m][r]);
      }
    }
  }
  for (; k < len + (tail ? W : 0); k += W) {
    vec wv[R];
    for (int r = 0; r < R; ++r) wv[r] = k < len ? Ops::load_w(w[r] + k) : Ops::load_w_tail(w[r] + k, tail);
    for (int m = 0; m < MB; ++m) {
      const vec xv = Ops::loadu(x + m * xs + k);  // x is zero-padded to kpad
      for (int r = 0; r < R; ++r) acc[m][r] = Ops::fmadd(wv[r], xv, acc[m][r]);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) out[m][r] = acc[m][r];
}

// sums[m][col + r] = row m0 + m of x . dequantised weight row n[r], for MB rows of x
// against R weight rows.
template <class Ops, int R, int MB, bool ZP, bool GROUPED>
inline void dot_block(const Pass& p, const int8_t* const* wrow, const int64_t* n, float (*sums)[kSumsStride],
                      int64_t col, int64_t m0, int64_t pf) {
  using vec = typename Ops::vec;
  constexpr int W = Ops::W;
  const Int8WeightLinearArgs& a = *p.a;
  const float* xp = p.xp + m0 * p.kpad;
  const float* xsl = p.xsl ? p.xsl + m0 * p.G * W : nullptr;
  sums += m0;
  vec tot[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) tot[m][r] = Ops::zero();
  if constexpr (GROUPED) {
    for (int64_t g = 0; g < p.G; ++g) {
      const int8_t* w[R];
      for (int r = 0; r < R; ++r) w[r] = wrow[r] + g * p.gs;
      vec acc[MB][R];
      for (int m = 0; m < MB; ++m)
        for (int r = 0; r < R; ++r) acc[m][r] = Ops::zero();
      dot_rows<Ops, R, MB>(w, p.gs, 0, xp + g * p.gs, p.kpad, acc, pf);
      for (int r = 0; r < R; ++r) {
        const vec sc = Ops::set1(a.scale[n[r] * p.G + g]);
        vec z = Ops::zero();
        if constexpr (ZP) z = Ops::set1(static_cast<float>(a.zero_point[n[r] * p.G + g]));
        for (int m = 0; m < MB; ++m) {
          vec v = acc[m][r];
          if constexpr (ZP) v = Ops::fnmadd(z, Ops::loadu(xsl + (m * p.G + g) * W), v);
          tot[m][r] = Ops::fmadd(v, sc, tot[m][r]);
        }
      }
    }
  } else {
    dot_rows<Ops, R, MB>(wrow, p.kfull, a.K - p.kfull, xp, p.kpad, tot, pf);
  }
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < R; ++r) {
      if constexpr (GROUPED) {
        sums[m][col + r] = Ops::hsum(tot[m][r]);
      } else {
        vec v = tot[m][r];
        if constexpr (ZP)
          v = Ops::fnmadd(Ops::set1(static_cast<float>(a.zero_point[n[r]])), Ops::loadu(xsl + m * W), v);
        sums[m][col + r] = Ops::hsum(v) * a.scale[n[r]];
      }
    }
  }
}

// sums[m][col + r] for every row of the pass: balanced blocks of at most MB rows, each
// against the same R weight rows (from L1 after the first block).
template <class Ops, int R, int MB, bool ZP, bool GROUPED>
inline void dot_tile(const Pass& p, const int8_t* const* wrow, const int64_t* n, float (*sums)[kSumsStride],
                     int64_t col) {
  const int64_t blocks = (p.ms + MB - 1) / MB;
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t m0 = p.ms * i / blocks, mb = p.ms * (i + 1) / blocks - m0;
    const int64_t pf = i == 0 ? R * p.a->qw_row_stride : 0;  // the first block streams
    if constexpr (MB >= 4) {
      if (mb == 4) { dot_block<Ops, R, 4, ZP, GROUPED>(p, wrow, n, sums, col, m0, pf); continue; }
    }
    if constexpr (MB >= 3) {
      if (mb == 3) { dot_block<Ops, R, 3, ZP, GROUPED>(p, wrow, n, sums, col, m0, pf); continue; }
    }
    if constexpr (MB >= 2) {
      if (mb == 2) { dot_block<Ops, R, 2, ZP, GROUPED>(p, wrow, n, sums, col, m0, pf); continue; }
    }
    dot_block<Ops, R, 1, ZP, GROUPED>(p, wrow, n, sums, col, m0, pf);
  }
}

// Packs the pass's rows of x (fp32, zero-padded to kpad) and, with zero points, the
// per-lane sums of each group.
template <class Ops>
void pack_x_rows(const Int8WeightLinearArgs& a, const Pass& p, float* xp, float* xsl) {
  constexpr int W = Ops::W;
  for (int64_t m = 0; m < p.ms; ++m) {
    float* row = xp + m * p.kpad;
    load_x_row(a.x, a.x_row_stride, a.x_dtype, p.m0 + m, a.K, p.kpad, row);
    if (!xsl) continue;
    const int64_t span = p.G == 1 ? p.kpad : p.gs;  // per channel: the padded row (zeros)
    for (int64_t g = 0; g < p.G; ++g) {
      typename Ops::vec s = Ops::zero();
      for (int64_t k = g * span; k < (g + 1) * span; k += W) s = Ops::add(s, Ops::loadu(row + k));
      Ops::storeu(xsl + (m * p.G + g) * W, s);
    }
  }
}

// One thread's share: output columns [n_begin, n_end) for the rows of x in the pass.
template <class Ops, int R, int MB, bool ZP, bool GROUPED>
void run_columns(const Pass& p, int64_t n_begin, int64_t n_end) {
  const Int8WeightLinearArgs& a = *p.a;
  alignas(64) float sums[kRowsPerPass][kSumsStride];
  for (int64_t c0 = n_begin; c0 < n_end; c0 += kCols) {
    const int64_t cnt = imin(kCols, n_end - c0);
    for (int64_t t0 = 0; t0 < cnt; t0 += R) {
      const int8_t* wrow[R];
      int64_t n[R];
      for (int r = 0; r < R; ++r) {
        // Past the last column the tile repeats the last row: valid memory, result unused.
        n[r] = c0 + imin(t0 + r, cnt - 1);
        wrow[r] = a.qw + n[r] * a.qw_row_stride;
      }
      dot_tile<Ops, R, MB, ZP, GROUPED>(p, wrow, n, sums, t0);
    }
    epilogue_rows<IsaVec>(EpilogueArgs{a.out, a.out_row_stride, a.x_dtype, a.act, a.bias}, sums[0], kSumsStride, p.m0,
                          p.ms, c0, cnt);
  }
}

template <class Ops, int MB, bool ZP, bool GROUPED>
void run_dot(const Pass& p, int threads) {
  constexpr int R = Ops::tile_rows(MB);
  static_assert(kCols % R == 0, "a tile must not straddle two column groups");
  parallel_columns(p.a->N, threads, kCols,
                   [&](int64_t nb, int64_t ne) { run_columns<Ops, R, MB, ZP, GROUPED>(p, nb, ne); });
}

template <class Ops, bool ZP, bool GROUPED>
void dispatch_dot(const Pass& p, int threads) {
  switch (p.ms) {
    case 1: return run_dot<Ops, 1, ZP, GROUPED>(p, threads);
    case 2: return run_dot<Ops, 2, ZP, GROUPED>(p, threads);
    case 3: return run_dot<Ops, 3, ZP, GROUPED>(p, threads);
    default: return run_dot<Ops, 4, ZP, GROUPED>(p, threads);
  }
}

}  // namespace w8a16

// The whole W8A16 call on the vector ISA of Ops. Groups are stepped through in whole
// vectors; other group sizes (the binding allows any divisor of K) take the portable path.
template <class Ops>
void int8_weight_linear_dot(const Int8WeightLinearArgs& a) {
  using namespace w8a16;
  constexpr int W = Ops::W;
  if (a.M <= 0 || a.N <= 0) return;
  Pass p{};
  p.a = &a;
  p.G = a.groups;
  p.gs = a.K / a.groups;
  const bool grouped = p.G > 1;
  if (grouped && p.gs % W != 0) return int8_weight_linear_scalar(a);
  const bool zp = a.zero_point != nullptr;
  const int threads = threads_for(a.M, a.N, a.K, a.num_threads);
  p.kpad = round_up(a.K, 4 * W);
  p.kfull = a.K / W * W;
  const int64_t rows = imin(a.M, kRowsPerPass);
  AlignedBuffer xbuf(static_cast<size_t>(rows * p.kpad) * sizeof(float));
  AlignedBuffer lbuf(zp ? static_cast<size_t>(rows * p.G * W) * sizeof(float) : 0);
  p.xp = xbuf.as<float>();
  p.xsl = zp ? lbuf.as<float>() : nullptr;
  for (int64_t m0 = 0; m0 < a.M; m0 += kRowsPerPass) {
    p.m0 = m0;
    p.ms = imin(kRowsPerPass, a.M - m0);
    pack_x_rows<Ops>(a, p, xbuf.as<float>(), zp ? lbuf.as<float>() : nullptr);
    if (zp && grouped) dispatch_dot<Ops, true, true>(p, threads);
    else if (zp) dispatch_dot<Ops, true, false>(p, threads);
    else if (grouped) dispatch_dot<Ops, false, true>(p, threads);
    else dispatch_dot<Ops, false, false>(p, threads);
    for (int64_t m = 0; zp && m < p.ms; ++m)
      if (!finite_sums(p.xsl + m * p.G * W, p.G * W))
        dequantised_row(a, m0 + m, [&a](int64_t n, int64_t k) { return rowmajor_weight(a, n, k); });
  }
}

}  // namespace
}  // namespace bigperf::cpu
