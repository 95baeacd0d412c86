// The vector fused-linear kernel, written once over a vector-traits class V
// (vec_avx2.h, vec_avx512.h) and instantiated by fused_linear_<isa>.cpp.
//
// Regime: small M (decode, M <= ~16), where the weight stream from memory is the cost.
//   * Dot-product form: each (x row, weight row) pair keeps a vector accumulator along K,
//     reduced once at the end. Weights are read in their storage dtype and widened in
//     registers; nothing is converted or copied per call.
//   * x is packed once per call (fp32, zero-padded to whole K blocks, bf16-weight order),
//     so the inner loop is loads + FMAs and K tails never read past a row.
//   * Register tile: R weight rows x MB rows of x. All rows of x (up to kMaxRows) run
//     against one tile of weights before the next, so weights come from memory once
//     and from L1/L2 for the later blocks of rows. (Cutting K into chunks so that the
//     packed x stays in L1 measured 3-10% slower at M = 8..32, K = 4096 and 14336: the
//     hardware prefetchers stream x from L2 well enough; see benchmarks/NOTES.md.)
//   * Threads take groups of kGroup columns in turn; the epilogue (bias, activation,
//     residual, cast with round-to-nearest-even) runs on each group while it is in cache.
// Include only from ISA translation units (anonymous namespace: see vec_avx2.h).
#pragma once
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/epilogue.h"
#include "cpu/fused_linear.h"
#include "cpu/kernel_util.h"
#include "cpu/panel_gemm.h"
#include "cpu/thread_pool.h"
#include "cpu/vec_activation.h"

namespace bigperf::cpu {
namespace {

// Rows of x per pass over the weights; M is split into balanced passes (M = 33 runs
// 17 + 16, not 32 + 1, which would stream all weights again for a single row).
constexpr int64_t kMaxRows = 32;
// Software prefetch distance along a weight row. Prefetching the next tile's rows instead
// (or as well), or 2-16 KB ahead, measured no better (benchmarks/NOTES.md); but until session
// 26 the compiler had deleted the bf16 / fp16 tiles' prefetches, so for those it is untested.
constexpr int64_t kPrefetchBytes = 1024;
// Below this many multiply-adds one thread is faster than waking the pool.
constexpr int64_t kSerialWork = int64_t{1} << 18;

// Output columns per epilogue group, and the thread grain: a whole number of R-row tiles
// and of vectors.
template <int R>
constexpr int64_t kGroup = 32 * R;

struct PlainX {};  // marker: x packed as fp32
struct Bf16X {};   // marker: x packed as bf16 pairs for V::dot_bf16 (x and W both bf16)

// Shared, read-only state of one pass over the weights with up to kMaxRows rows of x.
struct Pass {
  const FusedLinearArgs* a;
  int64_t m0, ms;         // rows of x in this pass
  int64_t kpad;           // K rounded up to whole blocks: row stride of the packed x
  int64_t full_blocks;    // K / block
  int64_t k_tail;         // K % block
  const void* xp;         // packed x, ms rows of kpad elements
};

// Where the first block of rows prefetches: `ahead` bytes along each weight row,
// continuing past a row's end into the same row of the next tile (`next` bytes on) rather
// than into the row after it, which this tile is reading already. Short rows need this: at
// K = 768 (bf16, 1.5 KB a row) most of a row is within the distance of its start. fp32
// weights, 768 x 12288 at M = 1 from memory: 1.20x with the wrap (Zen 3, benchmarks/NOTES.md,
// session 26). Prefetches never fault: past the weight's end they are dropped.
struct Prefetch {
  bool on = false;
  int64_t row_bytes = 0;  // bytes of K in one weight row
  int64_t next = 0;       // from a row of this tile to the same row of the next tile
  int64_t ahead = kPrefetchBytes;  // distance along each row
};

// One prefetch per 64-byte line of each row: blocks of 32 bytes skip every other one
// (two per line measured 4% slower with L3-resident weights, 14% at M = 1 from DRAM).
template <int64_t BB, int R>
inline void prefetch_block(const char* const* w, int64_t b, const Prefetch& pf) {
  if constexpr (BB < 64) {
    if (b & (64 / BB - 1)) return;
  }
  for (int64_t o = b * BB + pf.ahead; o < b * BB + pf.ahead + (BB < 64 ? 64 : BB); o += 64) {
    const int64_t at = o < pf.row_bytes ? o : o - pf.row_bytes + pf.next;
    for (int r = 0; r < R; ++r) prefetch_l1(w[r] + at);
  }
}

// c[m][r] += W rows . x rows over half h of K block b.
template <class V, DType WD, int R, int MB>
inline void half_block(const char* const* w, int64_t b, int h, const float* xp, int64_t xs,
                       typename V::vec (&c)[MB][R]) {
  constexpr int W = V::W;
  constexpr int64_t BB = 2 * W * element_size(WD);
  typename V::vec wv[R];
  for (int r = 0; r < R; ++r) wv[r] = V::template wload<WD>(w[r] + b * BB, h);
  for (int m = 0; m < MB; ++m) {
    const typename V::vec xv = V::loadu(xp + m * xs + b * 2 * W + h * W);
    for (int r = 0; r < R; ++r) c[m][r] = V::fmadd(wv[r], xv, c[m][r]);
  }
}

// acc[m][r] += dot(W rows, x rows) over nb K blocks. W row r starts at w[r], x row m at
// xp + m * xs. pf: prefetch ahead in W (the first block of rows, which streams W).
template <class V, DType WD, int R, int MB>
inline void tile_fp32x(const char* const* w, int64_t nb, const float* xp, int64_t xs,
                       typename V::vec* acc, const Prefetch& pf) {
  using vec = typename V::vec;
  constexpr int64_t BB = 2 * V::W * element_size(WD);  // bytes of one K block of one row
  vec c[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) c[m][r] = acc[m * R + r];
  if constexpr (MB * R >= 4) {
    for (int64_t b = 0; b < nb; ++b) {
      if (pf.on) prefetch_block<BB, R>(w, b, pf);
      half_block<V, WD, R, MB>(w, b, 0, xp, xs, c);
      half_block<V, WD, R, MB>(w, b, 1, xp, xs, c);
    }
  } else {
    // Fewer than 4 accumulators would wait on the FMA's latency: the halves of two blocks
    // add into 4 chains.
    vec d[MB][R], e[MB][R], f[MB][R];
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < R; ++r) d[m][r] = e[m][r] = f[m][r] = V::zero();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      if (pf.on) prefetch_block<BB, R>(w, b, pf);
      half_block<V, WD, R, MB>(w, b, 0, xp, xs, c);
      half_block<V, WD, R, MB>(w, b, 1, xp, xs, d);
      if (pf.on) prefetch_block<BB, R>(w, b + 1, pf);
      half_block<V, WD, R, MB>(w, b + 1, 0, xp, xs, e);
      half_block<V, WD, R, MB>(w, b + 1, 1, xp, xs, f);
    }
    if (b < nb) {
      if (pf.on) prefetch_block<BB, R>(w, b, pf);
      half_block<V, WD, R, MB>(w, b, 0, xp, xs, c);
      half_block<V, WD, R, MB>(w, b, 1, xp, xs, d);
    }
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < R; ++r) c[m][r] = V::add(V::add(c[m][r], d[m][r]), V::add(e[m][r], f[m][r]));
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) acc[m * R + r] = c[m][r];
}

// Same with x and W both bf16, through the ISA's bf16 pair dot product (one instruction
// per 2*W elements instead of two conversions and two FMAs).
template <class V, int R, int MB>
inline void tile_bf16x(const char* const* w, int64_t nb, const uint16_t* xp, int64_t xs,
                       typename V::vec* acc, const Prefetch& pf) {
  using vec = typename V::vec;
  constexpr int W = V::W;
  constexpr int64_t BB = 2 * W * 2;
  vec c[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) c[m][r] = acc[m * R + r];
  for (int64_t b = 0; b < nb; ++b) {
    if (pf.on) prefetch_block<BB, R>(w, b, pf);
    typename V::pairs wv[R];
    for (int r = 0; r < R; ++r) wv[r] = V::load_pairs(w[r] + b * BB);
    for (int m = 0; m < MB; ++m) {
      const typename V::pairs xv = V::load_pairs(xp + m * xs + b * 2 * W);
      for (int r = 0; r < R; ++r) c[m][r] = V::dot_bf16(c[m][r], wv[r], xv);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) acc[m * R + r] = c[m][r];
}

// Runs the tile for a block of mb (<= MB) rows of x: the register tile is a template.
template <class V, DType WD, class XK, int R, int MB>
inline void tile_rows(int mb, const char* const* w, int64_t nb, const void* xp, int64_t xs,
                      typename V::vec* acc, const Prefetch& pf) {
  if constexpr (MB >= 1) {
    if (mb == MB) {
      if constexpr (std::is_same_v<XK, Bf16X>)
        tile_bf16x<V, R, MB>(w, nb, static_cast<const uint16_t*>(xp), xs, acc, pf);
      else
        tile_fp32x<V, WD, R, MB>(w, nb, static_cast<const float*>(xp), xs, acc, pf);
      return;
    }
    tile_rows<V, WD, XK, R, MB - 1>(mb, w, nb, xp, xs, acc, pf);
  }
}

// The fused linear's epilogue: act(sums + bias) + residual in x's dtype (epilogue.h).
inline EpilogueArgs epilogue_of(const FusedLinearArgs& a) {
  return EpilogueArgs{a.out, a.out_row_stride, a.x_dtype, a.act, a.bias, nullptr, a.residual, a.residual_row_stride};
}

// Packs rows m0..m0+ms of x as fp32, kpad per row, zero-padded; with deint, each block of
// 2*W elements is stored as its even then its odd elements (the bf16 weight order).
template <class V>
void pack_x_fp32(const FusedLinearArgs& a, int64_t m0, int64_t ms, int64_t kpad, bool deint, float* dst) {
  using vec = typename V::vec;
  constexpr int W = V::W;
  const DType d = a.x_dtype;
  const int64_t es = element_size(d);
  for (int64_t m = 0; m < ms; ++m) {
    const char* src = static_cast<const char*>(a.x) + (m0 + m) * a.x_row_stride * es;
    float* row = dst + m * kpad;
    for (int64_t k = 0; k < kpad; k += 2 * W) {
      vec x0, x1;
      if (k + 2 * W <= a.K) {
        x0 = load_as<V>(src + k * es, d);
        x1 = load_as<V>(src + (k + W) * es, d);
      } else {
        alignas(64) char tb[2 * W * 4] = {};
        std::memcpy(tb, src + k * es, (a.K - k) * es);
        x0 = load_as<V>(tb, d);
        x1 = load_as<V>(tb + W * es, d);
      }
      if (deint) V::deinterleave(x0, x1, x0, x1);
      V::storeu(row + k, x0);
      V::storeu(row + k + W, x1);
    }
  }
}

void pack_x_bf16(const FusedLinearArgs& a, int64_t m0, int64_t ms, int64_t kpad, uint16_t* dst) {
  if (a.K == 0) return;  // x may be null then
  for (int64_t m = 0; m < ms; ++m) {
    const char* src = static_cast<const char*>(a.x) + (m0 + m) * a.x_row_stride * 2;
    std::memcpy(dst + m * kpad, src, a.K * 2);
    std::memset(dst + m * kpad + a.K, 0, (kpad - a.K) * 2);
  }
}

// One thread's share: output columns [n_begin, n_end) for the rows of x in the pass.
template <class V, DType WD, class XK, int R, int MB>
void run_columns(const Pass& p, int64_t n_begin, int64_t n_end) {
  using vec = typename V::vec;
  constexpr int64_t KB = 2 * V::W;
  constexpr int64_t ES = element_size(WD);
  constexpr int64_t XES = std::is_same_v<XK, Bf16X> ? 2 : 4;
  const FusedLinearArgs& a = *p.a;
  alignas(64) vec acc[kMaxRows * R];
  constexpr int64_t G = kGroup<R>;
  alignas(64) float sums[kMaxRows][G];
  alignas(64) char tail[R][KB * ES];
  const char* xp = static_cast<const char*>(p.xp);
  const int64_t mblocks = (p.ms + MB - 1) / MB;  // balanced blocks of at most MB rows
  // Block i is rows [bound[i], bound[i + 1]), worked out once here rather than with two
  // divisions in every tile (a 1-row tile at M = 1 is ~100 multiply-adds).
  int64_t bound[kMaxRows + 1];
  for (int64_t i = 0; i <= mblocks; ++i) bound[i] = p.ms * i / mblocks;
  // One row at a time reads the weight as one stream: prefetch as far ahead as R rows would.
  const Prefetch streams{true, a.K * ES, R * a.w_row_stride * ES, R == 1 ? kPrefetchBytes * V::kRowsM1 : kPrefetchBytes};
  const Prefetch none{};
  for (int64_t g0 = n_begin; g0 < n_end; g0 += G) {
    const int64_t gcnt = imin(G, n_end - g0);
    for (int64_t t0 = 0; t0 < gcnt; t0 += R) {
      const char* wrow[R] = {};
      for (int r = 0; r < R && a.K > 0; ++r) {  // W may be null when K == 0
        // Past the last column the tile repeats the last row: valid memory, result unused.
        const int64_t n = g0 + imin(t0 + r, gcnt - 1);
        wrow[r] = static_cast<const char*>(a.w) + n * a.w_row_stride * ES;
      }
      for (int64_t i = 0; i < p.ms * R; ++i) acc[i] = V::zero();
      if (p.full_blocks) {
        // Only the first block of rows reads the weights from memory: it prefetches.
        for (int64_t i = 0; i < mblocks; ++i) {
          const int64_t mb0 = bound[i], mb1 = bound[i + 1];
          tile_rows<V, WD, XK, R, MB>(static_cast<int>(mb1 - mb0), wrow, p.full_blocks, xp + mb0 * p.kpad * XES,
                                      p.kpad, acc + mb0 * R, i == 0 ? streams : none);
        }
      }
      if (p.k_tail) {
        // The last partial block goes through zero-padded copies of the row ends.
        const char* w[R];
        for (int r = 0; r < R; ++r) {
          std::memset(tail[r], 0, sizeof tail[r]);
          std::memcpy(tail[r], wrow[r] + p.full_blocks * KB * ES, p.k_tail * ES);
          w[r] = tail[r];
        }
        for (int64_t i = 0; i < mblocks; ++i) {
          const int64_t mb0 = bound[i], mb1 = bound[i + 1];
          tile_rows<V, WD, XK, R, MB>(static_cast<int>(mb1 - mb0), w, 1,
                                      xp + (mb0 * p.kpad + p.full_blocks * KB) * XES, p.kpad,
                                      acc + mb0 * R, none);
        }
      }
      for (int64_t m = 0; m < p.ms; ++m)
        for (int r = 0; r < R; ++r) sums[m][t0 + r] = V::hsum(acc[m * R + r]);
    }
    epilogue_rows<V>(epilogue_of(a), sums[0], G, p.m0, p.ms, g0, gcnt);
  }
}

// Threads take groups of columns from a shared counter rather than fixed halves: on a
// shared machine one core is often slowed by another tenant, and a static split would
// leave the call waiting for it.
template <class V, DType WD, class XK, int R, int MB>
void run_dynamic(const Pass& p, int threads) {
  constexpr int64_t G = kGroup<R>;
  const int64_t n = p.a->N;
  const int64_t groups = (n + G - 1) / G;
  std::atomic<int64_t> next{0};
  const int64_t workers = imin(threads, groups);
  parallel_for(workers, static_cast<int>(workers), 1, [&](int64_t, int64_t) {
    for (int64_t g = next.fetch_add(1, std::memory_order_relaxed); g < groups;
         g = next.fetch_add(1, std::memory_order_relaxed))
      run_columns<V, WD, XK, R, MB>(p, g * G, imin(n, (g + 1) * G));
  });
}

template <class V, DType WD, class XK>
void run_pass(const Pass& p, int threads) {
  if constexpr (V::kShortRowBytes > 0) {
    if (p.ms == 1 && p.a->K * element_size(WD) <= V::kShortRowBytes) {
      run_dynamic<V, WD, XK, 1, 1>(p, threads);
      return;
    }
  }
  if (p.ms == 1)
    run_dynamic<V, WD, XK, V::kRowsM1, 1>(p, threads);
  else
    run_dynamic<V, WD, XK, V::kRowsMM, V::kMaxMB>(p, threads);
}

template <class V>
void fused_linear_vec(const FusedLinearArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  constexpr int64_t KB = 2 * V::W;
  bool bf16x = false;
  if constexpr (V::kBf16Dot) bf16x = a.x_dtype == DType::bf16 && a.w_dtype == DType::bf16;
  Pass p{};
  p.a = &a;
  p.kpad = (a.K + KB - 1) / KB * KB;
  p.full_blocks = a.K / KB;
  p.k_tail = a.K % KB;
  const int64_t rows = imin(a.M, kMaxRows);
  const int64_t xes = bf16x ? 2 : 4;
  AlignedBuffer buffer(static_cast<size_t>(rows * p.kpad * xes));
  void* xbuf = buffer.ptr;
  p.xp = xbuf;
  const int threads = a.M * a.N * a.K < kSerialWork ? 1 : a.num_threads;
  const int64_t passes = (a.M + kMaxRows - 1) / kMaxRows;
  for (int64_t i = 0; i < passes; ++i) {
    const int64_t m0 = a.M * i / passes;
    p.m0 = m0;
    p.ms = a.M * (i + 1) / passes - m0;
    if (bf16x) {
      pack_x_bf16(a, m0, p.ms, p.kpad, static_cast<uint16_t*>(xbuf));
      if constexpr (V::kBf16Dot) run_pass<V, DType::bf16, Bf16X>(p, threads);
      continue;
    }
    pack_x_fp32<V>(a, m0, p.ms, p.kpad, a.w_dtype == DType::bf16, static_cast<float*>(xbuf));
    switch (a.w_dtype) {
      case DType::f32: run_pass<V, DType::f32, PlainX>(p, threads); break;
      case DType::f16: run_pass<V, DType::f16, PlainX>(p, threads); break;
      case DType::bf16: run_pass<V, DType::bf16, PlainX>(p, threads); break;
    }
  }
}

// run(w8, w1) with the weight's row loaders for panel_gemm.h's pack_strips: w8(n, k) eight
// elements of row n from k as fp32, w1(n, k) one (every weight dtype is exact in fp32).
template <class Run>
void with_weight_loaders(const FusedLinearArgs& a, const Run& run) {
  const char* w = static_cast<const char*>(a.w);
  const int64_t ws = a.w_row_stride;
  const uint16_t* wh = reinterpret_cast<const uint16_t*>(w);
  switch (a.w_dtype) {
    case DType::f32: {
      const float* wf = reinterpret_cast<const float*>(w);
      run([wf, ws](int64_t n, int64_t k) { return _mm256_loadu_ps(wf + n * ws + k); },
          [wf, ws](int64_t n, int64_t k) { return wf[n * ws + k]; });
      break;
    }
    case DType::bf16:
      run([wh, ws](int64_t n, int64_t k) {
            const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wh + n * ws + k)));
            return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
          },
          [wh, ws](int64_t n, int64_t k) {
            const uint32_t bits = static_cast<uint32_t>(wh[n * ws + k]) << 16;
            float f;
            std::memcpy(&f, &bits, sizeof f);
            return f;
          });
      break;
    case DType::f16:
      run([wh, ws](int64_t n, int64_t k) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wh + n * ws + k))); },
          [wh, ws](int64_t n, int64_t k) {
            alignas(16) uint16_t one[8] = {wh[n * ws + k]};
            return _mm256_cvtss_f32(_mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(one))));
          });
      break;
  }
}

// The same op in the panel form (panel_gemm.h), for M where the GEMM is bound by
// arithmetic; the dispatcher times it against fused_linear_vec and PyTorch's GEMM.
template <class V>
void fused_linear_panel_vec(const FusedLinearArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  constexpr int64_t KB = 2 * V::W;
  // x as fp32 rows: read in place when it already is, else converted once per call.
  const float* x = static_cast<const float*>(a.x);
  int64_t xs = a.x_row_stride;
  const int64_t kpad = (a.K + KB - 1) / KB * KB;
  AlignedBuffer converted(a.x_dtype == DType::f32 ? 0 : static_cast<size_t>(a.M * kpad) * sizeof(float));
  if (a.x_dtype != DType::f32) {
    pack_x_fp32<V>(a, 0, a.M, kpad, false, converted.as<float>());
    x = converted.as<float>();
    xs = kpad;
  }
  const EpilogueArgs out = epilogue_of(a);
  auto epilogue = [&](const float* sums, int64_t ld, int64_t m0, int64_t rows, int64_t n0, int64_t cnt) {
    epilogue_rows<V>(out, sums, ld, m0, rows, n0, cnt);
  };
  with_weight_loaders(a, [&](const auto& w8, const auto& w1) {
    panel::gemm<V>(x, xs, a.M, a.N, a.K, a.num_threads, w8, w1, epilogue);
  });
}

}  // namespace
}  // namespace bigperf::cpu
