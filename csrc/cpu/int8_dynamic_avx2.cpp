// AVX2 path of the dynamic int8 linear (W8A8): x quantised per row here, int8 x int8
// products summed exactly in int32, rescaled in float64 as the reference does.
//
// Exactness without VNNI: vpmaddubsw (u8 x s8) saturates its int16 pair sums for the
// full int8 range, so both operands are sign-extended to int16 and multiplied with
// vpmaddwd (int16 pairs -> int32, exact): 16 multiply-adds per instruction, and it
// issues twice per cycle on Zen 3 (measured), twice the rate of fp32 FMAs.
//   * Small M: dot-product form over the raw int8 weights (widened in registers), one
//     pass over the weights, which is what costs at decode sizes.
//   * Larger M: a blocked GEMM (see gemm_worker). x is quantised and packed once per
//     call into panels of kMR rows ([K/2][kMR] int16 pairs); each thread packs its
//     weight columns into int16 pair panels ([K/2][16], through 8x8 int32 transposes).
//     A kMR x 16 register tile of int32 sums; the epilogue reads the last K slice's
//     sums straight from registers.
//   * act_bits = 7 (codes in [-63, 63], opt-in): the GEMM stores x as u8 = q + 64, in
//     [1, 127], in quads of 4 consecutive k, and multiplies them with int8 weight quads
//     by vpmaddubsw (u8 x s8 -> int16 pair sums) + vpmaddwd against ones: a pair sum is
//     at most 2 * 127 * 128 = 32512 in magnitude, so nothing saturates and the int32 sums
//     stay exact for any weight, -128 included. Twice the k per broadcast and half the
//     weight bytes of the int16 form: measured 1.27x its speed at M = 128, K = 4096,
//     N = 14336 and 1.31x at M = 2048, K = N = 4096. The offset is taken back per
//     output, acc - 64 * colsum(w), with the column sums from packing. For 8-bit codes
//     (q + 128 up to 254) the pair sums could saturate: the int16 form stays.
//   * Held panels (int8_dynamic_linear_panels_avx2): a W8A8 layer on this path holds its
//     weight in the GEMM's panel order (the w8a8-cpu layout: int8 pairs, widened in
//     registers, or the quads above), so every M runs the GEMM's tiles with no packing;
//     one row panel (M <= 6) reads up to four column panels per pass over whole K.
#include "cpu/int8_vec_avx2.h"
#include "cpu/thread_pool.h"
#include "cpu/transpose_avx2.h"

namespace bigperf::cpu {
namespace {

constexpr int64_t kGemmMinM = 8;  // from this many rows of x the GEMM beats the dot form
constexpr int kMR = 6;            // GEMM tile: 6 rows x 16 columns = 12 accumulators
constexpr int64_t kNR = 16;
static_assert(kNR == kW8A8PanelN, "the held w8a8-cpu panels are one GEMM tile wide");
constexpr int64_t kCols = 64;     // dot form: output columns per epilogue group

// ----------------------------------------------------------------------------- x

constexpr int kU8Offset = 64;       // act_bits = 7 GEMM: x stored as q + 64

struct QuantX {
  int64_t kpad;      // K rounded up to 16 (dot form, int16 GEMM) or 32 (u8 GEMM)
  int16_t* q;        // dot form: [M][kpad]; GEMM: panels [M / kMR][kpad / per][kMR] int32
                     // units of per = 2 int16 (act_bits 8) or 4 u8 = q + 64 (act_bits 7)
  float* scale;      // [M]
  int qmax;          // act_qmax(act_bits)
  bool quads;        // GEMM panels of u8 quads
  int64_t mr = kMR;  // GEMM: rows of x per panel (slots past them are zero), M spread evenly
                     // over ceil(M / kMR) panels: 7 rows run as 4 + 3, not 6 + 1
};

// Quantises every row of x; with panels, scatters each row's int16 pairs (or u8 quads)
// into its panel.
void quantize_x(const Int8DynamicLinearArgs& a, const QuantX& qx, bool panels, int threads) {
  const int64_t units_per_row = qx.kpad / (qx.quads ? 4 : 2);
  const int64_t units = panels ? (a.M + kMR - 1) / kMR : a.M;
  parallel_for(units, threads, 1, [&](int64_t u0, int64_t u1) {
    AlignedBuffer tmp(static_cast<size_t>(qx.kpad) * (sizeof(float) + sizeof(int16_t) + 1));
    float* row = tmp.as<float>();
    int16_t* q16 = reinterpret_cast<int16_t*>(row + qx.kpad);
    uint8_t* q8 = reinterpret_cast<uint8_t*>(q16 + qx.kpad);
    for (int64_t u = u0; u < u1; ++u) {
      if (!panels) {
        qx.scale[u] = quantize_x_row(a.x, a.x_row_stride, a.x_dtype, u, a.K, qx.kpad, row, qx.q + u * qx.kpad,
                                     qx.qmax, given_absmax(a, u));
        continue;
      }
      int32_t* panel = reinterpret_cast<int32_t*>(qx.q) + u * units_per_row * kMR;
      for (int i = 0; i < kMR; ++i) {
        const int64_t m = i < qx.mr ? u * qx.mr + i : a.M;  // a.M: a padding slot
        if (m < a.M) {
          qx.scale[m] = quantize_x_row(a.x, a.x_row_stride, a.x_dtype, m, a.K, qx.kpad, row, q16, qx.qmax,
                                       given_absmax(a, m));
        } else {
          std::memset(q16, 0, qx.kpad * sizeof(int16_t));  // padding rows: zero products
        }
        const int32_t* src = reinterpret_cast<const int32_t*>(q16);
        if (qx.quads) {
          // u8 = q + 64 in [1, 127]; k past K meets zero weights, so its 64 adds nothing.
          // Padding rows stay 0 (their sums are never stored either way).
          const __m256i off = _mm256_set1_epi16(m < a.M ? kU8Offset : 0);
          for (int64_t k = 0; k < qx.kpad; k += 32) {
            const __m256i lo = _mm256_add_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q16 + k)), off);
            const __m256i hi = _mm256_add_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q16 + k + 16)), off);
            // packus interleaves 128-bit lanes; the permute puts k back in order.
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(q8 + k),
                                _mm256_permute4x64_epi64(_mm256_packus_epi16(lo, hi), _MM_SHUFFLE(3, 1, 2, 0)));
          }
          src = reinterpret_cast<const int32_t*>(q8);
        }
        for (int64_t kp = 0; kp < units_per_row; ++kp) panel[kp * kMR + i] = src[kp];
      }
    }
  });
}

// ----------------------------------------------------------------------------- dot form

// acc[m][r] += dot(w[r][0, 16 nb), x[m]) in int32; w int8 widened in registers. pf != 0:
// prefetch the same offset pf bytes ahead (the next tile's rows: see int8_linear_avx2.cpp).
template <int R, int MB>
inline void dot_rows(const int8_t* const* w, int64_t nb, const int16_t* x, int64_t xs, __m256i (&out)[MB][R],
                     int64_t pf) {
  __m256i acc[MB][R];  // local: see run_units
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = out[m][r];
  for (int64_t b = 0; b < nb; ++b) {
    if (pf && (b & 3) == 0) {
      for (int r = 0; r < R; ++r) prefetch_l1(reinterpret_cast<const char*>(w[r] + 16 * b + pf));
    }
    __m256i wv[R];
    for (int r = 0; r < R; ++r)
      wv[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[r] + 16 * b)));
    for (int m = 0; m < MB; ++m) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + m * xs + 16 * b));
      for (int r = 0; r < R; ++r) acc[m][r] = _mm256_add_epi32(acc[m][r], _mm256_madd_epi16(wv[r], xv));
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) out[m][r] = acc[m][r];
}

template <int R, int MB>
void dot_columns(const Int8DynamicLinearArgs& a, const QuantX& qx, int64_t n_begin, int64_t n_end) {
  alignas(32) float sums[MB][kCols + R];
  const int64_t k16 = a.K / 16;
  const bool tail = a.K % 16 != 0;
  for (int64_t c0 = n_begin; c0 < n_end; c0 += kCols) {
    const int64_t cnt = imin(kCols, n_end - c0);
    for (int64_t t0 = 0; t0 < cnt; t0 += R) {
      const int8_t* w[R];
      int64_t n[R];
      for (int r = 0; r < R; ++r) {
        n[r] = c0 + imin(t0 + r, cnt - 1);  // past the end: repeat the last row, unused
        w[r] = a.qw + n[r] * a.qw_row_stride;
      }
      __m256i acc[MB][R];
      for (int m = 0; m < MB; ++m)
        for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_si256();
      dot_rows<R, MB>(w, k16, qx.q, qx.kpad, acc, R * a.qw_row_stride);
      if (tail) {
        alignas(16) int8_t tb[R][16] = {};
        const int8_t* wt[R];
        for (int r = 0; r < R; ++r) {
          std::memcpy(tb[r], w[r] + k16 * 16, a.K - k16 * 16);
          wt[r] = tb[r];
        }
        dot_rows<R, MB>(wt, 1, qx.q + k16 * 16, qx.kpad, acc, 0);
      }
      for (int m = 0; m < MB; ++m)
        for (int r = 0; r < R; ++r)
          sums[m][t0 + r] = dynamic_rescale(hsum_epi32(acc[m][r]), qx.scale[m], a.w_scale[n[r]], a.bias, n[r]);
    }
    epilogue_rows<V8>(EpilogueArgs{a.out, a.out_row_stride, a.x_dtype, a.act}, sums[0], kCols + R, 0, MB, c0, cnt);
  }
}

void run_dot(const Int8DynamicLinearArgs& a, const QuantX& qx, int threads) {
  auto body = [&](auto fn) {
    parallel_columns(a.N, threads, kCols, [&](int64_t nb, int64_t ne) { fn(a, qx, nb, ne); });
  };
  switch (a.M) {  // kGemmMinM - 1 rows at most
    case 1: body(dot_columns<4, 1>); break;
    case 2: body(dot_columns<4, 2>); break;
    case 3: body(dot_columns<3, 3>); break;
    case 4: body(dot_columns<3, 4>); break;
    case 5: body(dot_columns<2, 5>); break;
    case 6: body(dot_columns<2, 6>); break;
    default: body(dot_columns<1, 7>); break;
  }
}

// The dot form at any M: rows in blocks of at most kGemmMinM - 1 (one block below the GEMM's
// threshold), each block one pass over the raw weights. No packing: where the weights stream from memory and M is a few blocks,
// this can beat the GEMM, which packs (widens) every weight column block per call. Which
// wins is measured per shape by the dispatcher (cpu:dot against cpu).
void run_dot_blocks(const Int8DynamicLinearArgs& a, const QuantX& qx, int threads) {
  const int64_t es = element_size(a.x_dtype);
  const int64_t blocks = (a.M + kGemmMinM - 2) / (kGemmMinM - 1);
  for (int64_t b = 0, m0 = 0; b < blocks; ++b) {
    const int64_t rows = (a.M - m0) / (blocks - b);  // balanced, each at most kGemmMinM - 1
    Int8DynamicLinearArgs part = a;
    part.M = rows;
    part.out = static_cast<char*>(a.out) + m0 * a.out_row_stride * es;
    QuantX q = qx;
    q.q = qx.q + m0 * qx.kpad;
    q.scale = qx.scale + m0;
    run_dot(part, q, threads);
    m0 += rows;
  }
}

// ----------------------------------------------------------------------------- GEMM

// The 8 weight rows (output columns n0 + 8 * half ..) one half of a 16-column panel packs,
// read in blocks of kBytes codes: rows at or past n_end read zeros, and each row's last
// partial block comes from a zero-padded copy, so nothing past a row is read.
template <int kBytes>
struct HalfPanelRows {
  const int8_t* rows[8];
  alignas(32) int8_t tails[8][kBytes];
  int64_t full;  // whole blocks in a row

  HalfPanelRows(const Int8DynamicLinearArgs& a, int64_t n0, int64_t n_end, int half) : full(a.K / kBytes) {
    for (int j = 0; j < 8; ++j) {
      const int64_t n = n0 + half * 8 + j;
      rows[j] = n < n_end ? a.qw + n * a.qw_row_stride : nullptr;
      std::memset(tails[j], 0, kBytes);
      if (rows[j] && a.K > full * kBytes) std::memcpy(tails[j], rows[j] + full * kBytes, a.K - full * kBytes);
    }
  }

  // Block b of row j.
  const int8_t* block(int j, int64_t b) const {
    alignas(32) static const int8_t zeros[kBytes] = {};
    return !rows[j] ? zeros : (b < full ? rows[j] + kBytes * b : tails[j]);
  }
};

// act_bits = 8: int16 pairs, vpmaddwd. Units of 2 k.
struct Pairs {
  static constexpr int64_t kPer = 2;
  static constexpr bool kHeld = false;

  // Weight columns [n0, n0 + 16) as int16 pairs [kpad / 2][16]; columns at or past
  // n_end, and K past the row, are zero. No column sums (no offset to take back).
  static void pack(const Int8DynamicLinearArgs& a, int64_t kpad, int64_t n0, int64_t n_end, int32_t* dst,
                   int32_t* /*colsum*/) {
    for (int half = 0; half < 2; ++half) {
      const HalfPanelRows<16> src(a, n0, n_end, half);
      for (int64_t b = 0; b < kpad / 16; ++b) {
        __m256i r[8];
        for (int j = 0; j < 8; ++j)
          r[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src.block(j, b))));
        transpose8(r);  // r[i] = pair 8b + i of the 8 columns
        for (int i = 0; i < 8; ++i)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (8 * b + i) * kNR + 8 * half), r[i]);
      }
    }
  }

  // Bytes of one unit of one column in B (an int16 pair in an int32).
  static constexpr int64_t kUnitBytes = 4;

  // c[m][h] += x pair (m) * the unit row's weight pairs of columns 8h .. 8h + 7.
  template <int MR>
  static void step(const int32_t* x_unit, const char* w_unit, __m256i (&c)[MR][2]) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w_unit));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w_unit + 32));
    for (int m = 0; m < MR; ++m) {
      const __m256i av = _mm256_set1_epi32(x_unit[m]);
      c[m][0] = _mm256_add_epi32(c[m][0], _mm256_madd_epi16(av, b0));
      c[m][1] = _mm256_add_epi32(c[m][1], _mm256_madd_epi16(av, b1));
    }
  }
};

// The held kernels read the weights once per call where M is small: a software prefetch this
// many bytes ahead in the panel keeps the stream from memory going.
// 2048 against 512-4096 measured no clear difference beyond the machine's noise (M = 1,
// K = 4096, N = 14336, Zen 3).
constexpr int64_t kHeldPrefetch = 2048;

// One prefetch per 64-byte line of a held panel as unit row u (row_bytes: 32 or 64) streams.
template <int64_t kRowBytes>
inline void prefetch_held(const char* unit_row, int64_t u) {
  if (kRowBytes == 64 || (u & 1) == 0) prefetch_l1(unit_row + kHeldPrefetch);
}

// act_bits = 8 on the held w8a8-cpu layout: int8 pairs [kp][16 columns][2], widened to the
// int16 pairs of Pairs in registers (two vpmovsxbw per pair of k), so no per-call packing.
struct HeldPairs {
  static constexpr int64_t kPer = 2;
  static constexpr bool kHeld = true;
  static constexpr int64_t kUnitBytes = 2;

  // c[m][h] += x pair (m) * the unit row's weight pairs of columns 8h .. 8h + 7.
  template <int MR>
  static void step(const int32_t* x_unit, const char* w_unit, __m256i (&c)[MR][2]) {
    const __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w_unit)));
    const __m256i b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w_unit + 16)));
    for (int m = 0; m < MR; ++m) {
      const __m256i av = _mm256_set1_epi32(x_unit[m]);
      c[m][0] = _mm256_add_epi32(c[m][0], _mm256_madd_epi16(av, b0));
      c[m][1] = _mm256_add_epi32(c[m][1], _mm256_madd_epi16(av, b1));
    }
  }
};

// vpmaddubsw with the weight vector read from memory: u8 x (broadcast quad of x) times
// s8 weights -> int16 pair sums. With both weight vectors in registers the Quads kernel
// needs 17 ymm (12 accumulators, 2 weights, ones, the broadcast, a product) and GCC
// spills an accumulator (a load and a store per iteration, seen with g++ -S). As memory
// operands (L1 hits after the first row) it fits in 16, and ran faster than taking the ones
// from memory instead: 87 vs 84 GMAC/s per core at M = 128, K = 4096, N = 14336.
inline __m256i maddubs_mem(__m256i x_u8, const int32_t* w) {
#if defined(__GNUC__)
  __m256i t;
  asm("vpmaddubsw %2, %1, %0" : "=x"(t) : "x"(x_u8), "m"(*reinterpret_cast<const __m256i*>(w)));
  return t;
#else
  return _mm256_maddubs_epi16(x_u8, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
#endif
}

// act_bits = 7: u8 x quads (q + 64) times int8 weight quads, vpmaddubsw + vpmaddwd.
// Units of 4 k.
struct Quads {
  static constexpr int64_t kPer = 4;
  static constexpr bool kHeld = false;

  // Weight columns [n0, n0 + 16) as int8 quads [kpad / 4][16] (int32 each), zero at or
  // past n_end and past K (kpad % 32 == 0); colsum[j] = sum over K of column n0 + j.
  static void pack(const Int8DynamicLinearArgs& a, int64_t kpad, int64_t n0, int64_t n_end, int32_t* dst,
                   int32_t* colsum) {
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (int half = 0; half < 2; ++half) {
      const HalfPanelRows<32> src(a, n0, n_end, half);
      __m256i sum = _mm256_setzero_si256();
      for (int64_t b = 0; b < kpad / 32; ++b) {
        __m256i r[8];
        for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src.block(j, b)));
        transpose8(r);  // r[i] = quad 8b + i of the 8 columns
        // Column sums: int16 pair sums (|.| <= 256) of 8 quads stay within 2^11, then int32.
        __m256i s16 = _mm256_setzero_si256();
        for (int i = 0; i < 8; ++i) {
          s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(ones8, r[i]));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (8 * b + i) * kNR + 8 * half), r[i]);
        }
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(s16, ones16));
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(colsum + 8 * half), sum);
    }
  }

  static constexpr int64_t kUnitBytes = 4;

  // c[m][h] += x quad (m) . the unit row's weight quads of columns 8h .. 8h + 7, the x
  // quads offset by 64 (taken back in store_tile). The same int8 quads whether packed per
  // call or held (w8a8-cpu layout, act_bits 7). With 6 rows: 12 accumulators, ones, the
  // broadcast and two products, 16 ymm (see maddubs_mem).
  template <int MR>
  static void step(const int32_t* x_unit, const char* w_unit, __m256i (&c)[MR][2]) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int32_t* bq = reinterpret_cast<const int32_t*>(w_unit);
    for (int m = 0; m < MR; ++m) {
      const __m256i av = _mm256_set1_epi32(x_unit[m]);
      c[m][0] = _mm256_add_epi32(c[m][0], _mm256_madd_epi16(maddubs_mem(av, bq), ones));
      c[m][1] = _mm256_add_epi32(c[m][1], _mm256_madd_epi16(maddubs_mem(av, bq + 8), ones));
    }
  }
};

// act_bits = 7 on the held w8a8-cpu layout: the same quads, read in place.
struct HeldQuads : Quads {
  static constexpr bool kHeld = true;
};

// Decode sizes on held panels (one row panel, whole K): P column panels at once, so P
// streams from memory are in flight instead of one (a single stream ran ~10 % below the dot
// form's four at M = 1, K = 4096, N = 14336), c[p] the tile of panel p. Form: HeldPairs or
// HeldQuads.
template <class Form, int MR, int P>
void held_panels(const int32_t* ap, const char* bp, int64_t panel_bytes, int64_t units, __m256i (*out)[kMR][2]) {
  constexpr int64_t kRowBytes = kNR * Form::kUnitBytes;  // one unit row of a panel: 32 or 64 bytes
  __m256i c[P][MR][2];
  for (int p = 0; p < P; ++p)
    for (int m = 0; m < MR; ++m) c[p][m][0] = c[p][m][1] = _mm256_setzero_si256();
  for (int64_t u = 0; u < units; ++u) {
    for (int p = 0; p < P; ++p) {
      const char* w = bp + p * panel_bytes + u * kRowBytes;
      prefetch_held<kRowBytes>(w, u);
      Form::template step<MR>(ap + u * kMR, w, c[p]);
    }
  }
  for (int p = 0; p < P; ++p)
    for (int m = 0; m < MR; ++m) out[p][m][0] = c[p][m][0], out[p][m][1] = c[p][m][1];
}

// Column panels held_panels takes at once for `rows` rows: as many as 12 accumulators allow.
constexpr int64_t kMaxHeldPanels = 4;
inline int64_t held_panels_at_once(int64_t rows) { return rows == 1 ? 4 : rows == 2 ? 3 : rows == 3 ? 2 : 1; }

template <class Form>
void held_panels_for(int64_t rows, int64_t panels, const int32_t* ap, const char* bp, int64_t panel_bytes,
                     int64_t units, __m256i (*out)[kMR][2]) {
  switch (rows * 8 + panels) {
    case 1 * 8 + 4: return held_panels<Form, 1, 4>(ap, bp, panel_bytes, units, out);
    case 1 * 8 + 3: return held_panels<Form, 1, 3>(ap, bp, panel_bytes, units, out);
    case 1 * 8 + 2: return held_panels<Form, 1, 2>(ap, bp, panel_bytes, units, out);
    case 1 * 8 + 1: return held_panels<Form, 1, 1>(ap, bp, panel_bytes, units, out);
    case 2 * 8 + 3: return held_panels<Form, 2, 3>(ap, bp, panel_bytes, units, out);
    case 2 * 8 + 2: return held_panels<Form, 2, 2>(ap, bp, panel_bytes, units, out);
    case 2 * 8 + 1: return held_panels<Form, 2, 1>(ap, bp, panel_bytes, units, out);
    case 3 * 8 + 2: return held_panels<Form, 3, 2>(ap, bp, panel_bytes, units, out);
    case 3 * 8 + 1: return held_panels<Form, 3, 1>(ap, bp, panel_bytes, units, out);
    case 4 * 8 + 1: return held_panels<Form, 4, 1>(ap, bp, panel_bytes, units, out);
    case 5 * 8 + 1: return held_panels<Form, 5, 1>(ap, bp, panel_bytes, units, out);
    default: return held_panels<Form, kMR, 1>(ap, bp, panel_bytes, units, out);
  }
}

// io[m][h] += the form's steps over `units` unit rows (pairs or quads of k) of one panel, for
// the first MR rows of an x panel; a held form prefetches ahead in the panel as it streams.
template <class Form, int MR>
void run_units(const int32_t* ap, const char* bp, int64_t units, __m256i (&io)[kMR][2]) {
  constexpr int64_t kRowBytes = kNR * Form::kUnitBytes;
  // Local accumulators: through the reference GCC stores them back every iteration.
  __m256i c[MR][2];
  for (int m = 0; m < MR; ++m) c[m][0] = io[m][0], c[m][1] = io[m][1];
  for (int64_t u = 0; u < units; ++u) {
    if constexpr (Form::kHeld) prefetch_held<kRowBytes>(bp + u * kRowBytes, u);
    Form::template step<MR>(ap + u * kMR, bp + u * kRowBytes, c);
  }
  for (int m = 0; m < MR; ++m) io[m][0] = c[m][0], io[m][1] = c[m][1];
}

// Form's tile for the first `rows` (1 .. kMR) rows of an x panel: the last panel of M rows
// runs only the rows it has.
template <class Form>
inline void tile_kernel(int64_t rows, const int32_t* ap, const char* bp, int64_t units, __m256i (&c)[kMR][2]) {
  switch (rows) {
    case 1: return run_units<Form, 1>(ap, bp, units, c);
    case 2: return run_units<Form, 2>(ap, bp, units, c);
    case 3: return run_units<Form, 3>(ap, bp, units, c);
    case 4: return run_units<Form, 4>(ap, bp, units, c);
    case 5: return run_units<Form, 5>(ap, bp, units, c);
    default: return run_units<Form, kMR>(ap, bp, units, c);
  }
}

// Rescale (float64, the reference's order), activation and store of one tile.
// wsd/bd: this panel's weight scales and biases as doubles, zero past the last column;
// colsum: its weight column sums when x was offset by kU8Offset (else null).
void store_tile(const Int8DynamicLinearArgs& a, const QuantX& qx, const __m256i (&c)[kMR][2], int64_t m0,
                int64_t rows, int64_t n0, int64_t ncnt, const double* wsd, const double* bd, const int32_t* colsum) {
  const int64_t es = element_size(a.x_dtype);
  for (int i = 0; i < rows; ++i) {
    const __m256d xs = _mm256_set1_pd(static_cast<double>(qx.scale[m0 + i]));
    char* o = static_cast<char*>(a.out) + ((m0 + i) * a.out_row_stride + n0) * es;
    for (int h = 0; h < 2 && 8 * h < ncnt; ++h) {
      __m256i acc = c[i][h];
      if (colsum) {  // exact: sum (q + 64) w - 64 sum w = sum q w
        const __m256i cs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(colsum + 8 * h));
        acc = _mm256_sub_epi32(acc, _mm256_slli_epi32(cs, 6));
      }
      const __m256d lo = _mm256_cvtepi32_pd(_mm256_castsi256_si128(acc));
      const __m256d hi = _mm256_cvtepi32_pd(_mm256_extracti128_si256(acc, 1));
      const __m256d ylo = _mm256_add_pd(_mm256_mul_pd(_mm256_mul_pd(lo, xs), _mm256_loadu_pd(wsd + 8 * h)),
                                        _mm256_loadu_pd(bd + 8 * h));
      const __m256d yhi = _mm256_add_pd(_mm256_mul_pd(_mm256_mul_pd(hi, xs), _mm256_loadu_pd(wsd + 8 * h + 4)),
                                        _mm256_loadu_pd(bd + 8 * h + 4));
      const __m256 y = vactivation<V8>(_mm256_set_m128(_mm256_cvtpd_ps(yhi), _mm256_cvtpd_ps(ylo)), a.act);
      const int64_t cnt = imin(8, ncnt - 8 * h);
      if (cnt == 8) {
        store_x8(o + 8 * h * es, a.x_dtype, y);
      } else {
        alignas(32) char ob[32];
        store_x8(ob, a.x_dtype, y);
        std::memcpy(o + 8 * h * es, ob, cnt * es);
      }
    }
  }
}

// Blocking (GotoBLAS order). Per thread and block of kNC columns, the weights are packed
// once for all of K (kNC * K * 2 bytes); then for each block of kMC rows and each K slice
// of kKC units (pairs or quads), the x slice of one row panel (6 KB, L1) meets every
// panel of the column block (128 KB, L2). Partial int32 sums wait in a kMC x kNC buffer
// (L2) between slices. Without the K slices every row panel of x was re-read from L3
// per 32 columns.
constexpr int64_t kNC = 128;
constexpr int64_t kMC = 32 * kMR;
constexpr int64_t kKC = 256;  // units: 512 (pairs) or 1024 (quads) values of K

// One worker of parallel_dynamic: its buffers, then column blocks of kNC while any are left.
// Form: Pairs (act_bits 8) or Quads (act_bits 7), the weights packed per call; or, with
// Held, HeldPairs or HeldQuads read straight from the layer's w8a8-cpu panels (a.panels).
template <class Form, bool Held, class Take>
void gemm_worker(const Int8DynamicLinearArgs& a, const QuantX& qx, const Take& take, int64_t blocks) {
  const int64_t kp2 = qx.kpad / Form::kPer;  // units of one row
  const int64_t panel_bytes = kp2 * kNR * Form::kUnitBytes;
  const bool offset = Form::kPer == 4;
  AlignedBuffer bbuf(Held ? 0 : static_cast<size_t>(kNC / kNR * panel_bytes));
  AlignedBuffer cbuf(static_cast<size_t>(kMC * kNC) * sizeof(int32_t));
  int32_t* cp = cbuf.as<int32_t>();
  const int64_t mpanels = (a.M + kMR - 1) / kMR;
  const int32_t* ap = reinterpret_cast<const int32_t*>(qx.q);
  alignas(32) double wsd[kNC], bd[kNC];
  alignas(32) int32_t packed_colsum[kNC];
  for (int64_t blk; (blk = take()) < blocks;) {
    const int64_t nb = blk * kNC;
    const int64_t nb_end = imin(a.N, nb + kNC);
    const int64_t panels = (nb_end - nb + kNR - 1) / kNR;
    const char* bp;  // the block's first panel; panel j at bp + j * panel_bytes
    const int32_t* colsum;
    if constexpr (Held) {
      bp = reinterpret_cast<const char*>(a.panels) + (nb / kNR) * panel_bytes;
      colsum = a.colsum + nb;
    } else {
      for (int64_t j = 0; j < panels; ++j)
        Form::pack(a, qx.kpad, nb + j * kNR, nb_end, bbuf.as<int32_t>() + j * panel_bytes / 4,
                   packed_colsum + j * kNR);
      bp = bbuf.as<char>();
      colsum = packed_colsum;
    }
    for (int64_t l = 0; l < kNC; ++l) {
      const bool valid = nb + l < nb_end;
      wsd[l] = valid ? static_cast<double>(a.w_scale[nb + l]) : 0.0;
      bd[l] = valid && a.bias ? static_cast<double>(a.bias[nb + l]) : 0.0;
    }
    if constexpr (Held) {
      if (mpanels == 1) {  // decode sizes: several panels per pass, whole K
        const int64_t rows = a.M;
        for (int64_t j = 0; j < panels;) {
          const int64_t np = imin(held_panels_at_once(rows), panels - j);
          __m256i c[kMaxHeldPanels][kMR][2];
          held_panels_for<Form>(rows, np, ap, bp + j * panel_bytes, panel_bytes, kp2, c);
          for (int64_t p = 0; p < np; ++p) {
            const int64_t p0 = nb + (j + p) * kNR;
            store_tile(a, qx, c[p], 0, rows, p0, imin(kNR, nb_end - p0), wsd + (j + p) * kNR, bd + (j + p) * kNR,
                       offset ? colsum + (j + p) * kNR : nullptr);
          }
          j += np;
        }
        continue;
      }
    }
    for (int64_t mp0 = 0; mp0 < mpanels; mp0 += kMC / kMR) {
      const int64_t mp1 = imin(mpanels, mp0 + kMC / kMR);
      for (int64_t k0 = 0; k0 < kp2; k0 += kKC) {
        const int64_t k1 = imin(kp2, k0 + kKC);
        auto tile = [&](int64_t mp, int64_t j) {
          const int64_t rows = imin(qx.mr, a.M - mp * qx.mr);
          __m256i c[kMR][2];
          int32_t* saved = cp + ((mp - mp0) * kMR * kNC + j * kNR);
          for (int i = 0; i < kMR; ++i)
            for (int h = 0; h < 2; ++h)
              c[i][h] = k0 == 0 ? _mm256_setzero_si256()
                                : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(saved + i * kNC + 8 * h));
          tile_kernel<Form>(rows, ap + (mp * kp2 + k0) * kMR, bp + j * panel_bytes + k0 * kNR * Form::kUnitBytes,
                            k1 - k0, c);
          if (k1 == kp2) {
            const int64_t p0 = nb + j * kNR;
            store_tile(a, qx, c, mp * qx.mr, rows, p0, imin(kNR, nb_end - p0), wsd + j * kNR, bd + j * kNR,
                       offset ? colsum + j * kNR : nullptr);
          } else {
            for (int i = 0; i < kMR; ++i)
              for (int h = 0; h < 2; ++h)
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(saved + i * kNC + 8 * h), c[i][h]);
          }
        };
        for (int64_t mp = mp0; mp < mp1; ++mp)
          for (int64_t j = 0; j < panels; ++j) tile(mp, j);
      }
    }
  }
}

// x quantised into row panels of QuantX's GEMM form (kpad: K rounded up to `k_multiple`).
struct PanelX {
  AlignedBuffer qbuf, sbuf;
  QuantX qx;
  PanelX(const Int8DynamicLinearArgs& a, int64_t k_multiple, int threads)
      : qbuf(static_cast<size_t>(round_up(a.M, kMR) * round_up(a.K, k_multiple)) * sizeof(int16_t)),
        sbuf(static_cast<size_t>(a.M) * sizeof(float)) {
    qx.qmax = act_qmax(a.act_bits);
    qx.quads = a.act_bits == 7;
    qx.kpad = round_up(a.K, k_multiple);
    qx.q = qbuf.as<int16_t>();
    qx.scale = sbuf.as<float>();
    const int64_t panels = (a.M + kMR - 1) / kMR;
    qx.mr = (a.M + panels - 1) / panels;
    quantize_x(a, qx, true, threads);
  }
};

template <class Form, bool Held>
void run_gemm(const Int8DynamicLinearArgs& a, const QuantX& qx, int threads) {
  const int64_t blocks = (a.N + kNC - 1) / kNC;
  parallel_dynamic(blocks, threads, [&](auto take) { gemm_worker<Form, Held>(a, qx, take, blocks); });
}

}  // namespace

void int8_dynamic_linear_avx2(const Int8DynamicLinearArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  const int threads = threads_for(a.M, a.N, a.K, a.num_threads);
  if (a.M >= kGemmMinM && !a.dot_form) {
    const PanelX x(a, a.act_bits == 7 ? 32 : 16, threads);
    return a.act_bits == 7 ? run_gemm<Quads, false>(a, x.qx, threads) : run_gemm<Pairs, false>(a, x.qx, threads);
  }
  QuantX qx{};
  qx.qmax = act_qmax(a.act_bits);
  qx.kpad = round_up(a.K, 16);
  AlignedBuffer qbuf(static_cast<size_t>(a.M * qx.kpad) * sizeof(int16_t));
  AlignedBuffer sbuf(static_cast<size_t>(a.M) * sizeof(float));
  qx.q = qbuf.as<int16_t>();
  qx.scale = sbuf.as<float>();
  quantize_x(a, qx, false, 1);
  run_dot_blocks(a, qx, threads);  // one block below kGemmMinM rows
}

// The held layout serves every M with the GEMM's tiles: no per-call packing, and at decode
// sizes one ordered pass over the panels.
void int8_dynamic_linear_panels_avx2(const Int8DynamicLinearArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  const int threads = threads_for(a.M, a.N, a.K, a.num_threads);
  const PanelX x(a, kW8A8PanelK, threads);
  return a.act_bits == 7 ? run_gemm<HeldQuads, true>(a, x.qx, threads) : run_gemm<HeldPairs, true>(a, x.qx, threads);
}

}  // namespace bigperf::cpu
