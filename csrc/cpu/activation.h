// Scalar epilogue math shared by every ISA path (the vector paths use it for tails and
// as the definition they must match).
#pragma once
#include <cmath>

#include "cpu/fused_linear.h"

namespace bigperf::cpu {

inline float apply_activation(float v, Activation act) {
  switch (act) {
    case Activation::none: return v;
    case Activation::relu: return v < 0.f ? 0.f : v;  // NaN stays NaN, as torch.relu
    case Activation::gelu_erf: return 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f));
    case Activation::gelu_tanh: {
      const float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
      return 0.5f * v * (1.f + std::tanh(inner));
    }
    case Activation::silu: return v / (1.f + std::exp(-v));
  }
  return v;
}

}  // namespace bigperf::cpu
