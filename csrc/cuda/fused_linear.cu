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

constexpr int kMaxDevices = 64;

int sm_count(int device) {
  static std::atomic<int> cache[kMaxDevices] = {};
  if (device < 0 || device >= kMaxDevices) return 132;
  int n = cache[device].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) {
      cudaGetLastError();
      return 132;
    }
    cache[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

[[noreturn]] void cuda_fail(const char* fn, const char* what, cudaError_t err) {
  throw std::runtime_error(std::string(fn) + ": " + what + " failed: " + cudaGetErrorString(err));
}

template <class C, class T>
void launch(const FusedLinearArgs& a, cudaStream_t stream, int device, const char* fn) {
  auto kernel = fused_linear_kernel<C, T>;
  if constexpr (C::SMEM_BYTES > 48 * 1024) {
    // The opt-in above 48 KiB is per device; remember which devices have it.
    static std::atomic<uint64_t> opted_in{0};
    const uint64_t bit = device < kMaxDevices ? (uint64_t{1} << device) : 0;
    if (bit == 0 || !(opted_in.load(std::memory_order_relaxed) & bit)) {
      cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM_BYTES);
      if (err != cudaSuccess) {
        cudaGetLastError();
        cuda_fail(fn, "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)", err);
      }
      opted_in.fetch_or(bit, std::memory_order_relaxed);
    }
  }
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
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) cuda_fail(fn, "kernel launch", err);
}

template <class T>
void launch_config(int config, const FusedLinearArgs& a, cudaStream_t stream, int device, const char* fn) {
  switch (config) {
    case 0: return launch<ConfigSmall, T>(a, stream, device, fn);
    case 1: return launch<ConfigMedium, T>(a, stream, device, fn);
    default: return launch<ConfigLarge, T>(a, stream, device, fn);
  }
}

// Device pointers only, and on the current device: a host pointer or another GPU's
// memory would otherwise surface as an illegal-address fault that poisons the context.
void check_device_pointer(uintptr_t ptr, int device, const char* fn, const char* name) {
  if (ptr == 0) return;
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::invalid_argument(std::string(fn) + ": " + name + " is not a CUDA pointer (" +
                                cudaGetErrorString(err) + ")");
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
    throw std::invalid_argument(std::string(fn) + ": " + name + " is not device memory");
  }
  if (attr.type == cudaMemoryTypeDevice && attr.device != device) {
    throw std::invalid_argument(std::string(fn) + ": " + name + " lives on device " + std::to_string(attr.device) +
                                " but the current device is " + std::to_string(device));
  }
}

}  // namespace
}  // namespace fl

int fused_linear_num_configs() { return fl::kNumConfigs; }

std::string fused_linear_config_name(int config) {
  switch (config) {
    case 0: return "small_16x32x128_w1x1x4_s4";
    case 1: return "medium_64x64x64_w2x2x1_s4";
    case 2: return "large_128x128x32_w2x4x1_s4";
    default: return "";
  }
}

int fused_linear_choose_config(int64_t M, int64_t N, int sm_count) {
  if (M <= 16) return 0;
  const int64_t large_tiles = ((M + 127) / 128) * ((N + 127) / 128);
  // 128x128 tiles only when they still give every SM a CTA; otherwise the 4x smaller
  // medium tiles win by parallelism.
  if (M > 64 && large_tiles >= sm_count) return 2;
  return 1;
}

void fused_linear_validate(const FusedLinearArgs& a, const char* fn) {
  auto require = [fn](bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument(std::string(fn) + ": " + message);
  };
  const int64_t imax = INT_MAX;
  require(a.M >= 0 && a.M <= imax, "M must be in [0, 2^31-1], got " + std::to_string(a.M));
  require(a.N >= 0 && a.N <= imax, "N must be in [0, 2^31-1], got " + std::to_string(a.N));
  require(a.K >= 0 && a.K <= imax, "K must be in [0, 2^31-1], got " + std::to_string(a.K));
  require(a.dtype == 1 || a.dtype == 2,
          "dtype_code must be 1 (float16) or 2 (bfloat16), got " + std::to_string(a.dtype));
  require(a.act >= 0 && a.act <= 4, "act_code must be 0..4 (none, relu, gelu_erf, gelu_tanh, silu), got " +
                                        std::to_string(a.act));
  require(a.config >= -1 && a.config < fl::kNumConfigs, "config must be -1 (auto) or 0.." +
                                                            std::to_string(fl::kNumConfigs - 1) + ", got " +
                                                            std::to_string(a.config));
  require(a.K % kFusedLinearKMultiple == 0,
          "K must be a multiple of 8 (16-byte cp.async chunks), got " + std::to_string(a.K));
  if (a.M == 0 || a.N == 0) return;

  // A row stride matters only when there is a second row; with it, each row start must
  // stay 16-byte aligned and the last row must end inside int64 arithmetic.
  auto check_matrix = [&](uintptr_t ptr, const char* ptr_name, int64_t stride, const char* stride_name,
                          int64_t rows, int64_t cols, const char* cols_name) {
    require(ptr != 0, std::string(ptr_name) + " is null");
    require(ptr % kFusedLinearPointerAlignment == 0,
            std::string(ptr_name) + " must be 16-byte aligned, got address % 16 = " + std::to_string(ptr % 16));
    if (rows <= 1) return;
    require(stride >= cols, std::string(stride_name) + " (" + std::to_string(stride) + ") must be >= " + cols_name +
                                " (" + std::to_string(cols) + ")");
    require(stride % kFusedLinearStrideMultiple == 0,
            std::string(stride_name) + " must be a multiple of 8 elements, got " + std::to_string(stride));
    require(stride <= (INT64_MAX / 4 - cols) / (rows - 1), std::string(stride_name) + " is too large");
  };
  if (a.K > 0) {
    check_matrix(a.x, "x_ptr", a.x_row_stride, "x_row_stride", a.M, a.K, "K");
    check_matrix(a.w, "w_ptr", a.w_row_stride, "w_row_stride", a.N, a.K, "K");
  }
  check_matrix(a.out, "out_ptr", a.out_row_stride, "out_row_stride", a.M, a.N, "N");
  if (a.residual != 0) {
    check_matrix(a.residual, "residual_ptr", a.residual_row_stride, "residual_row_stride", a.M, a.N, "N");
  }
  require(a.bias % kFusedLinearBiasAlignment == 0, "bias_ptr must be 4-byte aligned (float32)");
}

void fused_linear(const FusedLinearArgs& a, uintptr_t stream_handle) {
  const char* fn = "bigperf._C_cuda.fused_linear";
  fused_linear_validate(a, fn);
  if (a.M == 0 || a.N == 0) return;
  int count = 0;
  const cudaError_t count_err = cudaGetDeviceCount(&count);
  if (count_err != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw std::runtime_error(std::string(fn) + ": no CUDA device/driver available (" +
                             (count_err != cudaSuccess ? cudaGetErrorString(count_err) : "0 devices") + ")");
  }
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) fl::cuda_fail(fn, "cudaGetDevice", err);
  if (a.K > 0) {
    fl::check_device_pointer(a.x, device, fn, "x_ptr");
    fl::check_device_pointer(a.w, device, fn, "w_ptr");
  }
  fl::check_device_pointer(a.bias, device, fn, "bias_ptr");
  fl::check_device_pointer(a.residual, device, fn, "residual_ptr");
  fl::check_device_pointer(a.out, device, fn, "out_ptr");
  const int config = a.config >= 0 ? a.config : fused_linear_choose_config(a.M, a.N, fl::sm_count(device));
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (a.dtype == 1) {
    fl::launch_config<__half>(config, a, stream, device, fn);
  } else {
    fl::launch_config<__nv_bfloat16>(config, a, stream, device, fn);
  }
}

}  // namespace bigperf::cuda
