// The weight-only int8 linear (W8A16) on the "w8a16-cpu" layout (bigperf/formats/w8a16_cpu.py):
// the weight as 16-column panels, panel p = [K][16] int8 codes of output columns 16p .. 16p+15
// (zero past N); scales (and zero points, if any) group-major, [G][Np] (Np = N rounded up to
// 16, zero past N), so that one group's 16 columns of a panel are one vector load. Written
// once over the unit's weight traits (PanelVec: 16 fp32 lanes as two ymm on AVX2, one zmm on
// AVX-512), instantiated by int8_linear_avx2.cpp and int8_linear_avx512.cpp.
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
// Needs from the including unit: load_x_row and IsaVec, the vector traits the epilogue
// (epilogue.h) runs on (int8_vec_*.h), and the traits class for panel_gemm.h.
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

// 16 fp32 lanes as H vectors of the unit's weight traits Ops (int8_linear_avx2.cpp: two ymm;
// int8_linear_avx512.cpp: one zmm): what one k of a panel (16 codes), one group's 16 scales,
// or 16 output sums are.
template <class Ops>
struct PanelVec : Ops {
  using vec = typename Ops::vec;
  static constexpr int H = kPanel / Ops::W;
  static vec bcast(const float* p) { return Ops::set1(*p); }
  // 16 int8 codes widened to fp32 (vpmovsxbd + vcvtdq2ps).
  static void load_codes(const int8_t* p, vec (&v)[H]) {
    for (int h = 0; h < H; ++h) v[h] = Ops::load_w(p + h * Ops::W);
  }
  static void loadf(const float* p, vec (&v)[H]) {
    for (int h = 0; h < H; ++h) v[h] = Ops::loadu(p + h * Ops::W);
  }
  static void storef(float* p, const vec (&v)[H]) {
    for (int h = 0; h < H; ++h) Ops::storeu(p + h * Ops::W, v[h]);
  }
};

// 16 scales from scale + at, and the 16 zero points from zero + at (0 where zero is null): one
// group's vectors for one panel (the group-major layout puts them side by side).
template <class P>
inline void group_vectors(const float* scale, const int8_t* zero, int64_t at, typename P::vec (&s)[P::H],
                          typename P::vec (&z)[P::H]) {
  P::loadf(scale + at, s);
  if (zero) {
    P::load_codes(zero + at, z);
  } else {
    for (int h = 0; h < P::H; ++h) z[h] = P::zero();
  }
}

// The scales (and zero points) of the block's first panel, and what the zero points need.
struct Groups {
  int64_t count, size;  // groups along K and their size (per channel: 1 and K)
  int64_t stride;       // elements from one group's scales to the next's (Np)
  const float* scale;   // group 0's 16 scales of the first panel (the next panel's 16 further)
  const int8_t* zero;   // the same for zero points, or null
  const float* xsum;    // per row of x (stride `count`), per group: the sum of x over the group

  Groups panel(int j) const {  // the same for panel j of the block
    Groups g = *this;
    g.scale += j * kPanel;
    if (g.zero) g.zero += j * kPanel;
    return g;
  }
};

// acc[m][j] = sum over k in [k0, k1) of x[m * xs + k] * code(panel j, k, .), for NP panels
// from w (ps bytes apart) and MB rows of x. NP * MB * H accumulators, one panel's H vectors
// and the broadcasts fit 16 registers for (4, 1), (2, 2), (1, 4) on AVX2 (H = 2).
template <class P, int NP, int MB>
inline void accumulate(typename P::vec (&acc)[MB][NP][P::H], const int8_t* w, int64_t ps, const float* x, int64_t xs,
                       int64_t k0, int64_t k1) {
  using vec = typename P::vec;
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NP; ++j)
      for (int h = 0; h < P::H; ++h) acc[m][j][h] = P::zero();
#pragma GCC unroll 4
  for (int64_t k = k0; k < k1; ++k) {
    vec b[MB];
    for (int m = 0; m < MB; ++m) b[m] = P::bcast(x + m * xs + k);
    for (int j = 0; j < NP; ++j) {
      vec w16[P::H];
      P::load_codes(w + j * ps + k * kPanel, w16);
      for (int m = 0; m < MB; ++m)
        for (int h = 0; h < P::H; ++h) acc[m][j][h] = P::fmadd(w16[h], b[m], acc[m][j][h]);
    }
  }
}

// For NP panels and MB rows of x (see accumulate), into sums[m * ss + 16 j + c]:
//   GROUPED false (per channel, symmetric): the unscaled sums over K, stored (the caller
//     scales them before the epilogue: the hot loop stays exactly the plain dot);
//   GROUPED true: += sum over groups g of scale(g, c) * (the group's sum - zero(g, c) *
//     xsum(m, g)), each group's partial sums scaled out of registers once per group.
template <class P, int NP, int MB, bool GROUPED>
inline void panel_block(const int8_t* w, int64_t ps, const float* x, int64_t xs, float* sums, int64_t ss,
                        const Groups& gr) {
  using vec = typename P::vec;
  vec acc[MB][NP][P::H];
  if constexpr (!GROUPED) {
    accumulate<P, NP, MB>(acc, w, ps, x, xs, 0, gr.size);
    for (int m = 0; m < MB; ++m)
      for (int j = 0; j < NP; ++j) P::storef(sums + m * ss + j * kPanel, acc[m][j]);
    return;
  }
  for (int64_t g = 0; g < gr.count; ++g) {
    accumulate<P, NP, MB>(acc, w, ps, x, xs, g * gr.size, (g + 1) * gr.size);
    for (int j = 0; j < NP; ++j) {
      vec sv[P::H], zv[P::H];
      group_vectors<P>(gr.scale, gr.zero, g * gr.stride + j * kPanel, sv, zv);
      for (int m = 0; m < MB; ++m) {
        float* out = sums + m * ss + j * kPanel;
        vec o[P::H];
        P::loadf(out, o);
        const vec xsum = P::set1(gr.zero ? gr.xsum[m * gr.count + g] : 0.f);
        for (int h = 0; h < P::H; ++h) {
          vec part = acc[m][j][h];
          if (gr.zero) part = P::fnmadd(zv[h], xsum, part);  // sum((q - z) x) = sum(q x) - z sum(x)
          o[h] = P::fmadd(part, sv[h], o[h]);
        }
        P::storef(out, o);
      }
    }
  }
}

template <class P, int MB, bool GROUPED>
inline void panel_block_np(int np, const int8_t* w, int64_t ps, const float* x, int64_t xs, float* sums, int64_t ss,
                           const Groups& gr) {
  switch (np) {
    case 4: return panel_block<P, 4, MB, GROUPED>(w, ps, x, xs, sums, ss, gr);
    case 3: return panel_block<P, 3, MB, GROUPED>(w, ps, x, xs, sums, ss, gr);
    case 2: return panel_block<P, 2, MB, GROUPED>(w, ps, x, xs, sums, ss, gr);
    default: return panel_block<P, 1, MB, GROUPED>(w, ps, x, xs, sums, ss, gr);
  }
}

// The same for np (<= 4) panels and mb (<= 4) rows known at run time. One vector per panel
// (H = 1, 32 registers): all np panels with all mb rows at once (16 accumulators at most;
// one panel per broadcast, as AVX2's two halves are, measured 1.5x slower at M = 4). Two
// (AVX2): the shapes that fit 16 registers.
template <class P, bool GROUPED>
inline void panel_block_n(int np, int mb, const int8_t* w, int64_t ps, const float* x, int64_t xs, float* sums,
                          int64_t ss, const Groups& gr) {
  if constexpr (P::H == 1) {
    switch (mb) {
      case 4: return panel_block_np<P, 4, GROUPED>(np, w, ps, x, xs, sums, ss, gr);
      case 3: return panel_block_np<P, 3, GROUPED>(np, w, ps, x, xs, sums, ss, gr);
      case 2: return panel_block_np<P, 2, GROUPED>(np, w, ps, x, xs, sums, ss, gr);
      default: return panel_block_np<P, 1, GROUPED>(np, w, ps, x, xs, sums, ss, gr);
    }
  }
  if (mb == 1) {
    switch (np) {
      case 4: return panel_block<P, 4, 1, GROUPED>(w, ps, x, xs, sums, ss, gr);
      case 3: return panel_block<P, 3, 1, GROUPED>(w, ps, x, xs, sums, ss, gr);
      case 2: return panel_block<P, 2, 1, GROUPED>(w, ps, x, xs, sums, ss, gr);
      default: return panel_block<P, 1, 1, GROUPED>(w, ps, x, xs, sums, ss, gr);
    }
  }
  if (mb == 2 && np == 2) return panel_block<P, 2, 2, GROUPED>(w, ps, x, xs, sums, ss, gr);
  for (int j = 0; j < np; ++j) {  // one panel at a time: it stays in L1/L2 for every row block
    const int8_t* wj = w + j * ps;
    float* sj = sums + j * kPanel;
    const Groups gj = gr.panel(j);
    switch (mb) {
      case 4: panel_block<P, 1, 4, GROUPED>(wj, ps, x, xs, sj, ss, gj); break;
      case 3: panel_block<P, 1, 3, GROUPED>(wj, ps, x, xs, sj, ss, gj); break;
      default: panel_block<P, 1, 2, GROUPED>(wj, ps, x, xs, sj, ss, gj); break;
    }
  }
}

// Rows [0, ms) of the packed x (row stride xs) against panels [p0, p0 + np): sums[m][c] for
// the np * 16 columns (see panel_block; zeroed by the caller if GROUPED), in row blocks of at most 4
// (balanced). At M = 1 all np panels stream at once; otherwise each pair (2 rows) or single
// panel runs every row block before the next. gr: the groups of panel p0, xsum of row 0.
template <class P, bool GROUPED>
inline void panel_group(const Int8WeightLinearArgs& a, int64_t p0, int np, const float* xp, int64_t xs, int64_t ms,
                        float (*sums)[kPanelsPerStep * kPanel], const Groups& gr) {
  constexpr int64_t ss = kPanelsPerStep * kPanel;
  const int8_t* w = a.qw + p0 * a.qw_row_stride;
  if (ms == 1) return panel_block_n<P, GROUPED>(np, 1, w, a.qw_row_stride, xp, xs, sums[0], ss, gr);
  const int64_t blocks = (ms + 3) / 4;
  const int step = P::H == 1 ? np : ms == 2 ? 2 : 1;
  for (int j = 0; j < np; j += step) {
    const int nj = P::H == 1 ? np : step == 2 && j + 1 < np ? 2 : 1;
    for (int64_t i = 0; i < blocks; ++i) {
      const int64_t m0 = ms * i / blocks, mb = ms * (i + 1) / blocks - m0;
      Groups gm = gr.panel(j);
      if (gm.xsum) gm.xsum += m0 * gm.count;
      panel_block_n<P, GROUPED>(nj, static_cast<int>(mb), w + j * a.qw_row_stride, a.qw_row_stride, xp + m0 * xs, xs,
                    sums[m0] + j * kPanel, ss, gm);
    }
  }
}

}  // namespace w8a16_panels

// The dot form on the layout: a.qw is the panels (a.qw_row_stride = 16 K bytes per panel),
// a.scale the group-major [G][Np] scales, a.zero_point the group-major [G][Np] int8 zero
// points or null, a.groups = G (the binding checks). Per group: the unscaled sums of each
// row block, then sums += scale * (partial - zero * sum of x over the group).
template <class Ops>
void int8_weight_linear_panels_dot(const Int8WeightLinearArgs& a) {
  using namespace w8a16_panels;
  using P = PanelVec<Ops>;
  if (a.M <= 0 || a.N <= 0) return;
  const int64_t panels = (a.N + kPanel - 1) / kPanel, np_cols = panels * kPanel;
  const int64_t G = a.groups, gs = a.K / a.groups;
  const bool grouped = G > 1 || a.zero_point;  // else one scale per column, applied at the end
  const int64_t kpad = round_up(a.K, 16);  // load_x_row writes whole vectors (8 or 16 floats)
  const int threads = threads_for(a.M, a.N, a.K, a.num_threads);
  const int64_t rows = imin(a.M, kRowsPerPass);
  AlignedBuffer xbuf(static_cast<size_t>(rows * kpad) * sizeof(float));
  AlignedBuffer xsum_buf(a.zero_point ? static_cast<size_t>(rows * G) * sizeof(float) : 0);
  float* xp = xbuf.as<float>();
  float* xsum = xsum_buf.as<float>();
  for (int64_t m0 = 0; m0 < a.M; m0 += kRowsPerPass) {
    const int64_t ms = imin(kRowsPerPass, a.M - m0);
    for (int64_t m = 0; m < ms; ++m) {
      load_x_row(a.x, a.x_row_stride, a.x_dtype, m0 + m, a.K, kpad, xp + m * kpad);
      for (int64_t g = 0; a.zero_point && g < G; ++g) {
        float t = 0.f;
        for (int64_t k = g * gs; k < (g + 1) * gs; ++k) t += xp[m * kpad + k];
        xsum[m * G + g] = t;
      }
    }
    parallel_columns(panels, threads, kPanelsPerStep, [&](int64_t pb, int64_t pe) {
      alignas(64) float sums[kRowsPerPass][kPanelsPerStep * kPanel];
      for (int64_t p0 = pb; p0 < pe; p0 += kPanelsPerStep) {
        const int np = static_cast<int>(imin(kPanelsPerStep, pe - p0));
        const Groups gr{G, gs, np_cols, a.scale + p0 * kPanel, a.zero_point ? a.zero_point + p0 * kPanel : nullptr,
                        a.zero_point ? xsum : nullptr};
        const int64_t n0 = p0 * kPanel, cnt = imin(np * kPanel, a.N - n0);
        if (grouped) {
          std::memset(sums, 0, static_cast<size_t>(ms) * sizeof(sums[0]));
          panel_group<P, true>(a, p0, np, xp, kpad, ms, sums, gr);
        } else {
          panel_group<P, false>(a, p0, np, xp, kpad, ms, sums, gr);
          for (int64_t m = 0; m < ms; ++m)
            for (int64_t c = 0; c < cnt; ++c) sums[m][c] *= a.scale[n0 + c];  // group 0's row: [0, Np)
        }
        epilogue_rows<IsaVec>(EpilogueArgs{a.out, a.out_row_stride, a.x_dtype, a.act, a.bias}, sums[0],
                              kPanelsPerStep * kPanel, m0, ms, n0, cnt);
      }
    });
    for (int64_t m = 0; a.zero_point && m < ms; ++m)
      if (!finite_sums(xsum + m * G, G)) dequantised_row(a, m0 + m, [&a, np_cols, gs](int64_t n, int64_t k) {
          const int64_t at = k / gs * np_cols + n;  // group-major [G][Np] scales and zero points
          const int8_t q = a.qw[n / kPanel * a.qw_row_stride + k * kPanel + n % kPanel];
          return (static_cast<float>(q) - static_cast<float>(a.zero_point[at])) * a.scale[at];
        });
  }
}

// The layout's strips for panel_gemm.h's packers: pack(n0, nc, k0, kc, dst) writes columns
// [n0, n0 + nc), k in [k0, k0 + kc) dequantised to fp32, (q - zero) * scale per k, the
// group's vectors reloaded where k enters a new group. A strip of the panel GEMM is NR = 32
// columns (2 x 16 on AVX-512; 16 = 2 x 8 on AVX2), i.e. NR / 16 consecutive panels side by
// side; a panel past the last is zeros.
template <class Ops, int64_t NR>
auto panels_fp32_packer(const Int8WeightLinearArgs& a) {
  using namespace w8a16_panels;
  using P = PanelVec<Ops>;
  using vec = typename P::vec;
  static_assert(NR % kPanel == 0, "a strip of the panel GEMM is whole panels of the layout");
  const int64_t panels = (a.N + kPanel - 1) / kPanel, np_cols = panels * kPanel, gs = a.K / a.groups;
  return [&a, panels, np_cols, gs](int64_t n0, int64_t nc, int64_t k0, int64_t kc, float* dst) {
    for (int64_t s = 0; s < nc; s += NR) {
      float* strip = dst + s * kc;
      for (int64_t c = 0; c < NR; c += kPanel) {
        const int64_t p = (n0 + s + c) / kPanel;
        if (p >= panels) {
          for (int64_t k = 0; k < kc; ++k) std::memset(strip + k * NR + c, 0, kPanel * sizeof(float));
          continue;
        }
        const int8_t* src = a.qw + p * a.qw_row_stride + k0 * kPanel;
        vec sv[P::H], zv[P::H];
        for (int64_t k = 0, g = -1; k < kc; ++k) {
          if ((k0 + k) / gs != g) {
            g = (k0 + k) / gs;
            group_vectors<P>(a.scale, a.zero_point, g * np_cols + p * kPanel, sv, zv);
          }
          vec w16[P::H];
          P::load_codes(src + k * kPanel, w16);
          for (int h = 0; h < P::H; ++h) w16[h] = P::mul(P::sub(w16[h], zv[h]), sv[h]);
          P::storef(strip + k * NR + c, w16);
        }
      }
    }
  };
}

// The gemm form on the layout (arguments as the dot form's), for M where arithmetic bounds
// the call: x as fp32 rows (Fp32Rows), the strips dequantised per task.
template <class Ops>
void int8_weight_linear_panels_gemm(const Int8WeightLinearArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  const Fp32Rows rows(a);
  const EpilogueArgs out{a.out, a.out_row_stride, a.x_dtype, a.act, a.bias};
  auto epilogue = [&](const float* sums, int64_t ld, int64_t m0, int64_t rows, int64_t n0, int64_t cnt) {
    epilogue_rows<IsaVec>(out, sums, ld, m0, rows, n0, cnt);
  };
  panel::gemm_packed<Ops>(rows.x, rows.stride, a.M, a.N, a.K, a.num_threads,
                          panels_fp32_packer<Ops, panel::kNR<Ops>>(a), epilogue);
}

}  // namespace
}  // namespace bigperf::cpu
