// AVX-512 (F/BW/VL/DQ) path of the sparse linear kernels (BSR and the driver in
// sparse_linear_kernel.h; the 2:4 inner loop here).
//
// 2:4: vpermt2ps picks 16 lanes out of 32 x values, which is exactly one step of 8 groups
// (32 K elements, 16 kept values in their stored order). Its index for lane j is
// 4 * (j / 2) + (the 2-bit position field j of the step's metadata word): one variable
// shift brings field j to the bottom of lane j and one ternary-logic instruction keeps
// its two bits and adds the group base. x needs no repacking and every value dtype
// widens in the stored order.
#include "cpu/vec_avx512.h"
#include "cpu/sparse_linear_kernel.h"
#include "cpu/sparse24_lanes_kernel.h"
#include "cpu/bsr_lanes_kernel.h"
#include "cpu/panel_gemm_bf16.h"

namespace bigperf::cpu {
namespace {

using V = VecAvx512;

template <S24Values VT>
inline __m512 load16(const char* p) {
  if constexpr (VT == S24Values::f32) {
    return _mm512_loadu_ps(p);
  } else if constexpr (VT == S24Values::f16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else if constexpr (VT == S24Values::bf16) {
    const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  } else {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
}

template <S24Values VT>
struct PermuteTile {
  static constexpr int64_t kES = VT == S24Values::f32 ? 4 : VT == S24Values::i8 ? 1 : 2;
  static constexpr int64_t kStepBytes = 16 * kES;  // 16 values per 32 K elements
  static constexpr int R = 4;
  static int64_t packed_stride(int64_t K) { return (K + 63) / 64 * 64; }
  static void pack_x(const float* src, int64_t K, float* dst) {
    std::memcpy(dst, src, packed_stride(K) * sizeof(float));
  }

  template <int MB>
  static void step(const char* const* v, const uint8_t* const* meta, const float* x, int64_t xps, __m512* acc) {
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    const __m512i three = _mm512_set1_epi32(3);
    for (int r = 0; r < R; ++r) {
      int32_t w;
      std::memcpy(&w, meta[r], 4);
      const __m512i t = _mm512_srlv_epi32(_mm512_set1_epi32(w), shifts);
      const __m512i idx = _mm512_ternarylogic_epi32(t, three, base, 0xEA);  // (t & 3) | base
      const __m512 vals = load16<VT>(v[r]);
      for (int m = 0; m < MB; ++m) {
        const float* X = x + m * xps;
        const __m512 xs = _mm512_permutex2var_ps(_mm512_loadu_ps(X), idx, _mm512_loadu_ps(X + 16));
        acc[m * R + r] = _mm512_fmadd_ps(vals, xs, acc[m * R + r]);
      }
    }
  }

  template <int MB>
  static void rows(const Sparse24Args& a, const int64_t* idx, const float* x, int64_t xps, float* sums, bool pf) {
    __m512 acc[MB * R];
    for (auto& v : acc) v = _mm512_setzero_ps();
    const char* v[R];
    const uint8_t* meta[R];
    for (int r = 0; r < R; ++r) {
      v[r] = static_cast<const char*>(a.values) + idx[r] * a.values_row_stride * kES;
      meta[r] = a.meta + idx[r] * a.meta_row_stride;
    }
    const int64_t full = a.K / 32;
    // The next tile's rows at the same offset, as in the AVX2 kernel (page boundaries stop
    // the hardware prefetchers); only on the first block of x rows, which streams W.
    const int64_t pf_v = R * a.values_row_stride * kES, pf_m = R * a.meta_row_stride;
    for (int64_t c = 0; c < full; ++c) {
      if (pf && (c * kStepBytes) % 64 == 0)
        for (int r = 0; r < R; ++r) prefetch_l1(v[r] + pf_v);
      if (pf && (c & 15) == 0)
        for (int r = 0; r < R; ++r) prefetch_l1(reinterpret_cast<const char*>(meta[r]) + pf_m);
      step<MB>(v, meta, x + c * 32, xps, acc);
      for (int r = 0; r < R; ++r) {
        v[r] += kStepBytes;
        meta[r] += 4;
      }
    }
    if (const int64_t tail = a.K % 32) {
      // Zero-padded copies of the row ends: nothing is read past a row.
      alignas(64) char vt[R][kStepBytes] = {};
      alignas(64) uint8_t mt[R][4] = {};
      for (int r = 0; r < R; ++r) {
        std::memcpy(vt[r], v[r], tail / 2 * kES);
        std::memcpy(mt[r], meta[r], tail / 8);
        v[r] = vt[r];
        meta[r] = mt[r];
      }
      step<MB>(v, meta, x + full * 32, xps, acc);
    }
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < R; ++r) sums[m * R + r] = V::hsum(acc[m * R + r]);
  }

  // x rows in blocks of up to 4: the tile's weights come from memory for the first block
  // and from cache for the others.
  static void run(const Sparse24Args& a, const int64_t* idx, const float* xp, int64_t xps, int64_t ms, float* sums) {
    for (int64_t m = 0; m < ms; m += 4) {
      const float* x = xp + m * xps;
      switch (imin(4, ms - m)) {
        case 1: rows<1>(a, idx, x, xps, sums + m * R, m == 0); break;
        case 2: rows<2>(a, idx, x, xps, sums + m * R, m == 0); break;
        case 3: rows<3>(a, idx, x, xps, sums + m * R, m == 0); break;
        default: rows<4>(a, idx, x, xps, sums + m * R, m == 0); break;
      }
    }
  }
};

// Lane ops of the 2:4 lane-layout kernel (sparse24_lanes_kernel.h): a whole 16-row block
// per vector.
struct LanesAvx512 {
  static constexpr int W = 16;
  static __m512 x4(const float* p) { return _mm512_broadcast_f32x4(_mm_loadu_ps(p)); }
  static __m512 x1(const float* p) { return _mm512_set1_ps(*p); }
  static __m512i positions(const uint8_t* p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  template <int S>
  static __m512i shift(__m512i i) { return _mm512_srli_epi32(i, S); }
  static __m512 pick(__m512 x4, __m512i i) { return _mm512_permutevar_ps(x4, i); }
  static void bf16_pair(const char* p, __m512& lo, __m512& hi) {
    const __m512i v = _mm512_loadu_si512(p);
    lo = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    hi = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  template <S24Values VT>
  static __m512 load(const char* p) {
    static_assert(VT == S24Values::f32 || VT == S24Values::f16, "bf16 and int8 values have their own loads");
    return load16<VT>(p);
  }
  // As LanesAvx2::i8_quad: w[i] = 2^24 * byte i of every word (kExact: the byte), the
  // first word by shifts.
  template <bool kExact>
  static __m512 top_byte(__m512i v) {
    if constexpr (kExact) return _mm512_cvtepi32_ps(_mm512_srai_epi32(v, 24));
    return _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFF000000u))));
  }
  template <bool kExact = false>
  static void i8_quad(const char* p, bool safe, __m512 (&w)[4]) {
    if (__builtin_expect(safe, 0)) {
      const __m512i d = _mm512_loadu_si512(p);
      w[0] = top_byte<kExact>(_mm512_slli_epi32(d, 24));
      w[1] = top_byte<kExact>(_mm512_slli_epi32(d, 16));
      w[2] = top_byte<kExact>(_mm512_slli_epi32(d, 8));
      w[3] = top_byte<kExact>(d);
      return;
    }
    for (int i = 0; i < 4; ++i) w[i] = top_byte<kExact>(_mm512_loadu_si512(p - 3 + i));
  }
};

// ----------------------------------------------------------------------------- bf16 arithmetic
// The lane layouts in panel_gemm_bf16.h's arithmetic (vdpbf16ps), for M where arithmetic
// bounds the call: bf16 values stay as they are and int8 codes convert exactly (their row
// scales multiply the sums, as the fp32 forms do); x is rounded to bf16.

// Byte i of each 32-bit lane of w (an int8 code) as bf16 bits in the low half: exact, since
// bf16 holds every integer up to 256 (the fp32 value's high half is the bf16).
// (The byte alone at the top is code * 2^24 as an int32: converted and scaled back exactly.)
template <int I>
inline __m512i code_as_bf16(__m512i w) {
  const __m512i top = _mm512_and_si512(I == 3 ? w : _mm512_slli_epi32(w, 24 - 8 * I),
                                       _mm512_set1_epi32(static_cast<int>(0xFF000000u)));
  const __m512 code = _mm512_mul_ps(_mm512_cvtepi32_ps(top), _mm512_set1_ps(1.f / 16777216.f));
  return _mm512_srli_epi32(_mm512_castps_si512(code), 16);
}

// The 2:4 lanes as quad strips (panel_gemm_bf16.h, QuadStrips): per 16-row block and step of
// 8 k, each group's kept pair (bf16 values: the lane's word as stored, slot 0 low; int8: bytes
// 2 g and 2 g + 1 of the step's word, each exact in bf16) and the vpshufb control of its two
// positions (metadata: bits 3:0 of the step's byte for group 0, 7:4 for group 1). k0 and kc
// are whole steps (gemm_packed's k_align 8); a block past the last is zeros.
template <S24Values VT>
inline auto s24_lanes_quad_packer(const Sparse24Args& a) {
  static_assert(VT == S24Values::bf16 || VT == S24Values::i8, "bf16 values or int8 codes");
  constexpr int64_t NR = panel_bf16::kNR, kGroupBytes = 2 * kLaneRows * lanes_esize(VT), kStepBytes = 2 * kGroupBytes;
  const int64_t blocks = (a.N + kLaneRows - 1) / kLaneRows, steps = a.K / 8;
  // (The control table once per call, not per task.)
  return [&a, blocks, steps, controls = panel_bf16::quad_control_table()](int64_t n0, int64_t nc, int64_t k0, int64_t kc,
                                                                          uint32_t* dst) {
    const __m512i nibble = _mm512_set1_epi32(15);
    for (int64_t s = 0; s < nc; s += NR) {
      for (int64_t c = 0; c < NR; c += kLaneRows) {
        uint32_t* out = dst + s * kc + c;  // group q's pairs at out + 2 q NR, its controls NR further
        const int64_t b = (n0 + s + c) / kLaneRows;
        if (b >= blocks) {
          for (int64_t q = 0; q < kc / 4; ++q) {
            _mm512_storeu_si512(out + 2 * q * NR, _mm512_setzero_si512());
            _mm512_storeu_si512(out + 2 * q * NR + NR, _mm512_setzero_si512());
          }
          continue;
        }
        const char* vals = static_cast<const char*>(a.values) + b * steps * kStepBytes;
        const uint8_t* meta = a.meta + b * steps * kLaneRows;
        for (int64_t step = k0 / 8; step < (k0 + kc) / 8; ++step) {
          const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(meta + step * kLaneRows)));
          __m512i pairs[2];
          if constexpr (VT == S24Values::bf16) {
            for (int g = 0; g < 2; ++g) pairs[g] = _mm512_loadu_si512(vals + step * kStepBytes + g * kGroupBytes);
          } else {
            const __m512i w = _mm512_loadu_si512(vals + step * kStepBytes);
            pairs[0] = _mm512_or_si512(code_as_bf16<0>(w), _mm512_slli_epi32(code_as_bf16<1>(w), 16));
            pairs[1] = _mm512_or_si512(code_as_bf16<2>(w), _mm512_slli_epi32(code_as_bf16<3>(w), 16));
          }
          for (int g = 0; g < 2; ++g) {
            const __m512i field = _mm512_and_si512(_mm512_srli_epi32(bytes, 4 * g), nibble);
            uint32_t* group = out + 2 * ((step * 8 + g * 4 - k0) / 4) * NR;
            _mm512_storeu_si512(group, pairs[g]);
            _mm512_storeu_si512(group + NR, _mm512_permutexvar_epi32(field, controls));
          }
        }
      }
    }
  };
}

// BSR: a block row's stored blocks in the lane layout are already pair strips of 16 columns
// ([bk/2][16] 32-bit units per row group), so a register tile of MR rows of x runs over the
// stored blocks only, x's pairs taken at each block's columns; sums[r][16].
template <int MR>
inline void bsr_bf16_tile(const uint32_t* xp, const char* first, int64_t block_bytes, const int32_t* cols, int64_t nb,
                          int64_t half_bk, float* sums) {
  __m512 acc[MR];
  for (auto& v : acc) v = _mm512_setzero_ps();
  for (int64_t j = 0; j < nb; ++j) {
    const uint32_t* b = reinterpret_cast<const uint32_t*>(first + j * block_bytes);
    const uint32_t* x = xp + cols[j] * half_bk * MR;
    for (int64_t p = 0; p < half_bk; ++p) {
      const __m512bh w = panel_bf16::as_bh(_mm512_loadu_si512(b + p * kLaneRows));
      for (int i = 0; i < MR; ++i)
        acc[i] = _mm512_dpbf16_ps(acc[i], panel_bf16::as_bh(_mm512_set1_epi32(static_cast<int>(x[p * MR + i]))), w);
    }
  }
  for (int i = 0; i < MR; ++i) _mm512_storeu_ps(sums + i * kLaneRows, acc[i]);
}

template <int MR>
inline void bsr_bf16_rows(int mr, const uint32_t* xp, const char* first, int64_t block_bytes, const int32_t* cols,
                          int64_t nb, int64_t half_bk, float* sums) {
  if constexpr (MR >= 1) {
    if (mr == MR) return bsr_bf16_tile<MR>(xp, first, block_bytes, cols, nb, half_bk, sums);
    bsr_bf16_rows<MR - 1>(mr, xp, first, block_bytes, cols, nb, half_bk, sums);
  }
}

// Rows of x per register tile: 16 accumulators, one weight vector, a broadcast.
constexpr int kBsrBf16Rows = 16;

}  // namespace

void sparse24_lanes_linear_panel_bf16_avx512(const Sparse24Args& a) {
  if (a.M <= 0 || a.N <= 0) return;
  // int8 codes: one multiply per output by its row's scale (a.scale; null for bf16 values).
  const EpilogueArgs out{a.out, a.out_row_stride, a.x_dtype, a.act, a.bias, a.scale};
  auto epilogue = [&](const float* sums, int64_t ld, int64_t m0, int64_t rows, int64_t n0, int64_t cnt) {
    epilogue_rows<V>(out, sums, ld, m0, rows, n0, cnt);
  };
  if (a.values_dtype == S24Values::i8)
    panel_bf16::gemm_packed<panel_bf16::QuadStrips>(a.x, a.x_row_stride, a.x_dtype, a.M, a.N, a.K, a.num_threads,
                                                    s24_lanes_quad_packer<S24Values::i8>(a), epilogue, 8);
  else
    panel_bf16::gemm_packed<panel_bf16::QuadStrips>(a.x, a.x_row_stride, a.x_dtype, a.M, a.N, a.K, a.num_threads,
                                                    s24_lanes_quad_packer<S24Values::bf16>(a), epilogue, 8);
}

void block_sparse_lanes_linear_panel_bf16_avx512(const BsrArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  constexpr int MR = kBsrBf16Rows;
  const panel_bf16::TileRows<MR> tiles(panel_bf16::Bf16Rows(a.x, a.x_row_stride, a.x_dtype, a.M, a.K, a.num_threads), a.M, a.K);
  const int64_t half_bk = a.bk / 2, strip_bytes = kLaneRows * a.bk * 2, block_bytes = a.bn / kLaneRows * strip_bytes;
  const BsrStripTasks tasks(a, strip_bytes);
  parallel_dynamic(tasks.count, a.M * a.nnz * a.bn * a.bk < panel::kSerialWork ? 1 : a.num_threads, [&](auto take) {
    alignas(64) float sums[MR * kLaneRows];
    for (int64_t t; (t = take()) < tasks.count;) {
      tasks.run(t, [&](int64_t m0, int64_t mc, const BsrStripTasks::Strip& strip) {
        for (int64_t i = 0; i < mc; i += MR) {
          const int mr = static_cast<int>(imin(MR, mc - i));
          bsr_bf16_rows<MR>(mr, tiles.at(m0 + i, mr, 0), strip.first, block_bytes, strip.cols, strip.nb, half_bk, sums);
          epilogue_rows<V>(EpilogueArgs{a.out, a.out_row_stride, a.x_dtype, a.act, a.bias}, sums, kLaneRows, m0 + i, mr,
                           strip.n0, kLaneRows);
        }
      });
    }
  });
}

void sparse24_lanes_linear_avx512(const Sparse24Args& a) { s24_lanes_dispatch<V, LanesAvx512>(a); }
void sparse24_lanes_linear_panel_avx512(const Sparse24Args& a) { s24_lanes_panel_dispatch<V, LanesAvx512>(a); }
void block_sparse_lanes_linear_avx512(const BsrArgs& a) { bsr_lanes_dispatch<V, LanesAvx512>(a); }
void block_sparse_lanes_linear_panel_avx512(const BsrArgs& a) { bsr_lanes_panel_dispatch<V, LanesAvx512>(a); }

void sparse24_linear_avx512(const Sparse24Args& a) {
  switch (a.values_dtype) {
    case S24Values::f32: s24_drive<V, PermuteTile<S24Values::f32>>(a); break;
    case S24Values::f16: s24_drive<V, PermuteTile<S24Values::f16>>(a); break;
    case S24Values::bf16: s24_drive<V, PermuteTile<S24Values::bf16>>(a); break;
    case S24Values::i8: s24_drive<V, PermuteTile<S24Values::i8>>(a); break;
  }
}

void block_sparse_linear_avx512(const BsrArgs& a) { bsr_dispatch<V>(a); }

}  // namespace bigperf::cpu
