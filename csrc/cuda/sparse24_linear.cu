// 2:4 sparse linear on the sparse tensor cores: out = act(x @ W^T + bias), W 2:4 along K.
//
// Computed as out^T = W x^T: W (N rows) is the sparse A operand of mma.sp.m16n8k32 and x
// rows are the dense B columns, so the weight is read compressed (half the bytes of dense)
// and each instruction does the work of a dense m16n8k32. Global -> shared through a
// STAGES-deep cp.async ring (values, x and metadata; zero-filled tails), ldmatrix on
// swizzled tiles for both operands, metadata registers straight from the packed layout,
// fp32 accumulation, and an epilogue (bias, activation, rounding) staged through shared
// memory so that every thread stores 8 consecutive output columns at once.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <climits>
#include <stdexcept>
#include <string>

#include "cuda/cuda_api.h"
#include "cuda/launch_util.h"
#include "cuda/mma_device.cuh"
#include "cuda/sparse24_tile.h"

namespace bigperf::cuda {
namespace s24 {
namespace {

using namespace dev;

template <class T>
struct Params {
  const T* x;
  const T* v;
  const uint32_t* meta;
  const float* bias;
  T* out;
  int64_t ldx, ldv, ldo;
  int M, N, K, Kp, Np16, act;
};

template <class C, class T>
__device__ __forceinline__ void load_stage(const Params<T>& p, unsigned char* st, int r0, int c0, int k0, int tid) {
  T* sa = reinterpret_cast<T*>(st + C::A_OFF);
  T* sb = reinterpret_cast<T*>(st + C::B_OFF);
  uint32_t* sm = reinterpret_cast<uint32_t*>(st + C::META_OFF);
#pragma unroll
  for (int i = 0; i < C::A_LOADS / C::THREADS; ++i) {
    const fl::LoadCoord c = chunk_coord<C::A_CHUNKS>(tid + i * C::THREADS);
    const int gr = r0 + c.row, gk = k0 / 2 + c.chunk * 8;
    const bool pred = gr < p.N && gk < p.Kp / 2;
    // The clamped address is never read (src-size 0) but stays a valid global address.
    const T* src = pred ? p.v + gr * p.ldv + gk : p.v;
    cp_async_16(smem_addr(sa + swizzle_chunk<C::A_CHUNKS>(c.row, c.chunk) * 8), src, pred);
  }
#pragma unroll
  for (int i = 0; i < C::B_LOADS / C::THREADS; ++i) {
    const fl::LoadCoord c = chunk_coord<C::B_CHUNKS>(tid + i * C::THREADS);
    const int gr = c0 + c.row, gk = k0 + c.chunk * 8;
    const bool pred = gr < p.M && gk < p.K;
    const T* src = pred ? p.x + gr * p.ldx + gk : p.x;
    cp_async_16(smem_addr(sb + swizzle_chunk<C::B_CHUNKS>(c.row, c.chunk) * 8), src, pred);
  }
  if (tid < C::META_CHUNKS) {
    const MetaCopy c = meta_copy<C>(tid);
    const int grb = r0 / kRowBlock + c.rb, gkb = k0 / kKBlock + c.kb;
    uint32_t* dst = sm + tid * 4;
    if (grb < p.Np16 && gkb < p.Kp / kKBlock) {
      cp_async_16(smem_addr(dst), p.meta + (int64_t(grb) * (p.Kp / kKBlock) + gkb) * 16 + c.quarter * 4, true);
    } else {
      // Zero-fill would be invalid metadata (UB for mma.sp): outside the weight, every
      // group says "positions 0 and 1", whose values are zero-filled anyway. A plain store
      // is ordered like the copies: the slot was released by the barrier before this load
      // and is read only after the barrier that follows its wait.
      *reinterpret_cast<uint4*>(dst) = make_uint4(kPadMeta, kPadMeta, kPadMeta, kPadMeta);
    }
  }
}

template <class C, class T>
__global__ void __launch_bounds__(C::THREADS) s24_kernel(const Params<T> p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, lane = tid & 31;
  const WarpPos wp = warp_pos<C>(tid >> 5);
  const TileCoord tc = tile_of<C>(blockIdx.x, p.N, p.M);
  const int r0 = tc.tr * C::BR, c0 = tc.tc * C::BC;
  const int ktiles = (p.Kp + C::BK - 1) / C::BK;

  float acc[C::MI][C::NI][4];
  zero_fragments(acc);
  auto load = [&](int slot, int t) { load_stage<C>(p, smem + slot * C::STAGE_BYTES, r0, c0, t * C::BK, tid); };
  auto compute = [&](int slot, int) {
    const unsigned char* st = smem + slot * C::STAGE_BYTES;
    const T* sa = reinterpret_cast<const T*>(st + C::A_OFF);
    const T* sb = reinterpret_cast<const T*>(st + C::B_OFF);
    const uint32_t* sm = reinterpret_cast<const uint32_t*>(st + C::META_OFF);
#pragma unroll
    for (int ks = 0; ks < C::KSTEPS; ++ks) {
      uint32_t a[C::MI][4], e[C::MI], b[C::NI][4];
#pragma unroll
      for (int mi = 0; mi < C::MI; ++mi) {
        ldmatrix_x4(a[mi], smem_addr(sa + a_frag_offset<C>(wp, mi, ks, lane)));
        e[mi] = sm[meta_offset<C>(wp, mi, ks, lane)];
      }
#pragma unroll
      for (int ni = 0; ni < C::NI; ++ni) ldmatrix_x4(b[ni], smem_addr(sb + b_frag_offset<C>(wp, ni, ks, lane)));
#pragma unroll
      for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < C::NI; ++ni) mma_sp_16832<T>(acc[mi][ni], a[mi], b[ni], e[mi]);
    }
  };
  run_cp_async_ring<C::STAGES>(ktiles, load, compute);

  // The ring is free (run_cp_async_ring ended with a barrier): stage the tile transposed
  // ([x row][W row]) and per K slice.
  float* ct = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < C::NI; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const AccCoord ac = acc_coord<C>(wp, mi, ni, i >> 1, i & 1, lane);
        ct[ctile_offset<C>(wp.k, ac.c, ac.r)] = acc[mi][ni][i];
      }
  __syncthreads();

#pragma unroll 1
  for (int idx = tid; idx < C::OUT_CHUNKS; idx += C::THREADS) {
    const AccCoord oc = out_chunk_coord<C>(idx);
    const int row = c0 + oc.c, col = r0 + oc.r;
    if (row >= p.M || col >= p.N) continue;
    float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int s = 0; s < C::WARPS_K; ++s) {
      const float4* src = reinterpret_cast<const float4*>(ct + ctile_offset<C>(s, oc.c, oc.r));
      const float4 lo = src[0], hi = src[1];
      v[0] += lo.x; v[1] += lo.y; v[2] += lo.z; v[3] += lo.w;
      v[4] += hi.x; v[5] += hi.y; v[6] += hi.z; v[7] += hi.w;
    }
    finish_out8(p.out, p.ldo, row, col, p.N, p.bias, p.act, v);
  }
}

template <class C, class T>
void launch(const S24Args& a, cudaStream_t stream, int device, const char* fn) {
  auto kernel = s24_kernel<C, T>;
  static std::atomic<uint64_t> opted_in{0};
  util::ensure_smem(kernel, C::SMEM_BYTES, device, opted_in, fn);
  Params<T> p;
  p.x = reinterpret_cast<const T*>(a.x);
  p.v = reinterpret_cast<const T*>(a.values);
  p.meta = reinterpret_cast<const uint32_t*>(a.meta);
  p.bias = reinterpret_cast<const float*>(a.bias);
  p.out = reinterpret_cast<T*>(a.out);
  p.ldx = a.x_row_stride;
  p.ldv = a.values_row_stride;
  p.ldo = a.out_row_stride;
  p.M = int(a.M);
  p.N = int(a.N);
  p.K = int(a.K);
  p.Kp = int((a.K + kKBlock - 1) / kKBlock * kKBlock);
  p.Np16 = int((a.N + kRowBlock - 1) / kRowBlock);
  p.act = a.act;
  const int64_t tiles = ((a.M + C::BC - 1) / C::BC) * ((a.N + C::BR - 1) / C::BR);
  if (tiles > INT_MAX) throw std::invalid_argument(std::string(fn) + ": M and N give more than 2^31-1 tiles");
  kernel<<<dim3(unsigned(tiles)), dim3(C::THREADS), C::SMEM_BYTES, stream>>>(p);
  util::check_launch(fn);
}

template <class T>
void launch_config(int config, const S24Args& a, cudaStream_t stream, int device, const char* fn) {
  switch (config) {
    case 0: return launch<ConfigSmall, T>(a, stream, device, fn);
    case 1: return launch<ConfigMedium, T>(a, stream, device, fn);
    case 2: return launch<ConfigLarge, T>(a, stream, device, fn);
    default: return launch<ConfigNarrow, T>(a, stream, device, fn);
  }
}

}  // namespace
}  // namespace s24

void s24_linear(const S24Args& a, uintptr_t stream_handle) {
  const char* fn = "bigperf._C_cuda.sparse24_linear";
  s24_validate(a, fn);
  if (a.M == 0 || a.N == 0) return;
  const int device = util::current_device(fn);
  const bool k = a.K > 0;
  util::check_device_pointers(device, fn,
                              {{k ? a.x : 0, "x_ptr"}, {k ? a.values : 0, "values_ptr"}, {k ? a.meta : 0, "meta_ptr"},
                               {a.bias, "bias_ptr"}, {a.out, "out_ptr"}});
  const util::DeviceLimits lim = util::device_limits(device);
  const int config =
      util::checked_config(fn, a.config >= 0 ? a.config : s24_choose_config(a.M, a.N, lim.sm_count, lim.max_smem),
                           lim.max_smem, s24_config_smem, s24_config_name);
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (a.dtype == 1) {
    s24::launch_config<__half>(config, a, stream, device, fn);
  } else {
    s24::launch_config<__nv_bfloat16>(config, a, stream, device, fn);
  }
}

}  // namespace bigperf::cuda
