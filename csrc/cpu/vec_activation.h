// Vector versions of the activations in activation.h, written once over a vector-traits
// class V (vec_avx2.h, vec_avx512.h). Within a few fp32 ulp of the scalar definitions,
// and closer than them to the exact GELU in the left tail (no 1 + (-1 + tiny));
// tests/csrc/test_cpu_fused_linear.py checks them against a float64 reference.
// Include only from ISA translation units (anonymous namespace: see vec_avx2.h for why).
#pragma once
#include "cpu/fused_linear.h"
#include "cpu/activation_tables.h"

namespace bigperf::cpu {
namespace {

// exp(x) = 2^n * exp(r) with r = x - n*ln2 in [-ln2/2, ln2/2]. ln2 is split in two so that
// n*ln2_hi is exact; the Taylor series to r^7 leaves a truncation error below 6e-9
// (relative), under the fp32 rounding of the result. 2^(n-1) * (2p) keeps the exponent
// field in range up to the overflow point ln(FLT_MAX); past it the result is inf, as
// std::exp. Below -86.6 the result stays at ~2e-38 instead of going subnormal: no
// activation here can tell (1 + 2e-38 == 1).
template <class V>
inline typename V::vec vexp(typename V::vec x) {
  using vec = typename V::vec;
  const vec hi = V::set1(88.7228317f);
  const vec xc = V::min(V::max(x, V::set1(-86.6f)), hi);
  const vec n = V::round(V::mul(xc, V::set1(1.44269504088896341f)));
  vec r = V::fmadd(n, V::set1(-0.693359375f), xc);
  r = V::fmadd(n, V::set1(2.12194440054690583e-4f), r);
  vec p = V::set1(1.f / 5040.f);
  p = V::fmadd(p, r, V::set1(1.f / 720.f));
  p = V::fmadd(p, r, V::set1(1.f / 120.f));
  p = V::fmadd(p, r, V::set1(1.f / 24.f));
  p = V::fmadd(p, r, V::set1(1.f / 6.f));
  p = V::fmadd(p, r, V::set1(0.5f));
  p = V::fmadd(p, r, V::set1(1.f));
  p = V::fmadd(p, r, V::set1(1.f));
  const vec e = V::mul(V::add(p, p), V::pow2i(V::sub(n, V::set1(1.f))));
  return V::select(V::lt(hi, x), V::set1(__builtin_inff()), e);
}

// F(z) for a sigmoid-shaped F given by the table of its left tail Q (activation_tables.h):
// Q(|z|) for z < 0 (no cancellation in the left tail), 1 - Q(|z|) otherwise. Q is one
// polynomial per cell of [0, kSpan), W cells for W lanes, so that each coefficient is one
// in-register permute; past the span Q is 0, or with kLogistic its own 1 / (1 + e^u) (a
// vector with such a lane, rare, pays an exp and a divide): SiLU's far left tail keeps its
// relative accuracy, as torch's v / (1 + exp(-v)) has it. About 15 instructions with a chain
// of 6-8 FMAs, where the erf and exp forms they replace took 25-45 (benchmarks/NOTES.md,
// session 25). A NaN z gives a NaN or F = 1, so v * F keeps a NaN v.
template <class V, class Table, bool kLogistic = false>
inline typename V::vec vsigmoid_from_tail(typename V::vec z) {
  using vec = typename V::vec;
  const vec u = V::abs(z);
  const vec scaled = V::mul(u, V::set1(Table::kScale));
  // The cell: truncation is floor for scaled >= 0 (a NaN takes the last cell, min's second
  // operand). (Not vrndscaleps: SIMDe 0.7.4, which the emulation tests build on, rounds it wrong.)
  const auto index = V::truncate(V::min(scaled, V::set1(static_cast<float>(V::W - 1))));
  const vec s = V::sub(scaled, V::to_float(index));
  vec q = V::lookup(Table::coef[Table::kDegree], index);
  for (int j = Table::kDegree - 1; j >= 0; --j) q = V::fmadd(q, s, V::lookup(Table::coef[j], index));
  const auto inside = V::lt(u, V::set1(Table::kSpan));
  q = V::select(inside, q, V::zero());
  if constexpr (kLogistic) {
    if (!V::all(inside)) q = V::select(inside, q, V::div(V::set1(1.f), V::add(V::set1(1.f), vexp<V>(u))));
  }
  return V::select(V::lt(z, V::zero()), q, V::sub(V::set1(1.f), q));
}

// Whether the logistic's table serves V: 16 cells of degree 6 on AVX-512; with AVX2's 8 cells
// it would need degree 9, no cheaper than exp and a divide (gen_activation_tables.py).
template <class V>
constexpr bool kLogisticTable = V::W == 16;

// The activation A, known at compile time (epilogue.h dispatches once per block of rows).
template <class V, Activation A>
inline typename V::vec vactivation_as(typename V::vec v) {
  using vec = typename V::vec;
  if constexpr (A == Activation::relu) {
    return V::max(V::zero(), v);  // NaN stays NaN, as torch.relu and the scalar path
  } else if constexpr (A == Activation::gelu_erf) {  // v Phi(v)
    return V::mul(v, vsigmoid_from_tail<V, GeluErfTable<V::W>>(v));
  } else if constexpr (A == Activation::gelu_tanh) {
    // 0.5 v (1 + tanh(u)) = v sigma(2u), u = sqrt(2/pi) (v + 0.044715 v^3): the same
    // function, without the cancellation of 1 + tanh(u) for negative u.
    const vec v3 = V::mul(V::mul(V::mul(V::set1(0.044715f), v), v), v);
    const vec z = V::mul(V::set1(2.f * 0.7978845608028654f), V::add(v, v3));  // 2u
    if constexpr (kLogisticTable<V>) return V::mul(v, vsigmoid_from_tail<V, LogisticTable<V::W>, true>(z));
    return V::div(v, V::add(V::set1(1.f), vexp<V>(V::sub(V::zero(), z))));
  } else if constexpr (A == Activation::silu) {  // v sigma(v)
    if constexpr (kLogisticTable<V>) return V::mul(v, vsigmoid_from_tail<V, LogisticTable<V::W>, true>(v));
    return V::div(v, V::add(V::set1(1.f), vexp<V>(V::sub(V::zero(), v))));
  } else {
    return v;
  }
}

// The activation chosen at run time, for callers outside the epilogue.
template <class V>
inline typename V::vec vactivation(typename V::vec v, Activation act) {
  switch (act) {
    case Activation::none: return v;
    case Activation::relu: return vactivation_as<V, Activation::relu>(v);
    case Activation::gelu_erf: return vactivation_as<V, Activation::gelu_erf>(v);
    case Activation::gelu_tanh: return vactivation_as<V, Activation::gelu_tanh>(v);
    case Activation::silu: return vactivation_as<V, Activation::silu>(v);
  }
  return v;
}

}  // namespace
}  // namespace bigperf::cpu
