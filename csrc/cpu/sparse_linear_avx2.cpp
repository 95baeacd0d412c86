// AVX2 + FMA + F16C path of the sparse linear kernels (BSR and the driver in
// sparse_linear_kernel.h; the 2:4 inner loops here).
//
// 2:4 at small M is a stream of compressed weights: the kernel reads the kept values and
// the metadata once and never expands W. What remains per kept value is choosing the x
// it multiplies. AVX2 has no two-source permute; two schemes, chosen per call from
// measurements on Zen 3 (benchmarks/NOTES.md, "sparse CPU"):
//
// * "select", float values at M == 1: a vector holds one slot (first or second kept
//   value) of 8 groups; x is packed once per call transposed, X_p[j] = x[group j][position
//   p], so the x of lane j is X_{pos_j}: first positions are 0..2 and second ones 1..3,
//   three candidates each, two blends. The blends read sign bits, so the 4-bit fields of
//   the metadata are shifted to bit 31 (one variable shift, then doublings).
// * "pair", int8 values, and any values at M > 1: two weight rows share each 128-bit
//   lane: [row r: group g slots a, b | row s: group g slots a, b]. All four lanes pick from
//   the same 4 x values, so one in-lane vpermilps does the selection, its control being the
//   2-bit fields themselves (vpermilps reads bits 1:0 of each lane). Per row of x this is
//   a permute and an FMA per 8 values, as cheap as a dense kernel per 8 weights; "select"
//   needs two blends more per row of x, and int8 widening (two instructions per 8 values,
//   in stored order) suits "pair" better than the slot split "select" needs. bf16 values
//   are paired and widened together by unpacks (PairTile::step_bf16).
//
// BSR with one row of x and bf16 blocks of 16k x 16 or 16k x 32 has a tile of its own
// here (BsrPairedRowsM1); every other BSR case runs the generic kernel.
#include "cpu/vec_avx2.h"
#include "cpu/sparse_linear_kernel.h"
#include "cpu/sparse24_lanes_kernel.h"
#include "cpu/bsr_lanes_kernel.h"

namespace bigperf::cpu {
namespace {

using V = VecAvx2;

inline __m256i bcast32(const uint8_t* p) {
  int32_t w;
  std::memcpy(&w, p, 4);
  return _mm256_set1_epi32(w);
}

// ----------------------------------------------------------------------------- "select"

// Float values, 64 K elements (16 groups, 32 values, 8 metadata bytes) per step, as two
// sets of 8 groups: a[s] holds the first kept values, b[s] the second, lane j belonging
// to group order(s, j) of the step.
template <S24Values VT>
struct SelectValues {
  static constexpr int64_t kES = VT == S24Values::f32 ? 4 : 2;
  static constexpr int64_t kStepBytes = 32 * kES;

  // bf16: lane j of a 32-byte load is group j (two values) -> shift / mask, no shuffle.
  // f32 and f16: shufps separates the slots of 8 groups in the order 0,1,4,5,2,3,6,7.
  static int order(int s, int j) {
    static constexpr int kShuffled[8] = {0, 1, 4, 5, 2, 3, 6, 7};
    return 8 * s + (VT == S24Values::bf16 ? j : kShuffled[j]);
  }

  static void load(const char* p, __m256* a, __m256* b) {
    if constexpr (VT == S24Values::bf16) {
      const __m256i hi = _mm256_set1_epi32(-65536);
      for (int s = 0; s < 2; ++s) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * s));
        a[s] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        b[s] = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
      }
    } else {
      for (int s = 0; s < 2; ++s) {
        __m256 v0, v1;
        if constexpr (VT == S24Values::f32) {
          v0 = _mm256_loadu_ps(reinterpret_cast<const float*>(p) + 16 * s);
          v1 = _mm256_loadu_ps(reinterpret_cast<const float*>(p) + 16 * s + 8);
        } else {
          v0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32 * s)));
          v1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32 * s + 16)));
        }
        a[s] = _mm256_shuffle_ps(v0, v1, 0x88);
        b[s] = _mm256_shuffle_ps(v0, v1, 0xDD);
      }
    }
  }

  // t[s], lane j: the 4-bit field of group order(s, j) in bits 31..28 (bit 31: second
  // position bit 1, 30: its bit 0, 29: first position bit 1, 28: its bit 0).
  static void masks(const uint8_t* meta, __m256i* t) {
    const __m256i sh = VT == S24Values::bf16 ? _mm256_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0)
                                             : _mm256_setr_epi32(28, 24, 12, 8, 20, 16, 4, 0);
    t[0] = _mm256_sllv_epi32(bcast32(meta), sh);
    t[1] = _mm256_sllv_epi32(bcast32(meta + 4), sh);
  }
};

template <S24Values VT>
struct SelectTile {
  using P = SelectValues<VT>;
  // Rows per tile. 2 rather than 4: with 4, gcc spilled two accumulators to the stack;
  // cold, 2 rows measured 1.06x over 4 and 1.03-1.04x over 1 (benchmarks/NOTES.md).
  static constexpr int R = 2;
  static int64_t packed_stride(int64_t K) { return (K + 63) / 64 * 64; }

  // Per step: [set][position][lane] = x[step * 64 + 4 * order(set, lane) + position].
  static void pack_x(const float* src, int64_t K, float* dst) {
    for (int64_t c = 0; c < packed_stride(K); c += 64)
      for (int s = 0; s < 2; ++s)
        for (int p = 0; p < 4; ++p)
          for (int j = 0; j < 8; ++j) dst[c + s * 32 + p * 8 + j] = src[c + 4 * P::order(s, j) + p];
  }

  static void step(const char* const* v, const uint8_t* const* meta, const float* X, __m256* acc) {
    for (int r = 0; r < R; ++r) {
      __m256 a[2], b[2];
      __m256i t[2];
      P::load(v[r], a, b);
      P::masks(meta[r], t);
      // The four products of a step form their own chain, added once to the accumulator.
      __m256 prod = _mm256_setzero_ps();
      for (int s = 0; s < 2; ++s) {
        const __m256i t1 = _mm256_add_epi32(t[s], t[s]);
        const __m256i t2 = _mm256_add_epi32(t1, t1);
        const __m256i t3 = _mm256_add_epi32(t2, t2);
        const float* xs = X + s * 32;
        const __m256 x1 = _mm256_loadu_ps(xs + 8), x2 = _mm256_loadu_ps(xs + 16);
        const __m256 xb = _mm256_blendv_ps(x1, _mm256_blendv_ps(x2, _mm256_loadu_ps(xs + 24), _mm256_castsi256_ps(t1)),
                                           _mm256_castsi256_ps(t[s]));
        const __m256 xa = _mm256_blendv_ps(_mm256_blendv_ps(_mm256_loadu_ps(xs), x1, _mm256_castsi256_ps(t3)), x2,
                                           _mm256_castsi256_ps(t2));
        prod = s == 0 ? _mm256_mul_ps(a[s], xa) : _mm256_fmadd_ps(a[s], xa, prod);
        prod = _mm256_fmadd_ps(b[s], xb, prod);
      }
      acc[r] = _mm256_add_ps(acc[r], prod);
    }
  }

  // One row of x (the kernel is chosen for M == 1; rows of a pass are run one by one).
  static void run(const Sparse24Args& a, const int64_t* idx, const float* xp, int64_t xps, int64_t ms, float* sums) {
    for (int64_t m = 0; m < ms; ++m) {
      const float* x = xp + m * xps;
      __m256 acc[R];
      for (auto& v : acc) v = _mm256_setzero_ps();
      const char* v[R];
      const uint8_t* meta[R];
      for (int r = 0; r < R; ++r) {
        v[r] = static_cast<const char*>(a.values) + idx[r] * a.values_row_stride * P::kES;
        meta[r] = a.meta + idx[r] * a.meta_row_stride;
      }
      const int64_t full = a.K / 64;
      // Prefetch the next tile's rows at the same offset: a row of values is one 4 KB page
      // at K = 4096 and the hardware prefetchers stop at page boundaries, so each tile would
      // start with demand misses at full memory latency. The int8 kernels measured the
      // gain (int8_linear_avx2.cpp); here it stayed within this machine's noise.
      const int64_t pf_v = R * a.values_row_stride * P::kES, pf_m = R * a.meta_row_stride;
      for (int64_t c = 0; c < full; ++c) {
        for (int r = 0; r < R; ++r) {
          for (int64_t o = 0; o < P::kStepBytes; o += 64) prefetch_l1(v[r] + pf_v + o);
          if ((c & 7) == 0) prefetch_l1(reinterpret_cast<const char*>(meta[r]) + pf_m);
        }
        step(v, meta, x + c * 64, acc);
        for (int r = 0; r < R; ++r) {
          v[r] += P::kStepBytes;
          meta[r] += 8;
        }
      }
      if (const int64_t tail = a.K % 64) {
        // The last partial step reads zero-padded copies of the row ends (a zero value times
        // the zero-padded x adds nothing), so no load passes the end of a row.
        alignas(32) char vt[R][P::kStepBytes] = {};
        alignas(32) uint8_t mt[R][8] = {};
        for (int r = 0; r < R; ++r) {
          std::memcpy(vt[r], v[r], tail / 2 * P::kES);
          std::memcpy(mt[r], meta[r], tail / 8);
          v[r] = vt[r];
          meta[r] = mt[r];
        }
        step(v, meta, x + full * 64, acc);
      }
      for (int r = 0; r < R; ++r) sums[m * R + r] = V::hsum(acc[r]);
    }
  }
};

// ----------------------------------------------------------------------------- "pair"

// 8 values in stored order as fp32 (groups g..g+3, slots a b a b ...).
template <S24Values VT>
inline __m256d widen8(const char* p) {
  __m256 v;
  if constexpr (VT == S24Values::f32) {
    v = _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  } else if constexpr (VT == S24Values::f16) {
    v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else if constexpr (VT == S24Values::bf16) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    v = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  } else {
    v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  return _mm256_castps_pd(v);
}

template <S24Values VT>
struct PairTile {
  static constexpr int64_t kES = VT == S24Values::f32 ? 4 : VT == S24Values::i8 ? 1 : 2;
  static constexpr int64_t kStepBytes = 16 * kES;  // 16 values per 32 K elements
  static constexpr int R = 4;                      // two pairs of rows
  static int64_t packed_stride(int64_t K) { return (K + 63) / 64 * 64; }

  // Per 32 K elements (groups 0..7): [g0 | g2], [g1 | g3], [g4 | g6], [g5 | g7], each a
  // 128-bit lane of 4 x values, matching the lanes of the paired values below; for bf16
  // values [g0 | g4], [g1 | g5], [g2 | g6], [g3 | g7] (see step_bf16).
  static void pack_x(const float* src, int64_t K, float* dst) {
    static constexpr int kGroupAt[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    static constexpr int kGroupAtBf16[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    const int* group_at = VT == S24Values::bf16 ? kGroupAtBf16 : kGroupAt;
    for (int64_t c = 0; c < packed_stride(K); c += 32)
      for (int q = 0; q < 8; ++q)
        for (int p = 0; p < 4; ++p) dst[c + 4 * q + p] = src[c + 4 * group_at[q] + p];
  }

  // bf16: the pairing and the widening in 6 shuffles per 32 values instead of 12. The
  // 32-bit units of a row hold one group each (two bf16 values): unpacking them between
  // rows r and s gives [r g | s g] per 64 bits, and unpacking 16-bit units against zero
  // then places each bf16 in the high half of a float lane.
  template <int MB>
  static void step_bf16(const char* vr, const char* vs, const uint8_t* mr, const uint8_t* mq, const float* x,
                        int64_t xps, __m256* acc) {
    const __m256i m = _mm256_blend_epi32(bcast32(mr), bcast32(mq), 0xCC);
    const __m256i r = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vr));
    const __m256i s = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vs));
    const __m256i zero = _mm256_setzero_si256();
    const __m256i g0145 = _mm256_unpacklo_epi32(r, s), g2367 = _mm256_unpackhi_epi32(r, s);
    const __m256 w04 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, g0145));
    const __m256 w15 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, g0145));
    const __m256 w26 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, g2367));
    const __m256 w37 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, g2367));
    const __m256i c04 = _mm256_srlv_epi32(m, _mm256_setr_epi32(0, 2, 0, 2, 16, 18, 16, 18));
    const __m256i c15 = _mm256_srlv_epi32(m, _mm256_setr_epi32(4, 6, 4, 6, 20, 22, 20, 22));
    const __m256i c26 = _mm256_srlv_epi32(m, _mm256_setr_epi32(8, 10, 8, 10, 24, 26, 24, 26));
    const __m256i c37 = _mm256_srlv_epi32(m, _mm256_setr_epi32(12, 14, 12, 14, 28, 30, 28, 30));
    for (int k = 0; k < MB; ++k) {
      const float* X = x + k * xps;
      acc[2 * k] = _mm256_fmadd_ps(w04, _mm256_permutevar_ps(_mm256_loadu_ps(X), c04), acc[2 * k]);
      acc[2 * k + 1] = _mm256_fmadd_ps(w15, _mm256_permutevar_ps(_mm256_loadu_ps(X + 8), c15), acc[2 * k + 1]);
      acc[2 * k] = _mm256_fmadd_ps(w26, _mm256_permutevar_ps(_mm256_loadu_ps(X + 16), c26), acc[2 * k]);
      acc[2 * k + 1] = _mm256_fmadd_ps(w37, _mm256_permutevar_ps(_mm256_loadu_ps(X + 24), c37), acc[2 * k + 1]);
    }
  }

  // One 32-K step for pair (r, s). lo0 = [r g0 | s g0 || r g2 | s g2] etc.; the control of
  // lane i is the metadata word of its row shifted so that its field lands in bits 1:0.
  template <int MB>
  static void step(const char* vr, const char* vs, const uint8_t* mr, const uint8_t* mq, const float* x,
                   int64_t xps, __m256* acc) {
    if constexpr (VT == S24Values::bf16) {
      step_bf16<MB>(vr, vs, mr, mq, x, xps, acc);
      return;
    }
    const __m256i m = _mm256_blend_epi32(bcast32(mr), bcast32(mq), 0xCC);
    const __m256d r0 = widen8<VT>(vr), r1 = widen8<VT>(vr + 8 * kES);
    const __m256d s0 = widen8<VT>(vs), s1 = widen8<VT>(vs + 8 * kES);
    const __m256 lo0 = _mm256_castpd_ps(_mm256_unpacklo_pd(r0, s0)), hi0 = _mm256_castpd_ps(_mm256_unpackhi_pd(r0, s0));
    const __m256 lo1 = _mm256_castpd_ps(_mm256_unpacklo_pd(r1, s1)), hi1 = _mm256_castpd_ps(_mm256_unpackhi_pd(r1, s1));
    const __m256i c_lo0 = _mm256_srlv_epi32(m, _mm256_setr_epi32(0, 2, 0, 2, 8, 10, 8, 10));
    const __m256i c_hi0 = _mm256_srlv_epi32(m, _mm256_setr_epi32(4, 6, 4, 6, 12, 14, 12, 14));
    const __m256i c_lo1 = _mm256_srlv_epi32(m, _mm256_setr_epi32(16, 18, 16, 18, 24, 26, 24, 26));
    const __m256i c_hi1 = _mm256_srlv_epi32(m, _mm256_setr_epi32(20, 22, 20, 22, 28, 30, 28, 30));
    for (int k = 0; k < MB; ++k) {
      const float* X = x + k * xps;
      acc[2 * k] = _mm256_fmadd_ps(lo0, _mm256_permutevar_ps(_mm256_loadu_ps(X), c_lo0), acc[2 * k]);
      acc[2 * k + 1] = _mm256_fmadd_ps(hi0, _mm256_permutevar_ps(_mm256_loadu_ps(X + 8), c_hi0), acc[2 * k + 1]);
      acc[2 * k] = _mm256_fmadd_ps(lo1, _mm256_permutevar_ps(_mm256_loadu_ps(X + 16), c_lo1), acc[2 * k]);
      acc[2 * k + 1] = _mm256_fmadd_ps(hi1, _mm256_permutevar_ps(_mm256_loadu_ps(X + 24), c_hi1), acc[2 * k + 1]);
    }
  }

  template <int MB>
  static void rows(const Sparse24Args& a, const int64_t* idx, const float* x, int64_t xps, float* sums, bool pf) {
    __m256 acc[R / 2][2 * MB];
    for (auto& row : acc)
      for (auto& v : row) v = _mm256_setzero_ps();
    const char* v[R];
    const uint8_t* meta[R];
    for (int r = 0; r < R; ++r) {
      v[r] = static_cast<const char*>(a.values) + idx[r] * a.values_row_stride * kES;
      meta[r] = a.meta + idx[r] * a.meta_row_stride;
    }
    const int64_t full = a.K / 32;
    // The next tile's rows, at the same offset (see SelectTile::run); only on the first
    // block of x rows, the one that streams the weights.
    const int64_t pf_v = R * a.values_row_stride * kES, pf_m = R * a.meta_row_stride;
    for (int64_t c = 0; c < full; ++c) {
      if (pf && (c * kStepBytes) % 64 == 0)
        for (int r = 0; r < R; ++r) prefetch_l1(v[r] + kStepBytes * c + pf_v);
      if (pf && (c & 15) == 0)
        for (int r = 0; r < R; ++r) prefetch_l1(reinterpret_cast<const char*>(meta[r]) + 4 * c + pf_m);
      for (int p = 0; p < R / 2; ++p)
        step<MB>(v[2 * p] + kStepBytes * c, v[2 * p + 1] + kStepBytes * c, meta[2 * p] + 4 * c,
                 meta[2 * p + 1] + 4 * c, x + 32 * c, xps, acc[p]);
    }
    if (const int64_t tail = a.K % 32) {
      // Zero-padded copies of the row ends: nothing is read past a row.
      alignas(32) char vt[R][kStepBytes] = {};
      alignas(32) uint8_t mt[R][4] = {};
      for (int r = 0; r < R; ++r) {
        std::memcpy(vt[r], v[r] + kStepBytes * full, tail / 2 * kES);
        std::memcpy(mt[r], meta[r] + 4 * full, tail / 8);
      }
      for (int p = 0; p < R / 2; ++p)
        step<MB>(vt[2 * p], vt[2 * p + 1], mt[2 * p], mt[2 * p + 1], x + 32 * full, xps, acc[p]);
    }
    alignas(32) float t[8];
    for (int p = 0; p < R / 2; ++p)
      for (int k = 0; k < MB; ++k) {
        _mm256_store_ps(t, _mm256_add_ps(acc[p][2 * k], acc[p][2 * k + 1]));
        sums[k * R + 2 * p] = (t[0] + t[1]) + (t[4] + t[5]);
        sums[k * R + 2 * p + 1] = (t[2] + t[3]) + (t[6] + t[7]);
      }
  }

  // x rows in blocks of up to 3 (2 x 3 accumulators + the shared operands fill the 16
  // registers): the tile's weights come from memory for the first block only.
  static void run(const Sparse24Args& a, const int64_t* idx, const float* xp, int64_t xps, int64_t ms, float* sums) {
    for (int64_t m = 0; m < ms; m += 3) {
      const float* x = xp + m * xps;
      switch (imin(3, ms - m)) {
        case 1: rows<1>(a, idx, x, xps, sums + m * R, m == 0); break;
        case 2: rows<2>(a, idx, x, xps, sums + m * R, m == 0); break;
        default: rows<3>(a, idx, x, xps, sums + m * R, m == 0); break;
      }
    }
  }
};

// ----------------------------------------------------------------------------- BSR, one row of x

// bf16 blocks of 16k x 16j with one row of x. The generic tile keeps one accumulator per
// block row and, with 8 of them, walked each block row twice (rows 0-7, then 8-15),
// reading the stream in a strided pattern. Here rows i and i+8 share an accumulator (row
// i in the low 128-bit lane, row i+8 in the high one): 8 accumulators cover 16 rows, so
// each block is read once, in order, and a prefetch at a fixed distance runs on across
// block rows (values are contiguous in block-row order). x comes as 128-bit broadcasts
// of the generic even/odd packing: [x0 x2 x4 x6 | x8 .. x14 | x1 .. x7 | x9 .. x15].
struct BsrPairedRowsM1 {
  // Bytes ahead of the block being read: 2 KB measured 1.13x over none; 1 and 4 KB the same as 2.
  static constexpr int64_t kPrefetchAhead = 2048;

  template <DType VD>
  static bool fits(const BsrArgs& a, const BsrShape& sh) {
    return VD == DType::bf16 && sh.deint && sh.rpv == 1 && a.bn % 16 == 0 && (a.bk == 16 || a.bk == 32);
  }

  static void block_row(const BsrArgs& a, int64_t br, const float* xp, float* sums) {
    if (a.bk == 16)
      block_row_bk<16>(a, br, xp, sums);
    else
      block_row_bk<32>(a, br, xp, sums);
  }

  // The block width is a constant so that the 16 rows sit at fixed offsets from the block.
  template <int BK>
  static void block_row_bk(const BsrArgs& a, int64_t br, const float* xp, float* sums) {
    constexpr int64_t kRowBytes = 2 * BK;
    const int64_t block_bytes = a.bn * kRowBytes;
    const __m256i odd_mask = _mm256_set1_epi32(-65536);
    const int64_t b_begin = a.row_ptr[br], b_end = a.row_ptr[br + 1];
    for (int64_t g = 0; g < a.bn; g += 16) {  // 16 rows of each block per walk
      __m256 acc[8];
      for (auto& v : acc) v = _mm256_setzero_ps();
      const char* blk = static_cast<const char*>(a.values) + b_begin * block_bytes;
      for (int64_t b = b_begin; b < b_end; ++b, blk += block_bytes) {
        if (g == 0)
          for (int64_t o = 0; o < block_bytes; o += 64) prefetch_l1(blk + kPrefetchAhead + o);
        const char* rows = blk + g * kRowBytes;
        const float* xb = xp + a.col_indices[b] * BK;
        for (int c = 0; c < BK; c += 16) {
          const __m256 xe_lo = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(xb + c));
          const __m256 xe_hi = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(xb + c + 4));
          const __m256 xo_lo = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(xb + c + 8));
          const __m256 xo_hi = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(xb + c + 12));
          for (int i = 0; i < 8; ++i) {
            const char* r0 = rows + i * kRowBytes + 2 * c;
            const char* r1 = r0 + 8 * kRowBytes;
            const __m256i lo = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(r1),
                                                   reinterpret_cast<const __m128i*>(r0));
            const __m256i hi = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(r1 + 16),
                                                   reinterpret_cast<const __m128i*>(r0 + 16));
            // One add on the accumulator per block: the four products form a chain of
            // their own, so blocks overlap instead of waiting on 4 dependent FMAs each.
            __m256 t = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(lo, 16)), xe_lo);
            t = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(lo, odd_mask)), xo_lo, t);
            t = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(hi, 16)), xe_hi, t);
            t = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(hi, odd_mask)), xo_hi, t);
            acc[i] = _mm256_add_ps(acc[i], t);
          }
        }
      }
      // [rows 0-3 | 8-11] and [4-7 | 12-15] by two levels of horizontal adds.
      const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
      const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
      _mm256_storeu_ps(sums + g, _mm256_permute2f128_ps(u0, u1, 0x20));
      _mm256_storeu_ps(sums + g + 8, _mm256_permute2f128_ps(u0, u1, 0x31));
    }
  }
};

// Lane ops of the 2:4 lane-layout kernel (sparse24_lanes_kernel.h): 8 rows per vector.
struct LanesAvx2 {
  static constexpr int W = 8;
  static __m256 x4(const float* p) { return _mm256_broadcast_ps(reinterpret_cast<const __m128*>(p)); }
  static __m256 x1(const float* p) { return _mm256_broadcast_ss(p); }
  static __m256i positions(const uint8_t* p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  template <int S>
  static __m256i shift(__m256i i) { return _mm256_srli_epi32(i, S); }
  static __m256 pick(__m256 x4, __m256i i) { return _mm256_permutevar_ps(x4, i); }
  static void bf16_pair(const char* p, __m256& lo, __m256& hi) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    hi = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  template <S24Values VT>
  static __m256 load(const char* p) {
    static_assert(VT == S24Values::f32 || VT == S24Values::f16, "bf16 and int8 values have their own loads");
    if constexpr (VT == S24Values::f32) {
      return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
    } else {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
  }
  // Byte i of every word moved to the top by a load 3 - i bytes early, the rest masked:
  // an int32 of q * 2^24, converted exactly. No shuffle or shift, which are what limits
  // this kernel on Zen 3 (hot, one core: 14.9 -> 16.9 G kept values/s against
  // vpmovsxbd + vcvtdq2ps; benchmarks/NOTES.md). The first word of the array takes the
  // shifts instead, never reading before it. kExact: q itself (an arithmetic shift instead
  // of the mask), for x so large that q * 2^24 * x could overflow (s24_lanes_drive).
  template <bool kExact>
  static __m256 top_byte(__m256i v) {
    if constexpr (kExact) return _mm256_cvtepi32_ps(_mm256_srai_epi32(v, 24));
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xFF000000u))));
  }
  template <bool kExact = false>
  static void i8_quad(const char* p, bool safe, __m256 (&w)[4]) {
    if (__builtin_expect(safe, 0)) {
      const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      w[0] = top_byte<kExact>(_mm256_slli_epi32(d, 24));
      w[1] = top_byte<kExact>(_mm256_slli_epi32(d, 16));
      w[2] = top_byte<kExact>(_mm256_slli_epi32(d, 8));
      w[3] = top_byte<kExact>(d);
      return;
    }
    for (int i = 0; i < 4; ++i)
      w[i] = top_byte<kExact>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p - 3 + i)));
  }
};

}  // namespace

void sparse24_lanes_linear_avx2(const Sparse24Args& a) { s24_lanes_dispatch<V, LanesAvx2>(a); }
void sparse24_lanes_linear_panel_avx2(const Sparse24Args& a) { s24_lanes_panel_dispatch<V, LanesAvx2>(a); }
void block_sparse_lanes_linear_avx2(const BsrArgs& a) { bsr_lanes_dispatch<V, LanesAvx2>(a); }
void block_sparse_lanes_linear_panel_avx2(const BsrArgs& a) { bsr_lanes_panel_dispatch<V, LanesAvx2>(a); }

// M == 1 with float values: "select" (fewest instructions per value). int8 values, and
// several rows of x: "pair", whose per-x-row work (a permute and an FMA per 8 values) is
// what a dense kernel spends per 8 weights, where "select" needs two blends more.
void sparse24_linear_avx2(const Sparse24Args& a) {
  const bool one_row = a.M == 1;
  switch (a.values_dtype) {
    case S24Values::f32:
      one_row ? s24_drive<V, SelectTile<S24Values::f32>>(a) : s24_drive<V, PairTile<S24Values::f32>>(a);
      break;
    case S24Values::f16:
      one_row ? s24_drive<V, SelectTile<S24Values::f16>>(a) : s24_drive<V, PairTile<S24Values::f16>>(a);
      break;
    case S24Values::bf16:
      one_row ? s24_drive<V, SelectTile<S24Values::bf16>>(a) : s24_drive<V, PairTile<S24Values::bf16>>(a);
      break;
    case S24Values::i8: s24_drive<V, PairTile<S24Values::i8>>(a); break;
  }
}

void block_sparse_linear_avx2(const BsrArgs& a) { bsr_dispatch<V, BsrPairedRowsM1>(a); }

}  // namespace bigperf::cpu
