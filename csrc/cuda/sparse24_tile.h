// Tile configurations and index maps of the 2:4 sparse kernel (sparse24_linear.cu), shared
// with its host emulator (sparse24_emulate.cu).
//
// The kernel computes out^T = W x^T so that the 2:4-sparse weight is the sparse A operand
// of mma.sp.m16n8k32 (rows of A = output features N, the sparse dimension K), and x rows
// are the dense B columns. "r" below indexes W rows (N), "c" x rows (M).
//
// Packed form (bigperf/cuda_layouts.py, pack_s24, layout version 1):
//   values [N, Kp/2] fp16/bf16: bigperf's compressed values, K padded to Kp (a multiple of
//          32) with zeros. Stored column 2q, 2q+1 are the kept values of logical group q,
//          which is exactly the order mma.sp expects of its compressed A operand, so the
//          A fragments come from ldmatrix like a dense m16n8k16 A operand.
//   meta   [Np16][Kp/32][16] uint32: for each 16-row block and 32-wide k block, word
//          2g + p is the metadata register of lane 4g + p (sparsity selector 0): bits 0-15
//          are row g's and bits 16-31 row g+8's 2-bit positions for logical k 16p .. 16p+15,
//          four bits per group of 4, first position in the low bits. Padding groups hold
//          positions (0, 1) (nibble 0x4; an all-zero nibble would be invalid metadata).
#pragma once
#include <cstdint>

#include "cuda/fused_linear_tile.h"

namespace bigperf::cuda::s24 {

using fl::apply_activation;
using fl::swizzle_chunk;

constexpr int kKBlock = 32;                   // logical k of one mma.sp and one metadata block
constexpr int kRowBlock = 16;                 // W rows of one metadata block
constexpr uint32_t kPadMeta = 0x44444444u;    // positions (0, 1) in every group
constexpr int kGroupR = 8;                    // W row tiles per raster group

template <int BR_, int BC_, int BK_, int WARPS_R_, int WARPS_C_, int WARPS_K_, int STAGES_>
struct Config {
  static constexpr int BR = BR_, BC = BC_, BK = BK_;
  static constexpr int WARPS_R = WARPS_R_, WARPS_C = WARPS_C_, WARPS_K = WARPS_K_;
  static constexpr int WARPS_RC = WARPS_R * WARPS_C, WARPS = WARPS_RC * WARPS_K, THREADS = 32 * WARPS;
  static constexpr int STAGES = STAGES_;
  static constexpr int WTR = BR / WARPS_R, WTC = BC / WARPS_C, WTK = BK / WARPS_K;
  static constexpr int MI = WTR / 16, NI = WTC / 8, KSTEPS = WTK / kKBlock;
  static constexpr int A_CHUNKS = BK / 16;  // 16-byte chunks per stored values row (BK / 2 halves)
  static constexpr int B_CHUNKS = BK / 8;   // 16-byte chunks per x row
  static constexpr int A_ELEMS = BR * BK / 2, B_ELEMS = BC * BK;
  static constexpr int A_LOADS = BR * A_CHUNKS, B_LOADS = BC * B_CHUNKS;
  static constexpr int KB = BK / kKBlock;
  static constexpr int META_WORDS = (BR / kRowBlock) * KB * 16;
  static constexpr int META_CHUNKS = META_WORDS / 4;
  static constexpr int A_OFF = 0, B_OFF = A_ELEMS * 2, META_OFF = B_OFF + B_ELEMS * 2;
  static constexpr int STAGE_BYTES = META_OFF + META_WORDS * 4;
  static constexpr int PIPE_BYTES = STAGES * STAGE_BYTES;
  // Epilogue staging, transposed to [x row][W row] so that each thread finishes 8
  // consecutive output columns. Pitch = 4 (mod 32) floats: a warp's accumulator stores
  // (8 W rows by 4 x-row pairs) then hit 32 distinct banks.
  static constexpr int CT_PITCH = BR + 4;
  static constexpr int CT_BYTES = WARPS_K * BC * CT_PITCH * 4;
  static constexpr int SMEM_BYTES = PIPE_BYTES > CT_BYTES ? PIPE_BYTES : CT_BYTES;
  static constexpr int OUT_CHUNKS = BC * BR / 8;

  static_assert(WTR % 16 == 0 && WTC % 8 == 0 && WTK % kKBlock == 0, "warp tiles are whole mma.sp shapes");
  static_assert(BR % kRowBlock == 0, "metadata comes in 16-row blocks");
  static_assert(A_LOADS % THREADS == 0 && B_LOADS % THREADS == 0, "every thread issues the same copies");
  static_assert(META_CHUNKS <= THREADS, "one metadata copy per thread at most");
  static_assert(A_CHUNKS == 4 || A_CHUNKS == 8 || A_CHUNKS == 16, "values swizzle covers BK = 64..256");
  static_assert(B_CHUNKS == 8 || B_CHUNKS == 16 || B_CHUNKS == 32, "x swizzle covers BK = 64..256");
  static_assert(STAGE_BYTES % 128 == 0, "stages stay 128-byte aligned");
};

// 0 small : M <= 16. 64 W rows x 16 x rows, K split over two warps per row block.
// 1 medium: 64 x 64 tiles, for moderate M and grids too small for 128 x 128.
// 2 large : 128 x 128 x 64, 8 warps of 64 W rows x 32 x rows (100 KiB of shared memory:
//           more than sm_86 / sm_89 allow a block).
// 3 narrow: M <= 16 with too few 64-row tiles to fill the SMs: half of small (32 W rows,
//           4 warps), so twice the CTAs stream the weight.
using ConfigSmall = Config<64, 16, 128, 4, 1, 2, 4>;
using ConfigMedium = Config<64, 64, 64, 2, 2, 1, 4>;
using ConfigLarge = Config<128, 128, 64, 2, 4, 1, 4>;
using ConfigNarrow = Config<32, 16, 128, 2, 1, 2, 4>;
constexpr int kNumConfigs = 4;

struct TileCoord {
  int tr, tc;
};

// Grouped raster over a 1-D grid: consecutive CTAs share an x tile and walk kGroupR W tiles,
// so both operands are reused from L2.
template <class C>
BP_HD TileCoord tile_of(int64_t tile, int N, int M) {
  const int64_t tiles_r = (N + C::BR - 1) / C::BR;
  const int64_t tiles_c = (M + C::BC - 1) / C::BC;
  const int64_t per_group = int64_t(kGroupR) * tiles_c;
  const int64_t first_tr = (tile / per_group) * kGroupR;
  const int64_t rows = tiles_r - first_tr < kGroupR ? tiles_r - first_tr : kGroupR;
  const int64_t in_group = tile % per_group;
  return TileCoord{int(first_tr + in_group % rows), int(in_group / rows)};
}

struct WarpPos {
  int r, c, k;
};

template <class C>
BP_HD WarpPos warp_pos(int warp) {
  const int rc = warp % C::WARPS_RC;
  return WarpPos{rc / C::WARPS_C, rc % C::WARPS_C, warp / C::WARPS_RC};
}

template <int CHUNKS>
BP_HD fl::LoadCoord chunk_coord(int idx) {
  return fl::LoadCoord{idx / CHUNKS, idx % CHUNKS};
}

// Metadata copy c (16 bytes = 4 words) of a stage: (row block, k block, quarter) in the
// packed order, so that smem word 4c+i mirrors the global layout of the stage's blocks.
struct MetaCopy {
  int rb, kb, quarter;
};

template <class C>
BP_HD MetaCopy meta_copy(int c) {
  return MetaCopy{c / (C::KB * 4), (c / 4) % C::KB, c % 4};
}

// ldmatrix.x4 lane address in the values tile for the A fragment (mi, ks): stored
// columns 0-7 and 8-15 of rows 0-15, in the m16n8k16 A order (a0..a3).
template <class C>
BP_HD int a_frag_offset(const WarpPos& wp, int mi, int ks, int lane) {
  const int row = wp.r * C::WTR + mi * 16 + (lane & 15);
  const int chunk = (wp.k * C::WTK + ks * kKBlock) / 16 + (lane >> 4);
  return swizzle_chunk<C::A_CHUNKS>(row, chunk) * 8;
}

// ldmatrix.x4 lane address in the x tile for the B fragment of n8 tile ni over k32:
// matrix j holds k 8j .. 8j+7 of 8 x rows, so register j is b{2j, 2j+1}.
template <class C>
BP_HD int b_frag_offset(const WarpPos& wp, int ni, int ks, int lane) {
  const int row = wp.c * C::WTC + ni * 8 + (lane & 7);
  const int chunk = (wp.k * C::WTK + ks * kKBlock) / 8 + (lane >> 3);
  return swizzle_chunk<C::B_CHUNKS>(row, chunk) * 8;
}

// Word offset of lane's metadata register for (mi, ks). Lanes 4g+2, 4g+3 are not read by
// the instruction (selector 0); they load their neighbour's word, a broadcast.
template <class C>
BP_HD int meta_offset(const WarpPos& wp, int mi, int ks, int lane) {
  const int rb = (wp.r * C::WTR + mi * 16) / kRowBlock;
  const int kb = (wp.k * C::WTK + ks * kKBlock) / kKBlock;
  return (rb * C::KB + kb) * 16 + (lane >> 2) * 2 + (lane & 1);
}

struct AccCoord {
  int r, c;
};

// Tile-relative (W row, x row) of accumulator d[2h + e]: W row g (+8 for h = 1), x row
// 2t + e.
template <class C>
BP_HD AccCoord acc_coord(const WarpPos& wp, int mi, int ni, int h, int e, int lane) {
  return AccCoord{wp.r * C::WTR + mi * 16 + (lane >> 2) + 8 * h, wp.c * C::WTC + ni * 8 + 2 * (lane & 3) + e};
}

template <class C>
BP_HD int ctile_offset(int slice, int c, int r) {
  return (slice * C::BC + c) * C::CT_PITCH + r;
}

// Tile-relative (W row, x row) of the first of 8 consecutive output columns of piece idx.
template <class C>
BP_HD AccCoord out_chunk_coord(int idx) {
  return AccCoord{(idx % (C::BR / 8)) * 8, idx / (C::BR / 8)};
}

}  // namespace bigperf::cuda::s24
