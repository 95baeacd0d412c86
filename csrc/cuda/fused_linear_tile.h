// Tile configurations and index maps of the fused linear kernel, shared by the device
// kernel (fused_linear.cu) and the host emulator (fused_linear_emulate.cu). Keeping every
// address computation here means the emulator checks the very formulas the kernel runs:
// the smem swizzle, the cp.async chunk assignment, the ldmatrix lane addresses and the
// accumulator-to-(row, col) map of mma.m16n8k16.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define BP_HD __host__ __device__ __forceinline__
#else
#define BP_HD inline
#endif

namespace bigperf::cuda::fl {

enum Act : int { kActNone = 0, kActRelu = 1, kActGeluErf = 2, kActGeluTanh = 3, kActSilu = 4 };

// Warps split the CTA tile over M and N and, for skinny problems, also over K: with
// WARPS_K > 1 each warp multiplies its own K slice of every smem tile and the partial
// sums meet in shared memory in the epilogue. That keeps all warps busy when the M tile
// is a single m16 fragment (decode-style M <= 16).
template <int BM_, int BN_, int BK_, int WARPS_M_, int WARPS_N_, int WARPS_K_, int STAGES_>
struct TileConfig {
  static constexpr int BM = BM_, BN = BN_, BK = BK_;
  static constexpr int WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, WARPS_K = WARPS_K_;
  static constexpr int STAGES = STAGES_;
  static constexpr int WARPS_MN = WARPS_M * WARPS_N;
  static constexpr int WARPS = WARPS_MN * WARPS_K;
  static constexpr int THREADS = WARPS * 32;
  static constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N, WTK = BK / WARPS_K;
  static constexpr int MI = WTM / 16, NI = WTN / 8, KSTEPS = WTK / 16;
  static constexpr int CHUNKS = BK / 8;  // 16-byte chunks (8 halves) per smem row
  static constexpr int A_ELEMS = BM * BK, B_ELEMS = BN * BK;
  static constexpr int STAGE_ELEMS = A_ELEMS + B_ELEMS;
  static constexpr int A_LOADS = BM * CHUNKS / THREADS, B_LOADS = BN * CHUNKS / THREADS;
  static constexpr int PIPE_BYTES = STAGES * STAGE_ELEMS * 2;
  // Epilogue staging: one fp32 BM x BN tile per K slice. The 8-float row padding puts
  // the 8 rows a warp's float2 accumulator writes touch on distinct banks.
  static constexpr int CT_PITCH = BN + 8;
  static constexpr int CT_BYTES = WARPS_K * BM * CT_PITCH * 4;
  static constexpr int SMEM_BYTES = PIPE_BYTES > CT_BYTES ? PIPE_BYTES : CT_BYTES;
  static constexpr int OUT_CHUNKS = BM * BN / 8;  // 8-column output pieces per tile

  static_assert(BM % (16 * WARPS_M) == 0, "warp tile M must be whole m16 fragments");
  static_assert(BN % (16 * WARPS_N) == 0, "warp tile N must be pairs of n8 fragments (ldmatrix.x4)");
  static_assert(BK % (16 * WARPS_K) == 0, "warp K slice must be whole k16 steps");
  static_assert(CHUNKS == 4 || CHUNKS == 8 || CHUNKS == 16 || CHUNKS == 32, "swizzle covers BK = 32..256");
  static_assert((BM * CHUNKS) % THREADS == 0 && (BN * CHUNKS) % THREADS == 0,
                "every thread issues the same number of cp.async per tile");
  static_assert(STAGES >= 2, "pipeline needs at least two stages");
};

// The configurations the launcher picks from; the index is the `config` argument of the
// binding (-1 = choose by shape).
//   0 small : M <= 16 (decode). One m16 row block, 32 columns, K split over 4 warps:
//             N / 32 CTAs stream the weight, 3 tiles (24 KiB of W) in flight each.
//   1 medium: 64x64 tiles for 16 < M and for grids too small to fill the GPU with 128x128.
//   2 large : 128x128x32, 8 warps of 64x32, for big M.
using ConfigSmall = TileConfig<16, 32, 128, 1, 1, 4, 4>;
using ConfigMedium = TileConfig<64, 64, 64, 2, 2, 1, 4>;
using ConfigLarge = TileConfig<128, 128, 32, 2, 4, 1, 4>;
constexpr int kNumConfigs = 3;
constexpr int kGroupM = 8;  // M tiles per raster group, so neighbouring CTAs share W tiles in L2

// Physical 16-byte chunk index of logical (row, chunk) in a K-major smem tile. The XOR
// spreads the 8 rows that one ldmatrix 8x8 matrix reads over the 8 distinct 16-byte bank
// groups of a 128-byte line; rows of 64 bytes (BK = 32) hold two rows per line, hence the
// row >> 1 there.
template <int CHUNKS>
BP_HD int swizzle_chunk(int row, int chunk) {
  if constexpr (CHUNKS == 4) {
    return row * 4 + (chunk ^ ((row >> 1) & 3));
  } else {
    return row * CHUNKS + (chunk ^ (row & 7));
  }
}

struct TileCoord {
  int tm, tn;
};

// Grouped raster order over a 1-D grid (no 65535 limit on the second grid dimension).
template <class C>
BP_HD TileCoord tile_of(int64_t tile, int M, int N) {
  const int64_t num_tm = (M + C::BM - 1) / C::BM;
  const int64_t num_tn = (N + C::BN - 1) / C::BN;
  const int64_t per_group = int64_t(kGroupM) * num_tn;
  const int64_t first_tm = (tile / per_group) * kGroupM;
  const int64_t rows = num_tm - first_tm < kGroupM ? num_tm - first_tm : kGroupM;
  const int64_t in_group = tile % per_group;
  return TileCoord{int(first_tm + in_group % rows), int(in_group / rows)};
}

struct WarpPos {
  int m, n, k, mn;
};

template <class C>
BP_HD WarpPos warp_pos(int warp) {
  const int mn = warp % C::WARPS_MN;
  return WarpPos{mn / C::WARPS_N, mn % C::WARPS_N, warp / C::WARPS_MN, mn};
}

struct LoadCoord {
  int row, chunk;
};

// i-th 16-byte cp.async of thread tid: consecutive threads take consecutive chunks of a
// row so that a warp reads whole 128-byte global segments.
template <class C>
BP_HD LoadCoord load_coord(int tid, int i) {
  const int idx = tid + i * C::THREADS;
  return LoadCoord{idx / C::CHUNKS, idx % C::CHUNKS};
}

// Element offset in the A tile that `lane` hands to ldmatrix.x4 for fragment (mi, ks).
// Matrices 0..3 are (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
// (rows 8-15, k 8-15) of the m16k16 block, which makes registers 0..3 exactly a0..a3 of
// the mma.m16n8k16 A fragment (PTX ISA, "Matrix Fragments for mma.m16n8k16").
template <class C>
BP_HD int a_frag_offset(const WarpPos& wp, int mi, int ks, int lane) {
  const int row = wp.m * C::WTM + mi * 16 + (lane & 15);
  const int chunk = (wp.k * C::WTK + ks * 16) / 8 + (lane >> 4);
  return swizzle_chunk<C::CHUNKS>(row, chunk) * 8;
}

// Element offset in the B tile (stored [n][k], i.e. W rows, which is the "col" layout
// mma wants) for the pair of n8 fragments 2*nj and 2*nj+1. Matrices 0..3 are
// (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15): registers {0,1} are
// b0,b1 of fragment 2*nj and {2,3} those of fragment 2*nj+1, no transpose needed.
template <class C>
BP_HD int b_frag_offset(const WarpPos& wp, int nj, int ks, int lane) {
  const int row = wp.n * C::WTN + nj * 16 + (lane & 7) + ((lane >> 4) << 3);
  const int chunk = (wp.k * C::WTK + ks * 16) / 8 + ((lane >> 3) & 1);
  return swizzle_chunk<C::CHUNKS>(row, chunk) * 8;
}

struct AccCoord {
  int row, col;
};

// Tile-relative (row, col) of accumulator c[2*h] of fragment (mi, ni); c[2*h+1] is the
// next column. From the m16n8 C/D fragment table: row = groupID (+8 for c2, c3),
// col = 2 * threadID_in_group (+1 for c1, c3).
template <class C>
BP_HD AccCoord acc_coord(const WarpPos& wp, int mi, int ni, int h, int lane) {
  return AccCoord{wp.m * C::WTM + mi * 16 + (lane >> 2) + 8 * h, wp.n * C::WTN + ni * 8 + 2 * (lane & 3)};
}

// Offset (in floats) of tile element (r, c) of K slice `slice` in the staging buffer.
template <class C>
BP_HD int ctile_offset(int slice, int r, int c) {
  return (slice * C::BM + r) * C::CT_PITCH + c;
}

// Tile-relative first element of the idx-th 8-column output piece: consecutive threads
// take consecutive pieces of a row, so residual loads and out stores are 16-byte and
// coalesced.
template <class C>
BP_HD AccCoord out_chunk_coord(int idx) {
  return AccCoord{idx / (C::BN / 8), (idx % (C::BN / 8)) * 8};
}

// Fast intrinsics on the device (the epilogue is unrolled, and libdevice tanhf and
// IEEE division would multiply its code size); their error (~1e-6 relative) is far
// below fp16/bf16 rounding. tanh-GELU uses 0.5 * (1 + tanh(u)) = 1 / (1 + exp(-2u)).
BP_HD float fast_exp(float v) {
#if defined(__CUDA_ARCH__)
  return __expf(v);
#else
  return expf(v);
#endif
}

BP_HD float fast_div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdividef(a, b);  // b > 2^126 gives 0, the limit v / inf would give anyway
#else
  return b > 8.5e37f ? 0.f * a : a / b;
#endif
}

BP_HD float apply_activation(float v, int act) {
  switch (act) {
    case kActRelu: return v < 0.f ? 0.f : v;  // NaN stays NaN, as torch.relu
    case kActGeluErf: return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    case kActGeluTanh: {
      const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
      return fast_div(v, 1.f + fast_exp(-2.f * u));
    }
    case kActSilu: return fast_div(v, 1.f + fast_exp(-v));
    default: return v;
  }
}

}  // namespace bigperf::cuda::fl
