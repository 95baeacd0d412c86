// The panel GEMM of panel_gemm.h in bf16 arithmetic, for AVX512-BF16 (the AVX-512 unit's
// ISA requires it): vdpbf16ps multiplies 16 pairs of bf16 and adds both products to 16
// fp32 sums, 32 multiply-adds per instruction where an fp32 FMA does 16. On CPUs with it
// (Zen 4, Xeons since Cooper Lake) torch's bf16 GEMM runs about twice its fp32 GEMM, and the
// fp32 panel GEMM cannot reach it: on Zen 4 (1 thread) int8 weight-only at M = 128 ran at
// 0.49x torch's bf16 F.linear on a dense bf16 weight (benchmarks/NOTES.md).
//
// Same blocking and tasks as panel_gemm.h; what differs:
//   * x is rounded to bf16 rows once per call (a bf16 x is read in place), read as 32-bit
//     pairs (x[2p], x[2p + 1]) and broadcast per pair;
//   * a task's weight panel is written by the format's pair packer as pair strips: pair row p
//     of a strip holds, for each of its 32 columns, the 32-bit unit (w[2p], w[2p + 1]) in
//     bf16 (even k in the low half). Packers write them directly (int8 codes, exact in bf16;
//     bf16 values) or through from_fp32: the fp32 strips of panel_gemm.h's packers, rounded
//     in place;
//   * or, for 2:4 weights, as quad strips (QuadStrips): only the kept pair of each group of 4
//     k, with a byte-shuffle control that picks its two x out of the group's four;
//   * K is not sliced up to kMaxKC.
// So the weight is rounded to bf16 (a dequantised int8 weight: by at most a quarter of its
// quantisation step; codes and bf16 weights: not at all) and so is x: only a path whose
// precision admits bf16 compute may use it (bigperf/ops/common.py, half_why_not).
// Include only from the AVX-512 translation units (anonymous namespace: see vec_avx2.h).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/bf16_avx512.h"
#include "cpu/dtype_convert.h"
#include "cpu/kernel_util.h"
#include "cpu/panel_gemm.h"
#include "cpu/thread_pool.h"

namespace bigperf::cpu {
namespace {

namespace panel_bf16 {

// K in as few slices as possible: slicing K (panel_gemm.h's 256) cost 20-30 % here (Zen 4,
// 1 thread, 128 x 512 x 4096: 140-155 GF in slices of 256-2048, 200 GF in one), though each
// slice's panel fits L2 better; past this many k, equal slices (a 128-column panel of 4096 k
// in bf16 pairs is 1 MB).
constexpr int64_t kMaxKC = 4096;
constexpr int64_t kNR = 32;  // columns per strip: 2 vectors of 16 fp32 sums
// Columns per task: two strips. Tasks must outnumber threads: at
// 128 columns a 384-wide layer (MiniLM's attention) made 3 tasks for 2 threads.
constexpr int64_t kNC = 2 * kNR;
// Rows per register tile: 8 x 2 accumulators over one strip. In L1 every tile tried ran alike
// (6 x 4, 12 x 2, 4 x 4, 8 x 2: 215-231 GF on Zen 4); 8 divides the usual batch sizes (16,
// 128, 192), so no call ends in a short, slower tile (6 x 4 left 2 rows of 128).
constexpr int kMR = 8;

// A vector of 32 bf16 from its bits (memcpy: SIMDe's emulated type is not a vector type).
inline __m512bh as_bh(__m512i v) {
  __m512bh r;
  std::memcpy(&r, &v, sizeof r);
  return r;
}

// x as bf16 rows of K elements (K even): a bf16 x read in place, else converted once per call
// (rows in chunks over num_threads: serial, it cost 5-10 % of a 2-thread M = 192 call).
struct Bf16Rows {
  Bf16Rows(const void* x, int64_t row_stride, DType d, int64_t M, int64_t K, int num_threads = 1)
      : buf(d == DType::bf16 ? 0 : static_cast<size_t>(M * K) * sizeof(uint16_t)),
        rows(d == DType::bf16 ? static_cast<const uint16_t*>(x) : buf.as<uint16_t>()),
        stride(d == DType::bf16 ? row_stride : K) {
    if (d == DType::bf16) return;
    uint16_t* out = buf.as<uint16_t>();
    constexpr int64_t kChunk = 16;  // rows
    parallel_items((M + kChunk - 1) / kChunk, M * K < (int64_t{1} << 16) ? 1 : num_threads, [&](int64_t c) {
      for (int64_t m = c * kChunk; m < imin(M, (c + 1) * kChunk); ++m) {
        uint16_t* dst = out + m * K;
        const char* src = static_cast<const char*>(x) + m * row_stride * element_size(d);
        int64_t k = 0;
        for (; k + 16 <= K; k += 16) {
          const __m512 v = d == DType::f32 ? _mm512_loadu_ps(reinterpret_cast<const float*>(src) + k)
                                           : _mm512_cvtph_ps(_mm256_loadu_si256(
                                                 reinterpret_cast<const __m256i*>(reinterpret_cast<const uint16_t*>(src) + k)));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), _mm512_cvtepi32_epi16(bf16_round_bits(v)));
        }
        for (; k < K; ++k) dst[k] = float_to_bf16(load_as_float(src, k, d));
      }
    });
  }
  // Row m from element k (even): read its pairs with pair_at.
  const uint16_t* row(int64_t m, int64_t k) const { return rows + m * stride + k; }
  AlignedBuffer buf;
  const uint16_t* rows;
  int64_t stride;  // elements
};

// The 32-bit unit of the bf16 pair at p (p[0] low). Through memcpy: a bf16 x read in place
// may have an odd row stride, and a uint32_t load of it would be misaligned (undefined in C++,
// flagged by UBSan, though x86 allows it); the compiler emits the same one load.
inline uint32_t pair_at(const uint16_t* p) {
  uint32_t unit;
  std::memcpy(&unit, p, sizeof unit);
  return unit;
}

// The fp32 strips packer's output (kc x kNR floats per strip, strips one after another)
// turned in place into pair strips (kc / 2 x kNR 32-bit units per strip, at the same strip
// starts): pair row p only overwrites fp32 rows below 2p, already read.
inline void strips_to_pairs(float* panel, int64_t nc, int64_t kc) {
  for (int64_t s = 0; s < nc; s += kNR) {
    float* strip = panel + s * kc;
    uint32_t* pairs = reinterpret_cast<uint32_t*>(strip);
    for (int64_t p = 0; p < kc / 2; ++p) {
      for (int64_t h = 0; h < kNR; h += 16) {
        const __m512i even = bf16_round_bits(_mm512_loadu_ps(strip + 2 * p * kNR + h));
        const __m512i odd = bf16_round_bits(_mm512_loadu_ps(strip + (2 * p + 1) * kNR + h));
        _mm512_storeu_si512(pairs + p * kNR + h, _mm512_or_si512(even, _mm512_slli_epi32(odd, 16)));
      }
    }
  }
}

// A pair packer (what gemm_packed takes: pack(n0, nc, k0, kc, dst) writes the pair strips of
// columns [n0, n0 + nc) and k in [k0, k0 + kc), strip s at dst + s * kc units) from an fp32
// strips packer of panel_gemm.h: packed as fp32 into dst, then converted in place.
template <class Fp32Pack>
auto from_fp32(const Fp32Pack& pack) {
  return [&pack](int64_t n0, int64_t nc, int64_t k0, int64_t kc, uint32_t* dst) {
    float* strips = reinterpret_cast<float*>(dst);
    pack(n0, nc, k0, kc, strips);
    strips_to_pairs(strips, nc, kc);
  };
}

// The pair units of 16 columns from their int8 codes at k (even) and k + 1: exact, since
// bf16 holds every integer up to 256 (the fp32 value's high half is the bf16).
inline __m512i code_pairs(__m128i even, __m128i odd) {
  const __m512i e = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(even)));
  const __m512i o = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(odd)));
  return _mm512_or_si512(_mm512_srli_epi32(e, 16), _mm512_and_si512(o, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

// c[i][0 .. 32) += sum over pairs p < np of x_i pair p . b pair row p, for i < MR: rows of x
// at xr[i] (bf16), b a strip (pair rows of kNR units).
template <int MR>
inline void micro_tile(int64_t np, const uint16_t* const* xr, const uint32_t* b, float* c, int64_t ldc) {
  __m512 acc[MR][2];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 2; ++v) acc[i][v] = _mm512_loadu_ps(c + i * ldc + 16 * v);
  for (int64_t p = 0; p < np; ++p) {
    const __m512bh b0 = as_bh(_mm512_loadu_si512(b + p * kNR)), b1 = as_bh(_mm512_loadu_si512(b + p * kNR + 16));
    for (int i = 0; i < MR; ++i) {
      const __m512bh a = as_bh(_mm512_set1_epi32(static_cast<int>(pair_at(xr[i] + 2 * p))));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, b1);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 2; ++v) _mm512_storeu_ps(c + i * ldc + 16 * v, acc[i][v]);
}

// 2:4 quad strips (what a 2:4 quad packer writes): per group q of 4 k, 2 * kNR units: the
// strip's columns' kept pairs (bf16, the lower position's value in the low half; a pruned
// pair is zeros), then per column the vpshufb control that picks that pair's two positions
// out of the group's four x (quad_control_table). Half the vdpbf16ps of the dense pair strips,
// each after a byte shuffle of the row's four x broadcast (in every 128-bit lane, so the
// in-lane shuffle reaches all four): Zen 4 runs the shuffles beside the dot products only
// in part, so in L1 this tile ran 1.22-1.29x the dense tile over the same 2:4 weight
// (192 x 384..4096 x 1536..4096, 1 thread; benchmarks/NOTES.md, session 22), not 2x.
// c[i][0 .. 32) += for each group q < nq: w0 x[i][4q + i0] + w1 x[i][4q + i1].
template <int MR>
inline void quad_tile(int64_t nq, const uint16_t* const* xr, const uint32_t* b, float* c, int64_t ldc) {
  __m512 acc[MR][2];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 2; ++v) acc[i][v] = _mm512_loadu_ps(c + i * ldc + 16 * v);
  for (int64_t q = 0; q < nq; ++q) {
    const uint32_t* group = b + q * 2 * kNR;
    const __m512bh w0 = as_bh(_mm512_loadu_si512(group)), w1 = as_bh(_mm512_loadu_si512(group + 16));
    const __m512i pick0 = _mm512_loadu_si512(group + kNR), pick1 = _mm512_loadu_si512(group + kNR + 16);
    for (int i = 0; i < MR; ++i) {
      long long four;  // x[i][4q .. 4q + 4) as bf16 bits (memcpy: any alignment)
      std::memcpy(&four, xr[i] + 4 * q, sizeof four);
      const __m512i quad = _mm512_set1_epi64(four);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], as_bh(_mm512_shuffle_epi8(quad, pick0)), w0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], as_bh(_mm512_shuffle_epi8(quad, pick1)), w1);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 2; ++v) _mm512_storeu_ps(c + i * ldc + 16 * v, acc[i][v]);
}

// The vpshufb controls of the 16 possible 2:4 metadata nibbles (kept positions i0 | i1 << 2),
// as 32-bit lanes: bytes 2 i0, 2 i0 + 1 (x[i0], low half) and 2 i1, 2 i1 + 1 (x[i1]) of the
// four bf16 x; index a vector of nibbles with _mm512_permutexvar_epi32.
inline __m512i quad_control_table() {
  alignas(64) int32_t words[16];
  for (int nibble = 0; nibble < 16; ++nibble) {
    const int i0 = nibble & 3, i1 = nibble >> 2;
    words[nibble] = (2 * i0) | (2 * i0 + 1) << 8 | (2 * i1) << 16 | (2 * i1 + 1) << 24;
  }
  return _mm512_load_si512(words);
}

// The register tile of each strip form: tile<MR>(kc, ...) runs MR rows of x over kc k of a strip.
struct PairStrips {  // dense: pair rows of kNR units (panel packers, from_fp32)
  template <int MR>
  static void tile(int64_t kc, const uint16_t* const* xr, const uint32_t* b, float* c, int64_t ldc) {
    micro_tile<MR>(kc / 2, xr, b, c, ldc);
  }
};
struct QuadStrips {  // 2:4: groups of 4 k as above (k0 and kc multiples of 4)
  template <int MR>
  static void tile(int64_t kc, const uint16_t* const* xr, const uint32_t* b, float* c, int64_t ldc) {
    quad_tile<MR>(kc / 4, xr, b, c, ldc);
  }
};

template <class Strips, int MR>
inline void micro_rows(int mr, int64_t kc, const uint16_t* const* xr, const uint32_t* b, float* c, int64_t ldc) {
  if constexpr (MR >= 1) {
    if (mr == MR) return Strips::template tile<MR>(kc, xr, b, c, ldc);
    micro_rows<Strips, MR - 1>(mr, kc, xr, b, c, ldc);
  }
}

// x's pairs as register tiles of MR rows read them: rows in blocks of MR (the last may be
// shorter), block b holding pair p of its row r at block + p * rows + r; block b starts at
// unit b * MR * K / 2. Built once per call (every task reads its slices).
template <int MR>
struct TileRows {
  TileRows(const Bf16Rows& x, int64_t M, int64_t K) : buf(static_cast<size_t>(M * K / 2) * sizeof(uint32_t)), pairs(K / 2) {
    uint32_t* dst = buf.as<uint32_t>();
    for (int64_t m0 = 0; m0 < M; m0 += MR) {
      const int64_t mr = imin(MR, M - m0);
      for (int64_t r = 0; r < mr; ++r) {
        const uint16_t* src = x.row(m0 + r, 0);
        for (int64_t p = 0; p < pairs; ++p) dst[m0 * pairs + p * mr + r] = pair_at(src + 2 * p);
      }
    }
  }
  // Block starting at row m0 (a multiple of MR) of mr rows, from pair p.
  const uint32_t* at(int64_t m0, int64_t mr, int64_t p) const { return buf.as<uint32_t>() + m0 * pairs + p * mr; }
  AlignedBuffer buf;
  int64_t pairs;
};

// out = epilogue(x @ W^T) with x (M rows of dtype d, row stride in elements) rounded to bf16
// and W given by a packer of Strips' form (pair packers, see from_fp32; 2:4 quad packers). K
// must be even (a pair never straddles a row's end); every slice of K but the last starts
// and ends at a multiple of k_align (even: a packer's unit of k, e.g. 8 for the 2:4 lanes'
// steps). A strip of kc k takes at most 16 kc units (a pair strip kc / 2 rows of kNR, a quad
// strip kc / 4 groups of 2 kNR). The epilogue takes a task's block of rows, as panel_gemm.h's.
template <class Strips = PairStrips, class Pack, class Epilogue>
void gemm_packed(const void* x, int64_t x_row_stride, DType d, int64_t M, int64_t N, int64_t K, int num_threads,
                 const Pack& pack, const Epilogue& epilogue, int64_t k_align = 2) {
  constexpr int64_t MC = panel::kMC;
  static_assert(MC % kMR == 0, "a task's rows are whole register tiles but the last");
  if (M <= 0 || N <= 0) return;
  const int64_t slices = imax(1, (K + kMaxKC - 1) / kMaxKC);
  const int64_t KC = ((K + slices - 1) / slices + k_align - 1) / k_align * k_align;
  const Bf16Rows rows(x, x_row_stride, d, M, K, num_threads);
  const int64_t mtasks = (M + MC - 1) / MC, ntasks = (N + kNC - 1) / kNC;
  const int64_t tasks = mtasks * ntasks;
  parallel_dynamic(tasks, M * N * K < panel::kSerialWork ? 1 : num_threads, [&](auto take) {
    AlignedBuffer panel_buf(static_cast<size_t>(KC * kNC) * sizeof(float));
    AlignedBuffer sums_buf(static_cast<size_t>(MC * kNC) * sizeof(float));
    float* bp = panel_buf.as<float>();
    float* sums = sums_buf.as<float>();
    for (int64_t t; (t = take()) < tasks;) {
      // Column blocks vary fastest: tasks running at once share the same rows of x.
      const int64_t m0 = t / ntasks * MC, n0 = t % ntasks * kNC;
      const int64_t mc = imin(MC, M - m0), nc = imin(kNC, N - n0);
      std::memset(sums, 0, static_cast<size_t>(mc * kNC) * sizeof(float));
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = imin(KC, K - k0);
        pack(n0, nc, k0, kc, reinterpret_cast<uint32_t*>(bp));
        for (int64_t s = 0; s < nc; s += kNR) {
          const uint32_t* strip = reinterpret_cast<const uint32_t*>(bp + s * kc);
          for (int64_t i = 0; i < mc; i += kMR) {
            const int mr = static_cast<int>(imin(kMR, mc - i));
            const uint16_t* xr[kMR];
            for (int r = 0; r < mr; ++r) xr[r] = rows.row(m0 + i + r, k0);
            micro_rows<Strips, kMR>(mr, kc, xr, strip, sums + i * kNC + s, kNC);
          }
        }
      }
      epilogue(sums, kNC, m0, mc, n0, nc);
    }
  });
}

}  // namespace panel_bf16

}  // namespace
}  // namespace bigperf::cpu
