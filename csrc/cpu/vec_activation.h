// Vector versions of the activations in activation.h, written once over a vector-traits
// class V (vec_avx2.h, vec_avx512.h). Within a few fp32 ulp of the scalar definitions,
// and closer than them to the exact GELU in the left tail (no 1 + (-1 + tiny));
// tests/csrc/test_cpu_fused_linear.py checks them against a float64 reference.
// Include only from ISA translation units (anonymous namespace: see vec_avx2.h for why).
#pragma once
#include "cpu/fused_linear.h"

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

// 1 + erf(x), without the cancellation of adding 1 to erf(x) ~ -1 in the left tail (which
// the scalar definition has). erf in two pieces, fitted here (weighted least squares,
// Lawson iterations) against a float64 erf; max abs error 1.4e-7 over the fp32 line:
//   |x| < 1:  erf(x) = x * P(x^2)
//   |x| >= 1: erfc(|x|) = exp(-x^2) * S(|x| - 2.5), S(x) = erfc(x) * exp(x^2) varying
//             slowly, fitted on [1, 4].
template <class V>
inline typename V::vec vone_plus_erf(typename V::vec x) {
  using vec = typename V::vec;
  const vec a = V::abs(x);
  const vec z = V::mul(a, a);
  vec p = V::set1(7.889280096e-05f);
  p = V::fmadd(p, z, V::set1(-8.020893438e-04f));
  p = V::fmadd(p, z, V::set1(5.189541727e-03f));
  p = V::fmadd(p, z, V::set1(-2.685444802e-02f));
  p = V::fmadd(p, z, V::set1(1.128360033e-01f));
  p = V::fmadd(p, z, V::set1(-3.761262596e-01f));
  p = V::fmadd(p, z, V::set1(1.128379107e+00f));
  const vec one = V::set1(1.f);
  const vec small = V::add(one, V::copysign(V::mul(a, p), x));

  const vec ac = V::min(a, V::set1(4.f));
  const vec t = V::sub(ac, V::set1(2.5f));
  vec s = V::set1(1.068432102e-04f);
  s = V::fmadd(s, t, V::set1(2.250627440e-04f));
  s = V::fmadd(s, t, V::set1(5.433197366e-04f));
  s = V::fmadd(s, t, V::set1(-6.611207500e-04f));
  s = V::fmadd(s, t, V::set1(2.302503679e-03f));
  s = V::fmadd(s, t, V::set1(-8.132250980e-03f));
  s = V::fmadd(s, t, V::set1(2.491462603e-02f));
  s = V::fmadd(s, t, V::set1(-7.434218377e-02f));
  s = V::fmadd(s, t, V::set1(2.108076066e-01f));
  // erfc(|x|) is taken as 0 past 4 (erfc(4) = 1.5e-8, and the fit ends there), as
  // 1 + erf does in fp32: gelu(v) is then 0 for v < -5.66, where it is above -4.4e-8.
  const vec tail = V::mul(vexp<V>(V::sub(V::zero(), V::mul(ac, ac))), s);
  const vec erfc_a = V::select(V::lt(a, V::set1(4.f)), tail, V::zero());
  const vec large = V::select(V::lt(x, V::zero()), erfc_a, V::sub(V::set1(2.f), erfc_a));
  return V::select(V::lt(a, one), small, large);
}

template <class V>
inline typename V::vec vactivation(typename V::vec v, Activation act) {
  using vec = typename V::vec;
  switch (act) {
    case Activation::none: return v;
    case Activation::relu: return V::max(V::zero(), v);  // NaN stays NaN, as torch.relu and the scalar path
    case Activation::gelu_erf:
      return V::mul(V::mul(V::set1(0.5f), v), vone_plus_erf<V>(V::mul(v, V::set1(0.70710678118654752f))));
    case Activation::gelu_tanh: {
      // 0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)): the same function, without the
      // cancellation of 1 + tanh(u) for negative u.
      const vec v3 = V::mul(V::mul(V::mul(V::set1(0.044715f), v), v), v);
      const vec u2 = V::mul(V::set1(-2.f * 0.7978845608028654f), V::add(v, v3));
      return V::div(v, V::add(V::set1(1.f), vexp<V>(u2)));
    }
    case Activation::silu:
      return V::div(v, V::add(V::set1(1.f), vexp<V>(V::sub(V::zero(), v))));
  }
  return v;
}

}  // namespace
}  // namespace bigperf::cpu
