// W8A16 on tensor cores for small M, in the manner of Marlin: out = act(x @ dequant(W)^T + b).
//
// The int8 weight arrives re-laid out (w8a16_tile.h) so that each lane's 16-byte shared
// load is exactly its B fragments for four mma.m16n8k16. Weights, x rows and the group
// scales stream global -> shared through a STAGES-deep cp.async ring; the int8 codes
// become fp16/bf16 integers q - z in registers (bit tricks, no conversion instructions),
// each warp multiplies its 32-wide K slice and scales the slice's partial sum in fp32
// with its group scale. Warps meet in shared memory, CTAs of a split K range meet in a
// global fp32 workspace (the last CTA to arrive finishes the tile), and bias, activation
// and rounding happen once, in the epilogue.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <climits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/cuda_api.h"
#include "cuda/launch_util.h"
#include "cuda/mma_device.cuh"
#include "cuda/w8a16_tile.h"

namespace bigperf::cuda {
namespace w8 {
namespace {

using namespace dev;

template <class T>
struct Params {
  const T* x;
  const unsigned char* w;
  const float* scale;
  const float* zero;
  const float* bias;
  T* out;
  float* ws;
  int* counters;
  int64_t ldx, ldo, w_row_bytes;
  int M, N, K, Kp, Np, group, act, splits, tiles_n, m_blocks, ktiles;
};

template <class C, class T>
__device__ __forceinline__ void load_stage(const Params<T>& p, unsigned char* st, int n0, int m0, int k0, int tid) {
#pragma unroll
  for (int i = 0; i < C::W_CHUNKS / C::THREADS; ++i) {
    const WCopy c = w_copy<C>(tid + i * C::THREADS);
    const int nb = n0 / kPackN + c.nh, kb = k0 / kPackK + c.kb;
    const bool pred = nb < p.Np / kPackN && kb < p.Kp / kPackK;
    // The clamped address is never read (src-size 0) but stays a valid global address.
    const unsigned char* src = pred ? p.w + nb * p.w_row_bytes + int64_t(kb) * kPackBlockBytes + c.lane_chunk * 16 : p.w;
    cp_async_16(smem_addr(st + C::W_OFF + w_smem_offset<C>(c)), src, pred);
  }
  T* sx = reinterpret_cast<T*>(st + C::X_OFF);
#pragma unroll
  for (int i = 0; i < C::X_LOADS / C::THREADS; ++i) {
    const fl::LoadCoord c = x_copy<C>(tid + i * C::THREADS);
    const int gr = m0 + c.row, gk = k0 + c.chunk * 8;
    const bool pred = gr < p.M && gk < p.K;
    const T* src = pred ? p.x + gr * p.ldx + gk : p.x;
    cp_async_16(smem_addr(sx + swizzle_chunk<C::X_CHUNKS>(c.row, c.chunk) * 8), src, pred);
  }
  if (tid < C::S_CHUNKS) {
    const SCopy c = s_copy<C>(tid);
    const int kk = k0 + c.slice * kSliceK, n = n0 + c.col;
    const bool pred = kk < p.Kp && n < p.Np;
    const int64_t off = pred ? int64_t(kk / p.group) * p.Np + n : 0;
    const int dst = c.slice * C::BN + c.col;
    cp_async_16(smem_addr(reinterpret_cast<float*>(st + C::S_OFF) + dst), p.scale + off, pred);
    if (p.zero != nullptr) cp_async_16(smem_addr(reinterpret_cast<float*>(st + C::Z_OFF) + dst), p.zero + off, pred);
  }
}

template <class T>
__device__ __forceinline__ uint32_t zero_const(const float* zs, bool has_zero, int off) {
  if constexpr (std::is_same_v<T, __half>) {
    return zero_const_f16(has_zero ? zs[off] : 0.f);
  } else {
    return has_zero ? zero_const_bf16(zs[off]) : 0u;
  }
}

template <class T>
__device__ __forceinline__ void dequant(uint32_t q, uint32_t zc, bool has_zero, uint32_t& b0, uint32_t& b1) {
  if constexpr (std::is_same_v<T, __half>) {
    dequant_f16(q, zc, b0, b1);
  } else {
    dequant_bf16(q, zc, has_zero, b0, b1);
  }
}

template <class C, class T>
__global__ void __launch_bounds__(C::THREADS) w8a16_kernel(const Params<T> p) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int last_arrival;
  const int tid = threadIdx.x, lane = tid & 31;
  const WarpPos wp = warp_pos<C>(tid >> 5);
  const Tile tile = tile_of<C>(blockIdx.x, p.tiles_n, p.m_blocks);
  const int n0 = tile.tn * C::BN, m0 = tile.tm * C::BM;
  const int kt0 = split_begin(tile.split, p.splits, p.ktiles);
  const int nkt = split_begin(tile.split + 1, p.splits, p.ktiles) - kt0;
  const bool has_zero = p.zero != nullptr;

  float acc[C::MI][C::NI][4];
  zero_fragments(acc);
  auto load = [&](int slot, int t) { load_stage<C>(p, smem + slot * C::STAGE_BYTES, n0, m0, (kt0 + t) * C::BK, tid); };
  auto compute = [&](int slot, int) {
    const unsigned char* st = smem + slot * C::STAGE_BYTES;
    const T* sx = reinterpret_cast<const T*>(st + C::X_OFF);
    const float* ss = reinterpret_cast<const float*>(st + C::S_OFF);
    const float* zs = reinterpret_cast<const float*>(st + C::Z_OFF);
    uint32_t zc[C::NI];
#pragma unroll
    for (int j = 0; j < C::NI; ++j) zc[j] = zero_const<T>(zs, has_zero, zero_offset<C>(wp, j, lane));

    float part[C::MI][C::NI][4];
    zero_fragments(part);
#pragma unroll
    for (int ks = 0; ks < C::KSTEPS; ++ks) {
      const uint4 wq = lds128(smem_addr(st + C::W_OFF + w_frag_offset<C>(wp, ks, lane)));
      const uint32_t q[4] = {wq.x, wq.y, wq.z, wq.w};
      uint32_t a[C::MI][4];
#pragma unroll
      for (int mi = 0; mi < C::MI; ++mi) ldmatrix_x4(a[mi], smem_addr(sx + a_frag_offset<C>(wp, mi, ks, lane)));
#pragma unroll
      for (int j = 0; j < C::NI; ++j) {
        uint32_t b0, b1;
        dequant<T>(q[j], zc[j], has_zero, b0, b1);
#pragma unroll
        for (int mi = 0; mi < C::MI; ++mi) mma_16816<T>(part[mi][j], a[mi], b0, b1);
      }
    }
#pragma unroll
    for (int j = 0; j < C::NI; ++j) {
      const float2 s = *reinterpret_cast<const float2*>(ss + scale_offset<C>(wp, j, lane));
#pragma unroll
      for (int mi = 0; mi < C::MI; ++mi) {
        acc[mi][j][0] = fmaf(part[mi][j][0], s.x, acc[mi][j][0]);
        acc[mi][j][1] = fmaf(part[mi][j][1], s.y, acc[mi][j][1]);
        acc[mi][j][2] = fmaf(part[mi][j][2], s.x, acc[mi][j][2]);
        acc[mi][j][3] = fmaf(part[mi][j][3], s.y, acc[mi][j][3]);
      }
    }
  };
  run_cp_async_ring<C::STAGES>(nkt, load, compute);

  // The ring is free (run_cp_async_ring ended with a barrier): stage the K slices.
  float* ct = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
    for (int j = 0; j < C::NI; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const AccCoord ac = acc_coord<C>(wp, mi, j, h, lane);
        *reinterpret_cast<float2*>(ct + ctile_offset<C>(wp.k, ac.row, ac.col)) =
            make_float2(acc[mi][j][2 * h], acc[mi][j][2 * h + 1]);
      }
  __syncthreads();

  auto slice_sum = [&](const AccCoord& oc, float (&v)[8]) {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = 0.f;
#pragma unroll
    for (int s = 0; s < C::WARPS_K; ++s) {
      const float4* src = reinterpret_cast<const float4*>(ct + ctile_offset<C>(s, oc.row, oc.col));
      const float4 lo = src[0], hi = src[1];
      v[0] += lo.x; v[1] += lo.y; v[2] += lo.z; v[3] += lo.w;
      v[4] += hi.x; v[5] += hi.y; v[6] += hi.z; v[7] += hi.w;
    }
  };

  if (p.splits == 1) {
#pragma unroll 1
    for (int idx = tid; idx < C::OUT_CHUNKS; idx += C::THREADS) {
      const AccCoord oc = out_chunk_coord<C>(idx);
      const int row = m0 + oc.row, col = n0 + oc.col;
      if (row >= p.M || col >= p.N) continue;
      float v[8];
      slice_sum(oc, v);
      finish_out8(p.out, p.ldo, row, col, p.N, p.bias, p.act, v);
    }
    return;
  }

  // Split K: publish this CTA's partial tile, then the last of the tile's CTAs to arrive
  // (counted with an atomic after a fence) sums all partials in split order, so the
  // result does not depend on arrival order, and resets the counter for the next launch.
  const int64_t ws_split = int64_t(p.M) * p.Np;
#pragma unroll 1
  for (int idx = tid; idx < C::OUT_CHUNKS; idx += C::THREADS) {
    const AccCoord oc = out_chunk_coord<C>(idx);
    const int row = m0 + oc.row, col = n0 + oc.col;
    if (row >= p.M || col >= p.Np) continue;
    float v[8];
    slice_sum(oc, v);
    float4* dst = reinterpret_cast<float4*>(p.ws + tile.split * ws_split + int64_t(row) * p.Np + col);
    dst[0] = make_float4(v[0], v[1], v[2], v[3]);
    dst[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
  __threadfence();
  __syncthreads();
  const int counter = tile.tm * p.tiles_n + tile.tn;
  if (tid == 0) last_arrival = atomicAdd(p.counters + counter, 1) == p.splits - 1;
  __syncthreads();
  if (!last_arrival) return;
  __threadfence();
#pragma unroll 1
  for (int idx = tid; idx < C::OUT_CHUNKS; idx += C::THREADS) {
    const AccCoord oc = out_chunk_coord<C>(idx);
    const int row = m0 + oc.row, col = n0 + oc.col;
    if (row >= p.M || col >= p.N) continue;
    float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll 1
    for (int s = 0; s < p.splits; ++s) {
      // L2 loads: other SMs wrote these, and this SM's L1 is not coherent with them.
      const float4* src = reinterpret_cast<const float4*>(p.ws + s * ws_split + int64_t(row) * p.Np + col);
      const float4 lo = __ldcg(src), hi = __ldcg(src + 1);
      v[0] += lo.x; v[1] += lo.y; v[2] += lo.z; v[3] += lo.w;
      v[4] += hi.x; v[5] += hi.y; v[6] += hi.z; v[7] += hi.w;
    }
    finish_out8(p.out, p.ldo, row, col, p.N, p.bias, p.act, v);
  }
  if (tid == 0) p.counters[counter] = 0;
}

template <class C, class T>
void launch(const W8A16Args& a, const W8A16Plan& plan, cudaStream_t stream, int device, const char* fn) {
  auto kernel = w8a16_kernel<C, T>;
  static std::atomic<uint64_t> opted_in{0};
  util::ensure_smem(kernel, C::SMEM_BYTES, device, opted_in, fn);
  Params<T> p;
  p.x = reinterpret_cast<const T*>(a.x);
  p.w = reinterpret_cast<const unsigned char*>(a.w);
  p.scale = reinterpret_cast<const float*>(a.scale);
  p.zero = reinterpret_cast<const float*>(a.zero);
  p.bias = reinterpret_cast<const float*>(a.bias);
  p.out = reinterpret_cast<T*>(a.out);
  p.ws = reinterpret_cast<float*>(a.workspace);
  p.counters = reinterpret_cast<int*>(a.counters);
  p.ldx = a.x_row_stride;
  p.ldo = a.out_row_stride;
  p.M = int(a.M);
  p.N = int(a.N);
  p.K = int(a.K);
  p.Kp = int((a.K + kPackK - 1) / kPackK * kPackK);
  p.Np = int((a.N + kPackN - 1) / kPackN * kPackN);
  p.w_row_bytes = int64_t(p.Kp) * kPackN;
  p.group = a.group_size > 0 ? int(a.group_size) : p.Kp;
  p.act = a.act;
  p.splits = plan.splits;
  p.tiles_n = int((a.N + C::BN - 1) / C::BN);
  p.m_blocks = int((a.M + C::BM - 1) / C::BM);
  p.ktiles = (p.Kp + C::BK - 1) / C::BK;
  const int64_t blocks = int64_t(p.tiles_n) * p.m_blocks * plan.splits;
  if (blocks > INT_MAX) throw std::invalid_argument(std::string(fn) + ": M and N give more than 2^31-1 CTAs");
  kernel<<<dim3(unsigned(blocks)), dim3(C::THREADS), C::SMEM_BYTES, stream>>>(p);
  util::check_launch(fn);
}

}  // namespace
}  // namespace w8

void w8a16_linear(const W8A16Args& a, uintptr_t stream_handle) {
  const char* fn = "bigperf._C_cuda.w8a16_linear";
  w8a16_validate(a, fn);
  if (a.M == 0 || a.N == 0) return;
  const int device = util::current_device(fn);
  const util::DeviceLimits lim = util::device_limits(device);
  const W8A16Plan plan = w8a16_plan(a.M, a.N, a.K, lim.sm_count, a.config, a.splits, lim.max_smem);
  util::checked_config(fn, plan.config, lim.max_smem, w8a16_config_smem, w8a16_config_name);
  w8a16_check_workspace(a, plan, fn);
  const bool k = a.K > 0, split = plan.splits > 1;
  util::check_device_pointers(device, fn,
                              {{k ? a.x : 0, "x_ptr"}, {k ? a.w : 0, "w_ptr"}, {k ? a.scale : 0, "scale_ptr"},
                               {k ? a.zero : 0, "zero_ptr"}, {a.bias, "bias_ptr"}, {a.out, "out_ptr"},
                               {split ? a.workspace : 0, "workspace_ptr"}, {split ? a.counters : 0, "counters_ptr"}});
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (a.dtype == 1) {
    if (plan.config == 0) w8::launch<w8::ConfigM16, __half>(a, plan, stream, device, fn);
    else w8::launch<w8::ConfigM32, __half>(a, plan, stream, device, fn);
  } else {
    if (plan.config == 0) w8::launch<w8::ConfigM16, __nv_bfloat16>(a, plan, stream, device, fn);
    else w8::launch<w8::ConfigM32, __nv_bfloat16>(a, plan, stream, device, fn);
  }
}

}  // namespace bigperf::cuda
