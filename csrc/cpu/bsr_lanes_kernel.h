// Block-sparse (BSR) in the CPU lane layout (sparse_linear.h), written once over V and the
// lane ops L of sparse24_lanes_kernel.h (plus L::x1(p): p[0] in every lane).
//
// Each block's rows are cut into 16-row groups ("strips" of a block row), one row per vector
// lane: a strip's accumulators are whole vectors of 16 outputs (no horizontal sums), and a
// column of a block multiplies one broadcast x value. At M = 1 two strips far apart are
// walked side by side: two memory streams per thread kept more lines in flight (prototype,
// cold, 10 % density, 2 threads: 390 us against 435 us for the canonical kernel, whose 8
// accumulators per strip leave no room for a second strip; benchmarks/NOTES.md).
// Include only from ISA translation units, after sparse24_lanes_kernel.h.
#pragma once
#include <cstdint>

#include "cpu/panel_gemm.h"
#include "cpu/sparse24_lanes_kernel.h"

namespace bigperf::cpu {
namespace {

// sums[(q * MB + m) * 16 + l] = row l of strip strips[q] times x row m (fp32, row stride
// a.K), for NS strips walked side by side; a strip's blocks are those of its block row.
template <class V, class L, DType VD, int MB, int NS>
void bsr_lanes_strips(const BsrArgs& a, const int64_t (&strips)[NS], const float* xp, float* sums) {
  using vec = typename V::vec;
  constexpr int W = L::W, VPB = kLaneRows / W;
  constexpr int S = NS * MB <= 2 ? 2 : 1;  // accumulators per vector: at most 8 in all
  constexpr int64_t ES = element_size(VD);
  constexpr int kColsPerStep = VD == DType::bf16 ? 2 : S;  // bf16: a 32-bit word holds 2 columns
  const int64_t groups = a.bn / kLaneRows;
  const int64_t strip_bytes = kLaneRows * a.bk * ES, block_bytes = groups * strip_bytes;
  const char* vals = static_cast<const char*>(a.values);
  int64_t next[NS], end[NS];
  const char* base[NS];
  for (int q = 0; q < NS; ++q) {
    const int64_t br = strips[q] / groups;
    next[q] = a.row_ptr[br];
    end[q] = a.row_ptr[br + 1];
    base[q] = vals + (strips[q] % groups) * strip_bytes;
  }
  vec acc[NS][MB][VPB][S];
  for (auto& strip : acc)
    for (auto& row : strip)
      for (auto& part : row)
        for (auto& v : part) v = V::zero();
  for (;;) {
    bool any = false;
#pragma GCC unroll 2
    for (int q = 0; q < NS; ++q) {
      if (next[q] >= end[q]) continue;
      any = true;
      const int64_t b = next[q]++;
      const char* blk = base[q] + b * block_bytes;
      for (int64_t o = 0; o < strip_bytes; o += 64) prefetch_l1(blk + kLanePrefetchBytes + o);
      const float* xb = xp + a.col_indices[b] * a.bk;
      for (int64_t c = 0; c < a.bk; c += kColsPerStep) {
        const int64_t cols = imin(kColsPerStep, a.bk - c);  // (bf16 blocks have an even bk)
#pragma GCC unroll 2
        for (int h = 0; h < VPB; ++h) {
          vec w[kColsPerStep];
          if constexpr (VD == DType::bf16) {
            L::bf16_pair(blk + (c * kLaneRows + 2 * h * W) * ES, w[0], w[1]);
          } else {
            for (int j = 0; j < kColsPerStep; ++j)
              w[j] = j < cols ? L::template load<VD == DType::f32 ? S24Values::f32 : S24Values::f16>(
                                    blk + ((c + j) * kLaneRows + h * W) * ES)
                              : V::zero();
          }
#pragma GCC unroll 4
          for (int m = 0; m < MB; ++m)
            for (int j = 0; j < kColsPerStep; ++j)
              if (j < cols) acc[q][m][h][j % S] = V::fmadd(w[j], L::x1(xb + m * a.K + c + j), acc[q][m][h][j % S]);
        }
      }
    }
    if (!any) break;
  }
  for (int q = 0; q < NS; ++q)
    for (int m = 0; m < MB; ++m)
      for (int h = 0; h < VPB; ++h) {
        vec s = acc[q][m][h][0];  // (not from zero: see lanes_block)
        for (int p = 1; p < S; ++p) s = V::add(s, acc[q][m][h][p]);
        V::storeu(sums + (q * MB + m) * kLaneRows + h * W, s);
      }
}

// x in passes of kSpRowsPerPass rows; work items are chunks of block rows balanced by
// stored blocks (bsr_chunk), walked strip by strip: at M = 1 the chunk's first and second
// halves side by side, else each strip for the pass's rows 4 at a time.
template <class V, class L, DType VD>
void bsr_lanes_run(const BsrArgs& a) {
  const int64_t groups = a.bn / kLaneRows, block_rows = a.N / a.bn;
  const int64_t rows = imin(a.M, kSpRowsPerPass);
  AlignedBuffer xbuf(static_cast<size_t>(rows * a.K + 1) * 4);
  const int threads = a.M * a.nnz * a.bn * a.bk < kSpSerialWork ? 1 : a.num_threads;
  const int64_t chunks = threads == 1 ? 1 : imin(kBsrChunksPerThread * threads, block_rows);
  for (int64_t m0 = 0; m0 < a.M; m0 += kSpRowsPerPass) {
    const int64_t ms = imin(kSpRowsPerPass, a.M - m0);
    sp_pack_rows<V>(a.x, a.x_row_stride, a.x_dtype, m0, ms, a.K, xbuf.as<float>(), a.K);
    parallel_items(chunks, threads, [&](int64_t chunk) {
      alignas(64) float sums[2 * 4 * kLaneRows];
      int64_t br_begin, br_end;
      bsr_chunk(a.row_ptr, block_rows, chunks, chunk, br_begin, br_end);
      const int64_t s0 = br_begin * groups, s1 = br_end * groups;
      // Rows m .. m + rows of a strip's 16 outputs, from s ([row][16]): one epilogue call.
      auto store = [&](int64_t strip, int64_t m, const float* s, int64_t rows = 1) {
        const int64_t n0 = strip / groups * a.bn + strip % groups * kLaneRows;
        epilogue_rows<V>(EpilogueArgs{a.out, a.out_row_stride, a.x_dtype, a.act, a.bias}, s, kLaneRows, m0 + m, rows, n0,
                         kLaneRows);
      };
      if (ms == 1) {
        const int64_t half = (s1 - s0) / 2;
        for (int64_t i = 0; i < half; ++i) {
          const int64_t pair[2] = {s0 + i, s0 + half + i};
          bsr_lanes_strips<V, L, VD, 1, 2>(a, pair, xbuf.as<float>(), sums);
          store(pair[0], 0, sums);
          store(pair[1], 0, sums + kLaneRows);
        }
        if ((s1 - s0) % 2) {
          const int64_t last[1] = {s1 - 1};
          bsr_lanes_strips<V, L, VD, 1, 1>(a, last, xbuf.as<float>(), sums);
          store(last[0], 0, sums);
        }
        return;
      }
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t one[1] = {s};
        for (int64_t mt = 0; mt < ms; mt += 4) {
          const float* xp = xbuf.as<float>() + mt * a.K;
          const int64_t mb = imin(4, ms - mt);
          switch (mb) {
            case 1: bsr_lanes_strips<V, L, VD, 1, 1>(a, one, xp, sums); break;
            case 2: bsr_lanes_strips<V, L, VD, 2, 1>(a, one, xp, sums); break;
            case 3: bsr_lanes_strips<V, L, VD, 3, 1>(a, one, xp, sums); break;
            default: bsr_lanes_strips<V, L, VD, 4, 1>(a, one, xp, sums); break;
          }
          store(s, mt, sums, mb);
        }
      }
    });
  }
}

template <class V, class L>
void bsr_lanes_dispatch(const BsrArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  switch (a.values_dtype) {
    case DType::f32: bsr_lanes_run<V, L, DType::f32>(a); break;
    case DType::f16: bsr_lanes_run<V, L, DType::f16>(a); break;
    case DType::bf16: bsr_lanes_run<V, L, DType::bf16>(a); break;
  }
}

// ----------------------------------------------------------------------------- panel form
// For M where arithmetic bounds the call (the dispatcher times it against the form above
// and PyTorch's GEMM on the unpacked weight): the register tile of panel_gemm.h, MR rows of
// x times one 16-row strip, held in registers over every stored block of the strip's block
// row, so only stored blocks cost multiply-adds. A strip's blocks are read in place as fp32
// panels (the lane layout of fp32 values is one already: [bk][16]) or converted once per
// task into one (fp16, bf16 pairs), and every row of the task reuses them.

// sums[i * 16 + l] = row l of the strip times x row i, over the strip's nb blocks; block j's
// [bk][16] panel at b + j * block_stride, its x columns from cols[j] * bk.
template <class V, int MR>
inline void bsr_panel_tile(const float* const* xr, const float* b, int64_t block_stride, const int32_t* cols,
                           int64_t nb, int64_t bk, float* sums) {
  using vec = typename V::vec;
  constexpr int W = V::W, VPB = kLaneRows / W;
  vec acc[MR][VPB];
  for (auto& row : acc)
    for (auto& v : row) v = V::zero();
  for (int64_t j = 0; j < nb; ++j) {
    const float* bj = b + j * block_stride;
    const int64_t xo = static_cast<int64_t>(cols[j]) * bk;
    for (int64_t c = 0; c < bk; ++c) {
      vec w[VPB];
      for (int h = 0; h < VPB; ++h) w[h] = V::loadu(bj + c * kLaneRows + h * W);
      for (int i = 0; i < MR; ++i) {
        const vec xv = V::set1(xr[i][xo + c]);
        for (int h = 0; h < VPB; ++h) acc[i][h] = V::fmadd(xv, w[h], acc[i][h]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int h = 0; h < VPB; ++h) V::storeu(sums + i * kLaneRows + h * W, acc[i][h]);
}

template <class V, int MR>
inline void bsr_panel_rows(int mr, const float* const* xr, const float* b, int64_t block_stride,
                           const int32_t* cols, int64_t nb, int64_t bk, float* sums) {
  if constexpr (MR >= 1) {
    if (mr == MR) return bsr_panel_tile<V, MR>(xr, b, block_stride, cols, nb, bk, sums);
    bsr_panel_rows<V, MR - 1>(mr, xr, b, block_stride, cols, nb, bk, sums);
  }
}

// One block's strip (16 rows x bk columns, lane layout) as an fp32 [bk][16] panel.
template <class V, class L, DType VD>
inline void bsr_strip_to_fp32(const char* blk, int64_t bk, float* dst) {
  constexpr int W = V::W, VPB = kLaneRows / W;
  constexpr int64_t ES = element_size(VD);
  for (int64_t c = 0; c < bk; c += (VD == DType::bf16 ? 2 : 1))
    for (int h = 0; h < VPB; ++h) {
      if constexpr (VD == DType::bf16) {
        typename V::vec even, odd;
        L::bf16_pair(blk + (c * kLaneRows + 2 * h * W) * ES, even, odd);
        V::storeu(dst + c * kLaneRows + h * W, even);
        V::storeu(dst + (c + 1) * kLaneRows + h * W, odd);
      } else {
        V::storeu(dst + c * kLaneRows + h * W,
                  L::template load<S24Values::f16>(blk + (c * kLaneRows + h * W) * ES));
      }
    }
}

// The panel forms' tasks over the lane layout (fp32 here, bf16 in sparse_linear_avx512.cpp):
// panel::kMC rows of x by kStripsPerTask strips (a strip: 16 rows of one block row), so that
// the strips of one task share the rows of x it reads.
struct BsrStripTasks {
  static constexpr int64_t kStripsPerTask = 4;
  // Strip s: its bytes in the block row's first stored block, its stored blocks' column
  // indices and count, its first output row.
  struct Strip {
    const char* first;
    const int32_t* cols;
    int64_t nb, n0;
  };
  BsrStripTasks(const BsrArgs& a, int64_t strip_bytes)
      : a(a), strip_bytes(strip_bytes), groups(a.bn / kLaneRows), strips(a.N / kLaneRows),
        stasks((strips + kStripsPerTask - 1) / kStripsPerTask), count((a.M + panel::kMC - 1) / panel::kMC * stasks) {}
  // visit(m0, mc, strip) for each strip of task t, rows [m0, m0 + mc) of x.
  template <class Visit>
  void run(int64_t t, const Visit& visit) const {
    const int64_t m0 = t / stasks * panel::kMC, mc = imin(panel::kMC, a.M - m0);
    const int64_t s_begin = t % stasks * kStripsPerTask, s_end = imin(strips, s_begin + kStripsPerTask);
    for (int64_t s = s_begin; s < s_end; ++s) {
      const int64_t br = s / groups, b0 = a.row_ptr[br];
      visit(m0, mc,
            Strip{static_cast<const char*>(a.values) + (b0 * groups + s % groups) * strip_bytes, a.col_indices + b0,
                  a.row_ptr[br + 1] - b0, br * a.bn + s % groups * kLaneRows});
    }
  }
  const BsrArgs& a;
  const int64_t strip_bytes, groups, strips, stasks, count;
};

template <class V, class L, DType VD>
void bsr_lanes_panel_run(const BsrArgs& a) {
  constexpr int MR = V::kPanelRows * 2 / (kLaneRows / V::W);  // the accumulators of panel_gemm.h
  constexpr int64_t ES = element_size(VD);
  const int64_t strip_bytes = kLaneRows * a.bk * ES, block_bytes = a.bn / kLaneRows * strip_bytes;
  const BsrStripTasks tasks(a, strip_bytes);
  // x as fp32 rows: read in place when it already is, else converted once per call.
  const float* x = static_cast<const float*>(a.x);
  int64_t xs = a.x_row_stride;
  AlignedBuffer converted(a.x_dtype == DType::f32 ? 0 : static_cast<size_t>(a.M * a.K) * sizeof(float));
  if (a.x_dtype != DType::f32) {
    sp_pack_rows<V>(a.x, a.x_row_stride, a.x_dtype, 0, a.M, a.K, converted.as<float>(), a.K);
    x = converted.as<float>();
    xs = a.K;
  }
  const int64_t work = a.M * a.nnz * a.bn * a.bk;
  parallel_dynamic(tasks.count, work < panel::kSerialWork ? 1 : a.num_threads, [&](auto take) {
    // A strip's converted blocks: at most K / bk blocks of bk x 16.
    AlignedBuffer panel_buf(VD == DType::f32 ? 0 : static_cast<size_t>(a.K * kLaneRows) * sizeof(float));
    AlignedBuffer sums_buf(static_cast<size_t>(MR * kLaneRows) * sizeof(float));
    float* sums = sums_buf.as<float>();
    for (int64_t t; (t = take()) < tasks.count;) {
      tasks.run(t, [&](int64_t m0, int64_t mc, const BsrStripTasks::Strip& strip) {
        const float* panel;
        int64_t block_stride;  // floats from one block's panel to the next
        if constexpr (VD == DType::f32) {
          panel = reinterpret_cast<const float*>(strip.first);
          block_stride = block_bytes / 4;
        } else {
          for (int64_t j = 0; j < strip.nb; ++j)
            bsr_strip_to_fp32<V, L, VD>(strip.first + j * block_bytes, a.bk,
                                        panel_buf.as<float>() + j * a.bk * kLaneRows);
          panel = panel_buf.as<float>();
          block_stride = a.bk * kLaneRows;
        }
        for (int64_t i = 0; i < mc; i += MR) {
          const int mr = static_cast<int>(imin(MR, mc - i));
          const float* xr[MR];
          for (int r = 0; r < mr; ++r) xr[r] = x + (m0 + i + r) * xs;
          bsr_panel_rows<V, MR>(mr, xr, panel, block_stride, strip.cols, strip.nb, a.bk, sums);
          epilogue_rows<V>(EpilogueArgs{a.out, a.out_row_stride, a.x_dtype, a.act, a.bias}, sums, kLaneRows, m0 + i, mr,
                           strip.n0, kLaneRows);
        }
      });
    }
  });
}

template <class V, class L>
void bsr_lanes_panel_dispatch(const BsrArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  switch (a.values_dtype) {
    case DType::f32: bsr_lanes_panel_run<V, L, DType::f32>(a); break;
    case DType::f16: bsr_lanes_panel_run<V, L, DType::f16>(a); break;
    case DType::bf16: bsr_lanes_panel_run<V, L, DType::bf16>(a); break;
  }
}

}  // namespace
}  // namespace bigperf::cpu
