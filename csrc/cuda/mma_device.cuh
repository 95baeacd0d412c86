// Device building blocks of the tensor-core kernels (fused linear, W8A16, 2:4 sparse):
// cp.async and the STAGES-deep ring built on it, ldmatrix, the dense and sparse mma.sync
// forms, accumulator zeroing and fp16/bf16 pair conversions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/fused_linear_tile.h"  // fl::apply_activation

namespace bigperf::cuda::dev {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// src-size 0 reads nothing and fills the 16 bytes with zeros, so tails need no masks.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(pred ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  // The clobber keeps ordinary shared-memory accesses from moving across the wait.
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ uint4 lds128(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}

template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Sparse A (16 x 32 logical, 16 x 16 stored) times dense B (32 x 8). Sparsity selector 0:
// lanes 4g and 4g+1 supply the metadata. ::ordered_metadata promises each group's two
// indices ascend, which bigperf's 2:4 format guarantees (meta_is_valid).
template <class T>
__device__ __forceinline__ void mma_sp_16832(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                                             uint32_t meta) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(meta));
  } else {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(meta));
  }
}

template <class T>
struct Pair;
template <>
struct Pair<__half> {
  using type = __half2;
  __device__ static __half2 pack(float a, float b) { return __floats2half2_rn(a, b); }
  __device__ static __half one(float a) { return __float2half_rn(a); }
  __device__ static float to_float(__half v) { return __half2float(v); }
};
template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  __device__ static __nv_bfloat162 pack(float a, float b) { return __floats2bfloat162_rn(a, b); }
  __device__ static __nv_bfloat16 one(float a) { return __float2bfloat16_rn(a); }
  __device__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
};

// Rounds 8 fp32 values to T and stores them as one 16-byte write (dst 16-byte aligned).
template <class T>
__device__ __forceinline__ void store8(T* dst, const float (&v)[8]) {
  uint4 packed;
  auto* o2 = reinterpret_cast<typename Pair<T>::type*>(&packed);
#pragma unroll
  for (int j = 0; j < 4; ++j) o2[j] = Pair<T>::pack(v[2 * j], v[2 * j + 1]);
  *reinterpret_cast<uint4*>(dst) = packed;
}

// Bias, activation and the store of 8 consecutive outputs of one row (col % 8 == 0, row
// starts 16-byte aligned by the launchers' base and stride rules): one 16-byte store, or
// element stores for the columns before N at the edge.
template <class T>
__device__ __forceinline__ void finish_out8(T* out, int64_t ldo, int row, int col, int N, const float* bias, int act,
                                            float (&v)[8]) {
  const int valid = N - col < 8 ? N - col : 8;
  if (bias != nullptr) {
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (j < valid) v[j] += bias[col + j];
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = fl::apply_activation(v[j], act);
  T* dst = out + row * ldo + col;
  if (valid == 8) {
    store8<T>(dst, v);
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (j < valid) dst[j] = Pair<T>::one(v[j]);
  }
}

// Zeroes an MI x NI array of mma accumulator fragments.
template <int MI, int NI>
__device__ __forceinline__ void zero_fragments(float (&acc)[MI][NI][4]) {
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;
}

// The STAGES-deep cp.async ring of every tensor-core kernel here, over `tiles` K tiles:
// load(slot, t) issues the 16-byte copies of tile t into ring slot `slot` (no commit);
// compute(slot, t) consumes tile t from that slot. Returns with every copy landed and
// every warp past its last compute, so the ring's shared memory is free for the epilogue.
template <int STAGES, class Load, class Compute>
__device__ __forceinline__ void run_cp_async_ring(int tiles, const Load& load, const Compute& compute) {
  static_assert(STAGES >= 2, "a ring needs at least two slots");
  // Prologue: STAGES-1 tiles in flight. Empty groups are committed too, so that
  // wait_group counts stay uniform at the tail.
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < tiles) load(s, s);
    cp_async_commit();
  }
  for (int t = 0; t < tiles; ++t) {
    // Groups committed so far: STAGES-1+t; leaving STAGES-2 pending means tile t has
    // landed for this thread, and the barrier makes every thread's copies visible. The
    // same barrier proves all warps are done with tile t-1, whose slot is refilled next.
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int next = t + STAGES - 1;
    if (next < tiles) load(next % STAGES, next);
    cp_async_commit();
    compute(t % STAGES, t);
  }
  cp_async_wait<0>();
  __syncthreads();
}

}  // namespace bigperf::cuda::dev
