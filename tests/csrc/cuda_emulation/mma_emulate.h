// Host models of the warp-level data movement and tensor-core instructions, written from
// the PTX ISA tables, for the W8A16 and 2:4 emulators. A kernel's index maps run against
// these; a lane address off by a row or a fragment register in the wrong slot gives wrong
// numbers (or NaN from never-written shared memory) in the emulator tests.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>
#include <stdexcept>
#include <string>
#include <vector>

namespace bigperf::cuda::emu {

// fp16 / bf16 values as the emulators hold them (floats), and back with the kernels' rounding.
inline float to_f(__half v) { return __half2float(v); }
inline float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
T from_f(float v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(v);
  } else {
    return __float2bfloat16_rn(v);
  }
}

[[noreturn]] inline void broken(const char* fn, const std::string& what) {
  throw std::runtime_error(std::string(fn) + ": layout error: " + what);
}

// ldmatrix.sync.aligned.m8n8.x4.b16 on a tile of 16-bit values held as floats: lane
// 8j + r gives the address (in elements) of row r of matrix j; lane l receives in register
// j the elements 2(l%4), 2(l%4)+1 of row l/4 of matrix j. The swizzles exist to put the 8
// rows of a matrix in 8 distinct 16-byte bank groups, which is checked too.
inline void ldmatrix_x4(const char* fn, const std::vector<float>& tile, int tile_elems, const int (&addr)[32],
                        float (&regs)[32][4][2]) {
  for (int lane = 0; lane < 32; ++lane) {
    if (addr[lane] % 8 != 0 || addr[lane] < 0 || addr[lane] + 8 > tile_elems) {
      broken(fn, "ldmatrix row address " + std::to_string(addr[lane]) + " of lane " + std::to_string(lane) +
                     " is misaligned or outside the tile");
    }
  }
  for (int j = 0; j < 4; ++j) {
    unsigned groups = 0;
    for (int r = 0; r < 8; ++r) groups |= 1u << ((addr[8 * j + r] / 8) % 8);
    if (groups != 0xffu) broken(fn, "ldmatrix matrix " + std::to_string(j) + " has shared-memory bank conflicts");
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int j = 0; j < 4; ++j)
      for (int h = 0; h < 2; ++h) regs[lane][j][h] = tile[addr[8 * j + lane / 4] + 2 * (lane % 4) + h];
}

// The emulators keep a warp's accumulators as the kernel's register arrays, acc[lane *
// lane_stride + 4 * fragment + e]; `mma(d)` updates one fragment gathered as d[lane][e].
template <class Mma>
void on_fragment(float* regs, int lane_stride, Mma mma) {
  float d[32][4];
  for (int lane = 0; lane < 32; ++lane)
    for (int e = 0; e < 4; ++e) d[lane][e] = regs[lane * lane_stride + e];
  mma(d);
  for (int lane = 0; lane < 32; ++lane)
    for (int e = 0; e < 4; ++e) regs[lane * lane_stride + e] = d[lane][e];
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}, g = lane / 4, t = lane % 4:
// a{2i, 2i+1} = register i: rows g (i = 0, 2) or g + 8 (i = 1, 3), cols 2t (+8 for i >= 2);
// b{0,1} = k 2t, 2t+1 and b{2,3} = k 2t+8, 2t+9 of column g; c{0..3} = (g, 2t), (g, 2t+1),
// (g+8, 2t), (g+8, 2t+1). acc[lane][0..3] accumulates.
inline void mma_16816(const float (&a)[32][4][2], const float (&b)[32][2][2], float (&acc)[32][4]) {
  double A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int r = 0; r < 4; ++r)
      for (int h = 0; h < 2; ++h) A[g + 8 * (r & 1)][2 * t + h + 8 * (r >> 1)] = a[lane][r][h];
    for (int r = 0; r < 2; ++r)
      for (int h = 0; h < 2; ++h) B[2 * t + h + 8 * r][g] = b[lane][r][h];
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
      double s = 0;
      for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
      acc[lane][i] += float(s);
    }
  }
}

// mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.{f16,bf16}, selector 0.
// A: the 16 x 16 stored (compressed) values in the m16n8k16 A fragment layout; stored
// column 2q, 2q+1 hold the kept values of logical group q (k = 4q .. 4q+3), in ascending
// position. Metadata: lane 4g + p (p = 0, 1) holds in bits 0-15 row g and in bits 16-31
// row g + 8, for logical k 16p .. 16p+15; group q of those sits in bits 4q .. 4q+3, the
// first kept position in the low two bits. Lanes 4g+2, 4g+3 are ignored.
// B: 32 x 8, b{2i, 2i+1} = k 2t + 8i, 2t + 8i + 1 of column g.
inline void mma_sp_16832(const char* fn, const float (&a)[32][4][2], const uint32_t (&meta)[32],
                         const float (&b)[32][4][2], float (&acc)[32][4]) {
  double S[16][16], A[16][32] = {}, B[32][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int r = 0; r < 4; ++r)
      for (int h = 0; h < 2; ++h) S[g + 8 * (r & 1)][2 * t + h + 8 * (r >> 1)] = a[lane][r][h];
    for (int r = 0; r < 4; ++r)
      for (int h = 0; h < 2; ++h) B[2 * t + h + 8 * r][g] = b[lane][r][h];
  }
  for (int g = 0; g < 8; ++g)
    for (int p = 0; p < 2; ++p) {
      const uint32_t e = meta[4 * g + p];
      for (int half = 0; half < 2; ++half) {
        const int row = g + 8 * half;
        for (int q = 0; q < 4; ++q) {
          const uint32_t nib = (e >> (16 * half + 4 * q)) & 0xF;
          const int i0 = int(nib & 3), i1 = int(nib >> 2);
          if (i0 >= i1) {
            broken(fn, "metadata nibble " + std::to_string(nib) + " of lane " + std::to_string(4 * g + p) +
                           " is not two ascending positions");
          }
          const int group = 4 * p + q;  // logical group within the 32-wide k range
          A[row][4 * group + i0] = S[row][2 * group];
          A[row][4 * group + i1] = S[row][2 * group + 1];
        }
      }
    }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
      double s = 0;
      for (int k = 0; k < 32; ++k) s += A[row][k] * B[k][col];
      acc[lane][i] += float(s);
    }
  }
}

}  // namespace bigperf::cuda::emu
