// Fused linear on tensor cores: out = act(x @ w^T + bias) + residual.
//
// One CTA computes a BM x BN tile of out. Global -> shared through a STAGES-deep cp.async
// ring (16-byte copies, zero-filled outside M/N/K so the math needs no masks), shared ->
// registers with ldmatrix.x4, mma.sync.m16n8k16 with fp32 accumulators, and the whole
// epilogue (bias, activation, residual, rounding) in registers before a single store.
// Index maps live in fused_linear_tile.h, where the host emulator reuses them.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <climits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/cuda_api.h"
#include "cuda/fused_linear_tile.h"
#include "cuda/launch_util.h"
#include "cuda/mma_device.cuh"

namespace bigperf::cuda {
namespace fl {
namespace {

template <class T>
struct KernelParams {
  const T* x;
  const T* w;
  const float* bias;
  const T* residual;
  T* out;
  int64_t ldx, ldw, ldr, ldo;
  int M, N, K, act;
};

using namespace dev;

__device__ __forceinline__ float2 to_float2(__half2 v) { return __half22float2(v); }
__device__ __forceinline__ float2 to_float2(__nv_bfloat162 v) { return __bfloat1622float2(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class C, class T>
__device__ __forceinline__ void load_tile(const KernelParams<T>& p, T* stage, int m0, int n0, int k0, int tid) {
  T* sA = stage;
  T* sB = stage + C::A_ELEMS;
#pragma unroll
  for (int i = 0; i < C::A_LOADS; ++i) {
    const LoadCoord c = load_coord<C>(tid, i);
    const int gr = m0 + c.row, gk = k0 + c.chunk * 8;
    const bool pred = gr < p.M && gk < p.K;
    // The clamped address is never read (src-size 0) but stays a valid global address.
    const T* src = pred ? p.x + gr * p.ldx + gk : p.x;
    cp_async_16(smem_addr(sA + swizzle_chunk<C::CHUNKS>(c.row, c.chunk) * 8), src, pred);
  }
#pragma unroll
  for (int i = 0; i < C::B_LOADS; ++i) {
    const LoadCoord c = load_coord<C>(tid, i);
    const int gn = n0 + c.row, gk = k0 + c.chunk * 8;
    const bool pred = gn < p.N && gk < p.K;
    const T* src = pred ? p.w + gn * p.ldw + gk : p.w;
    cp_async_16(smem_addr(sB + swizzle_chunk<C::CHUNKS>(c.row, c.chunk) * 8), src, pred);
  }
}

template <class C, class T>
__global__ void __launch_bounds__(C::THREADS) fused_linear_kernel(const KernelParams<T> p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31;
  const WarpPos wp = warp_pos<C>(tid >> 5);
  const TileCoord tc = tile_of<C>(blockIdx.x, p.M, p.N);
  const int m0 = tc.tm * C::BM, n0 = tc.tn * C::BN;
  const int ktiles = (p.K + C::BK - 1) / C::BK;

  float acc[C::MI][C::NI][4];
  zero_fragments(acc);
  auto load = [&](int slot, int t) { load_tile<C>(p, smem + slot * C::STAGE_ELEMS, m0, n0, t * C::BK, tid); };
  auto compute = [&](int slot, int) {
    const T* sA = smem + slot * C::STAGE_ELEMS;
    const T* sB = sA + C::A_ELEMS;
#pragma unroll
    for (int ks = 0; ks < C::KSTEPS; ++ks) {
      uint32_t a[C::MI][4];
      uint32_t b[C::NI][2];
#pragma unroll
      for (int mi = 0; mi < C::MI; ++mi) ldmatrix_x4(a[mi], smem_addr(sA + a_frag_offset<C>(wp, mi, ks, lane)));
#pragma unroll
      for (int nj = 0; nj < C::NI / 2; ++nj) {
        uint32_t r[4];
        ldmatrix_x4(r, smem_addr(sB + b_frag_offset<C>(wp, nj, ks, lane)));
        b[2 * nj][0] = r[0];
        b[2 * nj][1] = r[1];
        b[2 * nj + 1][0] = r[2];
        b[2 * nj + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < C::NI; ++ni) mma_16816<T>(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
    }
  };
  run_cp_async_ring<C::STAGES>(ktiles, load, compute);

  // Epilogue through shared memory (the ring is free: run_cp_async_ring ended with a
  // barrier): it sums the K slices, and lets each thread finish whole 8-column pieces
  // with 16-byte residual loads and out stores instead of scattered 4-byte ones.
  using T2 = typename Pair<T>::type;
  float* ct = reinterpret_cast<float*>(smem_raw);
#pragma unroll
  for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < C::NI; ++ni)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const AccCoord ac = acc_coord<C>(wp, mi, ni, h, lane);
        *reinterpret_cast<float2*>(ct + ctile_offset<C>(wp.k, ac.row, ac.col)) =
            make_float2(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
      }
  __syncthreads();

#pragma unroll 1
  for (int idx = tid; idx < C::OUT_CHUNKS; idx += C::THREADS) {
    const AccCoord oc = out_chunk_coord<C>(idx);
    const int row = m0 + oc.row, col = n0 + oc.col;
    if (row >= p.M || col >= p.N) continue;
    float v[8];
    {
      const float4* src = reinterpret_cast<const float4*>(ct + ctile_offset<C>(0, oc.row, oc.col));
      const float4 lo = src[0], hi = src[1];
      v[0] = lo.x; v[1] = lo.y; v[2] = lo.z; v[3] = lo.w;
      v[4] = hi.x; v[5] = hi.y; v[6] = hi.z; v[7] = hi.w;
    }
#pragma unroll
    for (int s = 1; s < C::WARPS_K; ++s) {
      const float4* src = reinterpret_cast<const float4*>(ct + ctile_offset<C>(s, oc.row, oc.col));
      const float4 lo = src[0], hi = src[1];
      v[0] += lo.x; v[1] += lo.y; v[2] += lo.z; v[3] += lo.w;
      v[4] += hi.x; v[5] += hi.y; v[6] += hi.z; v[7] += hi.w;
    }
    // The last piece of a row may stick out of N (K % 8 == 0 is required, N % 8 is not).
    const int valid = p.N - col < 8 ? p.N - col : 8;
    if (p.bias != nullptr) {
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (j < valid) v[j] += p.bias[col + j];
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = apply_activation(v[j], p.act);
    // Row starts are 16-byte aligned (base and stride rules) and col % 8 == 0.
    const int64_t r_off = row * p.ldr + col, o_off = row * p.ldo + col;
    if (valid == 8) {
      if (p.residual != nullptr) {
        const uint4 raw = *reinterpret_cast<const uint4*>(p.residual + r_off);
        const T2* r2 = reinterpret_cast<const T2*>(&raw);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 f = to_float2(r2[j]);
          v[2 * j] += f.x;
          v[2 * j + 1] += f.y;
        }
      }
      uint4 packed;
      T2* o2 = reinterpret_cast<T2*>(&packed);
#pragma unroll
      for (int j = 0; j < 4; ++j) o2[j] = Pair<T>::pack(v[2 * j], v[2 * j + 1]);
      *reinterpret_cast<uint4*>(p.out + o_off) = packed;
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (j >= valid) break;
        float o = v[j];
        if (p.residual != nullptr) o += to_float(p.residual[r_off + j]);
        p.out[o_off + j] = Pair<T>::one(o);
      }
    }
  }
}

template <class C, class T>
void launch(const FusedLinearArgs& a, cudaStream_t stream, int device, const char* fn) {
  auto kernel = fused_linear_kernel<C, T>;
  static std::atomic<uint64_t> opted_in{0};
  util::ensure_smem(kernel, C::SMEM_BYTES, device, opted_in, fn);
  KernelParams<T> p;
  p.x = reinterpret_cast<const T*>(a.x);
  p.w = reinterpret_cast<const T*>(a.w);
  p.bias = reinterpret_cast<const float*>(a.bias);
  p.residual = reinterpret_cast<const T*>(a.residual);
  p.out = reinterpret_cast<T*>(a.out);
  p.ldx = a.x_row_stride;
  p.ldw = a.w_row_stride;
  p.ldr = a.residual_row_stride;
  p.ldo = a.out_row_stride;
  p.M = int(a.M);
  p.N = int(a.N);
  p.K = int(a.K);
  p.act = a.act;
  const int64_t tiles = ((a.M + C::BM - 1) / C::BM) * ((a.N + C::BN - 1) / C::BN);
  if (tiles > INT_MAX) throw std::invalid_argument(std::string(fn) + ": M and N give more than 2^31-1 tiles");
  kernel<<<dim3(unsigned(tiles)), dim3(C::THREADS), C::SMEM_BYTES, stream>>>(p);
  util::check_launch(fn);
}

template <class T>
void launch_config(int config, const FusedLinearArgs& a, cudaStream_t stream, int device, const char* fn) {
  switch (config) {
    case 0: return launch<ConfigSmall, T>(a, stream, device, fn);
    case 1: return launch<ConfigMedium, T>(a, stream, device, fn);
    default: return launch<ConfigLarge, T>(a, stream, device, fn);
  }
}

}  // namespace
}  // namespace fl

void fused_linear(const FusedLinearArgs& a, uintptr_t stream_handle) {
  const char* fn = "bigperf._C_cuda.fused_linear";
  fused_linear_validate(a, fn);
  if (a.M == 0 || a.N == 0) return;
  const int device = util::current_device(fn);
  util::check_device_pointers(device, fn,
                              {{a.K > 0 ? a.x : 0, "x_ptr"}, {a.K > 0 ? a.w : 0, "w_ptr"}, {a.bias, "bias_ptr"},
                               {a.residual, "residual_ptr"}, {a.out, "out_ptr"}});
  const util::DeviceLimits lim = util::device_limits(device);
  const int config = util::checked_config(
      fn, a.config >= 0 ? a.config : fused_linear_choose_config(a.M, a.N, lim.sm_count, lim.max_smem), lim.max_smem,
      fused_linear_config_smem, fused_linear_config_name);
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (a.dtype == 1) {
    fl::launch_config<__half>(config, a, stream, device, fn);
  } else {
    fl::launch_config<__nv_bfloat16>(config, a, stream, device, fn);
  }
}

}  // namespace bigperf::cuda
