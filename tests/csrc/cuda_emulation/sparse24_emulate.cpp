// Host emulation of the 2:4 sparse kernel, for machines without a GPU.
//
// Runs the kernel's index maps (sparse24_tile.h) per CTA, thread and lane: the values, x
// and metadata copies of each stage (zero-fill and the metadata padding included),
// ldmatrix on the swizzled tiles, the lanes' metadata loads, mma.sp.m16n8k32 as the PTX
// ISA describes it (mma_emulate.h, which also rejects invalid metadata), the transposed
// staging and the epilogue. Shared memory starts as NaN / invalid metadata so that a copy
// or load that misses shows up. Races, pipeline ordering, PTX syntax and speed need a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/cuda_api.h"
#include "emulators.h"
#include "mma_emulate.h"
#include "cuda/sparse24_tile.h"

namespace bigperf::cuda {
namespace s24 {
namespace {

using emu::from_f;
using emu::to_f;

constexpr const char* kFn = "_cuda_emulators.emulate_sparse24_linear";


template <class C, class T>
void emulate(const S24Args& a) {
  const T* x = reinterpret_cast<const T*>(a.x);
  const T* values = reinterpret_cast<const T*>(a.values);
  const uint32_t* meta = reinterpret_cast<const uint32_t*>(a.meta);
  const float* bias = reinterpret_cast<const float*>(a.bias);
  T* out = reinterpret_cast<T*>(a.out);
  const int M = int(a.M), N = int(a.N), K = int(a.K);
  const int Kp = (K + kKBlock - 1) / kKBlock * kKBlock, Np16 = (N + kRowBlock - 1) / kRowBlock;
  const int64_t tiles = ((a.M + C::BC - 1) / C::BC) * ((a.N + C::BR - 1) / C::BR);
  const int ktiles = (Kp + C::BK - 1) / C::BK;
  const float nan = std::numeric_limits<float>::quiet_NaN();

  std::vector<float> sa(C::A_ELEMS), sb(C::B_ELEMS);
  std::vector<int> a_written(C::A_ELEMS / 8), b_written(C::B_ELEMS / 8);
  std::vector<uint32_t> sm(C::META_WORDS);
  constexpr int FRAG = C::MI * C::NI * 4;
  std::vector<float> acc(size_t(C::WARPS) * 32 * FRAG);
  std::vector<float> ct(C::CT_BYTES / 4);
  std::vector<int> ct_written(ct.size());
  std::vector<unsigned char> hits(size_t(M) * N, 0);

  auto copy_chunk = [&](std::vector<float>& tile, std::vector<int>& written, int slot, const T* src, bool pred) {
    if (slot < 0 || slot >= int(written.size()) || written[slot]++) {
      emu::broken(kFn, "cp.async destination chunk " + std::to_string(slot) + " misplaced or written twice");
    }
    for (int e = 0; e < 8; ++e) tile[slot * 8 + e] = pred ? to_f(src[e]) : 0.f;
  };

  for (int64_t tile = 0; tile < tiles; ++tile) {
    const TileCoord tc = tile_of<C>(tile, N, M);
    const int r0 = tc.tr * C::BR, c0 = tc.tc * C::BC;
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int kt = 0; kt < ktiles; ++kt) {
      const int k0 = kt * C::BK;
      std::fill(sa.begin(), sa.end(), nan);
      std::fill(sb.begin(), sb.end(), nan);
      std::fill(a_written.begin(), a_written.end(), 0);
      std::fill(b_written.begin(), b_written.end(), 0);
      std::fill(sm.begin(), sm.end(), 0u);  // an all-zero nibble is invalid metadata
      for (int tid = 0; tid < C::THREADS; ++tid) {
        for (int i = 0; i < C::A_LOADS / C::THREADS; ++i) {
          const fl::LoadCoord c = chunk_coord<C::A_CHUNKS>(tid + i * C::THREADS);
          const int gr = r0 + c.row, gk = k0 / 2 + c.chunk * 8;
          const bool pred = gr < N && gk < Kp / 2;
          copy_chunk(sa, a_written, swizzle_chunk<C::A_CHUNKS>(c.row, c.chunk),
                     values + (pred ? gr * a.values_row_stride + gk : 0), pred);
        }
        for (int i = 0; i < C::B_LOADS / C::THREADS; ++i) {
          const fl::LoadCoord c = chunk_coord<C::B_CHUNKS>(tid + i * C::THREADS);
          const int gr = c0 + c.row, gk = k0 + c.chunk * 8;
          const bool pred = gr < M && gk < K;
          copy_chunk(sb, b_written, swizzle_chunk<C::B_CHUNKS>(c.row, c.chunk),
                     x + (pred ? gr * a.x_row_stride + gk : 0), pred);
        }
        if (tid < C::META_CHUNKS) {
          const MetaCopy c = meta_copy<C>(tid);
          const int grb = r0 / kRowBlock + c.rb, gkb = k0 / kKBlock + c.kb;
          const bool pred = grb < Np16 && gkb < Kp / kKBlock;
          for (int i = 0; i < 4; ++i) {
            sm[tid * 4 + i] = pred ? meta[(int64_t(grb) * (Kp / kKBlock) + gkb) * 16 + c.quarter * 4 + i] : kPadMeta;
          }
        }
      }
      for (int warp = 0; warp < C::WARPS; ++warp) {
        const WarpPos wp = warp_pos<C>(warp);
        for (int ks = 0; ks < C::KSTEPS; ++ks) {
          float afr[C::MI][32][4][2], bfr[C::NI][32][4][2];
          uint32_t efr[C::MI][32];
          int addr[32];
          for (int mi = 0; mi < C::MI; ++mi) {
            for (int lane = 0; lane < 32; ++lane) {
              addr[lane] = a_frag_offset<C>(wp, mi, ks, lane);
              const int mo = meta_offset<C>(wp, mi, ks, lane);
              if (mo < 0 || mo >= C::META_WORDS) emu::broken(kFn, "metadata load outside the stage");
              efr[mi][lane] = sm[mo];
            }
            emu::ldmatrix_x4(kFn, sa, C::A_ELEMS, addr, afr[mi]);
          }
          for (int ni = 0; ni < C::NI; ++ni) {
            for (int lane = 0; lane < 32; ++lane) addr[lane] = b_frag_offset<C>(wp, ni, ks, lane);
            emu::ldmatrix_x4(kFn, sb, C::B_ELEMS, addr, bfr[ni]);
          }
          for (int mi = 0; mi < C::MI; ++mi)
            for (int ni = 0; ni < C::NI; ++ni)
              emu::on_fragment(&acc[size_t(warp) * 32 * FRAG + (mi * C::NI + ni) * 4], FRAG,
                               [&](float (&d)[32][4]) { emu::mma_sp_16832(kFn, afr[mi], efr[mi], bfr[ni], d); });
        }
      }
    }
    std::fill(ct.begin(), ct.end(), nan);
    std::fill(ct_written.begin(), ct_written.end(), 0);
    for (int warp = 0; warp < C::WARPS; ++warp) {
      const WarpPos wp = warp_pos<C>(warp);
      for (int lane = 0; lane < 32; ++lane)
        for (int mi = 0; mi < C::MI; ++mi)
          for (int ni = 0; ni < C::NI; ++ni)
            for (int i = 0; i < 4; ++i) {
              const AccCoord ac = acc_coord<C>(wp, mi, ni, i >> 1, i & 1, lane);
              if (ac.r < 0 || ac.r >= C::BR || ac.c < 0 || ac.c >= C::BC) {
                emu::broken(kFn, "accumulator coordinate outside the tile");
              }
              const int off = ctile_offset<C>(wp.k, ac.c, ac.r);
              if (ct_written[off]++) emu::broken(kFn, "staging slot written twice");
              ct[off] = acc[size_t(warp) * 32 * FRAG + lane * FRAG + (mi * C::NI + ni) * 4 + i];
            }
    }
    for (int idx = 0; idx < C::OUT_CHUNKS; ++idx) {
      const AccCoord oc = out_chunk_coord<C>(idx);
      const int row = c0 + oc.c;
      for (int j = 0; j < 8; ++j) {
        const int col = r0 + oc.r + j;
        if (row >= M || col >= N) continue;
        float v = 0.f;
        for (int s = 0; s < C::WARPS_K; ++s) {
          const int off = ctile_offset<C>(s, oc.c, oc.r + j);
          if (!ct_written[off]) emu::broken(kFn, "staging slot read but never written");
          v += ct[off];
        }
        if (bias != nullptr) v += bias[col];
        out[row * a.out_row_stride + col] = from_f<T>(apply_activation(v, a.act));
        if (hits[size_t(row) * N + col]++) {
          emu::broken(kFn, "out[" + std::to_string(row) + ", " + std::to_string(col) + "] written twice");
        }
      }
    }
  }
  for (size_t i = 0; i < hits.size(); ++i) {
    if (!hits[i]) emu::broken(kFn, "out[" + std::to_string(i / N) + ", " + std::to_string(i % N) + "] never written");
  }
}

template <class T>
void emulate_config(const S24Args& a) {
  switch (a.config) {
    case 0: return emulate<ConfigSmall, T>(a);
    case 1: return emulate<ConfigMedium, T>(a);
    case 2: return emulate<ConfigLarge, T>(a);
    default: return emulate<ConfigNarrow, T>(a);
  }
}

}  // namespace
}  // namespace s24

void s24_emulate(const S24Args& a) {
  const char* fn = s24::kFn;
  s24_validate(a, fn);
  if (a.config < 0) {
    throw std::invalid_argument(std::string(fn) + ": config must name a configuration (0.." +
                                std::to_string(s24::kNumConfigs - 1) + ")");
  }
  if (a.M == 0 || a.N == 0) return;
  if (a.dtype == 1) {
    s24::emulate_config<__half>(a);
  } else {
    s24::emulate_config<__nv_bfloat16>(a);
  }
}

}  // namespace bigperf::cuda
