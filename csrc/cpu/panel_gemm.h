// The panel GEMM: out = epilogue(x @ B^T) for M large enough that the GEMM is bound by
// arithmetic, not by the weight stream. Written once over a vector-traits class V
// (vec_avx2.h, vec_avx512.h) and a weight packer; used by the fused linear (fp32, fp16 and
// bf16 weights) and the weight-only int8 linear (codes and scales).
//
// Why a second form beside the dot-product kernels (fused_linear_kernel.h,
// int8_weight_kernel.h): those keep one accumulator per (x row, weight row) and reduce it
// at the end, which is right when the weights stream from memory (M <= ~16), but at
// M = 192 they reached 25-30 GMAC/s on a Zen 3 core against sgemm's 43 (benchmarks/NOTES.md).
// Here the weights are converted once per block into fp32 panels and reused by every row
// of x, and the register tile is an outer product (BLIS's form):
//   * micro-tile: MR rows of x (broadcast one element at a time) x NR = 2 vectors of
//     output columns; MR * 2 accumulators + 2 weight vectors + 1 broadcast fill the
//     register file (AVX2: 6 x 16, AVX-512: 12 x 32).
//   * a task is (MC rows of x, NC output columns): for each KC slice of K, the weights of
//     its NC columns are converted into a KC x NC panel (L2), then every MR block of rows
//     runs against each NR-column strip of it (KC x NR floats, L1). The partial sums of
//     the task (MC x NC floats) are the scratch the epilogue reads at the end.
//   * the conversion (bf16 shift, fp16 cvtph, int8 codes times scales, zero points
//     subtracted) happens once per task, so its cost per multiply-add is 1 / MC.
//   * threads take tasks from a shared counter (parallel_dynamic in thread_pool.h).
// Include only from ISA translation units (anonymous namespace: see vec_avx2.h).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/kernel_util.h"
#include "cpu/thread_pool.h"
#include "cpu/transpose_avx2.h"

namespace bigperf::cpu {
namespace {

namespace panel {

// Blocking (floats): KC x NC weight panel 64-128 KB, MC x KC slice of x 192 KB, both L2.
// Measured on Zen 3 with AVX2 (KC 128-384, NC 32-128, MC 96-192): within 3 % of the best
// from KC 256 and NC 64 up; NC 32 lost 25 % (benchmarks/NOTES.md).
constexpr int64_t kKC = 256;
constexpr int64_t kMC = 192;
template <class V>
constexpr int64_t kNR = 2 * V::W;
template <class V>
constexpr int64_t kNC = 4 * kNR<V>;

// Below this many multiply-adds one thread is faster than waking the pool.
constexpr int64_t kSerialWork = int64_t{1} << 18;

// c[i][0..NR) += sum over k < kc of x_i[k] * b[k][0..NR) for i < MR; x_i = xr[i], b a
// packed strip of kc x NR floats, c rows ldc floats apart.
template <class V, int MR>
inline void micro_tile(int64_t kc, const float* const* xr, const float* b, float* c, int64_t ldc) {
  using vec = typename V::vec;
  constexpr int W = V::W;
  vec acc[MR][2];
  for (int i = 0; i < MR; ++i) {
    acc[i][0] = V::loadu(c + i * ldc);
    acc[i][1] = V::loadu(c + i * ldc + W);
  }
  for (int64_t k = 0; k < kc; ++k) {
    const vec b0 = V::loadu(b + k * 2 * W), b1 = V::loadu(b + k * 2 * W + W);
    for (int i = 0; i < MR; ++i) {
      const vec a = V::set1(xr[i][k]);
      acc[i][0] = V::fmadd(a, b0, acc[i][0]);
      acc[i][1] = V::fmadd(a, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    V::storeu(c + i * ldc, acc[i][0]);
    V::storeu(c + i * ldc + W, acc[i][1]);
  }
}

// The micro-tile for mr (<= MR) rows: the row count is a template parameter.
template <class V, int MR>
inline void micro_rows(int mr, int64_t kc, const float* const* xr, const float* b, float* c, int64_t ldc) {
  if constexpr (MR >= 1) {
    if (mr == MR) return micro_tile<V, MR>(kc, xr, b, c, ldc);
    micro_rows<V, MR - 1>(mr, kc, xr, b, c, ldc);
  }
}

// Packs weight columns [n0, n0 + ncnt) x k in [k0, k0 + kc) as fp32 strips of kc x NR
// (column-major within a strip, strips one after another); columns past ncnt are zero.
// W8 gives 8 consecutive k of one weight row as fp32 (k0 + k a multiple of 8 relative to
// k0), W1 one element: W8(n, k) and W1(n, k) read only inside row n's K elements.
template <int64_t NR, class W8, class W1>
void pack_strips(int64_t n0, int64_t ncnt, int64_t k0, int64_t kc, float* dst, const W8& w8, const W1& w1) {
  static_assert(NR % 8 == 0, "strips are packed 8 columns at a time");
  const int64_t k8 = kc / 8 * 8;
  for (int64_t s = 0; s < ncnt; s += NR) {
    float* strip = dst + s * kc;
    for (int64_t h = 0; h < NR; h += 8) {
      const int64_t valid = imin(8, imax(0, ncnt - s - h));  // real columns in this group
      for (int64_t k = 0; k < k8; k += 8) {
        __m256 r[8];
        for (int64_t j = 0; j < 8; ++j) r[j] = j < valid ? w8(n0 + s + h + j, k0 + k) : _mm256_setzero_ps();
        transpose8(r);
        for (int64_t j = 0; j < 8; ++j) _mm256_storeu_ps(strip + (k + j) * NR + h, r[j]);
      }
      for (int64_t k = k8; k < kc; ++k)
        for (int64_t j = 0; j < 8; ++j) strip[k * NR + h + j] = j < valid ? w1(n0 + s + h + j, k0 + k) : 0.f;
    }
  }
}

// The GEMM over fp32 rows of x (row stride xs) with the weight given by its packer:
// pack(n0, nc, k0, kc, dst) writes the strips of columns [n0, n0 + nc) and k in [k0, k0 + kc)
// as pack_strips does (n0 is a multiple of NC). epilogue(sums, ld, m0, rows, n0, cnt) finishes
// rows m0 .. m0 + rows of the output, columns n0 .. n0 + cnt, from the task's sums (row r at
// sums + r * ld): once per task, so it dispatches once per block (epilogue.h).
template <class V, class Pack, class Epilogue>
void gemm_packed(const float* x, int64_t xs, int64_t M, int64_t N, int64_t K, int num_threads, const Pack& pack,
                 const Epilogue& epilogue) {
  constexpr int MR = V::kPanelRows;
  constexpr int64_t NR = kNR<V>, NC = kNC<V>;
  if (M <= 0 || N <= 0) return;
  const int64_t mtasks = (M + kMC - 1) / kMC, ntasks = (N + NC - 1) / NC;
  const int64_t tasks = mtasks * ntasks;
  parallel_dynamic(tasks, M * N * K < kSerialWork ? 1 : num_threads, [&](auto take) {
    AlignedBuffer panel_buf(static_cast<size_t>(kKC * NC) * sizeof(float));
    AlignedBuffer sums_buf(static_cast<size_t>(kMC * NC) * sizeof(float));
    float* bp = panel_buf.as<float>();
    float* sums = sums_buf.as<float>();
    for (int64_t t; (t = take()) < tasks;) {
      // Column blocks vary fastest: tasks running at once share the same rows of x.
      const int64_t m0 = t / ntasks * kMC, n0 = t % ntasks * NC;
      const int64_t mc = imin(kMC, M - m0), nc = imin(NC, N - n0);
      std::memset(sums, 0, static_cast<size_t>(mc * NC) * sizeof(float));
      for (int64_t k0 = 0; k0 < K; k0 += kKC) {
        const int64_t kc = imin(kKC, K - k0);
        pack(n0, nc, k0, kc, bp);
        for (int64_t s = 0; s < nc; s += NR) {
          for (int64_t i = 0; i < mc; i += MR) {
            const int mr = static_cast<int>(imin(MR, mc - i));
            const float* xr[MR];
            for (int r = 0; r < mr; ++r) xr[r] = x + (m0 + i + r) * xs + k0;
            micro_rows<V, MR>(mr, kc, xr, bp + s * kc, sums + i * NC + s, NC);
          }
        }
      }
      epilogue(sums, NC, m0, mc, n0, nc);
    }
  });
}

// gemm_packed with the weight given by its row loaders (see pack_strips: w8(n, k) eight
// elements of row n from k as fp32, w1(n, k) one).
template <class V, class W8, class W1, class Epilogue>
void gemm(const float* x, int64_t xs, int64_t M, int64_t N, int64_t K, int num_threads, const W8& w8, const W1& w1,
          const Epilogue& epilogue) {
  gemm_packed<V>(
      x, xs, M, N, K, num_threads,
      [&](int64_t n0, int64_t nc, int64_t k0, int64_t kc, float* dst) { pack_strips<kNR<V>>(n0, nc, k0, kc, dst, w8, w1); },
      epilogue);
}

}  // namespace panel

}  // namespace
}  // namespace bigperf::cpu
