// Host emulation of the fused linear kernel, for machines without a GPU.
//
// The index maps come from fused_linear_tile.h, exactly as the kernel uses them; what is
// written independently is the hardware: the data movement of cp.async (with zero-fill)
// here, ldmatrix.x4 and the fragment layouts of mma.m16n8k16 as tabulated in the PTX ISA
// in mma_emulate.h (shared with the W8A16 and 2:4 emulators). A swizzle that does not round-trip, a lane address off by a row, a fragment
// register in the wrong slot or an epilogue coordinate that misses an element all give
// wrong numbers (or NaN from never-written shared memory) here. What it cannot show:
// races and pipeline ordering (one stage is emulated), PTX syntax, and performance.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/cuda_api.h"
#include "cuda/fused_linear_tile.h"
#include "emulators.h"
#include "mma_emulate.h"

namespace bigperf::cuda {
namespace fl {
namespace {

using emu::from_f;
using emu::to_f;

constexpr const char* kFn = "_cuda_emulators.emulate_fused_linear";

[[noreturn]] void broken(const std::string& what) { emu::broken(kFn, what); }

template <class C, class T>
void emulate(const FusedLinearArgs& args) {
  const T* x = reinterpret_cast<const T*>(args.x);
  const T* w = reinterpret_cast<const T*>(args.w);
  const float* bias = reinterpret_cast<const float*>(args.bias);
  const T* residual = reinterpret_cast<const T*>(args.residual);
  T* out = reinterpret_cast<T*>(args.out);
  const int M = int(args.M), N = int(args.N), K = int(args.K);
  const int64_t tiles = ((args.M + C::BM - 1) / C::BM) * ((args.N + C::BN - 1) / C::BN);
  const int ktiles = (K + C::BK - 1) / C::BK;
  const float nan = std::numeric_limits<float>::quiet_NaN();

  std::vector<float> smem(C::STAGE_ELEMS);
  std::vector<int> written(C::STAGE_ELEMS / 8);
  // acc[warp][lane][(mi * NI + ni) * 4 + e], the kernel's register array per thread.
  constexpr int FRAG = C::MI * C::NI * 4;
  std::vector<float> acc(size_t(C::WARPS) * 32 * FRAG);
  std::vector<float> ctile(C::CT_BYTES / 4);
  std::vector<int> ct_written(C::CT_BYTES / 4);
  std::vector<unsigned char> hits(size_t(M) * N, 0);
  float a[C::MI][32][4][2], b[C::NI][32][2][2];

  auto copy_chunk = [&](int base, int phys_chunk, const T* src, bool pred) {
    const int slot = base / 8 + phys_chunk;
    if (phys_chunk < 0 || (base == 0 && phys_chunk >= C::A_ELEMS / 8) ||
        (base != 0 && phys_chunk >= C::B_ELEMS / 8)) {
      broken("cp.async destination chunk " + std::to_string(phys_chunk) + " outside its tile");
    }
    if (written[slot]++) broken("two cp.async write smem chunk " + std::to_string(slot));
    for (int e = 0; e < 8; ++e) smem[base + phys_chunk * 8 + e] = pred ? to_f(src[e]) : 0.f;
  };

  for (int64_t tile = 0; tile < tiles; ++tile) {
    const TileCoord tc = tile_of<C>(tile, M, N);
    const int m0 = tc.tm * C::BM, n0 = tc.tn * C::BN;
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int kt = 0; kt < ktiles; ++kt) {
      const int k0 = kt * C::BK;
      std::fill(smem.begin(), smem.end(), nan);
      std::fill(written.begin(), written.end(), 0);
      for (int tid = 0; tid < C::THREADS; ++tid) {
        for (int i = 0; i < C::A_LOADS; ++i) {
          const LoadCoord c = load_coord<C>(tid, i);
          const int gr = m0 + c.row, gk = k0 + c.chunk * 8;
          const bool pred = gr < M && gk < K;
          copy_chunk(0, swizzle_chunk<C::CHUNKS>(c.row, c.chunk), x + (pred ? gr * args.x_row_stride + gk : 0), pred);
        }
        for (int i = 0; i < C::B_LOADS; ++i) {
          const LoadCoord c = load_coord<C>(tid, i);
          const int gn = n0 + c.row, gk = k0 + c.chunk * 8;
          const bool pred = gn < N && gk < K;
          copy_chunk(C::A_ELEMS, swizzle_chunk<C::CHUNKS>(c.row, c.chunk),
                     w + (pred ? gn * args.w_row_stride + gk : 0), pred);
        }
      }
      const std::vector<float> sA(smem.begin(), smem.begin() + C::A_ELEMS);
      const std::vector<float> sB(smem.begin() + C::A_ELEMS, smem.end());
      for (int warp = 0; warp < C::WARPS; ++warp) {
        const WarpPos wp = warp_pos<C>(warp);
        for (int ks = 0; ks < C::KSTEPS; ++ks) {
          int addr[32];
          for (int mi = 0; mi < C::MI; ++mi) {
            for (int lane = 0; lane < 32; ++lane) addr[lane] = a_frag_offset<C>(wp, mi, ks, lane);
            emu::ldmatrix_x4(kFn, sA, C::A_ELEMS, addr, a[mi]);
          }
          for (int nj = 0; nj < C::NI / 2; ++nj) {
            float r[32][4][2];
            for (int lane = 0; lane < 32; ++lane) addr[lane] = b_frag_offset<C>(wp, nj, ks, lane);
            emu::ldmatrix_x4(kFn, sB, C::B_ELEMS, addr, r);
            for (int lane = 0; lane < 32; ++lane)
              for (int h = 0; h < 2; ++h) {
                b[2 * nj][lane][0][h] = r[lane][0][h];
                b[2 * nj][lane][1][h] = r[lane][1][h];
                b[2 * nj + 1][lane][0][h] = r[lane][2][h];
                b[2 * nj + 1][lane][1][h] = r[lane][3][h];
              }
          }
          for (int mi = 0; mi < C::MI; ++mi)
            for (int ni = 0; ni < C::NI; ++ni)
              emu::on_fragment(&acc[(size_t(warp) * 32) * FRAG + (mi * C::NI + ni) * 4], FRAG,
                               [&](float (&d)[32][4]) { emu::mma_16816(a[mi], b[ni], d); });
        }
      }
    }
    // Staging: each warp's accumulators land in its K slice of the fp32 tile; every
    // slot of every slice must be written exactly once.
    std::fill(ctile.begin(), ctile.end(), nan);
    std::fill(ct_written.begin(), ct_written.end(), 0);
    for (int warp = 0; warp < C::WARPS; ++warp) {
      const WarpPos wp = warp_pos<C>(warp);
      for (int lane = 0; lane < 32; ++lane)
        for (int mi = 0; mi < C::MI; ++mi)
          for (int ni = 0; ni < C::NI; ++ni)
            for (int h = 0; h < 2; ++h) {
              const AccCoord ac = acc_coord<C>(wp, mi, ni, h, lane);
              if (ac.row < 0 || ac.row >= C::BM || ac.col < 0 || ac.col + 1 >= C::BN || ac.col % 2) {
                broken("accumulator coordinate outside the tile");
              }
              for (int e = 0; e < 2; ++e) {
                const int off = ctile_offset<C>(wp.k, ac.row, ac.col + e);
                if (ct_written[off]++) broken("staging slot written twice");
                ctile[off] = acc[(size_t(warp) * 32 + lane) * FRAG + (mi * C::NI + ni) * 4 + 2 * h + e];
              }
            }
    }
    for (int s = 0; s < C::WARPS_K; ++s)
      for (int r = 0; r < C::BM; ++r)
        for (int c = 0; c < C::BN; ++c)
          if (!ct_written[ctile_offset<C>(s, r, c)]) broken("staging slot never written");
    for (int tid = 0; tid < C::THREADS; ++tid) {
      for (int idx = tid; idx < C::OUT_CHUNKS; idx += C::THREADS) {
        const AccCoord oc = out_chunk_coord<C>(idx);
        const int row = m0 + oc.row;
        for (int j = 0; j < 8; ++j) {
          const int col = n0 + oc.col + j;
          if (row >= M || col >= N) continue;
          float v = 0.f;
          for (int s = 0; s < C::WARPS_K; ++s) v += ctile[ctile_offset<C>(s, oc.row, oc.col + j)];
          if (bias != nullptr) v += bias[col];
          v = apply_activation(v, args.act);
          if (residual != nullptr) v += to_f(residual[row * args.residual_row_stride + col]);
          out[row * args.out_row_stride + col] = from_f<T>(v);
          if (hits[size_t(row) * N + col]++) {
            broken("out[" + std::to_string(row) + ", " + std::to_string(col) + "] written twice");
          }
        }
      }
    }
  }
  for (size_t i = 0; i < hits.size(); ++i) {
    if (!hits[i]) broken("out[" + std::to_string(i / N) + ", " + std::to_string(i % N) + "] never written");
  }
}

template <class T>
void emulate_config(const FusedLinearArgs& args) {
  switch (args.config) {
    case 0: return emulate<ConfigSmall, T>(args);
    case 1: return emulate<ConfigMedium, T>(args);
    default: return emulate<ConfigLarge, T>(args);
  }
}

}  // namespace
}  // namespace fl

void fused_linear_emulate(const FusedLinearArgs& args) {
  const char* fn = fl::kFn;
  fused_linear_validate(args, fn);
  if (args.config < 0) throw std::invalid_argument(std::string(fn) + ": config must name a configuration (0..2)");
  if (args.M == 0 || args.N == 0) return;
  if (args.dtype == 1) {
    fl::emulate_config<__half>(args);
  } else {
    fl::emulate_config<__nv_bfloat16>(args);
  }
}

}  // namespace bigperf::cuda
