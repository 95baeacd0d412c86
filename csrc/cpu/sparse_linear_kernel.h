// The ISA-independent half of the vector sparse kernels, written once over a vector-traits
// class V (vec_avx2.h, vec_avx512.h): x packing, the epilogue, the 2:4 driver (passes over
// x rows, threads over N, epilogue per group of columns) and the whole BSR kernel. The 2:4
// inner loops differ per ISA and live in sparse_linear_<isa>.cpp.
// Include only from ISA translation units, after the traits header (anonymous namespace:
// see vec_avx2.h for why; for the same reason nothing here instantiates std templates that
// another unit could share, such as std::vector).
#pragma once
#include <cstdint>
#include <cstring>

#include "cpu/kernel_util.h"
#include "cpu/sparse_linear.h"
#include "cpu/thread_pool.h"
#include "cpu/epilogue.h"

namespace bigperf::cpu {
namespace {

constexpr int64_t kSpRowsPerPass = 16;  // rows of x per pass over the weights
constexpr int64_t kSpGroup = 64;        // output columns per epilogue group (2:4)
constexpr int64_t kSpItemCols = 4 * kSpGroup;  // output columns per work item (2:4)
// Below this many multiply-adds one thread is faster than waking the pool.
constexpr int64_t kSpSerialWork = int64_t{1} << 18;
constexpr int64_t kBsrChunksPerThread = 16;

// Rows m0 .. m0+ms of x as fp32 into dst (row stride dst_stride >= K), zero from K to
// dst_stride; nothing is read past a row.
template <class V>
void sp_pack_rows(const void* x, int64_t row_stride, DType d, int64_t m0, int64_t ms, int64_t K,
                  float* dst, int64_t dst_stride) {
  constexpr int W = V::W;
  const int64_t es = element_size(d);
  for (int64_t m = 0; m < ms; ++m) {
    const char* src = static_cast<const char*>(x) + (m0 + m) * row_stride * es;
    float* row = dst + m * dst_stride;
    int64_t k = 0;
    for (; k + W <= K; k += W) V::storeu(row + k, load_as<V>(src + k * es, d));
    if (k < K) {
      alignas(64) char tb[W * 4] = {};
      std::memcpy(tb, src + k * es, (K - k) * es);
      alignas(64) float fb[W];
      V::storeu(fb, load_as<V>(tb, d));
      std::memcpy(row + k, fb, (K - k) * sizeof(float));
    }
    for (k = K; k < dst_stride; ++k) row[k] = 0.f;
  }
}

// ----------------------------------------------------------------------------- 2:4 driver

// Tile is the ISA's 2:4 inner kernel:
//   Tile::R                       weight rows per tile
//   Tile::packed_stride(K)        floats per packed row of x
//   Tile::pack_x(src, K, dst)     one fp32 row of x (zero past K) into the Tile's layout
//   Tile::run(a, rows, xp, xps, ms, sums)   sums[m * R + r] = dot(x row m, W row rows[r]),
//                                 before the int8 scale, for the ms rows of the pass
template <class V, class Tile>
void s24_drive(const Sparse24Args& a) {
  if (a.M <= 0 || a.N <= 0) return;
  constexpr int R = Tile::R;
  static_assert(kSpGroup % R == 0, "a group is a whole number of tiles");
  const int64_t kpad = (a.K + 63) / 64 * 64;
  const int64_t xps = Tile::packed_stride(a.K);
  const int64_t rows = imin(a.M, kSpRowsPerPass);
  AlignedBuffer plain(static_cast<size_t>(kpad) * 4);
  AlignedBuffer packed(static_cast<size_t>(rows * xps) * 4);
  const int threads = a.M * a.N * a.K < kSpSerialWork ? 1 : a.num_threads;
  for (int64_t m0 = 0; m0 < a.M; m0 += kSpRowsPerPass) {
    const int64_t ms = imin(kSpRowsPerPass, a.M - m0);
    for (int64_t m = 0; m < ms; ++m) {
      sp_pack_rows<V>(a.x, a.x_row_stride, a.x_dtype, m0 + m, 1, a.K, plain.as<float>(), kpad);
      Tile::pack_x(plain.as<float>(), a.K, packed.as<float>() + m * xps);
    }
    const int64_t items = (a.N + kSpItemCols - 1) / kSpItemCols;
    parallel_items(items, threads, [&](int64_t item) {
      const int64_t n_begin = item * kSpItemCols, n_end = imin(a.N, n_begin + kSpItemCols);
      alignas(64) float sums[kSpRowsPerPass][kSpGroup];
      alignas(64) float tile[kSpRowsPerPass * R];
      for (int64_t g0 = n_begin; g0 < n_end; g0 += kSpGroup) {
        const int64_t gcnt = imin(kSpGroup, n_end - g0);
        for (int64_t t0 = 0; t0 < gcnt; t0 += R) {
          int64_t idx[R];
          // Past the last column the tile repeats the last row: valid memory, result unused.
          for (int r = 0; r < R; ++r) idx[r] = g0 + imin(t0 + r, gcnt - 1);
          Tile::run(a, idx, packed.as<float>(), xps, ms, tile);
          for (int64_t m = 0; m < ms; ++m)
            for (int r = 0; r < R && t0 + r < gcnt; ++r) sums[m][t0 + r] = tile[m * R + r];
        }
        if (a.scale)  // int8 values: fp32 sums, one multiply per output
          for (int64_t m = 0; m < ms; ++m)
            for (int64_t j = 0; j < gcnt; ++j) sums[m][j] *= a.scale[g0 + j];
        epilogue_rows<V>(EpilogueArgs{a.out, a.out_row_stride, a.x_dtype, a.act, a.bias}, sums[0], kSpGroup, m0, ms, g0,
                         gcnt);
      }
    });
  }
}

// ----------------------------------------------------------------------------- BSR
//
// Per block row, the stored blocks are walked once per group of RB "pseudo rows" with
// register accumulators (RB x MB of them: MB rows of x), then reduced and handed to the
// epilogue. A pseudo row is one row of a block, or rpv rows when the block width bk
// divides the vector width (rpv = W / bk rows of bk elements are contiguous in a block and
// fill one vector; x segments are then packed repeated rpv times). The group's rows of
// every block of the row are contiguous, and the whole block row (at most a few hundred KB)
// stays in L2 between groups, so weights still come from memory once.
// bf16 blocks whose pseudo rows are whole 2W-element chunks use the even/odd widening of
// the fused-linear traits (a shift and a mask, no shuffle), with x packed to match.

// Block rows [begin, end) for chunk c of `chunks`, balanced by stored blocks (plus one per
// block row for the epilogue) rather than by block rows: densities differ between rows.
inline void bsr_chunk(const int32_t* row_ptr, int64_t block_rows, int64_t chunks, int64_t c, int64_t& begin,
                      int64_t& end) {
  const int64_t total = row_ptr[block_rows] + block_rows;
  auto boundary = [&](int64_t t) {
    const int64_t target = total * t / chunks;
    int64_t lo = 0, hi = block_rows;  // first br with row_ptr[br] + br >= target
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (row_ptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    return lo;
  };
  begin = c == 0 ? 0 : boundary(c);
  end = c + 1 == chunks ? block_rows : boundary(c + 1);
}

struct BsrShape {
  int64_t rpv;    // block rows per pseudo row
  int64_t len;    // elements per pseudo row (rpv * bk)
  bool pairs;     // len % 2W == 0: chunks of 2W elements read as two halves (V::wload)
  bool deint;     // pairs with bf16 values: x chunks packed as even then odd elements
  bool vector;    // false: plain loops (bk neither a multiple nor a divisor of W)
};

template <class V>
BsrShape bsr_shape(const BsrArgs& a) {
  constexpr int W = V::W;
  BsrShape sh{1, a.bk, false, false, true};
  if (W % a.bk == 0 && a.bk < W && a.bn % (W / a.bk) == 0) {
    sh.rpv = W / a.bk;
    sh.len = W;
  } else if (a.bk % W != 0) {
    sh.vector = false;
    return sh;
  }
  sh.pairs = sh.len % (2 * W) == 0;
  sh.deint = sh.pairs && a.values_dtype == DType::bf16;
  return sh;
}

// x rows of the pass as the kernel reads them: per block column its segment of len floats
// (the bk values of x, repeated rpv times, even/odd order per 2W chunk when deint).
template <class V>
void bsr_pack_x(const BsrArgs& a, const BsrShape& sh, int64_t m0, int64_t ms, float* plain, float* dst) {
  constexpr int W = V::W;
  if (sh.rpv == 1 && !sh.deint) {
    sp_pack_rows<V>(a.x, a.x_row_stride, a.x_dtype, m0, ms, a.K, dst, a.K);
    return;
  }
  sp_pack_rows<V>(a.x, a.x_row_stride, a.x_dtype, m0, ms, a.K, plain, a.K);
  const int64_t cols = a.K / a.bk;
  for (int64_t m = 0; m < ms; ++m)
    for (int64_t col = 0; col < cols; ++col) {
      const float* seg = plain + m * a.K + col * a.bk;
      float* out = dst + (m * cols + col) * sh.len;
      if (sh.deint) {
        for (int64_t c = 0; c < sh.len; c += 2 * W)
          for (int j = 0; j < W; ++j) {
            out[c + j] = seg[c + 2 * j];
            out[c + W + j] = seg[c + 2 * j + 1];
          }
      } else {
        for (int64_t q = 0; q < sh.rpv; ++q) std::memcpy(out + q * a.bk, seg, a.bk * sizeof(float));
      }
    }
}

// Pseudo rows p0 .. p0+RB of block row br for MB rows of x (packed row stride xs):
// sums[m * bn + block row]. Rows past the last pseudo row repeat it (result unused).
template <class V, DType VD, bool PAIRS, int RB, int MB>
void bsr_rows(const BsrArgs& a, const BsrShape& sh, int64_t br, int64_t p0, const float* xp, int64_t xs,
              float* sums) {
  using vec = typename V::vec;
  constexpr int W = V::W;
  constexpr int64_t ES = element_size(VD);
  constexpr int64_t CW = PAIRS ? 2 * W : W;  // elements per chunk
  const int64_t prow = a.bn / sh.rpv;
  const int64_t chunks = sh.len / CW;
  int64_t off[RB];
  for (int r = 0; r < RB; ++r) off[r] = imin(p0 + r, prow - 1) * sh.len * ES;
  vec acc[MB][RB];
  for (auto& row : acc)
    for (auto& v : row) v = V::zero();
  const char* vals = static_cast<const char*>(a.values);
  const int64_t block_bytes = a.bn * a.bk * ES;
  // The first group streams the blocks and the others read the rest of each block from
  // cache: prefetch whole blocks ahead in the first pass, since the hardware sees only a
  // strided pattern (RB rows of each block, then a gap). Within this machine's noise in
  // the measurements so far (benchmarks/NOTES.md), kept as the safe pattern for tall blocks.
  const int64_t ahead = block_bytes * (block_bytes < 1024 ? 1024 / block_bytes + 1 : 2);
  for (int64_t b = a.row_ptr[br]; b < a.row_ptr[br + 1]; ++b) {
    const float* xb = xp + a.col_indices[b] * sh.len;
    const char* blk = vals + b * block_bytes;
    if (p0 == 0)
      for (int64_t o = 0; o < block_bytes; o += 64) prefetch_l1(blk + ahead + o);
    for (int64_t c = 0; c < chunks; ++c) {
      vec x0[MB], x1[MB];
      for (int m = 0; m < MB; ++m) {
        x0[m] = V::loadu(xb + m * xs + c * CW);
        if constexpr (PAIRS) x1[m] = V::loadu(xb + m * xs + c * CW + W);
      }
      for (int r = 0; r < RB; ++r) {
        const char* w = blk + off[r] + c * CW * ES;
        if constexpr (PAIRS) {
          const vec w0 = V::template wload<VD>(w, 0), w1 = V::template wload<VD>(w, 1);
          for (int m = 0; m < MB; ++m) acc[m][r] = V::fmadd(w1, x1[m], V::fmadd(w0, x0[m], acc[m][r]));
        } else {
          const vec w0 = load_as<V>(w, VD);
          for (int m = 0; m < MB; ++m) acc[m][r] = V::fmadd(w0, x0[m], acc[m][r]);
        }
      }
    }
  }
  if constexpr (W == 8 && RB == 8) {
    // 8 horizontal sums at once (a block row's overhead matters at low density).
    if (sh.rpv == 1 && p0 + RB <= prow) {
      for (int m = 0; m < MB; ++m) {
        const __m256 t0 = _mm256_hadd_ps(acc[m][0], acc[m][1]), t1 = _mm256_hadd_ps(acc[m][2], acc[m][3]);
        const __m256 t2 = _mm256_hadd_ps(acc[m][4], acc[m][5]), t3 = _mm256_hadd_ps(acc[m][6], acc[m][7]);
        const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
        const __m256 v = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
        _mm256_storeu_ps(sums + m * a.bn + p0, v);
      }
      return;
    }
  }
  alignas(64) float lanes[W];
  for (int r = 0; r < RB && p0 + r < prow; ++r)
    for (int m = 0; m < MB; ++m) {
      if (sh.rpv == 1) {
        sums[m * a.bn + p0 + r] = V::hsum(acc[m][r]);
        continue;
      }
      V::storeu(lanes, acc[m][r]);
      for (int64_t q = 0; q < sh.rpv; ++q) {
        float t = 0.f;
        for (int64_t k = 0; k < a.bk; ++k) t += lanes[q * a.bk + k];
        sums[m * a.bn + (p0 + r) * sh.rpv + q] = t;
      }
    }
}

// The register tile for mb rows of x: RB pseudo rows as many as the budget allows (the
// accumulators take half the vector registers), no more than the block has.
template <class V, DType VD, bool PAIRS, int MB>
void bsr_block_row_mb(const BsrArgs& a, const BsrShape& sh, int64_t br, const float* xp, int64_t xs, float* sums) {
  constexpr int kBudget = V::W / MB;  // 8 of 16 ymm, 16 of 32 zmm
  const int64_t prow = a.bn / sh.rpv;
  const int64_t rb = prow >= kBudget ? kBudget : prow > 4 ? 8 : prow > 2 ? 4 : 2;
  for (int64_t p0 = 0; p0 < prow; p0 += rb) {
    if (rb >= 16 && kBudget >= 16)
      bsr_rows<V, VD, PAIRS, (kBudget >= 16 ? 16 : 2), MB>(a, sh, br, p0, xp, xs, sums);
    else if (rb >= 8 && kBudget >= 8)
      bsr_rows<V, VD, PAIRS, (kBudget >= 8 ? 8 : 2), MB>(a, sh, br, p0, xp, xs, sums);
    else if (rb >= 4 && kBudget >= 4)
      bsr_rows<V, VD, PAIRS, (kBudget >= 4 ? 4 : 2), MB>(a, sh, br, p0, xp, xs, sums);
    else
      bsr_rows<V, VD, PAIRS, 2, MB>(a, sh, br, p0, xp, xs, sums);
  }
}

// One block row for the ms rows of the pass, in blocks of up to 4 rows of x: the block
// row's values come from memory for the first and from cache for the others.
template <class V, DType VD, bool PAIRS>
void bsr_block_row(const BsrArgs& a, const BsrShape& sh, int64_t br, const float* xp, int64_t ms, float* sums) {
  const int64_t xs = a.K * sh.rpv;
  for (int64_t m = 0; m < ms; m += 4) {
    const float* x = xp + m * xs;
    float* s = sums + m * a.bn;
    switch (imin(4, ms - m)) {
      case 1: bsr_block_row_mb<V, VD, PAIRS, 1>(a, sh, br, x, xs, s); break;
      case 2: bsr_block_row_mb<V, VD, PAIRS, 2>(a, sh, br, x, xs, s); break;
      case 3: bsr_block_row_mb<V, VD, PAIRS, 2>(a, sh, br, x, xs, s);
              bsr_block_row_mb<V, VD, PAIRS, 1>(a, sh, br, x + 2 * xs, xs, s + 2 * a.bn); break;
      default: bsr_block_row_mb<V, VD, PAIRS, 4>(a, sh, br, x, xs, s); break;
    }
  }
}

// One block row, for block widths the vectors do not fit: plain loops.
template <class V, DType VD>
void bsr_block_row_plain(const BsrArgs& a, int64_t br, const float* xp, int64_t ms, float* sums) {
  constexpr int W = V::W;
  constexpr int64_t ES = element_size(VD);
  for (int64_t i = 0; i < ms * a.bn; ++i) sums[i] = 0.f;
  const char* vals = static_cast<const char*>(a.values);
  alignas(64) float wf[W];
  for (int64_t b = a.row_ptr[br]; b < a.row_ptr[br + 1]; ++b) {
    const float* xb = xp + a.col_indices[b] * a.bk;
    for (int64_t i = 0; i < a.bn; ++i) {
      const char* wrow = vals + (b * a.bn + i) * a.bk * ES;
      for (int64_t k0 = 0; k0 < a.bk; k0 += W) {
        const int64_t n = imin(W, a.bk - k0);
        alignas(64) char tb[W * 4] = {};
        std::memcpy(tb, wrow + k0 * ES, n * ES);
        V::storeu(wf, load_as<V>(tb, VD));
        for (int64_t m = 0; m < ms; ++m) {
          float t = 0.f;
          for (int64_t k = 0; k < n; ++k) t += wf[k] * xb[m * a.K + k0 + k];
          sums[m * a.bn + i] += t;
        }
      }
    }
  }
}

// The generic kernel has no special block-row kernel for one row of x; an ISA unit may
// pass its own (BsrPairedRowsM1 in sparse_linear_avx2.cpp) with the same interface.
struct BsrNoM1Kernel {
  template <DType VD>
  static bool fits(const BsrArgs&, const BsrShape&) { return false; }
  static void block_row(const BsrArgs&, int64_t, const float*, float*) {}
};

template <class V, DType VD, class M1>
void bsr_run(const BsrArgs& a) {
  const BsrShape sh = bsr_shape<V>(a);
  const int64_t block_rows = a.N / a.bn;
  const int64_t rows = imin(a.M, kSpRowsPerPass);
  const bool repack = sh.rpv > 1 || sh.deint;
  AlignedBuffer plain(static_cast<size_t>(repack ? rows * a.K : 1) * 4);
  AlignedBuffer packed(static_cast<size_t>(rows * a.K * sh.rpv + 1) * 4);
  const int threads = a.M * a.nnz * a.bn * a.bk < kSpSerialWork ? 1 : a.num_threads;
  // Chunks of block rows balanced by stored blocks, several per thread so that a thread
  // that starts late or runs slow (another tenant on its core) takes fewer.
  const int64_t chunks = threads == 1 ? 1 : imin(kBsrChunksPerThread * threads, block_rows);
  const bool m1 = M1::template fits<VD>(a, sh);
  for (int64_t m0 = 0; m0 < a.M; m0 += kSpRowsPerPass) {
    const int64_t ms = imin(kSpRowsPerPass, a.M - m0);
    bsr_pack_x<V>(a, sh, m0, ms, plain.as<float>(), packed.as<float>());
    parallel_items(chunks, threads, [&](int64_t c) {
      AlignedBuffer sum_buf(static_cast<size_t>(a.bn * ms) * 4);
      float* sums = sum_buf.as<float>();
      int64_t br_begin, br_end;
      bsr_chunk(a.row_ptr, block_rows, chunks, c, br_begin, br_end);
      for (int64_t br = br_begin; br < br_end; ++br) {
        if (ms == 1 && m1)
          M1::block_row(a, br, packed.as<float>(), sums);
        else if (!sh.vector)
          bsr_block_row_plain<V, VD>(a, br, packed.as<float>(), ms, sums);
        else if (sh.pairs)
          bsr_block_row<V, VD, true>(a, sh, br, packed.as<float>(), ms, sums);
        else
          bsr_block_row<V, VD, false>(a, sh, br, packed.as<float>(), ms, sums);
        epilogue_rows<V>(EpilogueArgs{a.out, a.out_row_stride, a.x_dtype, a.act, a.bias}, sums, a.bn, m0, ms, br * a.bn,
                         a.bn);
      }
    });
  }
}

template <class V, class M1 = BsrNoM1Kernel>
void bsr_dispatch(const BsrArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  switch (a.values_dtype) {
    case DType::f32: bsr_run<V, DType::f32, M1>(a); break;
    case DType::f16: bsr_run<V, DType::f16, M1>(a); break;
    case DType::bf16: bsr_run<V, DType::bf16, M1>(a); break;
  }
}

}  // namespace
}  // namespace bigperf::cpu
