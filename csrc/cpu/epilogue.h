// The epilogue every CPU kernel ends with, written once over a vector-traits class V
// (vec_avx2.h, vec_avx512.h):
//   out[m, n] = act(sums[m][n] * column_scale[n] + bias[n]) + residual[m, n]
// in the output dtype (fp32, fp16 or bf16, rounded to nearest even), each term only where
// given. The activation and the dtype are dispatched once per call of epilogue_rows, not
// per vector: a per-row function switching on both for every vector (and, storing through
// char*, reloading them after every store) cost 8.5 % of a 384 -> 1536 layer at M = 192 with
// no activation at all (benchmarks/NOTES.md, session 25). Kernels hand it a block of rows.
// Include only from ISA translation units (anonymous namespace: see vec_avx2.h for why).
#pragma once
#include <cstdint>
#include <cstring>

#include "cpu/fused_linear.h"
#include "cpu/kernel_util.h"
#include "cpu/vec_activation.h"

namespace bigperf::cpu {
namespace {

struct EpilogueArgs {
  void* out;
  int64_t out_row_stride;  // elements
  DType dtype;             // of out and residual
  Activation act;
  const float* bias = nullptr;          // [N]
  const float* column_scale = nullptr;  // [N]: the sums' multiplier (int8 weight scales)
  const void* residual = nullptr;       // rows of dtype
  int64_t residual_row_stride = 0;      // elements
};

template <class V>
inline typename V::vec load_as(const char* p, DType d) {
  switch (d) {
    case DType::f32: return V::loadu(reinterpret_cast<const float*>(p));
    case DType::f16: return V::load_f16(p);
    case DType::bf16: return V::load_bf16(p);
  }
  return V::zero();
}

template <class V>
inline void store_as(char* p, DType d, typename V::vec v) {
  switch (d) {
    case DType::f32: V::storeu(reinterpret_cast<float*>(p), v); break;
    case DType::f16: V::store_f16(p, v); break;
    case DType::bf16: V::store_bf16(p, v); break;
  }
}

// One vector of outputs from sums s (scale, bias: the same columns; res: null or the
// residual's elements).
template <class V, Activation A, DType D>
inline typename V::vec epilogue_vec(typename V::vec v, const float* scale, const float* bias, const char* res) {
  if (scale) v = V::mul(v, V::loadu(scale));
  if (bias) v = V::add(v, V::loadu(bias));
  v = vactivation_as<V, A>(v);
  if (res) v = V::add(v, load_as<V>(res, D));
  return v;
}

template <class V, Activation A, DType D>
void epilogue_rows_as(const EpilogueArgs& e, const float* sums, int64_t ld, int64_t m0, int64_t rows, int64_t n0,
                      int64_t cnt) {
  using vec = typename V::vec;
  constexpr int W = V::W;
  constexpr int64_t es = element_size(D);
  const float* scale = e.column_scale ? e.column_scale + n0 : nullptr;
  const float* bias = e.bias ? e.bias + n0 : nullptr;
  const int64_t full = cnt / W * W, rem = cnt - full;
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = sums + r * ld;
    char* out = static_cast<char*>(e.out) + ((m0 + r) * e.out_row_stride + n0) * es;
    const char* res =
        e.residual ? static_cast<const char*>(e.residual) + ((m0 + r) * e.residual_row_stride + n0) * es : nullptr;
    for (int64_t j = 0; j < full; j += W)
      store_as<V>(out + j * es, D,
                  epilogue_vec<V, A, D>(V::loadu(s + j), scale ? scale + j : nullptr, bias ? bias + j : nullptr,
                                        res ? res + j * es : nullptr));
    if (rem) {  // through zeroed stack copies: nothing outside the row is read or written
      alignas(64) float sb[W] = {}, cb[W] = {}, bb[W] = {};
      alignas(64) char rb[W * 4] = {}, ob[W * 4];
      std::memcpy(sb, s + full, rem * sizeof(float));
      if (scale) std::memcpy(cb, scale + full, rem * sizeof(float));
      if (bias) std::memcpy(bb, bias + full, rem * sizeof(float));
      if (res) std::memcpy(rb, res + full * es, rem * es);
      store_as<V>(ob, D, epilogue_vec<V, A, D>(V::loadu(sb), scale ? cb : nullptr, bias ? bb : nullptr, res ? rb : nullptr));
      std::memcpy(out + full * es, ob, rem * es);
    }
  }
}

template <class V, Activation A>
void epilogue_rows_act(const EpilogueArgs& e, const float* sums, int64_t ld, int64_t m0, int64_t rows, int64_t n0,
                       int64_t cnt) {
  switch (e.dtype) {
    case DType::f32: return epilogue_rows_as<V, A, DType::f32>(e, sums, ld, m0, rows, n0, cnt);
    case DType::f16: return epilogue_rows_as<V, A, DType::f16>(e, sums, ld, m0, rows, n0, cnt);
    case DType::bf16: return epilogue_rows_as<V, A, DType::bf16>(e, sums, ld, m0, rows, n0, cnt);
  }
}

// Rows m0 .. m0 + rows of the output, columns n0 .. n0 + cnt, from sums (row r at sums + r * ld).
// Never inlined: its fifteen instantiations inlined into a kernel's loop took the compiler's
// inlining budget, and the W8A16 dot kernel's inner function (panel_group) was then called
// instead of inlined, ~5 % slower at M = 1 (4096 x 14336, Zen 4, 1 thread). Called once
// per block of rows, the call costs nothing measurable.
template <class V>
__attribute__((noinline)) void epilogue_rows(const EpilogueArgs& e, const float* sums, int64_t ld, int64_t m0,
                                             int64_t rows, int64_t n0, int64_t cnt) {
  switch (e.act) {
    case Activation::none: return epilogue_rows_act<V, Activation::none>(e, sums, ld, m0, rows, n0, cnt);
    case Activation::relu: return epilogue_rows_act<V, Activation::relu>(e, sums, ld, m0, rows, n0, cnt);
    case Activation::gelu_erf: return epilogue_rows_act<V, Activation::gelu_erf>(e, sums, ld, m0, rows, n0, cnt);
    case Activation::gelu_tanh: return epilogue_rows_act<V, Activation::gelu_tanh>(e, sums, ld, m0, rows, n0, cnt);
    case Activation::silu: return epilogue_rows_act<V, Activation::silu>(e, sums, ld, m0, rows, n0, cnt);
  }
}

}  // namespace
}  // namespace bigperf::cpu
