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
//   in stored order) suits "pair" better than the slot split "select" needs.
#include "cpu/vec_avx2.h"
#include "cpu/sparse_linear_kernel.h"

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
  static constexpr int R = 4;
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
        acc[r] = _mm256_fmadd_ps(a[s], xa, acc[r]);
        acc[r] = _mm256_fmadd_ps(b[s], xb, acc[r]);
      }
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
          for (int64_t o = 0; o < P::kStepBytes; o += 64) _mm_prefetch(v[r] + pf_v + o, _MM_HINT_T0);
          if ((c & 7) == 0) _mm_prefetch(reinterpret_cast<const char*>(meta[r]) + pf_m, _MM_HINT_T0);
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
  // 128-bit lane of 4 x values, matching the lanes of the paired values below.
  static void pack_x(const float* src, int64_t K, float* dst) {
    static constexpr int kGroupAt[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    for (int64_t c = 0; c < packed_stride(K); c += 32)
      for (int q = 0; q < 8; ++q)
        for (int p = 0; p < 4; ++p) dst[c + 4 * q + p] = src[c + 4 * kGroupAt[q] + p];
  }

  // One 32-K step for pair (r, s). lo0 = [r g0 | s g0 || r g2 | s g2] etc.; the control of
  // lane i is the metadata word of its row shifted so that its field lands in bits 1:0.
  template <int MB>
  static void step(const char* vr, const char* vs, const uint8_t* mr, const uint8_t* mq, const float* x,
                   int64_t xps, __m256* acc) {
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
        for (int r = 0; r < R; ++r) _mm_prefetch(v[r] + kStepBytes * c + pf_v, _MM_HINT_T0);
      if (pf && (c & 15) == 0)
        for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(meta[r]) + 4 * c + pf_m, _MM_HINT_T0);
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
      switch (sp_min(3, ms - m)) {
        case 1: rows<1>(a, idx, x, xps, sums + m * R, m == 0); break;
        case 2: rows<2>(a, idx, x, xps, sums + m * R, m == 0); break;
        default: rows<3>(a, idx, x, xps, sums + m * R, m == 0); break;
      }
    }
  }
};

}  // namespace

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

void block_sparse_linear_avx2(const BsrArgs& a) { bsr_dispatch<V>(a); }

}  // namespace bigperf::cpu
