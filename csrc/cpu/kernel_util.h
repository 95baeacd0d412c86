// Small helpers every CPU kernel family shares (fused, int8, sparse): integer min/max, the
// element size of a float storage dtype, software prefetches, and 64-byte aligned scratch
// memory.
//
// Include only from kernel translation units. Everything sits in an anonymous namespace,
// for the reason given in vec_avx2.h: an inline function with external linkage compiled
// with AVX flags could become the copy the scalar path calls.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "cpu/fused_linear.h"  // DType

namespace bigperf::cpu {
namespace {

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// Bytes per element of x, float weights and outputs (fp32, or fp16 / bf16).
constexpr int64_t element_size(DType d) { return d == DType::f32 ? 4 : 2; }

// Software prefetch into L1 (prefetch_l1) or L2 (prefetch_l2); never faults, so an address
// past the end of a tensor is fine. Every kernel prefetches through these, not through
// _mm_prefetch / __builtin_prefetch: GCC counts the builtin as free of side effects, finds
// a helper that only prefetches 'const' and deletes its calls. It had deleted every
// prefetch of the AVX2 M = 1 fused kernel on bf16 / fp16 weights (benchmarks/NOTES.md,
// session 26). A volatile asm is kept where it is written; its address goes in a register,
// not as a memory operand: an asm that says it reads memory made GCC keep the block-sparse
// kernel's accumulators in memory around it (0.74-0.78x at M = 16-128).
#if defined(__x86_64__) || defined(__i386__)
inline void prefetch_l1(const void* p) { asm volatile("prefetcht0 (%0)" : : "r"(p)); }
inline void prefetch_l2(const void* p) { asm volatile("prefetcht1 (%0)" : : "r"(p)); }
#else
inline void prefetch_l1(const void* p) { __builtin_prefetch(p, 0, 3); }
inline void prefetch_l2(const void* p) { __builtin_prefetch(p, 0, 2); }
#endif

// 64-byte aligned scratch (x packed per call, partial sums), freed on scope exit: kernels
// may throw through parallel_for. The size is rounded up to whole 64-byte lines, as
// aligned_alloc requires, plus one spare line: a zero-byte request still gets memory, and
// a vector load up to 64 bytes past the end stays inside the allocation.
struct AlignedBuffer {
  explicit AlignedBuffer(size_t bytes) : ptr(std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64)) {
    if (!ptr) throw std::bad_alloc();
  }
  ~AlignedBuffer() { std::free(ptr); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  template <class T>
  T* as() const { return static_cast<T*>(ptr); }
  void* ptr;
};

}  // namespace
}  // namespace bigperf::cpu
