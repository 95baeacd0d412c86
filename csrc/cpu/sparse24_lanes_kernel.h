// The 2:4 kernel for the CPU lane layout (sparse_linear.h, Sparse24Args), written once
// over a vector-traits class V (vec_avx2.h, vec_avx512.h) and a lane-ops class L that the
// ISA unit supplies:
//   L::W                      fp32 lanes (16 / W vectors per 16-row block)
//   L::x4(p)                  p[0..3] repeated in every 128-bit lane
//   L::positions(p)           W metadata bytes, zero-extended to 32-bit lanes
//   L::shift<S>(i)            i >> S per lane
//   L::pick(x4, i)            in-lane permute: lane j gets x4[i_j & 3] (vpermilps reads bits 1:0)
//   L::bf16_pair(p, lo, hi)   W 32-bit words of bf16 pairs as two fp32 vectors
//   L::load<VT>(p)            W values of dtype VT (f32, f16) as fp32
//   L::i8_quad<E>(p, safe, w) W 32-bit words of four int8 values each as four fp32 vectors
//                             w[i] = 2^24 * byte i (E: the byte itself, a shift more);
//                             `safe`: do not read the 3 bytes before p
//
// Why this layout (benchmarks/NOTES.md, "sparse CPU, session 10"): with one output row per
// lane, the kept values of one group of 4 in W rows sit in two vectors (slots a and b) and
// all of them multiply x values of the same group: the metadata byte of a row is directly
// the permute control of slot a, and shifted by 2, 4, 6 that of slot b and of the next
// group's slots. Per 8 kept values: a permute, an FMA and the widening, no blends and no
// horizontal sums; at M = 1 the kernel outruns the memory stream on AVX2 (the canonical
// layout's kernels did not).
// Include only from ISA translation units, after sparse_linear_kernel.h.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/panel_gemm.h"
#include "cpu/sparse_linear_kernel.h"

namespace bigperf::cpu {
namespace {

constexpr int64_t kLaneRows = 16;           // rows per block of the layout
// Blocks per work item: up to 16 (each item restarts the streams; 16 ran ~5 % faster
// than 4 at M = 1 on 2 threads), fewer when that would leave under 4 items per thread.
constexpr int64_t kLaneItemBlocks = 16;
// The panel form's transposed x up to this size is read from cache by every weight block in
// turn; beyond it, chunks of x become the outer loop (s24_lanes_panel_run). 4096x14336 at
// M = 2048 (32 MB of x) ran at 0.76x F.linear fp32 with blocks outer, 768x3072 (6 MB) 1.3x.
constexpr int64_t kPanelXResidentBytes = int64_t{8} << 20;
constexpr int64_t kLanePrefetchBytes = 2048;  // of values ahead; measured best of 0/1/2/4 KB

constexpr int64_t lanes_esize(S24Values vt) { return vt == S24Values::f32 ? 4 : vt == S24Values::i8 ? 1 : 2; }

// sums[m * 16 + l] = dot(x row m, block row l) for MB rows of x (row stride xs, fp32),
// before the int8 scale. At M = 1 the block's K range is walked as NS = 2 halves side by
// side (when the step count is even): two memory streams per thread keep more lines in flight than one (a plain 2-thread
// byte sum here: 1 stream 35.7, 2 streams 37.3, 4 streams 40.4 GB/s). Accumulators: at
// most 8 (NS * MB * 16 / W * S), a slot its own chain where that fits. One body for every
// step with the accumulators in one local array: gcc kept accumulators in memory (a
// store-to-load delay on each chain) when they were passed to a helper or a lambda, and
// when 8 of them met 8 other live vectors at M = 1. kExact: int8 codes as they are, not
// times 2^24 (see s24_lanes_drive).
template <class V, class L, S24Values VT, int MB, int NS, bool kExact = false>
void lanes_block(const Sparse24Args& a, int64_t block, const float* xp, int64_t xs, float* sums) {
  using vec = typename V::vec;
  constexpr int W = L::W, VPB = kLaneRows / W;
  constexpr int S = NS * MB == 1 || MB == 2 ? 2 : 1;
  constexpr int64_t ES = lanes_esize(VT);
  constexpr int64_t kGroupBytes = 2 * kLaneRows * ES;  // values of one group in one block
  constexpr int64_t kStepBytes = 2 * kGroupBytes;      // two groups per metadata byte
  const int64_t steps = a.K / 8, per = steps / NS;  // steps % NS == 0
  const char* vals = static_cast<const char*>(a.values) + block * steps * kStepBytes;
  const uint8_t* meta = a.meta + block * steps * kLaneRows;
  vec acc[NS][MB][VPB][S];
  for (auto& stream : acc)
    for (auto& row : stream)
      for (auto& part : row)
        for (auto& v : part) v = V::zero();
  for (int64_t j = 0; j < per; ++j) {
#pragma GCC unroll 2
    for (int q = 0; q < NS; ++q) {
      const int64_t step = j + q * per;
      const char* v = vals + step * kStepBytes;
      const uint8_t* mt = meta + step * kLaneRows;
      for (int64_t line = 0; line < kStepBytes; line += 64) prefetch_l1(v + kLanePrefetchBytes + line);
      prefetch_l1(reinterpret_cast<const char*>(mt) + kLanePrefetchBytes * kLaneRows / kStepBytes);
#pragma GCC unroll 2
      for (int h = 0; h < VPB; ++h) {
        const auto p0 = L::positions(mt + h * W);
        const auto p1 = L::template shift<2>(p0);
        const auto p2 = L::template shift<4>(p0);
        const auto p3 = L::template shift<6>(p0);
        vec w[4];
        if constexpr (VT == S24Values::bf16) {
          L::bf16_pair(v + h * W * 4, w[0], w[1]);
          L::bf16_pair(v + kGroupBytes + h * W * 4, w[2], w[3]);
        } else if constexpr (VT == S24Values::i8) {
          // Nothing before the first byte of the values may be read (see L::i8_quad).
          L::template i8_quad<kExact>(v + h * W * 4, block == 0 && step == 0 && h == 0, w);
        } else {
          w[0] = L::template load<VT>(v + h * W * ES);
          w[1] = L::template load<VT>(v + (kLaneRows + h * W) * ES);
          w[2] = L::template load<VT>(v + kGroupBytes + h * W * ES);
          w[3] = L::template load<VT>(v + kGroupBytes + (kLaneRows + h * W) * ES);
        }
#pragma GCC unroll 4
        for (int m = 0; m < MB; ++m) {
          const vec xa = L::x4(xp + m * xs + 8 * step), xb = L::x4(xp + m * xs + 8 * step + 4);
          acc[q][m][h][0 % S] = V::fmadd(w[0], L::pick(xa, p0), acc[q][m][h][0 % S]);
          acc[q][m][h][1 % S] = V::fmadd(w[1], L::pick(xa, p1), acc[q][m][h][1 % S]);
          acc[q][m][h][2 % S] = V::fmadd(w[2], L::pick(xb, p2), acc[q][m][h][2 % S]);
          acc[q][m][h][3 % S] = V::fmadd(w[3], L::pick(xb, p3), acc[q][m][h][3 % S]);
        }
      }
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int h = 0; h < VPB; ++h) {
      // (Starting from acc[0][m][h][0], not from zero: with a zero start gcc kept the
      // accumulators of M = 3 and 4 in memory, 2.3x slower.)
      vec s = acc[0][m][h][0];
      for (int p = 1; p < S; ++p) s = V::add(s, acc[0][m][h][p]);
      for (int q = 1; q < NS; ++q)
        for (int p = 0; p < S; ++p) s = V::add(s, acc[q][m][h][p]);
      if constexpr (VT == S24Values::i8 && !kExact) s = V::mul(s, V::set1(1.f / 16777216.f));  // L::i8_quad's 2^24, exactly
      V::storeu(sums + m * kLaneRows + h * W, s);
    }
}

// Below this |x| (2^64) the q * 2^24 codes cannot overflow: a product is at most
// 2^64 * 2^7 * 2^24 = 2^95, and a sum of fewer than 2^31 of them stays under 2^126.
constexpr float kI8CodeTrickMaxX = 18446744073709551616.f;

// The largest |value| of n floats, 0 for none. NaN is passed over (vmaxps keeps its second
// operand when the first is NaN; std::max its first); an infinity counts, harmlessly.
template <class V>
float max_abs(const float* p, int64_t n) {
  constexpr int W = V::W;
  auto m = V::zero();
  int64_t i = 0;
  for (; i + W <= n; i += W) m = V::max(V::abs(V::loadu(p + i)), m);
  alignas(64) float lanes[W];
  V::storeu(lanes, m);
  float r = 0.f;
  for (int l = 0; l < W; ++l) r = std::max(r, lanes[l]);
  for (; i < n; ++i) r = std::max(r, std::fabs(p[i]));
  return r;
}

// lanes_block for the `mb` (1 .. 4) rows of x at xp.
template <class V, class L, S24Values VT, bool kExact>
void lanes_rows(const Sparse24Args& a, int64_t b, const float* xp, int64_t kpad, int64_t mb, float* sums) {
  switch (mb) {
    case 1:  // two streams for the memory-bound float values; int8 is bound by compute
      if (VT != S24Values::i8 && a.K % 16 == 0) lanes_block<V, L, VT, 1, 2, kExact>(a, b, xp, kpad, sums);
      else lanes_block<V, L, VT, 1, 1, kExact>(a, b, xp, kpad, sums);
      break;
    case 2: lanes_block<V, L, VT, 2, 1, kExact>(a, b, xp, kpad, sums); break;
    case 3: lanes_block<V, L, VT, 3, 1, kExact>(a, b, xp, kpad, sums); break;
    default: lanes_block<V, L, VT, 4, 1, kExact>(a, b, xp, kpad, sums); break;
  }
}

// x in passes of kSpRowsPerPass rows (fp32); each work item is a run of blocks, each block runs the pass's rows 4 at a time (its weights come from memory for the first
// 4 and from L2 for the rest), then the epilogue of its 16 rows.
template <class V, class L, S24Values VT>
void s24_lanes_drive(const Sparse24Args& a) {
  if (a.M <= 0 || a.N <= 0) return;
  const int64_t blocks = (a.N + kLaneRows - 1) / kLaneRows;
  const int64_t kpad = (a.K + 63) / 64 * 64;
  const int64_t rows = imin(a.M, kSpRowsPerPass);
  AlignedBuffer xbuf(static_cast<size_t>(rows * kpad) * 4);
  const int threads = a.M * a.N * a.K < kSpSerialWork ? 1 : a.num_threads;
  const int64_t item_blocks = imin(kLaneItemBlocks, blocks / (4 * threads) > 0 ? blocks / (4 * threads) : 1);
  const int64_t items = (blocks + item_blocks - 1) / item_blocks;
  for (int64_t m0 = 0; m0 < a.M; m0 += kSpRowsPerPass) {
    const int64_t ms = imin(kSpRowsPerPass, a.M - m0);
    sp_pack_rows<V>(a.x, a.x_row_stride, a.x_dtype, m0, ms, a.K, xbuf.as<float>(), kpad);
    // int8 codes enter the FMAs as q * 2^24 (L::i8_quad), which takes 2^24 off fp32's range:
    // a pass whose x reaches kI8CodeTrickMaxX multiplies the codes themselves instead.
    const bool exact = VT == S24Values::i8 && max_abs<V>(xbuf.as<float>(), ms * kpad) > kI8CodeTrickMaxX;
    parallel_items(items, threads, [&](int64_t item) {
      alignas(64) float sums[4 * kLaneRows];
      const int64_t b_end = imin(blocks, (item + 1) * item_blocks);
      for (int64_t b = item * item_blocks; b < b_end; ++b) {
        const int64_t n0 = b * kLaneRows, cnt = imin(kLaneRows, a.N - n0);
        for (int64_t mt = 0; mt < ms; mt += 4) {
          const float* xp = xbuf.as<float>() + mt * kpad;
          const int64_t mb = imin(4, ms - mt);
          if constexpr (VT == S24Values::i8) {
            if (exact) lanes_rows<V, L, VT, true>(a, b, xp, kpad, mb, sums);
            else lanes_rows<V, L, VT, false>(a, b, xp, kpad, mb, sums);
          } else {
            lanes_rows<V, L, VT, false>(a, b, xp, kpad, mb, sums);
          }
          if (a.scale)  // int8 values: one multiply per output (the layout pads scale to N16)
            for (int64_t m = 0; m < mb; ++m)
              for (int64_t l = 0; l < kLaneRows; ++l) sums[m * kLaneRows + l] *= a.scale[n0 + l];
          epilogue_rows<V>(EpilogueArgs{a.out, a.out_row_stride, a.x_dtype, a.act, a.bias}, sums, kLaneRows, m0 + mt, mb,
                           n0, cnt);
        }
      }
    });
  }
}

template <class V, class L>
void s24_lanes_dispatch(const Sparse24Args& a) {
  switch (a.values_dtype) {
    case S24Values::f32: s24_lanes_drive<V, L, S24Values::f32>(a); break;
    case S24Values::f16: s24_lanes_drive<V, L, S24Values::f16>(a); break;
    case S24Values::bf16: s24_lanes_drive<V, L, S24Values::bf16>(a); break;
    case S24Values::i8: s24_lanes_drive<V, L, S24Values::i8>(a); break;
  }
}

// ----------------------------------------------------------------------------- panel form
// For M where arithmetic bounds the call (the dispatcher times it against the form above and
// PyTorch's GEMM on the unpacked weight). Vectors run along M instead of N: x is packed
// transposed once per call, in blocks of MV = NV vectors of rows ([k][MV]), and each kept
// weight value is broadcast and multiplies the MV x values of its own column k (one row of
// the transposed block): no permutes, and only kept values cost multiply-adds. Register
// tile: R weight rows x NV = 6 vectors (AVX2 2 x 6, AVX-512 4 x 6 accumulators;
// panel_gemm.h's budget). A task unpacks one 16-row block of the layout into fp32 values and
// x offsets once ([kept j][16 rows], int8 scales applied) and reuses them for up to kMC rows
// of x, K in slices of kKC.

// sums[r * MV + i] += sum over kept j in [0, nj) of w[j * 16 + r] * xt[off[j * 16 + r] + i] for
// r < R, i < MV: w and off start at the slice's first kept value, off is the value's column
// times MV (where its x values sit in the transposed block xt).
template <class V, int R, int NV>
inline void s24_panel_tile(const float* w, const int32_t* off, int64_t nj, const float* xt, float* sums) {
  using vec = typename V::vec;
  constexpr int W = V::W;
  constexpr int64_t MV = NV * W;
  vec acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V::loadu(sums + r * MV + v * W);
  for (int64_t j = 0; j < nj; ++j) {
    for (int r = 0; r < R; ++r) {
      const vec wv = V::set1(w[j * kLaneRows + r]);
      const float* xk = xt + off[j * kLaneRows + r];
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fmadd(wv, V::loadu(xk + v * W), acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) V::storeu(sums + r * MV + v * W, acc[r][v]);
}

// Block b of the lane layout as fp32 values w[j][16] and x offsets off[j][16] (kept value j =
// 2 g + slot of group g: (4 g + position) * mv), int8 values times their row's scale.
template <class V, class L, S24Values VT>
void s24_unpack_block(const Sparse24Args& a, int64_t b, int64_t mv, float* w, int32_t* off) {
  constexpr int W = L::W, VPB = kLaneRows / W;
  constexpr int64_t ES = lanes_esize(VT);
  constexpr int64_t kGroupBytes = 2 * kLaneRows * ES, kStepBytes = 2 * kGroupBytes;
  const int64_t steps = a.K / 8;
  const char* vals = static_cast<const char*>(a.values) + b * steps * kStepBytes;
  const uint8_t* meta = a.meta + b * steps * kLaneRows;
  for (int64_t step = 0; step < steps; ++step) {
    // Positions: the four 2-bit fields of each lane's byte (group 2 step: bits 1:0 and 3:2,
    // group 2 step + 1: bits 5:4 and 7:6).
    for (int64_t l = 0; l < kLaneRows; ++l) {
      const int byte = meta[step * kLaneRows + l];
      for (int f = 0; f < 4; ++f)
        off[(4 * step + f) * kLaneRows + l] = static_cast<int32_t>((8 * step + 4 * (f / 2) + ((byte >> (2 * f)) & 3)) * mv);
    }
    const char* v = vals + step * kStepBytes;
    for (int h = 0; h < VPB; ++h) {
      typename V::vec q[4];  // kept values 4 step + 0 .. 3 of lanes h W ..
      if constexpr (VT == S24Values::bf16) {
        L::bf16_pair(v + h * W * 4, q[0], q[1]);
        L::bf16_pair(v + kGroupBytes + h * W * 4, q[2], q[3]);
      } else if constexpr (VT == S24Values::i8) {
        L::i8_quad(v + h * W * 4, b == 0 && step == 0 && h == 0, q);
        // 2^-24 onto the codes, not the scale: a scale below 2^-102 would go subnormal.
        const auto scale = V::loadu(a.scale + b * kLaneRows + h * W), unit = V::set1(1.f / 16777216.f);
        for (auto& x : q) x = V::mul(V::mul(x, unit), scale);
      } else {
        q[0] = L::template load<VT>(v + h * W * ES);
        q[1] = L::template load<VT>(v + (kLaneRows + h * W) * ES);
        q[2] = L::template load<VT>(v + kGroupBytes + h * W * ES);
        q[3] = L::template load<VT>(v + kGroupBytes + (kLaneRows + h * W) * ES);
      }
      for (int f = 0; f < 4; ++f) V::storeu(w + (4 * step + f) * kLaneRows + h * W, q[f]);
    }
  }
}

template <class V, class L, S24Values VT>
void s24_lanes_panel_run(const Sparse24Args& a) {
  constexpr int W = V::W;
  constexpr int NV = 6;  // vectors of rows of x per tile
  constexpr int64_t MV = NV * W;
  constexpr int R = V::kPanelRows * 2 / NV;
  constexpr int64_t kBlocksPerChunk = panel::kMC / MV;  // x blocks per task
  // K per slice: its x (MV x kKC floats) and its kept values' weights and offsets (16 x kKC / 2
  // of each) within L1 (kKC 256 overflowed 32 KB on AVX2).
  constexpr int64_t kKC = 64;
  const int64_t blocks = (a.N + kLaneRows - 1) / kLaneRows, kept = a.K / 2;
  const int64_t xblocks = (a.M + MV - 1) / MV, chunks = (xblocks + kBlocksPerChunk - 1) / kBlocksPerChunk;
  // x transposed in blocks of MV rows: xt[xb][k][MV], rows past M zero.
  AlignedBuffer xt_buf(static_cast<size_t>(xblocks * a.K * MV) * sizeof(float));
  float* xt = xt_buf.as<float>();
  // 8 rows at a time as fp32 (rows past M zero), then 8 x 8 transposes (K % 8 == 0); split
  // over the threads (on one, ~5 % of the call at M = 2048, K = 768).
  const int threads = a.M * a.N * a.K / 2 < panel::kSerialWork ? 1 : a.num_threads;
  parallel_for(xblocks * MV / 8, threads, 1, [&](int64_t g_begin, int64_t g_end) {
    AlignedBuffer rows_buf(static_cast<size_t>(8 * a.K) * sizeof(float));
    float* rows = rows_buf.as<float>();
    for (int64_t m0 = g_begin * 8; m0 < g_end * 8; m0 += 8) {
      const int64_t real = imax(0, imin(8, a.M - m0));
      if (real) sp_pack_rows<V>(a.x, a.x_row_stride, a.x_dtype, m0, real, a.K, rows, a.K);
      std::memset(rows + real * a.K, 0, static_cast<size_t>((8 - real) * a.K) * sizeof(float));
      float* dst = xt + (m0 / MV) * a.K * MV + m0 % MV;
      for (int64_t k = 0; k < a.K; k += 8) transpose8(rows + k, a.K, dst + k * MV, MV);
    }
  });
  const int64_t tasks = blocks * chunks;
  const bool x_outer = xblocks * a.K * MV * static_cast<int64_t>(sizeof(float)) > kPanelXResidentBytes;
  parallel_dynamic(tasks, threads, [&](auto take) {
    AlignedBuffer w_buf(static_cast<size_t>(kept * kLaneRows) * sizeof(float));
    AlignedBuffer off_buf(static_cast<size_t>(kept * kLaneRows) * sizeof(int32_t));
    AlignedBuffer sums_buf(static_cast<size_t>(kBlocksPerChunk * kLaneRows * MV) * sizeof(float));
    float* w = w_buf.as<float>();
    int32_t* off = off_buf.as<int32_t>();
    float* sums = sums_buf.as<float>();  // [x block][16 rows][MV]
    int64_t unpacked = -1;
    for (int64_t t; (t = take()) < tasks;) {
      // Chunks of x vary fastest: a worker's next task often reuses the unpacked block. Where
      // the transposed x outgrows the cache share (kPanelXResidentBytes) that would stream all
      // of x from memory once per block: blocks vary fastest then, each task unpacking its own
      // (~8 % of its work), and a chunk of x stays in cache across them.
      const int64_t b = x_outer ? t % blocks : t / chunks;
      const int64_t xb0 = (x_outer ? t / blocks : t % chunks) * kBlocksPerChunk;
      const int64_t xb1 = imin(xblocks, xb0 + kBlocksPerChunk);
      if (b != unpacked) {
        s24_unpack_block<V, L, VT>(a, b, MV, w, off);
        unpacked = b;
      }
      std::memset(sums, 0, static_cast<size_t>((xb1 - xb0) * kLaneRows * MV) * sizeof(float));
      for (int64_t k0 = 0; k0 < a.K; k0 += kKC) {
        const int64_t j0 = k0 / 2, nj = (imin(a.K, k0 + kKC) - k0) / 2;
        for (int64_t xb = xb0; xb < xb1; ++xb)
          for (int r0 = 0; r0 < kLaneRows; r0 += R)
            s24_panel_tile<V, R, NV>(w + j0 * kLaneRows + r0, off + j0 * kLaneRows + r0, nj, xt + xb * a.K * MV,
                                 sums + ((xb - xb0) * kLaneRows + r0) * MV);
      }
      // Each x block's sums [16 outputs][MV rows] back to rows [MV][16] (8 x 8 transposes),
      // then one epilogue call for the block's rows (one call per row cost ~10 % at M = 2048).
      const int64_t n0 = b * kLaneRows, cnt = imin(kLaneRows, a.N - n0);
      alignas(64) float rows_out[MV * kLaneRows];
      for (int64_t xb = xb0; xb < xb1; ++xb) {
        const float* block = sums + (xb - xb0) * kLaneRows * MV;
        for (int64_t r0 = 0; r0 < kLaneRows; r0 += 8)
          for (int64_t i0 = 0; i0 < MV; i0 += 8)
            transpose8(block + r0 * MV + i0, MV, rows_out + i0 * kLaneRows + r0, kLaneRows);
        epilogue_rows<V>(EpilogueArgs{a.out, a.out_row_stride, a.x_dtype, a.act, a.bias}, rows_out, kLaneRows, xb * MV,
                         imin(MV, a.M - xb * MV), n0, cnt);
      }
    }
  });
}

template <class V, class L>
void s24_lanes_panel_dispatch(const Sparse24Args& a) {
  if (a.M <= 0 || a.N <= 0) return;
  switch (a.values_dtype) {
    case S24Values::f32: s24_lanes_panel_run<V, L, S24Values::f32>(a); break;
    case S24Values::f16: s24_lanes_panel_run<V, L, S24Values::f16>(a); break;
    case S24Values::bf16: s24_lanes_panel_run<V, L, S24Values::bf16>(a); break;
    case S24Values::i8: s24_lanes_panel_run<V, L, S24Values::i8>(a); break;
  }
}

}  // namespace
}  // namespace bigperf::cpu
