// AVX-512 VNNI path of the dynamic int8 linear (W8A8). Runs only where
// isa_runnable("avx512") says so (VNNI is part of that check).
//
// vpdpbusd multiplies unsigned by signed bytes, summing four products into each int32
// lane without saturation. x is quantised per row here (torch.round semantics) and
// stored offset as u8 = q + 128; the offset is taken back exactly per output,
//   sum (q + 128) w = sum q w + 128 * sum w,
// with the weight row sums from vpdpbusd against a vector of ones. Any int8 weight (-128
// included) stays exact: |acc| <= K * 255 * 128 < 2^31 for the K the binding admits.
//   * Small M: dot form over the raw weight rows (masked tail loads), one pass.
//   * Larger M: blocked GEMM (see gemm_worker). Weights packed per call into 16-column
//     panels [K/4][16][4] (one zmm per 4 k: 16 x 16 int32 transposes) with their row
//     sums; a kMR x 32 tile (24 accumulators) broadcasts 4 bytes of a row of x per quad.
//   * On the weight held in the w8a8-cpu layout (int8_dynamic_linear_panels_avx512): the
//     held dot form at every M (held_dot: the layout's panels with its column sums, no
//     packing; it outran the GEMM on the same panels from M = 24 to 2048, see
//     benchmarks/NOTES.md). With 7-bit x the layout's units are quads; with 8-bit x they
//     are pairs (the AVX2 kernel's vpmaddwd order), and one vpermw per 64 bytes interleaves
//     two pair rows into quads.
#include "cpu/avx512_dot.h"
#include "cpu/int8_vec_avx512.h"
#include "cpu/thread_pool.h"
#include "cpu/transpose_avx512.h"

namespace bigperf::cpu {
namespace {

constexpr int64_t kGemmMinM = 8;
constexpr int kMR = 12;          // GEMM tile: 12 rows x 2 zmm of 16 columns
constexpr int64_t kNR = 32;
constexpr int64_t kCols = 64;    // dot form: output columns per epilogue group

struct QuantX {
  int64_t kpad;     // K rounded up to 64
  uint8_t* q;       // [rows][kpad] u8 = q + 128, zero past K (and in padding rows)
  float* scale;     // [M]
};

void quantize_x(const Int8DynamicLinearArgs& a, const QuantX& qx, int64_t rows, int threads) {
  parallel_for(rows, threads, 16, [&](int64_t m0, int64_t m1) {
    AlignedBuffer tmp(static_cast<size_t>(qx.kpad) * sizeof(float));
    for (int64_t m = m0; m < m1; ++m) {
      if (m < a.M)
        qx.scale[m] = quantize_x_row_u8(a.x, a.x_row_stride, a.x_dtype, m, a.K, qx.kpad, tmp.as<float>(),
                                        qx.q + m * qx.kpad, act_qmax(a.act_bits),
                                        given_absmax(a, m));
      else
        std::memset(qx.q + m * qx.kpad, 0, qx.kpad);
    }
  });
}

inline float rescale(int32_t acc_u8, int32_t wsum, float x_scale, float w_scale, const float* bias, int64_t n) {
  // Both sums are exact int32: (q + 128) . w - 128 * sum(w) = q . w.
  return dynamic_rescale(acc_u8 - 128 * wsum, x_scale, w_scale, bias, n);
}

// ----------------------------------------------------------------------------- dot form

template <int R, int MB>
void dot_columns(const Int8DynamicLinearArgs& a, const QuantX& qx, int64_t n_begin, int64_t n_end) {
  alignas(64) float sums[MB][kCols + R];
  const __m512i ones = _mm512_set1_epi8(1);
  const int64_t nblk = (a.K + 63) / 64;
  for (int64_t c0 = n_begin; c0 < n_end; c0 += kCols) {
    const int64_t cnt = imin(kCols, n_end - c0);
    for (int64_t t0 = 0; t0 < cnt; t0 += R) {
      const int8_t* w[R];
      int64_t n[R];
      for (int r = 0; r < R; ++r) {
        n[r] = c0 + imin(t0 + r, cnt - 1);
        w[r] = a.qw + n[r] * a.qw_row_stride;
      }
      __m512i acc[MB][R], ws[R];
      for (int r = 0; r < R; ++r) {
        ws[r] = _mm512_setzero_si512();
        for (int m = 0; m < MB; ++m) acc[m][r] = _mm512_setzero_si512();
      }
      for (int64_t b = 0; b < nblk; ++b) {
        const int64_t k = 64 * b;
        const __mmask64 mask = a.K - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (a.K - k)) - 1;
        __m512i wv[R];
        for (int r = 0; r < R; ++r) {
          // The next tile's rows, one tile ahead (see int8_linear_avx2.cpp).
          prefetch_l1(reinterpret_cast<const char*>(w[r] + k + R * a.qw_row_stride));
          wv[r] = _mm512_maskz_loadu_epi8(mask, w[r] + k);
          ws[r] = dpbusd(ws[r], ones, wv[r]);
        }
        for (int m = 0; m < MB; ++m) {
          const __m512i xv = _mm512_loadu_si512(qx.q + m * qx.kpad + k);
          for (int r = 0; r < R; ++r) acc[m][r] = dpbusd(acc[m][r], xv, wv[r]);
        }
      }
      // Through memory at fixed indices: reduced straight from the registers, gcc stored every
      // accumulator to the stack on each pass of the loop above (20 zmm stores per 20 vpdpbusd).
      alignas(64) int32_t lanes[MB + 1][R][16];
      for (int r = 0; r < R; ++r) {
        _mm512_store_si512(lanes[MB][r], ws[r]);
        for (int m = 0; m < MB; ++m) _mm512_store_si512(lanes[m][r], acc[m][r]);
      }
      for (int r = 0; r < R; ++r) {
        const int32_t wsum = _mm512_reduce_add_epi32(_mm512_load_si512(lanes[MB][r]));
        for (int m = 0; m < MB; ++m)
          sums[m][t0 + r] = rescale(_mm512_reduce_add_epi32(_mm512_load_si512(lanes[m][r])), wsum, qx.scale[m],
                                    a.w_scale[n[r]], a.bias, n[r]);
      }
    }
    epilogue_rows<V16>(EpilogueArgs{a.out, a.out_row_stride, a.x_dtype, a.act}, sums[0], kCols + R, 0, MB, c0, cnt);
  }
}

void run_dot(const Int8DynamicLinearArgs& a, const QuantX& qx, int threads) {
  auto body = [&](auto fn) {
    parallel_columns(a.N, threads, kCols, [&](int64_t nb, int64_t ne) { fn(a, qx, nb, ne); });
  };
  switch (a.M) {  // R*MB + 2R + 2 <= 32 zmm
    case 1: body(dot_columns<8, 1>); break;
    case 2: body(dot_columns<6, 2>); break;
    case 3: body(dot_columns<5, 3>); break;
    case 4: body(dot_columns<4, 4>); break;
    case 5: body(dot_columns<4, 5>); break;
    case 6: body(dot_columns<3, 6>); break;
    default: body(dot_columns<3, 7>); break;  // kGemmMinM - 1 rows
  }
}

// ----------------------------------------------------------------------------- GEMM

// Weight columns [n0, n0 + 16) as [kpad / 4][16][4] bytes, zero past K and at or past
// n_end; wsum[j] = sum over K of column n0 + j.
void pack_panel(const Int8DynamicLinearArgs& a, int64_t kpad, int64_t n0, int64_t n_end, int8_t* dst,
                int32_t* wsum) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i sums = _mm512_setzero_si512();
  for (int64_t k = 0; k < kpad; k += 64) {
    const __mmask64 mask = a.K - k >= 64 ? ~__mmask64(0) : a.K <= k ? 0 : (__mmask64(1) << (a.K - k)) - 1;
    __m512i r[16];
    for (int j = 0; j < 16; ++j)
      r[j] = n0 + j < n_end ? _mm512_maskz_loadu_epi8(mask, a.qw + (n0 + j) * a.qw_row_stride + k)
                            : _mm512_setzero_si512();
    transpose16x16_epi32(r);  // r[i] = k quad k/4 + i of the 16 columns
    for (int i = 0; i < 16; ++i) {
      sums = dpbusd(sums, ones, r[i]);
      _mm512_storeu_si512(dst + (k / 4 + i) * 64, r[i]);
    }
  }
  _mm512_storeu_si512(wsum, sums);
}

// The 64 bytes of quad q of a panel as vpdpbusd reads them ([16 columns][4 k]). kPairs: the
// w8a8-cpu layout with 8-bit x holds k pairs ([16][2] for pair 2q, then for 2q + 1), and
// vpermw puts column j's two pairs side by side (16-bit element 2j from the first half, 2j + 1
// from the second).
template <bool kPairs>
inline __m512i load_quad(const int8_t* p) {
  const __m512i v = _mm512_loadu_si512(p);
  if constexpr (!kPairs) {
    return v;
  } else {
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                                22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(interleave, v);
  }
}

// The 4 u8 codes of x at quad q, in every 32-bit lane.
inline __m512i x_quad(const uint8_t* x, int64_t q) {
  int32_t quad;
  std::memcpy(&quad, x + 4 * q, 4);
  return _mm512_set1_epi32(quad);
}

// io[m][h] += sum over kq quads of x[m] quad . weight quads of panel h (16 columns).
inline void micro_kernel(const uint8_t* x, int64_t xs, const int8_t* b0, const int8_t* b1, int64_t kq,
                         __m512i (&io)[kMR][2]) {
  __m512i c[kMR][2];  // local: through the reference GCC stores them every iteration
  for (int m = 0; m < kMR; ++m) c[m][0] = io[m][0], c[m][1] = io[m][1];
  for (int64_t q = 0; q < kq; ++q) {
    const __m512i v0 = _mm512_loadu_si512(b0 + q * 64);
    const __m512i v1 = _mm512_loadu_si512(b1 + q * 64);
    for (int m = 0; m < kMR; ++m) {
      const __m512i av = x_quad(x + m * xs, q);
      c[m][0] = dpbusd(c[m][0], av, v0);
      c[m][1] = dpbusd(c[m][1], av, v1);
    }
  }
  for (int m = 0; m < kMR; ++m) io[m][0] = c[m][0], io[m][1] = c[m][1];
}

// Columns n0 .. n0 + len - 1's weight scales and biases as doubles (dynamic_rescale's
// precision), zero past the cnt real ones.
inline void column_doubles(const Int8DynamicLinearArgs& a, int64_t n0, int64_t cnt, int64_t len, double* ws,
                           double* bd) {
  for (int64_t l = 0; l < len; ++l) {
    ws[l] = l < cnt ? static_cast<double>(a.w_scale[n0 + l]) : 0.0;
    bd[l] = l < cnt && a.bias ? static_cast<double>(a.bias[n0 + l]) : 0.0;
  }
}

// The same for 16 columns, straight into registers (masked loads, widened): the held dot form
// needs them per panel and row block, and its 16 scalar stores read back at once as vectors
// could not be forwarded (a stall of ~8 % of held_dot_block's samples at 768 x 3072, M = 128).
inline void column_vectors(const Int8DynamicLinearArgs& a, int64_t n0, int64_t cnt, __m512d (&ws)[2],
                           __m512d (&bd)[2]) {
  const __mmask16 mask = first_lanes(cnt);
  const __m512 s = _mm512_maskz_loadu_ps(mask, a.w_scale + n0);
  const __m512 b = a.bias ? _mm512_maskz_loadu_ps(mask, a.bias + n0) : _mm512_setzero_ps();
  ws[0] = _mm512_cvtps_pd(_mm512_castps512_ps256(s));
  ws[1] = _mm512_cvtps_pd(_mm512_extractf32x8_ps(s, 1));
  bd[0] = _mm512_cvtps_pd(_mm512_castps512_ps256(b));
  bd[1] = _mm512_cvtps_pd(_mm512_extractf32x8_ps(b, 1));
}

// Row m's outputs n0 .. n0 + cnt - 1 (cnt <= 16) from one vector of u8-offset sums: the
// offset taken back with the column sums wsum, then dynamic_rescale's float64 math (weight
// scales ws and bias bd as doubles, lo and hi halves), the activation and the store.
inline void store16(const Int8DynamicLinearArgs& a, __m512i acc_u8, const int32_t* wsum, __m512d xs,
                    const __m512d (&ws)[2], const __m512d (&bd)[2], int64_t m, int64_t n0, int64_t cnt) {
  const int64_t es = element_size(a.x_dtype);
  const __m512i acc = _mm512_sub_epi32(acc_u8, _mm512_slli_epi32(_mm512_loadu_si512(wsum), 7));
  const __m512d lo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(acc));
  const __m512d hi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(acc, 1));
  const __m512d ylo = _mm512_add_pd(_mm512_mul_pd(_mm512_mul_pd(lo, xs), ws[0]), bd[0]);
  const __m512d yhi = _mm512_add_pd(_mm512_mul_pd(_mm512_mul_pd(hi, xs), ws[1]), bd[1]);
  const __m512 y = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(ylo)), _mm512_cvtpd_ps(yhi), 1);
  store_x16(static_cast<char*>(a.out) + (m * a.out_row_stride + n0) * es, a.x_dtype, vactivation<V16>(y, a.act),
            cnt);
}

void store_tile(const Int8DynamicLinearArgs& a, const QuantX& qx, const __m512i (&c)[kMR][2], int64_t m0, int64_t n0,
                int64_t ncnt, const int32_t* wsum, const double* wsd, const double* bd) {
  for (int i = 0; i < kMR && m0 + i < a.M; ++i) {
    const __m512d xs = _mm512_set1_pd(static_cast<double>(qx.scale[m0 + i]));
    for (int h = 0; h < 2 && 16 * h < ncnt; ++h) {
      const __m512d ws[2] = {_mm512_loadu_pd(wsd + 16 * h), _mm512_loadu_pd(wsd + 16 * h + 8)};
      const __m512d b[2] = {_mm512_loadu_pd(bd + 16 * h), _mm512_loadu_pd(bd + 16 * h + 8)};
      store16(a, c[i][h], wsum + 16 * h, xs, ws, b, m0 + i, n0 + 16 * h, imin(16, ncnt - 16 * h));
    }
  }
}

// Blocking as in int8_dynamic_avx2.cpp: per thread and block of kNC columns the weights
// are packed once for all of K; for each block of kMC rows and K slice of kKC quads, the
// x slice of one row panel (12 KB, L1) meets every panel pair of the block (128 KB, L2),
// partial sums waiting in a kMC x kNC int32 buffer between slices.
constexpr int64_t kNC = 128;
constexpr int64_t kMC = 16 * kMR;
constexpr int64_t kKC = 256;  // quads: 1024 values of K

// One worker of parallel_dynamic: its buffers, then column blocks of kNC while any are left.
template <class Take>
void gemm_worker(const Int8DynamicLinearArgs& a, const QuantX& qx, const Take& take, int64_t blocks) {
  const int64_t kq = qx.kpad / 4;
  AlignedBuffer bbuf(static_cast<size_t>(kNC * qx.kpad));
  AlignedBuffer cbuf(static_cast<size_t>(kMC * kNC) * sizeof(int32_t));
  int8_t* bp = bbuf.as<int8_t>();
  int32_t* cp = cbuf.as<int32_t>();
  alignas(64) int32_t packed_wsum[kNC];
  alignas(64) double wsd[kNC], bd[kNC];
  const int64_t rows = round_up(a.M, kMR);
  for (int64_t blk; (blk = take()) < blocks;) {
    const int64_t nb = blk * kNC;
    const int64_t nb_end = imin(a.N, nb + kNC);
    const int64_t pairs = (nb_end - nb + kNR - 1) / kNR;  // of 16-column panels
    auto panel = [&](int64_t j) -> const int8_t* { return bp + j * qx.kpad * 16; };
    for (int64_t j = 0; j < 2 * pairs; ++j)
      pack_panel(a, qx.kpad, nb + 16 * j, nb_end, bp + j * qx.kpad * 16, packed_wsum + 16 * j);
    column_doubles(a, nb, nb_end - nb, kNC, wsd, bd);
    for (int64_t m0 = 0; m0 < rows; m0 += kMC) {
      const int64_t m1 = imin(rows, m0 + kMC);
      for (int64_t q0 = 0; q0 < kq; q0 += kKC) {
        const int64_t q1 = imin(kq, q0 + kKC);
        for (int64_t mr = m0; mr < m1; mr += kMR) {
          for (int64_t j = 0; j < pairs; ++j) {
            __m512i c[kMR][2];
            int32_t* saved = cp + ((mr - m0) * kNC + j * kNR);
            for (int i = 0; i < kMR; ++i)
              for (int h = 0; h < 2; ++h)
                c[i][h] = q0 == 0 ? _mm512_setzero_si512() : _mm512_loadu_si512(saved + i * kNC + 16 * h);
            micro_kernel(qx.q + mr * qx.kpad + 4 * q0, qx.kpad, panel(2 * j) + q0 * 64, panel(2 * j + 1) + q0 * 64,
                         q1 - q0, c);
            if (q1 == kq) {
              const int64_t p0 = nb + j * kNR;
              store_tile(a, qx, c, mr, p0, imin(kNR, nb_end - p0), packed_wsum + j * kNR, wsd + j * kNR,
                         bd + j * kNR);
            } else {
              for (int i = 0; i < kMR; ++i)
                for (int h = 0; h < 2; ++h) _mm512_storeu_si512(saved + i * kNC + 16 * h, c[i][h]);
            }
          }
        }
      }
    }
  }
}

// ----------------------------------------------------------------------------- held panels

// The weight held in the w8a8-cpu layout (int8_linear.h): panel p (columns 16p .. 16p + 15)
// at base + p * bytes, its quads as load_quad reads them; colsum [Np] the column sums.
struct HeldPanels {
  const int8_t* base = nullptr;
  int64_t bytes = 0;   // per panel: Kp * 16
  int64_t panels = 0;  // Np / 16
  const int32_t* colsum = nullptr;
};

// Rows [m0, m0 + MB) of x against panels [p0, p0 + np) (np <= NP) of the held layout: NP
// panel streams at once (at M = 1 four contiguous streams, as the W8A16 layout reads), every
// accumulator a vertical 16-column sum: no horizontal reductions, no weight sums per call.
template <bool kPairs, int NP, int MB>
void held_dot_block(const Int8DynamicLinearArgs& a, const QuantX& qx, const HeldPanels& h, int64_t p0, int np,
                    int64_t m0) {
  __m512i acc[MB][NP];
  const int8_t* w[NP];
  for (int j = 0; j < NP; ++j) {
    w[j] = h.base + (p0 + imin(j, np - 1)) * h.bytes;
    for (int m = 0; m < MB; ++m) acc[m][j] = _mm512_setzero_si512();
  }
  const uint8_t* x = qx.q + m0 * qx.kpad;
  const int64_t kq = h.bytes / 64;
#pragma GCC unroll 2
  for (int64_t q = 0; q < kq; ++q) {
    __m512i v[NP];
    for (int j = 0; j < NP; ++j) v[j] = load_quad<kPairs>(w[j] + q * 64);
    for (int m = 0; m < MB; ++m) {
      const __m512i xv = x_quad(x + m * qx.kpad, q);
      for (int j = 0; j < NP; ++j) acc[m][j] = dpbusd(acc[m][j], xv, v[j]);
    }
  }
  for (int j = 0; j < np; ++j) {
    const int64_t n0 = (p0 + j) * 16, cnt = imin(16, a.N - n0);
    __m512d ws[2], bd[2];
    column_vectors(a, n0, cnt, ws, bd);
    for (int m = 0; m < MB; ++m)
      store16(a, acc[m][j], h.colsum + n0, _mm512_set1_pd(static_cast<double>(qx.scale[m0 + m])), ws, bd, m0 + m, n0,
              cnt);
  }
}

// Up to kHeldDotMaxRows rows per block against kHeldDotPanels panels: MB * NP accumulators,
// NP weight vectors, the broadcast x and vpermw's index: 30 of 32 zmm.
constexpr int kHeldDotMaxRows = 6;
constexpr int kHeldDotPanels = 4;

template <bool kPairs, int MB>
void held_dot_rows(const Int8DynamicLinearArgs& a, const QuantX& qx, const HeldPanels& h, int64_t p0, int np,
                   int64_t m0) {
  constexpr int NP = kHeldDotPanels;
  for (int j = 0; j < np; j += NP) held_dot_block<kPairs, NP, MB>(a, qx, h, p0 + j, imin(NP, np - j), m0);
}

// The held dot form, at every M: per group of 12 panels (768 KB at K = 4096, held in L2),
// every block of at most kHeldDotMaxRows rows (balanced) streams the group, so the weights
// come from memory once per call. It outran the GEMM on the same panels (12 x 32 tiles, K in
// slices) from M = 24 to 2048, 1 and 2 threads, both shapes of the grid (Zen 4).
constexpr int64_t kHeldDotGroup = 12;  // panels: a multiple of kHeldDotPanels

template <bool kPairs>
void held_dot(const Int8DynamicLinearArgs& a, const QuantX& qx, const HeldPanels& h, int threads) {
  const int64_t blocks = (a.M + kHeldDotMaxRows - 1) / kHeldDotMaxRows;
  const int64_t grain = a.M <= 4 ? 4 : kHeldDotGroup;
  parallel_columns(h.panels, threads, grain, [&](int64_t pb, int64_t pe) {
    for (int64_t p0 = pb; p0 < pe; p0 += grain) {
      const int np = static_cast<int>(imin(grain, pe - p0));
      for (int64_t i = 0; i < blocks; ++i) {
        const int64_t m0 = a.M * i / blocks, mb = a.M * (i + 1) / blocks - m0;
        switch (mb) {
          case 1: held_dot_rows<kPairs, 1>(a, qx, h, p0, np, m0); break;
          case 2: held_dot_rows<kPairs, 2>(a, qx, h, p0, np, m0); break;
          case 3: held_dot_rows<kPairs, 3>(a, qx, h, p0, np, m0); break;
          case 4: held_dot_rows<kPairs, 4>(a, qx, h, p0, np, m0); break;
          case 5: held_dot_rows<kPairs, 5>(a, qx, h, p0, np, m0); break;
          default: held_dot_rows<kPairs, kHeldDotMaxRows>(a, qx, h, p0, np, m0); break;
        }
      }
    }
  });
}

// x quantised per row (rows rounded up to the GEMM tile where `gemm` runs), then run(qx, threads).
template <class Run>
void with_quantised_x(const Int8DynamicLinearArgs& a, bool gemm, const Run& run) {
  QuantX qx{};
  qx.kpad = round_up(a.K, 64);
  const int64_t rows = gemm ? round_up(a.M, kMR) : a.M;
  AlignedBuffer qbuf(static_cast<size_t>(rows * qx.kpad));
  AlignedBuffer sbuf(static_cast<size_t>(a.M) * sizeof(float));
  qx.q = qbuf.as<uint8_t>();
  qx.scale = sbuf.as<float>();
  const int threads = threads_for(a.M, a.N, a.K, a.num_threads);
  quantize_x(a, qx, rows, threads);
  run(qx, threads);
}

}  // namespace

void int8_dynamic_linear_avx512(const Int8DynamicLinearArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  with_quantised_x(a, a.M >= kGemmMinM, [&](const QuantX& qx, int threads) {
    if (a.M < kGemmMinM) return run_dot(a, qx, threads);
    const int64_t blocks = (a.N + kNC - 1) / kNC;
    parallel_dynamic(blocks, threads, [&](auto take) { gemm_worker(a, qx, take, blocks); });
  });
}

void int8_dynamic_linear_panels_avx512(const Int8DynamicLinearArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  const HeldPanels h{a.panels, round_up(a.K, kW8A8PanelK) * kW8A8PanelN, (a.N + kW8A8PanelN - 1) / kW8A8PanelN,
                     a.colsum};
  with_quantised_x(a, false, [&](const QuantX& qx, int threads) {
    if (a.act_bits == 8) held_dot<true>(a, qx, h, threads);  // unit pairs
    else held_dot<false>(a, qx, h, threads);                 // unit quads
  });
}

}  // namespace bigperf::cpu
