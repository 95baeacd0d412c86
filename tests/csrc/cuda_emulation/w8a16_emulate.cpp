// Host emulation of the W8A16 kernel, for machines without a GPU.
//
// Runs the kernel's own index maps and register dequantisation (w8a16_tile.h) per CTA,
// thread and lane: the packed-weight, x, scale and zero copies of each stage (zero-fill
// included), the lanes' 16-byte weight loads, ldmatrix on the swizzled x tile, the
// int8 -> fp16/bf16 bit tricks, mma.m16n8k16 (mma_emulate.h), the per-slice fp32 scaling,
// the K-slice staging, and the split-K workspace/counter protocol. Shared memory starts as
// NaN (or unwritten) so that a copy or load that misses shows up. What it cannot show:
// races, pipeline ordering, PTX syntax and speed.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/cuda_api.h"
#include "emulators.h"
#include "mma_emulate.h"
#include "cuda/w8a16_tile.h"

namespace bigperf::cuda {
namespace w8 {
namespace {

using emu::from_f;
using emu::to_f;

constexpr const char* kFn = "_cuda_emulators.emulate_w8a16_linear";

template <class T>
float bits_to_f(uint16_t bits) {
  if constexpr (std::is_same_v<T, __half>) {
    __half_raw r;
    r.x = bits;
    return __half2float(__half(r));
  } else {
    __nv_bfloat16_raw r;
    r.x = bits;
    return __bfloat162float(__nv_bfloat16(r));
  }
}

template <class C, class T>
void emulate(const W8A16Args& a, const W8A16Plan& plan) {
  const T* x = reinterpret_cast<const T*>(a.x);
  const unsigned char* w = reinterpret_cast<const unsigned char*>(a.w);
  const float* scale = reinterpret_cast<const float*>(a.scale);
  const float* zero = reinterpret_cast<const float*>(a.zero);
  const float* bias = reinterpret_cast<const float*>(a.bias);
  T* out = reinterpret_cast<T*>(a.out);
  float* ws = reinterpret_cast<float*>(a.workspace);
  int* counters = reinterpret_cast<int*>(a.counters);
  const int M = int(a.M), N = int(a.N), K = int(a.K);
  const int Kp = (K + kPackK - 1) / kPackK * kPackK, Np = (N + kPackN - 1) / kPackN * kPackN;
  const int64_t w_row_bytes = int64_t(Kp) * kPackN;
  const int group = a.group_size > 0 ? int(a.group_size) : Kp;
  const int tiles_n = (N + C::BN - 1) / C::BN, m_blocks = (M + C::BM - 1) / C::BM;
  const int ktiles = (Kp + C::BK - 1) / C::BK;
  const int splits = plan.splits;
  const int64_t blocks = int64_t(tiles_n) * m_blocks * splits;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const bool has_zero = zero != nullptr;

  std::vector<unsigned char> sw(C::W_BYTES);
  std::vector<int> w_written(C::W_CHUNKS);
  std::vector<float> sx(C::X_ELEMS), ss(C::S_FLOATS), sz(C::S_FLOATS);
  std::vector<int> x_written(C::X_ELEMS / 8);
  // acc / part[warp][lane][mi][j][e]
  constexpr int FRAG = C::MI * C::NI * 4;
  std::vector<float> acc(size_t(C::WARPS) * 32 * FRAG), part(acc.size());
  std::vector<float> ct(C::CT_BYTES / 4);
  std::vector<int> ct_written(ct.size());
  std::vector<unsigned char> hits(size_t(M) * N, 0);

  auto finish = [&](float (&v)[8], int row, int col) {
    for (int j = 0; j < 8 && col + j < N; ++j) {
      float o = v[j] + (bias != nullptr ? bias[col + j] : 0.f);
      out[row * a.out_row_stride + col + j] = from_f<T>(apply_activation(o, a.act));
      if (hits[size_t(row) * N + col + j]++) {
        emu::broken(kFn, "out[" + std::to_string(row) + ", " + std::to_string(col + j) + "] written twice");
      }
    }
  };

  for (int64_t block = 0; block < blocks; ++block) {
    const Tile tile = tile_of<C>(block, tiles_n, m_blocks);
    const int n0 = tile.tn * C::BN, m0 = tile.tm * C::BM;
    const int kt0 = split_begin(tile.split, splits, ktiles);
    const int nkt = split_begin(tile.split + 1, splits, ktiles) - kt0;
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int i = 0; i < nkt; ++i) {
      const int k0 = (kt0 + i) * C::BK;
      std::fill(sw.begin(), sw.end(), 0xA5);
      std::fill(w_written.begin(), w_written.end(), 0);
      std::fill(sx.begin(), sx.end(), nan);
      std::fill(x_written.begin(), x_written.end(), 0);
      std::fill(ss.begin(), ss.end(), nan);
      std::fill(sz.begin(), sz.end(), nan);
      for (int tid = 0; tid < C::THREADS; ++tid) {
        for (int r = 0; r < C::W_CHUNKS / C::THREADS; ++r) {
          const WCopy c = w_copy<C>(tid + r * C::THREADS);
          const int nb = n0 / kPackN + c.nh, kb = k0 / kPackK + c.kb;
          const bool pred = nb < Np / kPackN && kb < Kp / kPackK;
          const int dst = w_smem_offset<C>(c);
          if (dst % 16 || dst < 0 || dst + 16 > C::W_BYTES || w_written[dst / 16]++) {
            emu::broken(kFn, "weight copy destination " + std::to_string(dst) + " misplaced or written twice");
          }
          for (int e = 0; e < 16; ++e)
            sw[dst + e] = pred ? w[nb * w_row_bytes + int64_t(kb) * kPackBlockBytes + c.lane_chunk * 16 + e] : 0;
        }
        for (int r = 0; r < C::X_LOADS / C::THREADS; ++r) {
          const fl::LoadCoord c = x_copy<C>(tid + r * C::THREADS);
          const int gr = m0 + c.row, gk = k0 + c.chunk * 8;
          const bool pred = gr < M && gk < K;
          const int slot = swizzle_chunk<C::X_CHUNKS>(c.row, c.chunk);
          if (slot < 0 || slot >= C::X_ELEMS / 8 || x_written[slot]++) {
            emu::broken(kFn, "x copy destination chunk " + std::to_string(slot) + " misplaced or written twice");
          }
          for (int e = 0; e < 8; ++e) sx[slot * 8 + e] = pred ? to_f(x[gr * a.x_row_stride + gk + e]) : 0.f;
        }
        if (tid < C::S_CHUNKS) {
          const SCopy c = s_copy<C>(tid);
          const int kk = k0 + c.slice * kSliceK, n = n0 + c.col;
          const bool pred = kk < Kp && n < Np;
          const int64_t off = pred ? int64_t(kk / group) * Np + n : 0;
          const int dst = c.slice * C::BN + c.col;
          for (int e = 0; e < 4; ++e) {
            ss[dst + e] = pred ? scale[off + e] : 0.f;
            if (has_zero) sz[dst + e] = pred ? zero[off + e] : 0.f;
          }
        }
      }
      for (int warp = 0; warp < C::WARPS; ++warp) {
        const WarpPos wp = warp_pos<C>(warp);
        float* pw = &part[size_t(warp) * 32 * FRAG];
        std::fill(pw, pw + 32 * FRAG, 0.f);
        uint32_t zc[32][C::NI];
        for (int lane = 0; lane < 32; ++lane)
          for (int j = 0; j < C::NI; ++j) {
            const float z = has_zero ? sz[zero_offset<C>(wp, j, lane)] : 0.f;
            zc[lane][j] = std::is_same_v<T, __half> ? zero_const_f16(z) : (has_zero ? zero_const_bf16(z) : 0u);
          }
        for (int ks = 0; ks < C::KSTEPS; ++ks) {
          float afr[C::MI][32][4][2];
          int addr[32];
          for (int mi = 0; mi < C::MI; ++mi) {
            for (int lane = 0; lane < 32; ++lane) addr[lane] = a_frag_offset<C>(wp, mi, ks, lane);
            emu::ldmatrix_x4(kFn, sx, C::X_ELEMS, addr, afr[mi]);
          }
          float bfr[C::NI][32][2][2];
          for (int lane = 0; lane < 32; ++lane) {
            const int off = w_frag_offset<C>(wp, ks, lane);
            if (off % 16 || off < 0 || off + 16 > C::W_BYTES || !w_written[off / 16]) {
              emu::broken(kFn, "lane " + std::to_string(lane) + " loads weight bytes no copy wrote");
            }
            for (int j = 0; j < C::NI; ++j) {
              uint32_t q;
              std::memcpy(&q, &sw[off + 4 * j], 4);
              uint32_t b[2];
              if constexpr (std::is_same_v<T, __half>) {
                dequant_f16(q, zc[lane][j], b[0], b[1]);
              } else {
                dequant_bf16(q, zc[lane][j], has_zero, b[0], b[1]);
              }
              for (int r = 0; r < 2; ++r)
                for (int h = 0; h < 2; ++h) bfr[j][lane][r][h] = bits_to_f<T>(uint16_t(b[r] >> (16 * h)));
            }
          }
          for (int mi = 0; mi < C::MI; ++mi)
            for (int j = 0; j < C::NI; ++j) {
              float d[32][4];
              for (int lane = 0; lane < 32; ++lane)
                for (int e = 0; e < 4; ++e) d[lane][e] = pw[lane * FRAG + (mi * C::NI + j) * 4 + e];
              emu::mma_16816(afr[mi], bfr[j], d);
              for (int lane = 0; lane < 32; ++lane)
                for (int e = 0; e < 4; ++e) pw[lane * FRAG + (mi * C::NI + j) * 4 + e] = d[lane][e];
            }
        }
        for (int lane = 0; lane < 32; ++lane)
          for (int j = 0; j < C::NI; ++j) {
            const int so = scale_offset<C>(wp, j, lane);
            if (so % 2) emu::broken(kFn, "scale float2 load misaligned");
            for (int mi = 0; mi < C::MI; ++mi)
              for (int e = 0; e < 4; ++e) {
                const size_t idx = size_t(warp) * 32 * FRAG + lane * FRAG + (mi * C::NI + j) * 4 + e;
                acc[idx] = std::fmaf(part[idx], ss[so + (e & 1)], acc[idx]);
              }
          }
      }
    }
    std::fill(ct.begin(), ct.end(), nan);
    std::fill(ct_written.begin(), ct_written.end(), 0);
    for (int warp = 0; warp < C::WARPS; ++warp) {
      const WarpPos wp = warp_pos<C>(warp);
      for (int lane = 0; lane < 32; ++lane)
        for (int mi = 0; mi < C::MI; ++mi)
          for (int j = 0; j < C::NI; ++j)
            for (int h = 0; h < 2; ++h) {
              const AccCoord ac = acc_coord<C>(wp, mi, j, h, lane);
              if (ac.row < 0 || ac.row >= C::BM || ac.col < 0 || ac.col + 1 >= C::BN || ac.col % 2) {
                emu::broken(kFn, "accumulator coordinate outside the tile");
              }
              for (int e = 0; e < 2; ++e) {
                const int off = ctile_offset<C>(wp.k, ac.row, ac.col + e);
                if (ct_written[off]++) emu::broken(kFn, "staging slot written twice");
                ct[off] = acc[size_t(warp) * 32 * FRAG + lane * FRAG + (mi * C::NI + j) * 4 + 2 * h + e];
              }
            }
    }
    auto slice_sum = [&](const AccCoord& oc, float (&v)[8]) {
      for (int e = 0; e < 8; ++e) {
        v[e] = 0.f;
        for (int s = 0; s < C::WARPS_K; ++s) {
          const int off = ctile_offset<C>(s, oc.row, oc.col + e);
          if (!ct_written[off]) emu::broken(kFn, "staging slot read but never written");
          v[e] += ct[off];
        }
      }
    };
    const int counter = tile.tm * tiles_n + tile.tn;
    bool last = true;
    if (splits > 1) {
      for (int idx = 0; idx < C::OUT_CHUNKS; ++idx) {
        const AccCoord oc = out_chunk_coord<C>(idx);
        const int row = m0 + oc.row, col = n0 + oc.col;
        if (row >= M || col >= Np) continue;
        float v[8];
        slice_sum(oc, v);
        for (int e = 0; e < 8; ++e) ws[int64_t(tile.split) * M * Np + int64_t(row) * Np + col + e] = v[e];
      }
      last = counters[counter]++ == splits - 1;
    }
    if (!last) continue;
    for (int idx = 0; idx < C::OUT_CHUNKS; ++idx) {
      const AccCoord oc = out_chunk_coord<C>(idx);
      const int row = m0 + oc.row, col = n0 + oc.col;
      if (row >= M || col >= N) continue;
      float v[8];
      if (splits == 1) {
        slice_sum(oc, v);
      } else {
        for (int e = 0; e < 8; ++e) {
          v[e] = 0.f;
          for (int s = 0; s < splits; ++s) v[e] += ws[int64_t(s) * M * Np + int64_t(row) * Np + col + e];
        }
      }
      finish(v, row, col);
    }
    if (splits > 1) counters[counter] = 0;
  }
  for (size_t i = 0; i < hits.size(); ++i) {
    if (!hits[i]) emu::broken(kFn, "out[" + std::to_string(i / N) + ", " + std::to_string(i % N) + "] never written");
  }
}

}  // namespace
}  // namespace w8

void w8a16_emulate(const W8A16Args& a) {
  const char* fn = w8::kFn;
  w8a16_validate(a, fn);
  if (a.config < 0 || a.splits < 1) {
    throw std::invalid_argument(std::string(fn) + ": config (0.." + std::to_string(w8::kNumConfigs - 1) +
                                ") and splits (>= 1) must be given");
  }
  if (a.M == 0 || a.N == 0) return;
  const W8A16Plan plan = w8a16_plan(a.M, a.N, a.K, 0, a.config, a.splits);
  w8a16_check_workspace(a, plan, fn);
  if (a.dtype == 1) {
    if (plan.config == 0) w8::emulate<w8::ConfigM16, __half>(a, plan);
    else w8::emulate<w8::ConfigM32, __half>(a, plan);
  } else {
    if (plan.config == 0) w8::emulate<w8::ConfigM16, __nv_bfloat16>(a, plan);
    else w8::emulate<w8::ConfigM32, __nv_bfloat16>(a, plan);
  }
}

}  // namespace bigperf::cuda
