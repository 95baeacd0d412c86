// Tile configurations, index maps and the register dequantisation of the W8A16 kernel,
// shared by the device kernel (w8a16_linear.cu) and the host emulator (w8a16_emulate.cu)
// so that the emulator checks the formulas the kernel runs.
//
// Packed weight (bigperf/cuda_layouts.py, pack_w8a16, layout version 1): int8 codes of
// W [N, K] padded to Np = N rounded up to 32 and Kp = K rounded up to 16, stored as
// [Np / 32][Kp / 16] blocks of 512 bytes. Block (nb, kb) covers columns 32 nb .. +31 and
// k 16 kb .. +15; its bytes 16 l .. 16 l + 15 are what lane l = 4 g + t of a warp needs
// for the mma.m16n8k16 B fragments of the four n8 fragments j = 0..3 (column
// n = 32 nb + 8 j + g): bytes 4 j .. 4 j + 3 hold k = 2t, 2t+8, 2t+1, 2t+9. One 16-byte
// shared load per lane then feeds four mma without any shuffling, and the byte order puts
// the pairs of each B register (k = 2t, 2t+1 and 2t+8, 2t+9) in the even and the odd
// bytes, where one mask (and one shift) separates them.
// Scales: fp32 [G, Np] (group-major, so a stage reads BN consecutive floats per group),
// zero points likewise as fp32 [G, Np] or absent. Per channel is G = 1 with a group as
// long as Kp.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/fused_linear_tile.h"

namespace bigperf::cuda::w8 {

using fl::apply_activation;
using fl::swizzle_chunk;

constexpr int kPackN = 32;             // columns per packed block (four n8 fragments)
constexpr int kPackK = 16;             // k per packed block (one k16 mma step)
constexpr int kPackBlockBytes = 512;   // 32 lanes x 16 bytes
constexpr int kSliceK = 32;            // k per warp and stage: the smallest group size
constexpr int kMaxSplits = 16;

// Warps split the CTA's BN columns (one packed n32 block each) and the stage's K (one
// 32-wide slice each). A slice never straddles a quantisation group (groups are multiples
// of 32 and slices start at multiples of 32), so each warp scales its slice's partial sum
// once, in fp32, with the slice's group scale: the tensor cores only ever see the exact
// integers q - z.
template <int MI_, int WARPS_N_, int WARPS_K_, int STAGES_>
struct Config {
  static constexpr int MI = MI_, BM = 16 * MI_;
  static constexpr int WARPS_N = WARPS_N_, WARPS_K = WARPS_K_, WARPS = WARPS_N_ * WARPS_K_;
  static constexpr int THREADS = 32 * WARPS;
  static constexpr int STAGES = STAGES_;
  static constexpr int NI = kPackN / 8;
  static constexpr int KSTEPS = kSliceK / 16;
  static constexpr int BN = kPackN * WARPS_N;
  static constexpr int BK = kSliceK * WARPS_K;
  static constexpr int KBLOCKS = BK / kPackK;  // packed blocks per n32 column block and stage
  static constexpr int W_BYTES = BN * BK;
  static constexpr int W_CHUNKS = W_BYTES / 16;
  static constexpr int X_CHUNKS = BK / 8;  // 16-byte chunks per x row
  static constexpr int X_ELEMS = BM * BK;
  static constexpr int X_LOADS = BM * X_CHUNKS;
  static constexpr int S_FLOATS = WARPS_K * BN;  // one scale row per K slice
  static constexpr int S_CHUNKS = S_FLOATS / 4;
  static constexpr int W_OFF = 0;
  static constexpr int X_OFF = W_OFF + W_BYTES;
  static constexpr int S_OFF = X_OFF + X_ELEMS * 2;
  static constexpr int Z_OFF = S_OFF + S_FLOATS * 4;
  static constexpr int STAGE_BYTES = Z_OFF + S_FLOATS * 4;
  static constexpr int PIPE_BYTES = STAGES * STAGE_BYTES;
  // Epilogue staging: one fp32 BM x BN tile per K slice; the 8-float padding puts the 8
  // rows of a warp's float2 accumulator stores on distinct banks.
  static constexpr int CT_PITCH = BN + 8;
  static constexpr int CT_BYTES = WARPS_K * BM * CT_PITCH * 4;
  static constexpr int SMEM_BYTES = PIPE_BYTES > CT_BYTES ? PIPE_BYTES : CT_BYTES;
  static constexpr int OUT_CHUNKS = BM * BN / 8;

  static_assert(W_CHUNKS % THREADS == 0, "every thread issues the same number of weight copies");
  static_assert(X_CHUNKS == 8 || X_CHUNKS == 16 || X_CHUNKS == 32, "x swizzle covers BK = 64..256");
  static_assert(S_CHUNKS <= THREADS, "one scale copy per thread at most");
  static_assert(STAGE_BYTES % 128 == 0, "stages stay 128-byte aligned");
  static_assert(STAGES >= 2, "pipeline needs at least two stages");
};

// 0 m16: M <= 16 (decode); 1 m32: 16 < M, in 32-row blocks.
using ConfigM16 = Config<1, 2, 4, 4>;
using ConfigM32 = Config<2, 2, 4, 4>;
constexpr int kNumConfigs = 2;

struct Tile {
  int tn, tm, split;
};

// Column tiles vary fastest so that the CTAs running together share x rows and k range.
template <class C>
BP_HD Tile tile_of(int64_t block, int tiles_n, int m_blocks) {
  const int tn = int(block % tiles_n);
  const int64_t rest = block / tiles_n;
  return Tile{tn, int(rest % m_blocks), int(rest / m_blocks)};
}

// K tiles [begin, end) of `split` out of `splits`: as even as integer division allows.
BP_HD int split_begin(int split, int splits, int ktiles) { return int(int64_t(split) * ktiles / splits); }

struct WarpPos {
  int n, k;
};

template <class C>
BP_HD WarpPos warp_pos(int warp) {
  return WarpPos{warp % C::WARPS_N, warp / C::WARPS_N};
}

// Weight copy c of a stage: block b = c / 32 in [n32 block][k16 block] order, so that
// consecutive threads copy consecutive bytes of one packed row (the packed layout stores
// the k16 blocks of an n32 block contiguously).
struct WCopy {
  int nh, kb, lane_chunk;
};

template <class C>
BP_HD WCopy w_copy(int c) {
  const int b = c / 32;
  return WCopy{b / C::KBLOCKS, b % C::KBLOCKS, c % 32};
}

template <class C>
BP_HD int w_smem_offset(const WCopy& w) {
  return (w.nh * C::KBLOCKS + w.kb) * kPackBlockBytes + w.lane_chunk * 16;
}

// Byte offset of the 16 bytes lane `lane` of warp `wp` loads for k16 step `ks`.
template <class C>
BP_HD int w_frag_offset(const WarpPos& wp, int ks, int lane) {
  return (wp.n * C::KBLOCKS + wp.k * C::KSTEPS + ks) * kPackBlockBytes + lane * 16;
}

// x tile: rows of BK halves, 16-byte chunks swizzled as in the fused linear kernel.
template <class C>
BP_HD fl::LoadCoord x_copy(int c) {
  return fl::LoadCoord{c / C::X_CHUNKS, c % C::X_CHUNKS};
}

// ldmatrix.x4 lane address for A fragment (mi, ks): matrices (rows 0-7, k 0-7),
// (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) give a0..a3 in order.
template <class C>
BP_HD int a_frag_offset(const WarpPos& wp, int mi, int ks, int lane) {
  const int row = mi * 16 + (lane & 15);
  const int chunk = (wp.k * kSliceK + ks * 16) / 8 + (lane >> 4);
  return swizzle_chunk<C::X_CHUNKS>(row, chunk) * 8;
}

// Scale copy c: slice s = c / (BN / 4), columns 4 (c % (BN / 4)) .. +3 of the tile.
struct SCopy {
  int slice, col;
};

template <class C>
BP_HD SCopy s_copy(int c) {
  return SCopy{c / (C::BN / 4), (c % (C::BN / 4)) * 4};
}

// Float offsets in a stage's scale (or zero) block: the two accumulator columns 2t, 2t+1
// of fragment j, and the B column g of fragment j.
template <class C>
BP_HD int scale_offset(const WarpPos& wp, int j, int lane) {
  return wp.k * C::BN + wp.n * kPackN + 8 * j + 2 * (lane & 3);
}

template <class C>
BP_HD int zero_offset(const WarpPos& wp, int j, int lane) {
  return wp.k * C::BN + wp.n * kPackN + 8 * j + (lane >> 2);
}

struct AccCoord {
  int row, col;
};

// Tile-relative (row, col) of accumulator c[2h] of fragment (mi, j); c[2h+1] is col + 1.
template <class C>
BP_HD AccCoord acc_coord(const WarpPos& wp, int mi, int j, int h, int lane) {
  return AccCoord{mi * 16 + (lane >> 2) + 8 * h, wp.n * kPackN + 8 * j + 2 * (lane & 3)};
}

template <class C>
BP_HD int ctile_offset(int slice, int r, int c) {
  return (slice * C::BM + r) * C::CT_PITCH + c;
}

template <class C>
BP_HD AccCoord out_chunk_coord(int idx) {
  return AccCoord{idx / (C::BN / 8), (idx % (C::BN / 8)) * 8};
}

// ----------------------------------------------------------------------------- dequant
// Register bit patterns of fp16/bf16 pairs (low half = first element). The device uses
// the packed half-precision subtraction; the host emulator decodes, subtracts in fp32 and
// re-encodes, which gives the same bits because every value involved is a small integer
// that both formats hold exactly.

BP_HD uint32_t sub_f16x2(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  const __half2 r = __hsub2(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&b));
  return *reinterpret_cast<const uint32_t*>(&r);
#else
  uint32_t out = 0;
  for (int h = 0; h < 2; ++h) {
    __half_raw ra, rb;
    ra.x = uint16_t(a >> (16 * h));
    rb.x = uint16_t(b >> (16 * h));
    const __half_raw rr = __float2half_rn(__half2float(__half(ra)) - __half2float(__half(rb)));
    out |= uint32_t(rr.x) << (16 * h);
  }
  return out;
#endif
}

BP_HD uint32_t sub_bf16x2(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  const __nv_bfloat162 r =
      __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&a), *reinterpret_cast<const __nv_bfloat162*>(&b));
  return *reinterpret_cast<const uint32_t*>(&r);
#else
  uint32_t out = 0;
  for (int h = 0; h < 2; ++h) {
    __nv_bfloat16_raw ra, rb;
    ra.x = uint16_t(a >> (16 * h));
    rb.x = uint16_t(b >> (16 * h));
    const __nv_bfloat16_raw rr =
        __float2bfloat16_rn(__bfloat162float(__nv_bfloat16(ra)) - __bfloat162float(__nv_bfloat16(rb)));
    out |= uint32_t(rr.x) << (16 * h);
  }
  return out;
#endif
}

// The subtrahend the dequantisation needs for zero point z, in both halves.
//   fp16: 0x6400 | (q ^ 0x80) is the half 1024 + (q + 128), so subtracting 1152 + z
//         leaves q - z exactly (1024..1279 are integers in fp16's [1024, 2048) binade).
//   bf16: z itself (the subtraction of the sign term already produced q).
BP_HD uint32_t zero_const_f16(float z) {
  __half_raw r = __float2half_rn(1152.f + z);
  return uint32_t(r.x) * 0x10001u;
}

BP_HD uint32_t zero_const_bf16(float z) {
  __nv_bfloat16_raw r = __float2bfloat16_rn(z);
  return uint32_t(r.x) * 0x10001u;
}

// lop3 with the truth table `lut` (bit 4a + 2b + c of lut is f(a, b, c)). Spelled out on
// the device because a LOP3 instruction takes one immediate: written as C++ with two
// constants, (q & mask) | magic compiles to two instructions. The host evaluates the same
// truth table bit by bit.
template <int LUT>
BP_HD uint32_t lop3(uint32_t a, uint32_t b, uint32_t c) {
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, %4;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c), "n"(LUT));
  return d;
#else
  uint32_t d = 0;
  for (int i = 0; i < 32; ++i) {
    const int idx = int(((a >> i) & 1) << 2 | ((b >> i) & 1) << 1 | ((c >> i) & 1));
    d |= uint32_t((LUT >> idx) & 1) << i;
  }
  return d;
#endif
}

constexpr int kLutAndOr = (0xF0 & 0xCC) | 0xAA;   // (a & b) | c
constexpr int kLutAndXor = (0xF0 & 0xCC) ^ 0xAA;  // (a & b) ^ c

// One packed register (bytes: k = 2t, 2t+8, 2t+1, 2t+9 of one column, int8) to the two
// fp16 B registers {2t, 2t+1} and {2t+8, 2t+9} of q - z. Even bytes already sit in the
// low byte of each 16-bit half; odd bytes get there with one shift. Flipping bit 7 turns
// q into q + 128 in [0, 255].
BP_HD void dequant_f16(uint32_t q, uint32_t zc, uint32_t& b0, uint32_t& b1) {
  const uint32_t even = lop3<kLutAndXor>(q, 0x00FF00FFu, 0x64806480u);
  const uint32_t odd = lop3<kLutAndXor>(q >> 8, 0x00FF00FFu, 0x64806480u);
  b0 = sub_f16x2(even, zc);
  b1 = sub_f16x2(odd, zc);
}

// bf16 has 7 mantissa bits, one short of an int8 magic number. Split q = low7 - 128 s:
// 0x4300 | low7 is the bf16 128 + low7, 0x4300 | (s << 7) is 128 (s = 0) or 256 (s = 1),
// and their difference is q, exactly. A non-zero z is subtracted afterwards (q - z spans
// [-255, 255], still exact in bf16).
BP_HD void dequant_bf16(uint32_t q, uint32_t zc, bool has_zero, uint32_t& b0, uint32_t& b1) {
  const uint32_t odd = q >> 8;
  b0 = sub_bf16x2(lop3<kLutAndOr>(q, 0x007F007Fu, 0x43004300u), lop3<kLutAndOr>(q, 0x00800080u, 0x43004300u));
  b1 = sub_bf16x2(lop3<kLutAndOr>(odd, 0x007F007Fu, 0x43004300u), lop3<kLutAndOr>(odd, 0x00800080u, 0x43004300u));
  if (has_zero) {
    b0 = sub_bf16x2(b0, zc);
    b1 = sub_bf16x2(b1, zc);
  }
}

}  // namespace bigperf::cuda::w8
